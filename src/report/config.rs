//! `cwo config show`: every resolved setting and where it came from.

use std::path::PathBuf;

use serde::Serialize;

use super::{Report, SCHEMA_VERSION};
use crate::config::Source;
use crate::project::Project;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setting {
    pub(crate) key: String,
    pub(crate) value: toml::Value,
    pub(crate) source: Source,
    /// `source` as text: `default`, `path:line`, `env VAR` or `flag --config KEY=VALUE`.
    pub(crate) origin: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConfigReport {
    pub(crate) schema_version: u32,
    pub(crate) project: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) settings: Vec<Setting>,
}

pub(crate) fn collect(project: &Project) -> ConfigReport {
    ConfigReport {
        schema_version: SCHEMA_VERSION,
        project: project.root.clone(),
        state_dir: project.state_dir.clone(),
        settings: project
            .resolved
            .entries()
            .into_iter()
            .map(|(key, value, source)| Setting {
                key,
                value,
                origin: source.to_string(),
                source,
            })
            .collect(),
    }
}

impl Report for ConfigReport {
    /// TOML-like: `key = value    # origin`, one setting a line.
    fn text(&self) -> String {
        let mut out = format!(
            "# project: {}\n# state_dir: {}\n",
            self.project.display(),
            self.state_dir.display()
        );
        for s in &self.settings {
            out.push_str(&format!("{} = {}    # {}\n", s.key, s.value, s.origin));
        }
        out
    }
}
