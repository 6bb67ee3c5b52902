//! A scripted fake of an OpenAI-compatible LLM (`POST /v1/chat/completions`, streamed as
//! server-sent events) for running the real opencode offline. It is stateless the way the
//! conversation is: the step of an agent request is the number of `assistant` messages it carries
//! (each earlier step left one), and the script's entry for that step is the answer, a tool call
//! or a text, with the usage numbers the entry names.
//!
//! The shapes follow OpenAI's chat-completions streaming reference
//! (https://platform.openai.com/docs/api-reference/chat/streaming and
//! https://platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options): each
//! chunk is a `chat.completion.chunk` in one `data:` line; with
//! `stream_options.include_usage` (opencode always sends it) the last chunk carries `usage`
//! (`prompt_tokens`, `completion_tokens`, `total_tokens`,
//! `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`); the
//! stream ends with `data: [DONE]`. A tool call is one `delta.tool_calls` entry with the whole
//! `arguments` string, then `finish_reason: "tool_calls"`.
//!
//! What opencode 1.18.33 (its bundled `@ai-sdk/openai-compatible` provider) makes of `usage`,
//! read from the binary and observed in `tests/fixtures/opencode-1.18.33-events.jsonl`: it reads
//! all four numbers. `cached_tokens` becomes its cache-read count and is taken out of
//! `prompt_tokens`; `reasoning_tokens` becomes its reasoning count and is taken out of
//! `completion_tokens`; there is no cache-write count in this API (always 0).
//!
//! Requests without `tools` are opencode's title generation (skipped with `--title`); they get a
//! short text and no script step.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// What the model answers at one step.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Call the tool `name` with these arguments; `{workdir}` in any string is replaced with the
    /// working directory from the system prompt ("Working directory: /abs/path").
    Tool { name: String, args: Value },
    /// A text answer, `finish_reason: "stop"`: opencode's loop ends.
    Text(String),
}

/// The `usage` of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `prompt_tokens_details.cached_tokens` (part of `prompt_tokens`).
    pub cached_tokens: u64,
    /// `completion_tokens_details.reasoning_tokens` (part of `completion_tokens`).
    pub reasoning_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub answer: Answer,
    pub usage: Usage,
}

impl Step {
    pub fn tool(name: &str, args: Value, usage: Usage) -> Step {
        Step {
            answer: Answer::Tool {
                name: name.into(),
                args,
            },
            usage,
        }
    }
    pub fn text(text: &str, usage: Usage) -> Step {
        Step {
            answer: Answer::Text(text.into()),
            usage,
        }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct LlmReq {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    /// The script step answered, `None` for a title request or one past the script.
    pub step: Option<usize>,
}

pub struct FakeLlm {
    pub port: u16,
    server: Arc<tiny_http::Server>,
    requests: Arc<Mutex<Vec<LlmReq>>>,
}

impl FakeLlm {
    /// Serves `script` on 127.0.0.1 (a port the OS picks), each request on its own thread:
    /// opencode sends its title request and the first agent step at once.
    pub fn start(script: Vec<Step>) -> FakeLlm {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake LLM"));
        let port = server.server_addr().to_ip().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (srv, reqs) = (server.clone(), requests.clone());
        std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let (script, reqs) = (script.clone(), reqs.clone());
                std::thread::spawn(move || handle(request, &script, &reqs));
            }
        });
        FakeLlm {
            port,
            server,
            requests,
        }
    }

    /// The `baseURL` an OpenAI-compatible client is given.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn requests(&self) -> Vec<LlmReq> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn handle(mut request: tiny_http::Request, script: &[Step], log: &Mutex<Vec<LlmReq>>) {
    let path = request.url().to_string();
    let authorization = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.to_string());
    let mut raw = String::new();
    let body: Value = match request.as_reader().read_to_string(&mut raw) {
        Ok(_) => serde_json::from_str(&raw).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    if request.method() != &tiny_http::Method::Post || path != "/v1/chat/completions" {
        log.lock().unwrap().push(LlmReq {
            path,
            authorization,
            body,
            step: None,
        });
        let _ =
            request.respond(tiny_http::Response::from_string("not found").with_status_code(404));
        return;
    }
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    let (step, answer, usage) = if !has_tools {
        // The title generator: a short text, no step of the script.
        (None, Answer::Text("Fake task".into()), Usage::default())
    } else {
        let n = messages.iter().filter(|m| m["role"] == "assistant").count();
        match script.get(n) {
            Some(s) => (Some(n), s.answer.clone(), s.usage),
            // Past the script: stop the loop rather than call tools forever.
            None => (
                None,
                Answer::Text(format!("the fake LLM's script has no step {n}")),
                Usage::default(),
            ),
        }
    };
    let workdir = messages
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .find_map(|c| {
            c.lines()
                .find_map(|l| l.trim().strip_prefix("Working directory: "))
                .map(|w| w.trim().to_string())
        })
        .unwrap_or_default();
    log.lock().unwrap().push(LlmReq {
        path,
        authorization,
        body,
        step,
    });
    let sse = events(&model, step.unwrap_or(0), &answer, usage, &workdir);
    let resp = tiny_http::Response::from_data(sse.into_bytes())
        .with_header(
            "Content-Type: text/event-stream"
                .parse::<tiny_http::Header>()
                .unwrap(),
        )
        .with_header(
            "Cache-Control: no-cache"
                .parse::<tiny_http::Header>()
                .unwrap(),
        );
    let _ = request.respond(resp);
}

/// Replaces `{workdir}` in every string of `v`.
fn with_workdir(v: &Value, workdir: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{workdir}", workdir)),
        Value::Array(a) => Value::Array(a.iter().map(|x| with_workdir(x, workdir)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), with_workdir(x, workdir)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The whole SSE body of one streamed completion.
fn events(model: &str, step: usize, answer: &Answer, usage: Usage, workdir: &str) -> String {
    let id = format!("chatcmpl-fake-{step}");
    let chunk = |choice: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [choice],
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    };
    let mut out = chunk(
        json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
        None,
    );
    let finish = match answer {
        Answer::Tool { name, args } => {
            let arguments = with_workdir(args, workdir).to_string();
            out.push_str(&chunk(
                json!({"index": 0, "delta": {"tool_calls": [{
                    "index": 0,
                    "id": format!("call_{step}"),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }]}, "finish_reason": null}),
                None,
            ));
            "tool_calls"
        }
        Answer::Text(text) => {
            out.push_str(&chunk(
                json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
                None,
            ));
            "stop"
        }
    };
    out.push_str(&chunk(
        json!({"index": 0, "delta": {}, "finish_reason": finish}),
        Some(json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        })),
    ));
    out.push_str("data: [DONE]\n\n");
    out
}
