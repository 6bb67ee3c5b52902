//! Prices: a catalog shipped inside the binary (every price with its source and date),
//! overridable by `~/.config/cwo/prices.toml`.

pub(crate) mod budget;
pub(crate) mod compute;
pub(crate) mod report;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const EMBEDDED: &str = include_str!("prices.toml");

/// The user's price overrides cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the price catalog {} cannot be used", path.display())]
pub(crate) struct CatalogError {
    pub(crate) path: std::path::PathBuf,
    #[source]
    pub(crate) source: toml::de::Error,
}

/// Hours in the average month, for per-month prices.
pub(crate) const HOURS_PER_MONTH: f64 = 730.0;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachinePrice {
    pub regions: Vec<String>,
    pub on_demand: f64,
    pub spot: f64,
    pub source: String,
    pub date: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskPrice {
    pub gb_month: f64,
    pub source: String,
    pub date: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpPrice {
    pub on_demand_hour: f64,
    pub spot_hour: f64,
    pub source: String,
    pub date: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub machine: BTreeMap<String, MachinePrice>,
    #[serde(default)]
    pub disk: BTreeMap<String, DiskPrice>,
    pub ip: IpPrice,
}

/// What one worker costs per hour, by component.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Hourly {
    pub machine: f64,
    pub disk: f64,
    pub ip: f64,
}

impl Hourly {
    pub(crate) fn total(&self) -> f64 {
        self.machine + self.disk + self.ip
    }
}

/// What a worker cost per hour when it was launched: stored with the worker, so later catalog
/// changes never reprice the past.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PriceSnapshot {
    pub machine_type: String,
    pub zone: String,
    pub spot: bool,
    pub disk_type: String,
    pub disk_gb: u32,
    /// `None` = the catalog has no price for this machine type in this region: "unknown".
    pub hourly: Option<Hourly>,
    pub catalog_date: String,
}

impl PriceSnapshot {
    pub fn take(
        catalog: &Catalog,
        machine_type: &str,
        zone: &str,
        spot: bool,
        disk_type: &str,
        disk_gb: u32,
    ) -> PriceSnapshot {
        PriceSnapshot {
            machine_type: machine_type.to_string(),
            zone: zone.to_string(),
            spot,
            disk_type: disk_type.to_string(),
            disk_gb,
            hourly: catalog.hourly(machine_type, zone, spot, disk_type, disk_gb),
            catalog_date: catalog
                .machine
                .get(machine_type)
                .map(|m| m.date.clone())
                .unwrap_or_default(),
        }
    }
}

/// A money amount as cwo reports it: never negative zero. Rust's `Iterator::sum` of `f64`
/// starts from -0.0, so an empty sum (nothing with a known price) is -0.0, and a difference of
/// equal costs can land a hair below zero; either prints as "-0.0000". A cost is never negative,
/// so anything in (-1e-9, 0] is 0.
pub(crate) fn money(usd: f64) -> f64 {
    if usd <= 0.0 && usd > -1e-9 { 0.0 } else { usd }
}

/// The sum of money amounts (0, never -0.0, when there are none).
pub(crate) fn money_sum(amounts: impl IntoIterator<Item = f64>) -> f64 {
    money(amounts.into_iter().fold(0.0, |a, b| a + b))
}

/// The region of a zone: `us-central1-a` → `us-central1`.
pub(crate) fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map(|(r, _)| r).unwrap_or(zone)
}

impl Catalog {
    pub fn embedded() -> Catalog {
        toml::from_str(EMBEDDED).expect("the embedded price catalog parses")
    }

    /// The embedded catalog with the user's overrides on top (`prices.toml` in cwo's config
    /// dir, when there is one).
    pub(crate) fn load() -> Result<Catalog, CatalogError> {
        let mut cat = Catalog::embedded();
        let dir = std::env::var_os("CWO_CONFIG_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CONFIG_HOME").map(|x| std::path::PathBuf::from(x).join("cwo"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config/cwo"))
            });
        if let Some(path) = dir.map(|d| d.join("prices.toml"))
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Overrides {
                #[serde(default)]
                machine: BTreeMap<String, MachinePrice>,
                #[serde(default)]
                disk: BTreeMap<String, DiskPrice>,
                ip: Option<IpPrice>,
            }
            let o: Overrides =
                toml::from_str(&text).map_err(|source| CatalogError { path, source })?;
            cat.machine.extend(o.machine);
            cat.disk.extend(o.disk);
            if let Some(ip) = o.ip {
                cat.ip = ip;
            }
        }
        Ok(cat)
    }

    /// The hourly list price of a worker, or `None` when any part is unknown.
    pub(crate) fn hourly(
        &self,
        machine: &str,
        zone: &str,
        spot: bool,
        disk_type: &str,
        disk_gb: u32,
    ) -> Option<Hourly> {
        let m = self.machine.get(machine)?;
        if !m.regions.iter().any(|r| r == region_of(zone)) {
            return None;
        }
        let d = self.disk.get(disk_type)?;
        Some(Hourly {
            machine: if spot { m.spot } else { m.on_demand },
            disk: d.gb_month * disk_gb as f64 / HOURS_PER_MONTH,
            ip: if spot {
                self.ip.spot_hour
            } else {
                self.ip.on_demand_hour
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_never_negative_zero() {
        let empty: f64 = std::iter::empty::<f64>().sum();
        assert!(
            empty.is_sign_negative(),
            "the trap: an empty f64 sum is -0.0"
        );
        for v in [empty, -0.0, 0.1 + 0.2 - 0.3 - 1e-17, -1e-12] {
            assert!(money(v).is_sign_positive(), "{v:e}");
            assert_eq!(format!("{:.4}", money(v)), "0.0000", "{v:e}");
        }
        assert!(money_sum([]).is_sign_positive());
        assert_eq!(money_sum([0.25, 0.5]), 0.75);
        assert_eq!(money(0.0123), 0.0123);
        // A real negative amount is a bug to see, not to hide.
        assert_eq!(money(-0.5), -0.5);
    }

    #[test]
    fn embedded_catalog_prices_an_e2_micro_and_knows_what_it_does_not_know() {
        let c = Catalog::embedded();
        let h = c
            .hourly("e2-micro", "us-central1-a", false, "pd-standard", 10)
            .unwrap();
        assert_eq!(h.machine, 0.00838);
        assert!((h.disk - 0.4 / 730.0).abs() < 1e-12);
        assert_eq!(h.ip, 0.005);
        assert!(
            c.hourly("e2-micro", "europe-west1-b", false, "pd-standard", 10)
                .is_none()
        );
        assert!(
            c.hourly("m9-huge", "us-central1-a", false, "pd-standard", 10)
                .is_none()
        );
        for (name, m) in &c.machine {
            assert!(
                !m.source.is_empty() && !m.date.is_empty(),
                "{name} has a source and date"
            );
        }
    }
}
