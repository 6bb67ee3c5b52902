//! An optional amount in USD (`workers.max_hourly_usd`, `agent.max_cost_usd`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `""` (none), or a positive amount in USD written as a number (`0.05`) or a string (`"0.05"`,
/// `"$0.05"`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UsdLimit(pub Option<f64>);

impl Serialize for UsdLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => s.serialize_f64(v),
            None => s.serialize_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for UsdLimit {
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
                "{what}: expected an amount in USD such as 0.5 or \"0.5\", or \"\" for no limit"
            ))
        };
        let value = match Raw::deserialize(d)? {
            Raw::Number(v) => v,
            Raw::Int(v) => v as f64,
            Raw::Text(t) if t.trim().is_empty() => return Ok(UsdLimit(None)),
            Raw::Text(t) => t
                .trim()
                .trim_start_matches('$')
                .parse::<f64>()
                .map_err(|_| bad(format!("{t:?} is not a number")))?,
        };
        if !value.is_finite() || value <= 0.0 {
            return Err(bad(format!("{value} is not a positive amount")));
        }
        Ok(UsdLimit(Some(value)))
    }
}
