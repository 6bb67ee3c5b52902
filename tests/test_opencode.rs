//! The real opencode (pinned, installed by scripts/test.sh under target/opencode) as cwo's agent,
//! offline against the scripted fake LLM on 127.0.0.1: the task gets done and the tokens it
//! reports reach `cwo cost --by task`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::fake_llm::{FakeLlm, Step, Usage};
use crate::common::{TestEnv, git};

/// bootstrap.opencode's default (src/config/bootstrap.rs), the version scripts/test.sh installs.
const OPENCODE_VERSION: &str = "1.18.33";

/// The installed opencode binary. npm's postinstall hard-links the platform build over the
/// wrapper's 479-byte placeholder `opencode-ai/bin/opencode.exe`; when install scripts were
/// blocked the placeholder stays, and the platform package's binary is used directly (the one
/// the postinstall would pick: baseline without AVX2). Missing is a failure, never a skip.
pub fn opencode_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/opencode/node_modules");
    let manifest = root.join("opencode-ai/package.json");
    let version = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(String::from));
    assert_eq!(
        version.as_deref(),
        Some(OPENCODE_VERSION),
        "opencode-ai@{OPENCODE_VERSION} is not installed at {}: run scripts/test.sh, which installs it",
        root.display()
    );
    let avx2 = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" avx2"));
    let platform = match std::env::consts::ARCH {
        "x86_64" if avx2 => "opencode-linux-x64",
        "x86_64" => "opencode-linux-x64-baseline",
        _ => "opencode-linux-arm64",
    };
    let candidates = [
        root.join("opencode-ai/bin/opencode.exe"),
        root.join(platform).join("bin/opencode"),
    ];
    candidates
        .iter()
        .find(|p| is_real_binary(p))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no opencode binary among {candidates:?}: run scripts/test.sh, which installs opencode-ai@{OPENCODE_VERSION}"
            )
        })
}

/// An executable of more than a MiB: the build (~185 MB), not the wrapper's placeholder.
fn is_real_binary(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .is_ok_and(|m| m.is_file() && m.len() > 1 << 20 && m.permissions().mode() & 0o111 != 0)
}

/// USD per million tokens, as opencode's per-model `cost` takes them.
const PRICE_INPUT: f64 = 3.0;
const PRICE_OUTPUT: f64 = 15.0;
const PRICE_CACHE_READ: f64 = 0.3;
const PRICE_CACHE_WRITE: f64 = 3.75;

/// opencode's configuration (opencode.ai/docs/config, /docs/providers#custom-provider): one
/// OpenAI-compatible provider at the fake, priced, everything allowed, nothing online.
fn opencode_config(llm: &FakeLlm) -> Value {
    json!({
        "$schema": "https://opencode.ai/config.json",
        "model": "fake/fake-model",
        "small_model": "fake/fake-model",
        "enabled_providers": ["fake"],
        "autoupdate": false,
        "share": "disabled",
        "snapshot": false,
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake local LLM",
                "options": {"baseURL": llm.base_url(), "apiKey": "{env:FAKE_LLM_API_KEY}"},
                "models": {
                    "fake-model": {
                        "name": "Fake model",
                        "tool_call": true,
                        "limit": {"context": 128000, "output": 4096},
                        "cost": {
                            "input": PRICE_INPUT,
                            "output": PRICE_OUTPUT,
                            "cache_read": PRICE_CACHE_READ,
                            "cache_write": PRICE_CACHE_WRITE,
                        },
                    }
                }
            }
        },
        "permission": {"edit": "allow", "bash": "allow", "webfetch": "deny"}
    })
}

/// The environment opencode runs in: its own HOME and XDG dirs, its config, nothing online.
fn opencode_env(dir: &Path, config: &Path) -> Vec<(String, String)> {
    let home = dir.join("opencode-home");
    std::fs::create_dir_all(&home).unwrap();
    let h = |sub: &str| home.join(sub).display().to_string();
    vec![
        ("HOME".into(), home.display().to_string()),
        ("XDG_CONFIG_HOME".into(), h(".config")),
        ("XDG_DATA_HOME".into(), h(".local/share")),
        ("XDG_CACHE_HOME".into(), h(".cache")),
        ("XDG_STATE_HOME".into(), h(".local/state")),
        ("OPENCODE_CONFIG".into(), config.display().to_string()),
        ("OPENCODE_DISABLE_AUTOUPDATE".into(), "1".into()),
        ("OPENCODE_DISABLE_MODELS_FETCH".into(), "1".into()),
        ("OPENCODE_DISABLE_SHARE".into(), "1".into()),
        ("OPENCODE_DISABLE_LSP_DOWNLOAD".into(), "1".into()),
        ("FAKE_LLM_API_KEY".into(), "sk-fake-local".into()),
    ]
}

/// The script, step by step, with the usage each response reports. The same script and numbers
/// produced tests/fixtures/opencode-1.18.33-events.jsonl (opencode run directly, not through cwo).
///
/// What opencode 1.18.33 makes of them per `step_finish` (`part.tokens`, `part.cost`):
///   input     = prompt_tokens − cached_tokens (− cache writes, always 0 over this API)
///   output    = completion_tokens − reasoning_tokens
///   reasoning = reasoning_tokens;  cache.read = cached_tokens;  cache.write = 0
///   cost      = (input·$in + (output + reasoning)·$out + cache.read·$cache_read
///                + cache.write·$cache_write) / 1e6
///
/// | step | prompt | cached | completion | reasoning | input | output | cache.read | cost (USD)                                      |
/// |------|--------|--------|------------|-----------|-------|--------|------------|-------------------------------------------------|
/// | 0    | 10000  | 0      | 100        | 0         | 10000 | 100    | 0          | (10000·3 + 100·15) / 1e6              = 0.0315  |
/// | 1    | 12000  | 8000   | 200        | 50        | 4000  | 150    | 8000       | (4000·3 + 200·15 + 8000·0.3) / 1e6    = 0.0174  |
/// | 2    | 13000  | 11000  | 300        | 100       | 2000  | 200    | 11000      | (2000·3 + 300·15 + 11000·0.3) / 1e6   = 0.0138  |
/// | sum  |        |        |            | 150       | 16000 | 450    | 19000      | 0.0627                                          |
fn script() -> Vec<Step> {
    let usage = |prompt, cached, completion, reasoning| Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
        reasoning_tokens: reasoning,
    };
    vec![
        Step::tool(
            "write",
            json!({"filePath": "{workdir}/hello.txt", "content": "hello\n"}),
            usage(10000, 0, 100, 0),
        ),
        Step::tool(
            "bash",
            json!({"command": "git add -A && git commit -m \"add hello\"", "description": "Commit hello.txt"}),
            usage(12000, 8000, 200, 50),
        ),
        Step::text("Done: added hello.txt", usage(13000, 11000, 300, 100)),
    ]
}

#[test]
fn opencode_does_the_task_and_its_tokens_reach_cost_by_task() {
    let bin = opencode_bin();
    let env = TestEnv::new();
    let llm = FakeLlm::start(script());
    let config = env.tmp.path().join("opencode.json");
    std::fs::write(&config, opencode_config(&llm).to_string()).unwrap();
    let mut agent_env = String::new();
    for (k, v) in opencode_env(env.tmp.path(), &config) {
        agent_env.push_str(&format!("{k} = {v:?}\n"));
    }
    // cwo's default agent argv, with the installed binary for "opencode". One attempt: a failure
    // shows its own log instead of a retry's. opencode's first run in a fresh HOME takes ~5-9 s.
    env.settings(&format!(
        "[agent]\ncommand = [{:?}, \"run\", \"--format\", \"json\", \"--title\", \"{{task_id}}\", \"{{prompt}}\"]\n\
         timeout = \"120s\"\nmax_attempts = 1\n[agent.env]\n{agent_env}",
        bin.display().to_string()
    ));
    let id = env.add(&["Add hello.txt", "--ac", "hello.txt exists and is committed"]);

    let run = env.cwo(&["run", "--once"]);
    let log = std::fs::read_to_string(env.state.join(format!("logs/{id}/attempt-1.log")))
        .unwrap_or_else(|e| format!("(no agent log: {e})"));
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}\nagent log:\n{log}",
        run.stdout, run.stderr
    );
    assert_eq!(env.ball(&id)["state"], "complete", "agent log:\n{log}");
    assert_eq!(
        env.journal("SELECT attempt, outcome, exit_status FROM attempts"),
        "1|done|exit 0"
    );

    // The three agent steps and nothing else: --title skips the title request.
    let reqs = llm.requests();
    let steps: Vec<Option<usize>> = reqs.iter().map(|r| r.step).collect();
    assert_eq!(steps, [Some(0), Some(1), Some(2)], "{reqs:#?}");
    assert!(reqs.iter().all(|r| r.body["stream"] == true
        && r.body["stream_options"]["include_usage"] == true
        && r.authorization.as_deref() == Some("Bearer sk-fake-local")));
    let tool_results: Vec<&str> = reqs[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(tool_results.len(), 2, "{tool_results:?}");
    assert_eq!(tool_results[0], "Wrote file successfully.");

    // opencode's commit came back to refs/cwo/<id> and was pushed, with hello.txt only.
    let commit = format!("refs/cwo/{id}");
    assert_eq!(
        git(&env.project, &["log", "-1", "--format=%s", &commit]),
        "add hello"
    );
    assert_eq!(
        git(&env.project, &["show", "--format=", "--name-only", &commit]),
        "hello.txt"
    );
    assert_eq!(
        git(&env.project, &["show", &format!("{commit}:hello.txt")]),
        "hello"
    );
    assert_eq!(env.remote_branches(), vec![format!("cwo/{id}")]);

    // The tokens opencode reported, summed over the attempt's three step_finish events (see
    // `script` for the arithmetic).
    let cost = env
        .cwo(&["cost", "--by", "task", "--format", "json"])
        .ok()
        .json();
    let row = cost["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == id.as_str())
        .unwrap_or_else(|| panic!("no row for {id}: {cost:#}"))
        .clone();
    for (key, want) in [
        ("input_tokens", 16000),
        ("output_tokens", 450),
        ("reasoning_tokens", 150),
        ("cache_read_tokens", 19000),
        ("cache_write_tokens", 0),
    ] {
        assert_eq!(row[key].as_u64(), Some(want), "{key} in {row:#}");
    }
    // (16000·3 + (450 + 150)·15 + 19000·0.3 + 0·3.75) / 1e6 = 0.0627
    let usd = row["llm_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("llm_usd in {row:#}"));
    assert!((usd - 0.0627).abs() < 1e-9, "llm_usd {usd} in {row:#}");
}
