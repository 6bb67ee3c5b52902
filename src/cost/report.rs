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
use crate::model::Usage;

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

/// One task's share of the lives it ran on (or "(idle)": the time no attempt ran), beside what
/// its agent reported spending on the LLM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct TaskCost {
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    /// The worker share at the expected bill (free tier applied).
    pub(crate) expected_usd: Option<f64>,
    pub(crate) input_tokens: u64,
    /// The worker share at list price.
    pub(crate) list_usd: Option<f64>,
    /// What the agent reported for the LLM; None (unknown) when an attempt reported nothing or a
    /// step came without a cost, never $0.
    pub(crate) llm_usd: Option<f64>,
    pub(crate) output_tokens: u64,
    /// The task's pull request, when one was opened (its follow-ups are the task's attempts).
    pub(crate) pull_request: Option<u64>,
    pub(crate) reasoning_tokens: u64,
    /// Attempt time, to a tenth of a second.
    pub(crate) seconds: f64,
    pub(crate) task: String,
    /// expected_usd + llm_usd (None when either is unknown).
    pub(crate) total_usd: Option<f64>,
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
    /// What its agent reported using (None: nothing).
    pub(crate) usage: Option<Usage>,
    /// Its LLM cost (`AttemptRow::llm_cost`): None when unknown; $0 when no agent ran in it.
    pub(crate) llm_usd: Option<f64>,
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
/// what no attempt used is "(idle)". Each task's attempts' LLM usage is summed beside it, and
/// `pull_requests` names the task's pull request.
pub(crate) fn by_task(
    costed: &[Costed],
    attempts: &[AttemptSpan],
    pull_requests: &BTreeMap<String, u64>,
    now: DateTime<Utc>,
) -> Vec<TaskCost> {
    struct Acc {
        list: Option<f64>,
        expected: Option<f64>,
        secs: f64,
        usage: Usage,
        llm: f64,
        /// An attempt's LLM cost is unknown.
        llm_unknown: bool,
    }
    let fresh = || Acc {
        list: Some(0.0),
        expected: Some(0.0),
        secs: 0.0,
        usage: Usage::default(),
        llm: 0.0,
        llm_unknown: false,
    };
    let mut tasks: BTreeMap<String, Acc> = BTreeMap::new();
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
            let e = tasks.entry(a.task.clone()).or_insert_with(fresh);
            e.list = e.list.zip(c.list_usd).map(|(x, v)| x + v * share);
            e.expected = e.expected.zip(c.expected_usd).map(|(x, v)| x + v * share);
            e.secs += secs;
            if let Some(u) = a.usage {
                e.usage += u;
            }
            e.llm += a.llm_usd.unwrap_or(0.0);
            e.llm_unknown |= a.llm_usd.is_none();
        }
        let idle = tasks.entry("(idle)".into()).or_insert_with(fresh);
        idle.list = idle.list.zip(c.list_usd).map(|(x, v)| x + v * (1.0 - used));
        idle.expected = idle
            .expected
            .zip(c.expected_usd)
            .map(|(x, v)| x + v * (1.0 - used));
        idle.secs += life_secs * (1.0 - used);
    }
    tasks
        .into_iter()
        .map(|(task, a)| {
            // The idle time ran no agent: no LLM cost, known to be none.
            let llm_usd = (!a.llm_unknown).then(|| crate::cost::money(a.llm));
            TaskCost {
                cache_read_tokens: a.usage.cache_read_tokens,
                cache_write_tokens: a.usage.cache_write_tokens,
                expected_usd: a.expected,
                input_tokens: a.usage.input_tokens,
                list_usd: a.list,
                llm_usd,
                output_tokens: a.usage.output_tokens,
                pull_request: pull_requests.get(&task).copied(),
                reasoning_tokens: a.usage.reasoning_tokens,
                seconds: (a.secs * 10.0).round() / 10.0,
                total_usd: a.expected.zip(llm_usd).map(|(w, l)| w + l),
                task,
            }
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
                usage: Some(Usage::from_log(
                    "{\"cwo_usage\":{\"input_tokens\":100,\"output_tokens\":10,\"cost_usd\":0.5}}",
                )),
                llm_usd: Some(0.5),
            },
            // A setup that failed: no agent, no LLM cost.
            AttemptSpan {
                task: "a".into(),
                worker: "w".into(),
                started_at: at("2026-01-01T00:15:00Z"),
                ended_at: Some(at("2026-01-01T00:15:00Z")),
                usage: None,
                llm_usd: Some(0.0),
            },
            // Past the life's end: counted to the end only.
            AttemptSpan {
                task: "b".into(),
                worker: "w".into(),
                started_at: at("2026-01-01T00:30:00Z"),
                ended_at: Some(at("2026-01-01T02:00:00Z")),
                usage: None,
                llm_usd: None,
            },
        ];
        let prs = BTreeMap::from([("a".to_string(), 7)]);
        let rows = by_task(&c, &attempts, &prs, at("2026-01-02T00:00:00Z"));
        let usd: Vec<(&str, f64)> = rows
            .iter()
            .map(|r| (r.task.as_str(), r.list_usd.unwrap()))
            .collect();
        assert_eq!(usd, [("(idle)", 0.25), ("a", 0.25), ("b", 0.5)]);
        let sum: f64 = rows.iter().map(|r| r.list_usd.unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-12, "nothing is counted twice");
        let llm: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {:?} {} {:?} {:?}",
                    r.task, r.llm_usd, r.input_tokens, r.total_usd, r.pull_request
                )
            })
            .collect();
        assert_eq!(
            llm,
            [
                "(idle) Some(0.0) 0 Some(0.25) None",
                "a Some(0.5) 100 Some(0.75) Some(7)",
                "b None 0 None None",
            ],
            "a task whose agent reported nothing has an unknown LLM cost, never $0"
        );
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
