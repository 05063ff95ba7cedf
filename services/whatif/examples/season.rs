//! Writes a generated season as ERP files:
//!
//! ```text
//! cargo run -p ratemesh-whatif --example season -- DIR [--skus N] [--days D] [--readings-per-day R] [--seed S]
//! ```
//!
//! With no options it writes the shipped sample (`services/whatif/sample/history`); larger
//! seasons are for measuring how fast a what-if run replays.

use std::path::PathBuf;

use ratemesh_whatif::season::{SeasonSpec, write_season};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut spec = SeasonSpec::default();
    let mut dir = PathBuf::from("services/whatif/sample/history");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--skus" => spec.skus = value()?.parse()?,
            "--days" => spec.days = value()?.parse()?,
            "--readings-per-day" => spec.readings_per_day = value()?.parse()?,
            "--seed" => spec.seed = value()?.parse()?,
            _ => dir = PathBuf::from(arg),
        }
    }
    let written = write_season(&spec, &dir)?;
    println!(
        "wrote {} files ({} stock readings) to {}",
        written.files,
        written.stock_readings,
        dir.display()
    );
    Ok(())
}
