//! `[workers]`: how many workers a run may have, how many tasks each takes at once, whether a
//! task gets a worker of its own, and what the fleet may cost per hour.

use std::num::NonZeroUsize;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersSettings {
    /// Upper bound on live workers: the fleet scales 0..max by the ready tasks.
    pub max: NonZeroUsize,
    /// Tasks run at once on one worker (replaces the top-level `concurrency`, still read as a
    /// deprecated alias).
    pub tasks_per_worker: NonZeroUsize,
    /// Every task gets a brand-new worker, deleted after it (tasks_per_worker must be 1).
    pub fresh_per_task: bool,
    /// Optional ceiling on the fleet's summed list price per hour, in USD ("" = none).
    pub max_hourly_usd: HourlyCeiling,
}

impl Default for WorkersSettings {
    fn default() -> Self {
        WorkersSettings {
            max: NonZeroUsize::MIN,
            tasks_per_worker: NonZeroUsize::MIN,
            fresh_per_task: false,
            max_hourly_usd: HourlyCeiling(None),
        }
    }
}

/// `max_hourly_usd`: `""` (none), or a price in USD per hour written as a number (`0.05`) or a
/// string (`"0.05"`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HourlyCeiling(pub Option<f64>);

impl Serialize for HourlyCeiling {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => s.serialize_f64(v),
            None => s.serialize_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for HourlyCeiling {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Int(i64),
            Text(String),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "max_hourly_usd: {what}: expected a price in USD per hour such as 0.5 or \"0.5\", or \"\" for no ceiling"
            ))
        };
        let value = match Raw::deserialize(d)? {
            Raw::Number(v) => v,
            Raw::Int(v) => v as f64,
            Raw::Text(t) if t.trim().is_empty() => return Ok(HourlyCeiling(None)),
            Raw::Text(t) => t
                .trim()
                .trim_start_matches('$')
                .parse::<f64>()
                .map_err(|_| bad(format!("{t:?} is not a number")))?,
        };
        if !value.is_finite() || value <= 0.0 {
            return Err(bad(format!("{value} is not a positive price")));
        }
        Ok(HourlyCeiling(Some(value)))
    }
}
