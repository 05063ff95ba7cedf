//! Writes the generated sample season: `cargo run -p ratemesh-whatif --example season -- DIR`
//! (the shipped sample is `services/whatif/sample/history`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("services/whatif/sample/history"));
    let written = ratemesh_whatif::season::write_season(&Default::default(), &dir)?;
    println!(
        "wrote {} files ({} stock readings) to {}",
        written.files,
        written.stock_readings,
        dir.display()
    );
    Ok(())
}
