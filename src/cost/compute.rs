//! What each worker life cost: list price × billed time (1-minute minimum, then per second),
//! from the provider's creation time to the confirmed deletion (or now, for a live one), priced
//! with the snapshot taken at launch; and what is expected to be billed once the free tier is
//! applied. An unknown price stays unknown (`None`), never $0.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::PriceSnapshot;

/// Regions whose standard e2-micro hours and pd-standard GB-months are in the free tier.
pub(crate) const FREE_TIER_REGIONS: [&str; 3] = ["us-west1", "us-central1", "us-east1"];
/// Free pd-standard per month.
pub(crate) const FREE_DISK_GB_MONTHS: f64 = 30.0;

/// One worker's life, finished or running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Life {
    pub(crate) worker: String,
    pub(crate) provider: String,
    pub(crate) started_at: DateTime<Utc>,
    /// `None` while the worker still runs (its cost accrues to now).
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) termination_reason: Option<String>,
    pub(crate) price: Option<PriceSnapshot>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Costed {
    #[serde(flatten)]
    pub(crate) life: Life,
    pub(crate) seconds: f64,
    pub(crate) billed_seconds: f64,
    /// List price of the billed time; `None` = unknown.
    pub(crate) list_usd: Option<f64>,
    /// After the free tier; `None` = unknown.
    pub(crate) expected_usd: Option<f64>,
    pub(crate) free_tier_usd: f64,
}

/// The billed duration: at least one minute, then whole seconds.
pub(crate) fn billed_seconds(seconds: f64) -> f64 {
    seconds.ceil().max(60.0)
}

fn hours_in_month(t: DateTime<Utc>) -> f64 {
    let first = Utc
        .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .unwrap();
    let next = if t.month() == 12 {
        Utc.with_ymd_and_hms(t.year() + 1, 1, 1, 0, 0, 0).unwrap()
    } else {
        Utc.with_ymd_and_hms(t.year(), t.month() + 1, 1, 0, 0, 0)
            .unwrap()
    };
    (next - first).num_hours() as f64
}

fn free_tier_eligible(p: &PriceSnapshot) -> bool {
    p.machine_type == "e2-micro"
        && !p.spot
        && FREE_TIER_REGIONS.contains(&super::region_of(&p.zone))
}

/// Costs every life, applying the free tier month by month (by each life's start month) in
/// start order; returns the costed lives and warnings about what makes the free tier not apply.
pub(crate) fn cost(lives: &[Life], now: DateTime<Utc>) -> (Vec<Costed>, Vec<String>) {
    let mut order: Vec<usize> = (0..lives.len()).collect();
    order.sort_by_key(|i| lives[*i].started_at);
    let mut free_hours_left: BTreeMap<(i32, u32), f64> = BTreeMap::new();
    let mut free_disk_left: BTreeMap<(i32, u32), f64> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut out: Vec<Option<Costed>> = vec![None; lives.len()];
    for i in order {
        let life = &lives[i];
        let end = life.ended_at.unwrap_or(now);
        let seconds = ((end - life.started_at).num_milliseconds().max(0)) as f64 / 1000.0;
        let billed = billed_seconds(seconds);
        let hours = billed / 3600.0;
        let month = (life.started_at.year(), life.started_at.month());
        if let Some(p) = &life.price
            && p.machine_type == "e2-micro"
            && !free_tier_eligible(p)
        {
            warnings.push(if p.spot {
                format!("{}: a Spot e2-micro is never in the free tier", life.worker)
            } else {
                format!(
                    "{}: {} is not a free-tier region (us-west1, us-central1, us-east1)",
                    life.worker,
                    super::region_of(&p.zone)
                )
            });
        }
        let (list, expected, free) =
            match life.price.as_ref().and_then(|p| p.hourly.map(|h| (p, h))) {
                None => (None, None, 0.0),
                Some((p, h)) => {
                    let list = h.total() * hours;
                    let mut free = 0.0;
                    if free_tier_eligible(p) {
                        let left = free_hours_left
                            .entry(month)
                            .or_insert_with(|| hours_in_month(life.started_at));
                        let free_h = hours.min(*left);
                        *left -= free_h;
                        free += free_h * h.machine;
                        if free_h < hours {
                            warnings.push(format!(
                            "{}: the month's free e2-micro hours ran out; {:.2} h of it are billed",
                            life.worker,
                            hours - free_h
                        ));
                        }
                        if p.disk_type == "pd-standard" {
                            let left = free_disk_left.entry(month).or_insert_with(|| {
                                FREE_DISK_GB_MONTHS * hours_in_month(life.started_at)
                            });
                            let gb_h = p.disk_gb as f64 * hours;
                            let free_gb_h = gb_h.min(*left);
                            *left -= free_gb_h;
                            if gb_h > 0.0 {
                                free += h.disk * hours * (free_gb_h / gb_h);
                            }
                        }
                    }
                    // Float noise must not turn a fully free life into "-0.0000".
                    (Some(list), Some(super::money(list - free)), free)
                }
            };
        out[i] = Some(Costed {
            life: life.clone(),
            seconds,
            billed_seconds: billed,
            list_usd: list,
            expected_usd: expected,
            free_tier_usd: free,
        });
    }
    // Concurrent free-tier VMs share one VM-month of hours.
    let eligible: Vec<&Life> = lives
        .iter()
        .filter(|l| l.price.as_ref().is_some_and(free_tier_eligible))
        .collect();
    for (a, la) in eligible.iter().enumerate() {
        for lb in eligible.iter().skip(a + 1) {
            let (ea, eb) = (la.ended_at.unwrap_or(now), lb.ended_at.unwrap_or(now));
            if la.started_at < eb && lb.started_at < ea {
                warnings.push(format!(
                    "{} and {} ran at the same time: the free tier covers one e2-micro-month of hours in total, which they use up twice as fast",
                    la.worker, lb.worker
                ));
            }
        }
    }
    (
        out.into_iter()
            .map(|c| c.expect("every life costed"))
            .collect(),
        warnings,
    )
}

/// Splits a costed life into UTC days, proportionally to time.
pub(crate) fn by_day(c: &Costed, now: DateTime<Utc>) -> Vec<(String, Option<f64>, Option<f64>)> {
    let start = c.life.started_at;
    let end = c.life.ended_at.unwrap_or(now).max(start);
    let total = (end - start).num_milliseconds().max(1) as f64;
    let mut out = Vec::new();
    let mut t = start;
    while t < end || out.is_empty() {
        let day_end = (t.date_naive() + Duration::days(1))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        let slice_end = day_end.min(end);
        let share = ((slice_end - t).num_milliseconds().max(0) as f64 / total).clamp(0.0, 1.0);
        let share = if end == start { 1.0 } else { share };
        out.push((
            t.date_naive().to_string(),
            c.list_usd.map(|v| v * share),
            c.expected_usd.map(|v| v * share),
        ));
        if slice_end >= end {
            break;
        }
        t = slice_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{Catalog, PriceSnapshot};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn life(name: &str, start: &str, secs: i64, machine: &str, zone: &str, spot: bool) -> Life {
        let started = at(start);
        Life {
            worker: name.into(),
            provider: "gcp".into(),
            started_at: started,
            ended_at: Some(started + Duration::seconds(secs)),
            termination_reason: Some("idle".into()),
            price: Some(PriceSnapshot::take(
                &Catalog::embedded(),
                machine,
                zone,
                spot,
                "pd-standard",
                10,
            )),
        }
    }

    const E2_MICRO_HOURLY: f64 = 0.00838 + 0.4 / 730.0 + 0.005;

    #[test]
    fn a_59_second_vm_is_billed_60_seconds() {
        let (c, _) = cost(
            &[life(
                "w",
                "2026-11-02T10:00:00Z",
                59,
                "e2-small",
                "us-central1-a",
                false,
            )],
            Utc::now(),
        );
        assert_eq!(c[0].billed_seconds, 60.0);
        let hourly = 0.01675 + 0.4 / 730.0 + 0.005;
        assert!((c[0].list_usd.unwrap() - hourly / 60.0).abs() < 1e-12);
        assert_eq!(
            c[0].expected_usd, c[0].list_usd,
            "e2-small is not free tier"
        );
        let (c, _) = cost(
            &[life(
                "w",
                "2026-11-02T10:00:00Z",
                61,
                "e2-small",
                "us-central1-a",
                false,
            )],
            Utc::now(),
        );
        assert_eq!(c[0].billed_seconds, 61.0, "then per second");
    }

    #[test]
    fn free_tier_covers_the_months_hours_and_no_more() {
        // November has 720 h. One VM of exactly 720 h: machine free, disk free (10 GB < 30).
        let (c, w) = cost(
            &[life(
                "a",
                "2026-11-01T00:00:00Z",
                720 * 3600,
                "e2-micro",
                "us-central1-a",
                false,
            )],
            Utc::now(),
        );
        let list = E2_MICRO_HOURLY * 720.0;
        assert!((c[0].list_usd.unwrap() - list).abs() < 1e-9);
        // Only the external IP is billed.
        assert!(
            (c[0].expected_usd.unwrap() - 0.005 * 720.0).abs() < 1e-9,
            "{:?}",
            c[0].expected_usd
        );
        assert!(w.is_empty(), "{w:?}");
        // Past the boundary: a second VM the same month pays its machine hours in full.
        let (c, w) = cost(
            &[
                life(
                    "a",
                    "2026-11-01T00:00:00Z",
                    720 * 3600,
                    "e2-micro",
                    "us-central1-a",
                    false,
                ),
                life(
                    "b",
                    "2026-11-30T23:00:00Z",
                    3600,
                    "e2-micro",
                    "us-east1-b",
                    false,
                ),
            ],
            Utc::now(),
        );
        let b = &c[1];
        // Disk: a used 7200 GB-h of 21600 free, b's 10 GB-h are free too; machine hour billed.
        assert!(
            (b.expected_usd.unwrap() - (0.00838 + 0.005)).abs() < 1e-9,
            "{:?}",
            b.expected_usd
        );
        assert!(
            w.iter()
                .any(|x| x.contains("b: the month's free e2-micro hours ran out; 1.00 h")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|x| x.contains("a and b ran at the same time")),
            "{w:?}"
        );
    }

    #[test]
    fn spot_other_regions_and_unknown_prices() {
        let (c, w) = cost(
            &[life(
                "s",
                "2026-11-02T00:00:00Z",
                3600,
                "e2-micro",
                "us-central1-a",
                true,
            )],
            Utc::now(),
        );
        assert!((c[0].expected_usd.unwrap() - (0.0039 + 0.4 / 730.0 + 0.0025)).abs() < 1e-9);
        assert!(w[0].contains("Spot e2-micro is never in the free tier"));
        let (c, _) = cost(
            &[life(
                "x",
                "2026-11-02T00:00:00Z",
                3600,
                "e2-micro",
                "europe-west1-b",
                false,
            )],
            Utc::now(),
        );
        assert_eq!(c[0].list_usd, None, "unknown, not $0");
        let (c, _) = cost(
            &[life(
                "m",
                "2026-11-02T00:00:00Z",
                3600,
                "m9-mega",
                "us-central1-a",
                false,
            )],
            Utc::now(),
        );
        assert_eq!(c[0].expected_usd, None);
    }

    #[test]
    fn a_running_worker_accrues_to_now_and_days_split_by_time() {
        let mut l = life(
            "r",
            "2026-11-02T23:00:00Z",
            0,
            "e2-small",
            "us-central1-a",
            false,
        );
        l.ended_at = None;
        let now = at("2026-11-03T01:00:00Z");
        let (c, _) = cost(&[l], now);
        assert_eq!(c[0].billed_seconds, 7200.0);
        let days = by_day(&c[0], now);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].0, "2026-11-02");
        assert!((days[0].1.unwrap() - days[1].1.unwrap()).abs() < 1e-12);
    }
}
