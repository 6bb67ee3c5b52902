//! Budget policy: the period a budget covers, and the verdict on a period's costed lives.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::Serialize;

use super::compute::Costed;
use super::{money, money_sum};

/// The time a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    /// The UTC day so far.
    Day,
    /// The last seven days.
    Week,
    /// The UTC calendar month so far.
    Month,
    All,
}

impl Period {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::All => "all",
        }
    }

    /// When the period began (`None`: always).
    pub(crate) fn start(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Period::Day => Some(
                now.date_naive()
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight")
                    .and_utc(),
            ),
            Period::Week => Some(now - Duration::days(7)),
            Period::Month => Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single(),
            Period::All => None,
        }
    }
}

/// What a budget gate allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    pub(crate) limit_usd: f64,
    /// Warn past this percentage of the limit.
    pub(crate) warn_at_pct: f64,
    /// An unknown price makes the verdict `Unknown` (else it counts as $0).
    pub(crate) fail_on_unknown: bool,
}

/// The gate's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    /// Within budget ("ok").
    #[serde(rename = "ok")]
    Within,
    /// Within budget, past the warning percentage.
    Warn,
    /// Over budget.
    Deny,
    /// Cannot tell: a price is unknown, or the spend could not be listed.
    Unknown,
}

impl Verdict {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Verdict::Within => "ok",
            Verdict::Warn => "warn",
            Verdict::Deny => "deny",
            Verdict::Unknown => "unknown",
        }
    }
}

/// What the agents reported spending on the LLM in the period.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LlmSpend {
    /// The known costs, summed.
    pub(crate) usd: f64,
    /// Tasks with an attempt whose cost is unknown (it reported nothing, or a step without a
    /// cost).
    pub(crate) unknown_tasks: Vec<String>,
}

/// The verdict and the numbers it rests on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BudgetVerdict {
    pub(crate) status: Verdict,
    /// The expected bill (free tier applied) of the lives with a known price.
    pub(crate) expected_usd: f64,
    pub(crate) list_usd: f64,
    /// Of the limit; infinite when the limit is 0 and something was spent.
    pub(crate) percent: f64,
    /// Workers without a price.
    pub(crate) unknown_price_workers: Vec<String>,
    /// The LLM's part of `expected_usd` and `list_usd` (None: not counted).
    pub(crate) llm_usd: Option<f64>,
    /// Tasks whose LLM cost is unknown.
    pub(crate) unknown_llm_tasks: Vec<String>,
}

/// The gate over the workers' lives and, when counted, the LLM spend (at the same price on the
/// list and on the bill).
pub(crate) fn evaluate(
    costed: &[Costed],
    llm: Option<&LlmSpend>,
    policy: &Policy,
) -> BudgetVerdict {
    let unknown: Vec<String> = costed
        .iter()
        .filter(|c| c.expected_usd.is_none())
        .map(|c| c.life.worker.clone())
        .collect();
    let llm_usd = llm.map(|l| money(l.usd));
    let unknown_llm_tasks = llm.map(|l| l.unknown_tasks.clone()).unwrap_or_default();
    let spent = money_sum(costed.iter().filter_map(|c| c.expected_usd).chain(llm_usd));
    let list = money_sum(costed.iter().filter_map(|c| c.list_usd).chain(llm_usd));
    let pct = if policy.limit_usd > 0.0 {
        money(spent / policy.limit_usd * 100.0)
    } else if spent > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let any_unknown = !unknown.is_empty() || !unknown_llm_tasks.is_empty();
    let status = if any_unknown && policy.fail_on_unknown {
        Verdict::Unknown
    } else if spent > policy.limit_usd {
        Verdict::Deny
    } else if pct >= policy.warn_at_pct {
        Verdict::Warn
    } else {
        Verdict::Within
    };
    BudgetVerdict {
        status,
        expected_usd: spent,
        list_usd: list,
        percent: pct,
        unknown_price_workers: unknown,
        llm_usd,
        unknown_llm_tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::compute::Life;

    fn spent(worker: &str, usd: Option<f64>) -> Costed {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Costed {
            life: Life {
                worker: worker.into(),
                provider: "gcp".into(),
                started_at: t,
                ended_at: Some(t),
                termination_reason: None,
                price: None,
            },
            seconds: 60.0,
            billed_seconds: 60.0,
            list_usd: usd,
            expected_usd: usd,
            free_tier_usd: 0.0,
        }
    }

    #[test]
    fn within_warn_deny_and_unknown() {
        let policy = Policy {
            limit_usd: 1.0,
            warn_at_pct: 80.0,
            fail_on_unknown: true,
        };
        let status = |c: &[Costed], p: &Policy| evaluate(c, None, p).status;
        assert_eq!(status(&[spent("a", Some(0.5))], &policy), Verdict::Within);
        assert_eq!(status(&[spent("a", Some(0.8))], &policy), Verdict::Warn);
        assert_eq!(status(&[spent("a", Some(1.01))], &policy), Verdict::Deny);
        let unknown = [spent("a", Some(0.1)), spent("b", None)];
        let v = evaluate(&unknown, None, &policy);
        assert_eq!(v.status, Verdict::Unknown);
        assert_eq!(v.unknown_price_workers, ["b"]);
        let lenient = Policy {
            fail_on_unknown: false,
            ..policy
        };
        assert_eq!(status(&unknown, &lenient), Verdict::Within);
        let zero = Policy {
            limit_usd: 0.0,
            ..policy
        };
        assert!(
            evaluate(&[spent("a", Some(0.1))], None, &zero)
                .percent
                .is_infinite()
        );
        assert_eq!(
            status(&[], &zero),
            Verdict::Within,
            "nothing spent of nothing"
        );
        let llm = LlmSpend {
            usd: 0.6,
            unknown_tasks: vec![],
        };
        let v = evaluate(&[spent("a", Some(0.5))], Some(&llm), &policy);
        assert_eq!((v.status, v.llm_usd), (Verdict::Deny, Some(0.6)));
        assert!((v.expected_usd - 1.1).abs() < 1e-9);
        let unknown_llm = LlmSpend {
            usd: 0.0,
            unknown_tasks: vec!["t-1".into()],
        };
        let v = evaluate(&[spent("a", Some(0.5))], Some(&unknown_llm), &policy);
        assert_eq!(
            v.status,
            Verdict::Unknown,
            "an unknown LLM cost is never $0"
        );
        assert_eq!(
            evaluate(&[spent("a", Some(0.5))], Some(&unknown_llm), &lenient).status,
            Verdict::Within
        );
    }

    #[test]
    fn periods_start_at_utc_boundaries() {
        let now = Utc.with_ymd_and_hms(2026, 3, 15, 13, 30, 0).unwrap();
        let at = |p: Period| p.start(now).map(|t| t.to_rfc3339());
        assert_eq!(at(Period::Day).unwrap(), "2026-03-15T00:00:00+00:00");
        assert_eq!(at(Period::Week).unwrap(), "2026-03-08T13:30:00+00:00");
        assert_eq!(at(Period::Month).unwrap(), "2026-03-01T00:00:00+00:00");
        assert_eq!(at(Period::All), None);
    }
}
