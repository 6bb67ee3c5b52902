//! Errors as people read them on one line.

/// An error and its causes on one line (`error: cause: cause`).
pub(crate) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
