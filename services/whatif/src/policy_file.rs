//! Policy files for a what-if run, read and validated by [`Policy::from_toml_str`] — the
//! same check the services apply to `policy.file` at start-up — with the file named.

use std::path::{Path, PathBuf};

use ratemesh_core::{Policy, PolicyError};

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse or validate; the error names the key and the problem
    /// (`categories.apparel.cap: must be between 0 and 1, got 1.5`).
    #[error("policy file {}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key and what is wrong with it.
        source: PolicyError,
    },
}

impl PolicyFileError {
    /// The dotted key at fault, when the problem is with one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            PolicyFileError::Invalid {
                source: PolicyError::Invalid { key, .. },
                ..
            } => Some(key),
            PolicyFileError::Invalid {
                source: PolicyError::Parse(message),
                ..
            } => message
                .split_once(": ")
                .map(|(key, _)| key)
                .filter(|key| *key != "policy file"),
            PolicyFileError::Read { .. } => None,
        }
    }
}

/// Reads and validates the policy TOML at `path`.
pub fn load_policy(path: &Path) -> Result<Policy, PolicyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Policy::from_toml_str(&text).map_err(|source| PolicyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}
