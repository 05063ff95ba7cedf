//! Bad values in error messages: quoted and cut short, so a 4 KB value never makes an
//! error too big for a client to receive.

/// Most characters of a rejected value repeated in an error.
pub const MAX_QUOTED_CHARS: usize = 32;

/// `value` for an error message: Rust-quoted, cut to [`MAX_QUOTED_CHARS`] characters with
/// its full length noted when longer.
pub fn quote(value: &str) -> String {
    let count = value.chars().count();
    if count <= MAX_QUOTED_CHARS {
        return format!("{value:?}");
    }
    let prefix: String = value.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{prefix:?}… ({count} characters)")
}
