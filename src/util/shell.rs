//! Words for a POSIX shell: quoting, and the names it takes as variables.

/// Quotes one word for a POSIX shell. SSH carries a command line, not an argv (RFC 4254 §6.5),
/// so every word is quoted here; single quotes make every byte literal, and a `'` inside becomes
/// `'\''`. Small enough to keep in view rather than depend on a crate.
pub(crate) fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A name the shell accepts as a variable.
pub(crate) fn is_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}
