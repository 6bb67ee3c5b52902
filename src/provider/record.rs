//! The records the file-backed providers (local, ssh, terraform) keep of their workers, one JSON
//! file per worker, where a cloud provider asks its API: what was created by which request, and
//! the worker as it was handed out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Instance, ProviderError};

/// One worker's record.
#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) instance: Instance,
    pub(crate) request_id: String,
}

/// Where a worker's record lives under the store's directory.
#[derive(Clone, Copy)]
pub(crate) enum Layout {
    /// `<dir>/<worker>/<file>`: the worker has a directory of its own.
    InWorkerDir(&'static str),
    /// `<dir>/<worker>.json`.
    Flat,
}

/// A directory of worker records, written atomically (temp file, then rename).
pub(crate) struct RecordStore {
    dir: PathBuf,
    layout: Layout,
    /// How messages name a worker of this provider ("local worker", "ssh worker", …).
    noun: &'static str,
}

fn io(path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

impl RecordStore {
    pub(crate) fn new(dir: impl Into<PathBuf>, layout: Layout, noun: &'static str) -> RecordStore {
        RecordStore {
            dir: dir.into(),
            layout,
            noun,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record file of worker `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        match self.layout {
            Layout::InWorkerDir(file) => self.dir.join(name).join(file),
            Layout::Flat => self.dir.join(format!("{name}.json")),
        }
    }

    /// The record of `name`; `None` when there is none.
    pub(crate) fn read(&self, name: &str) -> Result<Option<Record>, ProviderError> {
        read_file(&self.path(name))
    }

    /// Every record, sorted by worker name. A missing directory holds none.
    pub(crate) fn all(&self) -> Result<Vec<Record>, ProviderError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io(&self.dir, e))?.path();
            let file = match self.layout {
                Layout::InWorkerDir(file) => path.join(file),
                Layout::Flat if path.extension().is_some_and(|x| x == "json") => path,
                Layout::Flat => continue,
            };
            if let Some(r) = read_file(&file)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.instance.name.cmp(&b.instance.name));
        Ok(out)
    }

    /// The worker `name` as recorded; `None` = gone.
    pub(crate) fn get(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.read(name)?.map(|r| r.instance))
    }

    /// The recorded workers that carry every label in `selector`.
    pub(crate) fn list(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Instance>, ProviderError> {
        Ok(self
            .all()?
            .into_iter()
            .map(|r| r.instance)
            .filter(|i| selector.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            .collect())
    }

    /// What `create` answers for a name already recorded: the same request again is the same
    /// worker; another request may not take its name. `None`: the name is free.
    pub(crate) fn existing(
        &self,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Instance>, ProviderError> {
        match self.read(name)? {
            None => Ok(None),
            Some(r) if r.request_id == request_id => Ok(Some(r.instance)),
            Some(r) => Err(ProviderError::InvalidSpec(format!(
                "a {} named {name} already exists (created by request {})",
                self.noun, r.request_id
            ))),
        }
    }

    /// Records `instance` as created by `request_id`.
    pub(crate) fn write(&self, instance: &Instance, request_id: &str) -> Result<(), ProviderError> {
        self.put(&Record {
            instance: instance.clone(),
            request_id: request_id.to_string(),
        })
    }

    fn put(&self, record: &Record) -> Result<(), ProviderError> {
        let path = self.path(&record.instance.name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| io(&path, e))
    }

    /// The worker once it runs: a recorded worker runs as soon as it is recorded.
    pub(crate) fn wait_running(&self, name: &str) -> Result<Instance, ProviderError> {
        self.get(name)?
            .ok_or_else(|| ProviderError::NotFound(format!("{} {name}", self.noun)))
    }

    /// Replaces the recorded labels of `name`.
    pub(crate) fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let mut record = self
            .read(name)?
            .ok_or_else(|| ProviderError::NotFound(format!("{} {name}", self.noun)))?;
        record.instance.labels = labels.clone();
        self.put(&record)
    }

    /// Gone when no record is left.
    pub(crate) fn confirm_deleted(&self, name: &str) -> Result<(), ProviderError> {
        match self.read(name)? {
            None => Ok(()),
            Some(_) => Err(ProviderError::Transient(format!(
                "{} {name} still exists",
                self.noun
            ))),
        }
    }

    /// Removes the record of `name` (the worker is released).
    pub(crate) fn remove(&self, name: &str) -> Result<(), ProviderError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }
}

fn read_file(path: &Path) -> Result<Option<Record>, ProviderError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Corrupt {
                path: path.display().to_string(),
                source: e,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{InstanceStatus, Target};

    fn worker(name: &str, project: &str) -> Instance {
        Instance {
            name: name.into(),
            status: InstanceStatus::Running,
            created_at: chrono::Utc::now(),
            labels: BTreeMap::from([("cwo-project".to_string(), project.to_string())]),
            target: Target::Local {
                root: format!("/w/{name}"),
            },
            workspace: format!("/w/{name}/workspace"),
            zone: None,
        }
    }

    #[test]
    fn both_layouts_keep_the_same_contract() {
        let tmp = tempfile::tempdir().unwrap();
        for (sub, layout) in [
            ("dirs", Layout::InWorkerDir("instance.json")),
            ("flat", Layout::Flat),
        ] {
            let s = RecordStore::new(tmp.path().join(sub), layout, "test worker");
            assert!(
                s.all().unwrap().is_empty(),
                "a missing directory holds none"
            );
            assert!(s.existing("b", "r1").unwrap().is_none());
            s.write(&worker("b", "p"), "r1").unwrap();
            s.write(&worker("a", "q"), "r2").unwrap();
            assert_eq!(s.existing("b", "r1").unwrap().unwrap().name, "b");
            assert!(matches!(
                s.existing("b", "r3"),
                Err(ProviderError::InvalidSpec(_))
            ));
            let names: Vec<String> = s
                .all()
                .unwrap()
                .into_iter()
                .map(|r| r.instance.name)
                .collect();
            assert_eq!(names, ["a", "b"], "sorted by name");
            let sel = BTreeMap::from([("cwo-project".to_string(), "p".to_string())]);
            assert_eq!(s.list(&sel).unwrap().len(), 1);
            let mut labels = sel.clone();
            labels.insert("cwo-reap-marked".into(), "1".into());
            s.set_labels("b", &labels).unwrap();
            assert_eq!(s.get("b").unwrap().unwrap().labels, labels);
            assert!(matches!(
                s.set_labels("zz", &labels),
                Err(ProviderError::NotFound(_))
            ));
            assert!(matches!(
                s.wait_running("zz"),
                Err(ProviderError::NotFound(_))
            ));
            assert!(s.confirm_deleted("b").is_err());
            s.remove("b").unwrap();
            s.confirm_deleted("b").unwrap();
            assert!(s.get("b").unwrap().is_none());
        }
    }

    #[test]
    fn an_unreadable_record_is_an_error_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let s = RecordStore::new(tmp.path(), Layout::Flat, "test worker");
        std::fs::write(s.path("a"), "{not json").unwrap();
        let e = s.get("a").unwrap_err();
        assert!(matches!(e, ProviderError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("a.json"), "{e}");
    }
}
