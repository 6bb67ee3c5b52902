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

/// An error as stderr shows it: `error: {headline}`, each cause on its own numbered line, then
/// the hints.
pub(crate) fn render(
    headline: &str,
    mut cause: Option<&(dyn std::error::Error + 'static)>,
    hints: &[String],
) -> String {
    use std::fmt::Write;
    let mut s = format!("error: {headline}\n");
    let mut i = 0;
    while let Some(c) = cause {
        i += 1;
        if i == 1 {
            s.push_str("Caused by:\n");
        }
        let _ = writeln!(s, "  {i}: {c}");
        cause = c.source();
    }
    for h in hints {
        let _ = writeln!(s, "hint: {h}");
    }
    s
}
