//! Cost reports over plain rows: one row per worker life, per task (each life's cost shared
//! among the attempts it ran, the rest is "(idle)"), or per UTC day; and the totals.
//!
//! Row fields are in alphabetical order: that is the column order of `cwo cost --format csv`
//! and the key order of its JSON, as they were before the rows were typed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::compute::{self, Costed};
use super::money_sum;

/// One worker life.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct WorkerCost {
    pub(crate) billed_seconds: f64,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) expected_usd: Option<f64>,
    pub(crate) list_usd: Option<f64>,
    pub(crate) machine_type: Option<String>,
    pub(crate) provider: String,
    pub(crate) started_at: DateTime<Utc>,
    /// "running" while the worker lives.
    pub(crate) termination_reason: String,
    pub(crate) worker: String,
    pub(crate) zone: Option<String>,
}

/// One task's share of the lives it ran on (or "(idle)": the time no attempt ran).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct TaskCost {
    pub(crate) expected_usd: Option<f64>,
    pub(crate) list_usd: Option<f64>,
    /// Attempt time, to a tenth of a second.
    pub(crate) seconds: f64,
    pub(crate) task: String,
}

/// One UTC day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct DayCost {
    pub(crate) day: String,
    pub(crate) expected_usd: Option<f64>,
    pub(crate) list_usd: Option<f64>,
}

/// One attempt of a task on a worker (from the journal).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptSpan {
    pub(crate) task: String,
    pub(crate) worker: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
}

pub(crate) fn by_worker(costed: &[Costed]) -> Vec<WorkerCost> {
    costed
        .iter()
        .map(|c| {
            let p = c.life.price.as_ref();
            WorkerCost {
                billed_seconds: c.billed_seconds,
                ended_at: c.life.ended_at,
                expected_usd: c.expected_usd,
                list_usd: c.list_usd,
                machine_type: p.map(|p| p.machine_type.clone()),
                provider: c.life.provider.clone(),
                started_at: c.life.started_at,
                termination_reason: c
                    .life
                    .termination_reason
                    .clone()
                    .unwrap_or_else(|| "running".into()),
                worker: c.life.worker.clone(),
                zone: p.map(|p| p.zone.clone()),
            }
        })
        .collect()
}

/// Each life's cost split into UTC days, summed per day (unknown when any part is unknown).
pub(crate) fn by_day(costed: &[Costed], now: DateTime<Utc>) -> Vec<DayCost> {
    let mut days: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    for c in costed {
        for (day, list, expected) in compute::by_day(c, now) {
            let e = days.entry(day).or_insert((Some(0.0), Some(0.0)));
            e.0 = e.0.zip(list).map(|(a, b)| a + b);
            e.1 = e.1.zip(expected).map(|(a, b)| a + b);
        }
    }
    days.into_iter()
        .map(|(day, (list_usd, expected_usd))| DayCost {
            day,
            expected_usd,
            list_usd,
        })
        .collect()
}

/// Each life's cost shared among the attempts it ran, by time (never more than the whole life);
/// what no attempt used is "(idle)".
pub(crate) fn by_task(
    costed: &[Costed],
    attempts: &[AttemptSpan],
    now: DateTime<Utc>,
) -> Vec<TaskCost> {
    let mut tasks: BTreeMap<String, (Option<f64>, Option<f64>, f64)> = BTreeMap::new();
    for c in costed {
        let end = c.life.ended_at.unwrap_or(now);
        let life_secs = c.seconds.max(1.0);
        let mut used = 0.0;
        for a in attempts.iter().filter(|a| a.worker == c.life.worker) {
            let a_end = a.ended_at.unwrap_or(now).min(end);
            let secs = (a_end - a.started_at.max(c.life.started_at))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0;
            let share = (secs / life_secs).min(1.0 - used);
            used += share;
            let e = tasks
                .entry(a.task.clone())
                .or_insert((Some(0.0), Some(0.0), 0.0));
            e.0 = e.0.zip(c.list_usd).map(|(x, v)| x + v * share);
            e.1 = e.1.zip(c.expected_usd).map(|(x, v)| x + v * share);
            e.2 += secs;
        }
        let idle = tasks
            .entry("(idle)".into())
            .or_insert((Some(0.0), Some(0.0), 0.0));
        idle.0 = idle.0.zip(c.list_usd).map(|(x, v)| x + v * (1.0 - used));
        idle.1 = idle
            .1
            .zip(c.expected_usd)
            .map(|(x, v)| x + v * (1.0 - used));
        idle.2 += life_secs * (1.0 - used);
    }
    tasks
        .into_iter()
        .map(|(task, (list_usd, expected_usd, secs))| TaskCost {
            expected_usd,
            list_usd,
            seconds: (secs * 10.0).round() / 10.0,
            task,
        })
        .collect()
}

/// Sum of the known values, and whether any was unknown.
pub(crate) fn total(values: impl Iterator<Item = Option<f64>>) -> (f64, bool) {
    let mut unknown = false;
    let sum = money_sum(values.filter_map(|v| {
        unknown |= v.is_none();
        v
    }));
    (sum, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::compute::Life;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn costed(worker: &str, start: &str, end: &str, usd: Option<f64>) -> Costed {
        let life = Life {
            worker: worker.into(),
            provider: "local".into(),
            started_at: at(start),
            ended_at: Some(at(end)),
            termination_reason: Some("idle".into()),
            price: None,
        };
        let seconds = (at(end) - at(start)).num_seconds() as f64;
        Costed {
            life,
            seconds,
            billed_seconds: seconds,
            list_usd: usd,
            expected_usd: usd,
            free_tier_usd: 0.0,
        }
    }

    #[test]
    fn a_life_is_shared_among_its_attempts_and_the_rest_is_idle() {
        let c = [costed(
            "w",
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            Some(1.0),
        )];
        let attempts = [
            AttemptSpan {
                task: "a".into(),
                worker: "w".into(),
                started_at: at("2026-01-01T00:00:00Z"),
                ended_at: Some(at("2026-01-01T00:15:00Z")),
            },
            // Past the life's end: counted to the end only.
            AttemptSpan {
                task: "b".into(),
                worker: "w".into(),
                started_at: at("2026-01-01T00:30:00Z"),
                ended_at: Some(at("2026-01-01T02:00:00Z")),
            },
        ];
        let rows = by_task(&c, &attempts, at("2026-01-02T00:00:00Z"));
        let usd: Vec<(&str, f64)> = rows
            .iter()
            .map(|r| (r.task.as_str(), r.list_usd.unwrap()))
            .collect();
        assert_eq!(usd, [("(idle)", 0.25), ("a", 0.25), ("b", 0.5)]);
        let sum: f64 = rows.iter().map(|r| r.list_usd.unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-12, "nothing is counted twice");
    }

    #[test]
    fn a_life_over_midnight_splits_into_days_and_unknown_stays_unknown() {
        let c = [
            costed(
                "w",
                "2026-01-01T23:00:00Z",
                "2026-01-02T01:00:00Z",
                Some(2.0),
            ),
            costed("u", "2026-01-02T10:00:00Z", "2026-01-02T11:00:00Z", None),
        ];
        let days = by_day(&c, at("2026-01-03T00:00:00Z"));
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].day, "2026-01-01");
        assert_eq!(days[0].list_usd, Some(1.0));
        assert_eq!(
            days[1].list_usd, None,
            "an unknown part makes the day unknown"
        );
        assert_eq!(total([Some(1.0), None].into_iter()), (1.0, true));
    }
}
