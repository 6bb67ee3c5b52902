//! Names and hashes that must stay stable across versions: they appear in labels, paths and
//! state dirs.

/// A project name made safe for labels and paths: lowercase ASCII letters, digits and `-`, at
/// most 20 characters, never empty.
pub(crate) fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s = s.trim_matches('-').to_string();
    s.truncate(20);
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "project".into() } else { s }
}

/// FNV-1a: a stable hash of the project path for its default state dir.
pub(crate) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
