//! The `ratemesh` binary: `up` runs every service in one process, `serve <service>` runs
//! one (a Kubernetes Deployment each), and the other commands help operators.
//!
//! `main` only parses arguments and dispatches; the services are libraries built the same
//! way here and in tests.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// The services allocate many small buffers per call and per stream entry; under the
/// ingest load test glibc's malloc and free took ~15 % of the process's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ratemesh: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ratemesh: {err:#}");
            let bad_input = err
                .downcast_ref::<ratemesh_runtime::settings::SettingsError>()
                .is_some()
                || err.downcast_ref::<cli::BadInput>().is_some();
            match bad_input {
                true => ExitCode::from(2),
                false => ExitCode::FAILURE,
            }
        }
    }
}

/// `ratemesh rates list | head` closes stdout early; the next `println!` then panics with
/// "failed printing to stdout". That is the reader's choice, not an error: exit quietly.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
