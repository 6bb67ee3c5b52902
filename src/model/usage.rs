//! What an agent's LLM use cost, read from its own output, one step at a time.
//!
//! Two sources, both one JSON object per line of the agent's log:
//! - opencode's `--format json` events: every `step_finish` event carries the step's
//!   `part.tokens` (`input`, `output`, `reasoning`, `cache.read`, `cache.write`) and `part.cost`
//!   in USD, which opencode computes from the model's price table;
//! - the line any agent may print, documented for users in `docs/workflow.md`:
//!   `{"cwo_usage": {"input_tokens": N, "output_tokens": N, "cache_read_tokens": N,
//!   "cache_write_tokens": N, "reasoning_tokens": N, "cost_usd": X}}`.
//!
//! Each line is one step; steps add up. An attempt with no such line has an unknown cost, never
//! $0: `Usage::steps == 0`, or a step without a cost, makes `cost_usd()` None.

use serde::Serialize;
use serde_json::Value;

/// The tokens and dollars of one attempt (or of several, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Usage {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) reasoning_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    /// The sum of the steps' costs that were reported.
    pub(crate) cost_known_usd: f64,
    /// Steps read.
    pub(crate) steps: u32,
    /// Steps that reported no cost.
    pub(crate) steps_without_cost: u32,
}

impl Usage {
    /// The cost in USD, None when unknown: no step was reported, or one came without a cost.
    pub(crate) fn cost_usd(&self) -> Option<f64> {
        (self.steps > 0 && self.steps_without_cost == 0).then_some(self.cost_known_usd)
    }

    /// Adds one line of the agent's output if it reports a step; says whether it did.
    pub(crate) fn add_line(&mut self, line: &str) -> bool {
        match step_of(line) {
            Some(step) => {
                *self += step;
                true
            }
            None => false,
        }
    }

    /// Every step reported in a whole log.
    pub(crate) fn from_log(log: &str) -> Usage {
        let mut u = Usage::default();
        for line in log.lines() {
            u.add_line(line);
        }
        u
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.reasoning_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.cost_known_usd += o.cost_known_usd;
        self.steps += o.steps;
        self.steps_without_cost += o.steps_without_cost;
    }
}

/// A count: a non-negative integer (a float from a JSON encoder that wrote `12.0` counts too).
fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

fn cost(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0)
}

/// The usage one line reports, if it is a step.
fn step_of(line: &str) -> Option<Usage> {
    let line = line.trim();
    if !line.starts_with('{') || !(line.contains("step_finish") || line.contains("cwo_usage")) {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let (tokens, step_cost) = if v.get("type").and_then(Value::as_str) == Some("step_finish") {
        let part = v.get("part")?;
        let t = part.get("tokens")?;
        let u = Usage {
            input_tokens: count(t.get("input")),
            output_tokens: count(t.get("output")),
            reasoning_tokens: count(t.get("reasoning")),
            cache_read_tokens: count(t.pointer("/cache/read")),
            cache_write_tokens: count(t.pointer("/cache/write")),
            ..Usage::default()
        };
        // opencode prices a step from the model's price table and says 0 for a model without
        // one: tokens at $0 are an unknown price, not a free step.
        let c = cost(part.get("cost")).filter(|c| *c > 0.0 || u.tokens() == 0);
        (u, c)
    } else {
        let u = v.get("cwo_usage")?;
        if !u.is_object() {
            return None;
        }
        let t = Usage {
            input_tokens: count(u.get("input_tokens")),
            output_tokens: count(u.get("output_tokens")),
            reasoning_tokens: count(u.get("reasoning_tokens")),
            cache_read_tokens: count(u.get("cache_read_tokens")),
            cache_write_tokens: count(u.get("cache_write_tokens")),
            ..Usage::default()
        };
        (t, cost(u.get("cost_usd")))
    };
    Some(Usage {
        cost_known_usd: step_cost.unwrap_or(0.0),
        steps: 1,
        steps_without_cost: u32::from(step_cost.is_none()),
        ..tokens
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opencode_steps_and_cwo_usage_lines_add_up() {
        let log = concat!(
            "{\"type\":\"step_start\",\"part\":{}}\n",
            "{\"type\":\"step_finish\",\"part\":{\"type\":\"step-finish\",\"reason\":\"tool-calls\",\"cost\":0.0105,\"tokens\":{\"input\":1000,\"output\":500,\"reasoning\":20,\"cache\":{\"read\":300,\"write\":40}}}}\n",
            "plain text mentioning step_finish and cwo_usage\n",
            "{\"cwo_usage\": {\"input_tokens\": 7, \"output_tokens\": 3, \"cache_read_tokens\": 2, \"cache_write_tokens\": 1, \"cost_usd\": 0.5}}\n",
            "{\"type\":\"text\",\"part\":{\"text\":\"{\\\"cwo_usage\\\": {\\\"cost_usd\\\": 9}}\"}}\n",
        );
        let u = Usage::from_log(log);
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.steps
            ),
            (1007, 503, 20, 302, 41, 2)
        );
        assert_eq!(u.cost_usd(), Some(0.0105 + 0.5));
        assert_eq!(u.tokens(), 1007 + 503 + 20 + 302 + 41);
    }

    /// A real run of opencode 1.18.33 (tests/test_opencode.rs's stub; prices $3 / $15 / $0.3 per
    /// million input / output / cache-read tokens): three steps of input 10000 + 4000 + 2000,
    /// output 100 + 150 + 200, reasoning 0 + 50 + 100 (billed as output), cache read 0 + 8000 +
    /// 11000; cost (16000×3 + 600×15 + 19000×0.3) / 1e6 = 0.0627.
    #[test]
    fn a_real_opencode_run_adds_up_to_the_hand_computed_figures() {
        let log = include_str!("../../tests/fixtures/opencode-1.18.33-events.jsonl");
        let u = Usage::from_log(log);
        assert_eq!(
            (
                u.steps,
                u.input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens
            ),
            (3, 16000, 450, 150, 19000, 0)
        );
        assert!((u.cost_usd().unwrap() - 0.0627).abs() < 1e-9, "{u:?}");
    }

    #[test]
    fn no_report_or_a_step_without_cost_is_unknown_never_zero() {
        assert_eq!(
            Usage::from_log("hello\n{\"type\":\"text\"}\n").cost_usd(),
            None
        );
        let u = Usage::from_log(
            "{\"cwo_usage\":{\"input_tokens\":5,\"cost_usd\":0.25}}\n{\"cwo_usage\":{\"input_tokens\":5}}\n",
        );
        assert_eq!((u.input_tokens, u.cost_usd()), (10, None));
        assert_eq!(u.cost_known_usd, 0.25);
        let zero = Usage::from_log("{\"cwo_usage\":{\"output_tokens\":1,\"cost_usd\":0}}\n");
        assert_eq!(zero.cost_usd(), Some(0.0));
    }

    #[test]
    fn an_opencode_step_priced_at_zero_is_an_unknown_price() {
        let unpriced = "{\"type\":\"step_finish\",\"part\":{\"cost\":0,\"tokens\":{\"input\":900,\"output\":40,\"reasoning\":0,\"cache\":{\"read\":0,\"write\":0}}}}";
        let u = Usage::from_log(unpriced);
        assert_eq!((u.input_tokens, u.cost_usd()), (900, None));
        let said = Usage::from_log("{\"cwo_usage\":{\"input_tokens\":900,\"cost_usd\":0}}");
        assert_eq!(said.cost_usd(), Some(0.0), "an agent that says $0 means it");
    }

    #[test]
    fn malformed_reports_are_not_steps() {
        for line in [
            "{\"cwo_usage\": 3}",
            "{\"type\":\"step_finish\",\"part\":{}}",
            "{\"type\":\"step_finish\"",
            "{\"cwo_usage\":{\"cost_usd\":-1}}",
        ] {
            let u = Usage::from_log(line);
            assert!(u.steps == 0 || u.cost_usd().is_none(), "{line}: {u:?}");
        }
    }
}
