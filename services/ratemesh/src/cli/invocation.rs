//! How to run this binary again from the user's shell, so the commands ratemesh prints for
//! people to try next (the `up --demo` banner, the "next delta" and "resume with" hints)
//! work exactly as printed: `ratemesh` is rarely on PATH for someone who started with
//! `cargo run -p ratemesh -- up`.

use std::path::{Path, PathBuf};

use super::client::ClientArgs;

/// The words that start this binary again: `cargo run -p ratemesh --` under `cargo run`,
/// `ratemesh` when that name on PATH is this binary, otherwise the binary's own path.
pub(crate) fn prefix() -> String {
    // `cargo run` hands the binary its package's environment, as it does to rustc.
    let under_cargo = std::env::var_os("CARGO").is_some()
        && std::env::var("CARGO_PKG_NAME").as_deref() == Ok(env!("CARGO_PKG_NAME"));
    let exe = std::env::current_exe().ok();
    let on_path = exe.as_deref().is_some_and(|exe| {
        find_on_path("ratemesh", std::env::var_os("PATH").as_deref())
            .is_some_and(|found| same_file(&found, exe))
    });
    prefix_for(under_cargo, exe.as_deref(), on_path)
}

/// [`prefix`] from what it observed.
pub(crate) fn prefix_for(under_cargo: bool, exe: Option<&Path>, on_path: bool) -> String {
    match (under_cargo, on_path, exe) {
        (true, _, _) => "cargo run -p ratemesh --".to_owned(),
        (false, true, _) | (false, false, None) => "ratemesh".to_owned(),
        (false, false, Some(exe)) => shell_word(&exe.to_string_lossy()),
    }
}

/// The `--addr` and `--key` a printed command needs to reach the same server as this one,
/// each left out when the default or the environment already supplies it, and the TLS
/// flags given. Starts with a space when not empty.
pub(crate) fn connection_flags(client: &ClientArgs) -> String {
    let env = |name: &str| std::env::var(name).ok();
    connection_flags_with(client, env("RATEMESH_ADDR"), env("RATEMESH_API_KEY"))
}

/// [`connection_flags`] with the environment given.
pub(crate) fn connection_flags_with(
    client: &ClientArgs,
    env_addr: Option<String>,
    env_key: Option<String>,
) -> String {
    let mut flags = String::new();
    let addr_from_env = env_addr.as_deref() == Some(client.addr.as_str());
    if client.addr != super::client::DEFAULT_ADDR && !addr_from_env {
        flags.push_str(" --addr ");
        flags.push_str(&shell_word(&client.addr));
    }
    if let Some(key) = &client.key
        && env_key.as_deref() != Some(key.as_str())
    {
        flags.push_str(" --key ");
        flags.push_str(&shell_word(key));
    }
    let tls = &client.tls;
    for (flag, path) in [
        ("--ca-file", &tls.ca_file),
        ("--client-cert", &tls.client_cert),
        ("--client-key", &tls.client_key),
    ] {
        if let Some(path) = path {
            flags.push_str(&format!(" {flag} {}", shell_word(&path.to_string_lossy())));
        }
    }
    if client.insecure {
        flags.push_str(" --insecure");
    }
    flags
}

/// `word` as one shell word: unchanged when it is plain, single-quoted otherwise.
pub(crate) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn find_on_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_what_the_user_can_run() {
        let exe = Path::new("/work/target/debug/ratemesh");
        assert_eq!(
            prefix_for(true, Some(exe), false),
            "cargo run -p ratemesh --"
        );
        assert_eq!(prefix_for(false, Some(exe), true), "ratemesh");
        assert_eq!(
            prefix_for(false, Some(exe), false),
            "/work/target/debug/ratemesh"
        );
        assert_eq!(
            prefix_for(false, Some(Path::new("/opt/my tools/ratemesh")), false),
            "'/opt/my tools/ratemesh'"
        );
    }

    #[test]
    fn printed_commands_carry_the_connection_the_environment_does_not() {
        let args = |addr: &str, key: Option<&str>| ClientArgs {
            addr: addr.to_owned(),
            key: key.map(str::to_owned),
            json: false,
            tls: Default::default(),
            insecure: false,
        };
        let remote = args("http://10.0.0.5:50051", Some("rm_network_abc"));
        assert_eq!(
            connection_flags_with(&remote, None, None),
            " --addr http://10.0.0.5:50051 --key rm_network_abc"
        );
        assert_eq!(
            connection_flags_with(
                &remote,
                Some("http://10.0.0.5:50051".into()),
                Some("rm_network_abc".into())
            ),
            "",
            "the next command inherits the same environment"
        );
        assert_eq!(
            connection_flags_with(&args(super::super::client::DEFAULT_ADDR, None), None, None),
            ""
        );
        let mut private_ca = args("https://rates.internal:443", Some("rm_network_abc"));
        private_ca.tls.ca_file = Some("/etc/ratemesh/ca.pem".into());
        assert_eq!(
            connection_flags_with(&private_ca, None, None),
            " --addr https://rates.internal:443 --key rm_network_abc --ca-file /etc/ratemesh/ca.pem"
        );
    }

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        assert_eq!(shell_word("rm_network_abc123"), "rm_network_abc123");
        assert_eq!(
            shell_word("http://127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
