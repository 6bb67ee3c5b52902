//! stdout carries data (tables, JSON); stderr carries progress and logs. One printer decides.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Every spinner of the process, one line each (a fleet brings several workers up at once), with
/// status lines printed above them instead of through them.
fn spinners() -> &'static MultiProgress {
    static MULTI: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// A line on stderr that does not tear through the spinners drawn there.
fn stderr_line(progress: bool, msg: &str) {
    if progress {
        spinners().suspend(|| eprintln!("{msg}"));
    } else {
        eprintln!("{msg}");
    }
}

/// Version of every JSON document cwo prints.
pub(crate) const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    quiet: bool,
    progress: bool,
}

impl Printer {
    pub fn new(quiet: bool, verbose: bool, no_progress: bool) -> Printer {
        let progress = !quiet
            && !verbose
            && !no_progress
            && std::env::var_os("CWO_NO_PROGRESS").is_none()
            && std::io::stderr().is_terminal();
        Printer { quiet, progress }
    }

    /// A status line on stderr.
    pub(crate) fn status(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            stderr_line(self.progress, msg.as_ref());
        }
    }

    /// A warning on stderr, shown even with `-q`.
    pub(crate) fn warn(&self, msg: impl AsRef<str>) {
        stderr_line(self.progress, &format!("warning: {}", msg.as_ref()));
    }

    /// Data on stdout.
    pub(crate) fn out(&self, text: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_ref().as_bytes());
        if !text.as_ref().ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }

    /// A JSON document on stdout, with `schema_version` first (a typed report carries its own;
    /// any other object gets this cwo's). The one JSON path of every command.
    pub(crate) fn json(&self, doc: impl serde::Serialize) {
        let mut value = serde_json::to_value(&doc).expect("a report serializes to JSON");
        if let serde_json::Value::Object(map) = &mut value
            && !map.contains_key("schema_version")
        {
            let mut with_version = serde_json::Map::new();
            with_version.insert("schema_version".into(), SCHEMA_VERSION.into());
            with_version.extend(std::mem::take(map));
            *map = with_version;
        }
        self.out(serde_json::to_string_pretty(&value).expect("JSON serializes"));
    }

    /// A spinner on stderr for one phase (nothing when stderr is not a terminal); phases that
    /// overlap (workers coming up together) each keep a line of their own.
    pub(crate) fn phase(&self, msg: impl Into<String>) -> Phase {
        let msg = msg.into();
        let bar = if self.progress {
            let bar = spinners().add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            );
            bar.set_message(msg.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            self.status(format!("{msg}..."));
            None
        };
        Phase {
            bar,
            printer: *self,
            started: std::time::Instant::now(),
        }
    }

    /// An agent output line, prefixed with its task.
    pub(crate) fn task_line(&self, task: &str, line: &str) {
        if !self.quiet {
            stderr_line(self.progress, &format!("[{task}] {line}"));
        }
    }
}

pub(crate) struct Phase {
    bar: Option<ProgressBar>,
    printer: Printer,
    started: std::time::Instant,
}

impl Phase {
    /// Ends the phase with a final line; returns how long it took.
    pub(crate) fn finish(self, msg: impl AsRef<str>) -> Duration {
        let took = self.started.elapsed();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            spinners().remove(bar);
        }
        self.printer
            .status(format!("{} ({})", msg.as_ref(), fmt_secs(took)));
        took
    }
}

pub(crate) fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else if s < 120.0 {
        format!("{s:.0}s")
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}
