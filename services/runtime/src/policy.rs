//! The rate policy every service that needs one loads the same way: the file named by
//! `policy.file`, or the built-in example policy when that is empty.

use ratemesh_core::Policy;

use crate::settings::{Settings, SettingsError};

/// The policy named by `policy.file` (empty: the built-in example), with errors
/// naming the setting and the file, so a bad policy stops the process at start with a
/// message rather than crash-looping a pod.
pub fn load_policy(settings: &Settings) -> Result<Policy, SettingsError> {
    let path = settings.policy.file.trim();
    if path.is_empty() {
        return Ok(Policy::example());
    }
    let bad = |problem: String| SettingsError {
        key: "policy.file".to_owned(),
        problem,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {path}: {e}")))?;
    Policy::from_toml_str(&text).map_err(|e| bad(format!("{path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_is_the_example_and_a_bad_file_names_the_setting() {
        let mut settings = Settings::default();
        settings.policy.file = String::new();
        assert_eq!(
            load_policy(&settings).unwrap().program_id,
            Policy::example().program_id
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[program]\nmode = \"sideways\"\n").unwrap();
        settings.policy.file = path.to_string_lossy().into_owned();
        let err = load_policy(&settings).unwrap_err();
        assert_eq!(err.key, "policy.file");
        assert!(err.problem.contains("program.mode"), "{err}");
        settings.policy.file = "/nonexistent/policy.toml".into();
        assert!(
            load_policy(&settings)
                .unwrap_err()
                .problem
                .starts_with("cannot read")
        );
    }
}
