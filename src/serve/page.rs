//! `GET /`: one self-contained page (no build step, no CDN), rendered on the server so that it
//! reads with JavaScript off; a few lines of script refresh the tables and follow a task's log
//! over server-sent events.

use std::fmt::Write as _;

use crate::printer::fmt_secs;
use crate::report::budget::BudgetCheck;
use crate::report::serve::ServeState;

/// The log panel's content: a task's latest attempt, its masked log so far (the tail) and the
/// offset that ends at, where the live stream goes on.
pub(crate) struct Log {
    pub(crate) task: String,
    pub(crate) attempt: i64,
    pub(crate) text: String,
    pub(crate) offset: u64,
}

/// The page for `state`, with `log` in the log panel.
pub(crate) fn render(state: &ServeState, log: Option<&Log>) -> String {
    let s = &state.status;
    let mut h = String::with_capacity(16 * 1024);
    h.push_str(HEAD);
    let _ = write!(
        h,
        "<header><h1>cwo</h1><p>{} · controller {} · {}</p></header>",
        esc(&s.project.display().to_string()),
        s.controller_pid
            .as_deref()
            .map_or("not running".to_string(), |p| format!("pid {}", esc(p))),
        state.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    h.push_str("<main id=\"board\">");
    board(&mut h, state);
    h.push_str("</main>");
    h.push_str("<section id=\"log\"><h2>Log</h2>");
    match log {
        Some(l) => {
            let _ = write!(
                h,
                "<p>task <b>{}</b>, attempt {}</p><pre id=\"logtext\" data-task=\"{}\" data-attempt=\"{}\" data-offset=\"{}\">{}</pre>",
                esc(&l.task),
                l.attempt,
                esc(&l.task),
                l.attempt,
                l.offset,
                esc(&l.text)
            );
        }
        None => h.push_str(
            "<p>Pick a task on the board to see its agent's log (live with JavaScript on).</p><pre id=\"logtext\"></pre>",
        ),
    }
    h.push_str("</section>");
    h.push_str(SCRIPT);
    h.push_str("</body></html>");
    h
}

/// The tables, also what the script swaps in when it refreshes.
fn board(h: &mut String, state: &ServeState) {
    let s = &state.status;
    // Money first: what it costs now, today, this month, against the budget.
    let _ = write!(
        h,
        "<section id=\"money\"><h2>Cost</h2><ul class=\"figures\"><li><b>${:.4}</b>/h now ({} worker(s){})</li><li><b>${:.4}</b> today</li><li><b>${:.4}</b> this month</li>{}</ul>",
        s.fleet_hourly_usd,
        s.workers.len(),
        if s.unpriced_workers > 0 {
            format!(", {} unpriced", s.unpriced_workers)
        } else {
            String::new()
        },
        state.cost.today_usd,
        state.cost.month_usd,
        budget_item(state.budget.as_ref()),
    );
    if !state.cost.unknown_workers.is_empty() {
        let _ = write!(
            h,
            "<p class=\"warn\">price unknown for {}</p>",
            esc(&state.cost.unknown_workers.join(", "))
        );
    }
    h.push_str("</section>");

    h.push_str("<section id=\"workers\"><h2>Workers</h2>");
    if let Some(e) = &s.provider_list_error {
        let _ = write!(
            h,
            "<p class=\"warn\">the provider could not list workers: {}</p>",
            esc(e)
        );
    }
    if s.workers.is_empty() {
        h.push_str("<p>No workers.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table><thead><tr><th>worker</th><th>state</th><th>zone</th><th>uptime</th><th>idle teardown in</th><th>$/h</th><th>tasks</th></tr></thead><tbody>");
        for w in &s.workers {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&w.name),
                esc(&w.state),
                if w.cloud == "present" {
                    String::new()
                } else {
                    format!(" ({})", esc(&w.cloud))
                },
                esc(w.zone.as_deref().unwrap_or("-")),
                secs(w.uptime_secs),
                secs(w.idle_teardown_in_secs),
                w.hourly_usd.map_or("-".into(), |p| format!("{p:.4}")),
                w.tasks
                    .iter()
                    .map(|t| task_link(t))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</section>");

    h.push_str("<section id=\"tasks\"><h2>Tasks</h2>");
    if let Some(e) = &s.tracker_error {
        let _ = write!(
            h,
            "<p class=\"warn\">the tracker could not be read: {}</p>",
            esc(e)
        );
    }
    h.push_str("<div class=\"columns\">");
    for (state_name, title) in [
        ("in_progress", "In progress"),
        ("pending", "Pending"),
        ("blocked", "Blocked"),
        ("complete", "Complete"),
    ] {
        let tasks: Vec<_> = s
            .tasks
            .balls
            .iter()
            .filter(|t| t.state == state_name)
            .collect();
        let _ = write!(
            h,
            "<div class=\"column\" data-state=\"{state_name}\"><h3>{title} <span class=\"n\">{}</span></h3><ul>",
            tasks.len()
        );
        for t in tasks.iter().take(200) {
            let mut note = String::new();
            if state_name == "pending" && !t.waiting_on.is_empty() {
                note = format!(" <small>waits on {}</small>", esc(&t.waiting_on.join(", ")));
            }
            if state_name == "blocked" && !t.blocked_reason.is_empty() {
                note = format!(" <small>{}</small>", esc(&first_line(&t.blocked_reason)));
            }
            let _ = write!(
                h,
                "<li class=\"task\" data-id=\"{}\">{} {}{note}</li>",
                esc(&t.id),
                task_link(&t.id),
                esc(&t.title)
            );
        }
        if tasks.len() > 200 {
            let _ = write!(h, "<li>… and {} more</li>", tasks.len() - 200);
        }
        h.push_str("</ul></div>");
    }
    h.push_str("</div></section>");

    if !s.running.is_empty() {
        h.push_str("<section id=\"running\"><h2>Running</h2><div class=\"scroll\"><table><thead><tr><th>task</th><th>worker</th><th>attempt</th><th>tokens in/out</th><th>LLM $</th><th></th></tr></thead><tbody>");
        for r in &s.running {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
                task_link(&r.task),
                esc(&r.worker),
                r.attempt,
                r.input_tokens,
                r.output_tokens,
                r.llm_usd.map_or("-".into(), |u| format!("{u:.4}")),
                esc(r.warning.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</tbody></table></div></section>");
    }

    h.push_str("<section id=\"prs\"><h2>Pull requests</h2>");
    if s.pull_requests.is_empty() {
        h.push_str("<p>No open pull requests.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table><thead><tr><th>task</th><th>pull request</th><th>state</th><th>review</th><th>checks</th><th>feedback rounds</th></tr></thead><tbody>");
        for p in &s.pull_requests {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td></tr>",
                task_link(&p.task),
                pr_link(&p.url, p.number),
                esc(&p.state),
                esc(or_dash(&p.review)),
                esc(or_dash(&p.checks)),
                p.feedback_rounds,
                p.max_feedback_rounds,
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</section>");
}

fn budget_item(budget: Option<&BudgetCheck>) -> String {
    match budget {
        None => "<li>no budget (serve.budget_usd)</li>".into(),
        Some(BudgetCheck::Determined(r)) => format!(
            "<li class=\"budget {}\">budget <b>{}</b>: ${:.4} of ${:.2} this month{}</li>",
            r.status.name(),
            r.status.name(),
            r.expected_usd,
            r.limit_usd,
            r.percent.map_or(String::new(), |p| format!(" ({p:.1}%)")),
        ),
        Some(BudgetCheck::Undetermined(u)) => format!(
            "<li class=\"budget unknown\">budget <b>unknown</b> (limit ${:.2}): {}</li>",
            u.limit_usd,
            esc(&u.reason)
        ),
    }
}

fn task_link(id: &str) -> String {
    format!(
        "<a class=\"tasklink\" href=\"/?task={}\">{}</a>",
        esc(&query_value(id)),
        esc(id)
    )
}

/// A pull request's number, linked only to an http(s) address (never `javascript:`).
fn pr_link(url: &str, number: u64) -> String {
    if url.starts_with("https://") || url.starts_with("http://") {
        format!("<a href=\"{}\">#{number}</a>", esc(url))
    } else {
        format!("#{number}")
    }
}

/// `text` percent-encoded for a query value (RFC 3986 unreserved characters kept).
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn secs(s: Option<i64>) -> String {
    s.map_or("-".into(), |s| {
        fmt_secs(std::time::Duration::from_secs(s.max(0) as u64))
    })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// Text for HTML content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cwo</title>
<noscript><meta http-equiv="refresh" content="15"></noscript>
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 12px;color:#222;background:#fafafa}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:12px;border-bottom:1px solid #ddd}
header h1{margin:8px 0;font-size:22px}header p{margin:0;color:#666;font-size:13px}
h2{font-size:17px;margin:18px 0 6px}h3{font-size:14px;margin:4px 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;white-space:nowrap;font-size:13px}
.figures{display:flex;flex-wrap:wrap;gap:8px 20px;list-style:none;padding:0;margin:0}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:10px}
.column{background:#fff;border:1px solid #e4e4e4;border-radius:6px;padding:6px 8px}
.column ul{list-style:none;padding:0;margin:0}.column li{padding:3px 0;border-top:1px solid #f0f0f0;font-size:13px}
.n{color:#888;font-weight:normal}small{color:#777}.warn{color:#a40}
.budget.deny,.budget.unknown{color:#b00}.budget.warn{color:#a60}
pre:empty{display:none}
pre{background:#111;color:#ddd;padding:8px;max-height:60vh;overflow:auto;font-size:12px;white-space:pre-wrap;word-break:break-all}
</style></head><body>
"#;

/// Refreshes the board every 5 s (the page without a log, its tables swapped in) and follows
/// the selected attempt's log from the offset the page was rendered with; EventSource resumes
/// from the last event id on its own after a drop, on the same attempt.
const SCRIPT: &str = r#"<script>
(function(){
  var board=document.getElementById('board');
  function refresh(){
    fetch('/',{credentials:'same-origin'}).then(function(r){return r.ok?r.text():null}).then(function(t){
      if(!t)return;var d=new DOMParser().parseFromString(t,'text/html');var b=d.getElementById('board');
      if(b)board.innerHTML=b.innerHTML;
    }).catch(function(){});
  }
  setInterval(refresh,5000);
  var pre=document.getElementById('logtext');
  var task=pre&&pre.getAttribute('data-task');
  if(task&&window.EventSource){
    var off=pre.getAttribute('data-offset')||'0';
    var attempt=pre.getAttribute('data-attempt')||'';
    var es=new EventSource('/api/v1/tasks/'+encodeURIComponent(task)+'/log/stream?offset='+off+'&attempt='+attempt);
    es.addEventListener('log',function(e){
      var near=pre.scrollTop+pre.clientHeight>=pre.scrollHeight-20;
      pre.appendChild(document.createTextNode(JSON.parse(e.data)));
      if(near)pre.scrollTop=pre.scrollHeight;
    });
    es.addEventListener('end',function(){es.close();pre.appendChild(document.createTextNode('\n[cwo] the attempt ended\n'));});
  }
})();
</script>"#;
