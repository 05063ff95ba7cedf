//! Prometheus's `promtool`, which validates what ratemesh exports and ships: the `/metrics`
//! exposition (`check metrics`) and the alert rules (`check rules`, `test rules`).
//!
//! A missing `promtool` fails the test with how to install it; it never skips, so CI
//! cannot pass without the check having run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Where `promtool` is on `PATH`; panics with the install hint when it is not.
pub fn path() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH: install it with `apt-get install prometheus` \
                 (Debian's package ships promtool); .ci/run installs it"
            )
        })
}

/// What `promtool` answered, for assertion messages.
#[derive(Debug)]
pub struct Answer {
    pub success: bool,
    pub code: Option<i32>,
    pub output: String,
}

impl From<Output> for Answer {
    fn from(output: Output) -> Self {
        Answer {
            success: output.status.success(),
            code: output.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

/// Runs `promtool args…`, with `stdin` as its input if given.
pub fn run(args: &[&str], stdin: Option<&str>) -> Answer {
    let mut child = Command::new(path())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing to promtool");
    }
    child.wait_with_output().expect("promtool finishes").into()
}

/// `promtool check metrics` on an exposition page.
pub fn check_metrics(page: &str) -> Answer {
    run(&["check", "metrics"], Some(page))
}
