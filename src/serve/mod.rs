//! `cwo serve`'s HTTP server (issue 17), beside the loop `cwo run` runs: GitHub webhooks that
//! wake the loop (checked by `github/webhook.rs`), `/healthz` (`health.rs`), the JSON state API and an agent log
//! over server-sent events (`api.rs`), and the dashboard (`page.rs`). axum on hyper; loopback
//! by default, a bearer token (`serve.token`) required anywhere else.

mod api;
mod health;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::journal::{Journal, JournalError};
use crate::printer::Printer;
use crate::project::Project;
use crate::secrets::SecretError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without serve.token: anyone who can reach it would see the fleet and its logs"
    )]
    NeedsToken { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "serve.public_url is set ({url}) but serve.token is not: a tunnel or proxy reaches this server from loopback, so everyone it serves would see the fleet and its logs"
    )]
    PublicNeedsToken { url: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl ServeError {
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            ServeError::NeedsToken { .. } => Some(
                "set serve.token to a secret reference (serve.token = \"env:CWO_SERVE_TOKEN\"), or listen on 127.0.0.1"
                    .into(),
            ),
            ServeError::PublicNeedsToken { .. } => Some(
                "set serve.token to a secret reference (serve.token = \"env:CWO_SERVE_TOKEN\"), or leave serve.public_url empty".into(),
            ),
            ServeError::Secret(SecretError::Empty { key }) => Some(format!(
                "put the value in what {key} refers to, or set {key} = \"\" to go without"
            )),
            ServeError::Bind { .. } => Some(
                "another process may hold the port: pick another with --listen, or stop it".into(),
            ),
            _ => None,
        }
    }
}

impl From<ServeError> for crate::error::CommandError {
    fn from(e: ServeError) -> crate::error::CommandError {
        use crate::error::{CommandError, ErrorKind};
        let e = match e {
            ServeError::Journal(j) => return j.into(),
            other => other,
        };
        let hint = e.hint();
        let kind = match &e {
            ServeError::Bind { .. } => ErrorKind::User,
            _ => ErrorKind::Usage,
        };
        let err = CommandError::new(kind, Arc::new(e));
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

/// What every handler shares.
pub(crate) struct Inner {
    pub(crate) project: Project,
    pub(crate) printer: Printer,
    pub(crate) journal: Journal,
    token: Option<String>,
    webhook_secret: Option<String>,
    wake: Arc<Notify>,
    health: health::Health,
    stop: CancellationToken,
    /// The last state collected, and when: requests within `api::STATE_TTL` share it, so any
    /// number of open dashboards cost one provider list and one tracker read per interval.
    state: tokio::sync::Mutex<Option<(std::time::Instant, crate::report::serve::ServeState)>>,
}

type App = Arc<Inner>;

/// How long a stopping server waits for the requests still open.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running server.
pub(crate) struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, ends the log streams and waits for the open requests.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        // A client that stopped reading (a phone put away mid-stream) must not keep cwo up.
        match tokio::time::timeout(STOP_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
            Err(_) => {
                tracing::warn!("open HTTP requests did not end within {STOP_GRACE:?}; closed");
                task.abort();
            }
        }
    }
}

/// Resolves the secrets, binds `listen` and serves until [`Running::stop`]. `wake` is the
/// loop's: a verified webhook delivery notifies it.
pub(crate) async fn start(
    project: &Project,
    printer: Printer,
    listen: SocketAddr,
    wake: Arc<Notify>,
) -> Result<Running, ServeError> {
    let s = project.settings();
    let token = crate::secrets::resolve_nonempty("serve.token", &s.serve.token, &s.gcp).await?;
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(ServeError::NeedsToken { addr: listen });
    }
    if token.is_none() && !s.serve.public_url.is_empty() {
        return Err(ServeError::PublicNeedsToken {
            url: s.serve.public_url.clone(),
        });
    }
    let webhook_secret =
        crate::secrets::resolve_nonempty("github.webhook_secret", &s.github.webhook_secret, &s.gcp)
            .await?;
    let journal = project.journal()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: listen,
        source,
    })?;
    let stop = CancellationToken::new();
    let health = health::Health::default();
    let observed = health::Observed::of(project, &journal).await;
    tokio::spawn(health::observe(health.clone(), observed, stop.clone()));
    if webhook_secret.is_none() {
        printer.warn(
            "github.webhook_secret is not set: webhook deliveries are refused (401); the loop polls as usual",
        );
    }
    let app: App = Arc::new(Inner {
        project: project.clone(),
        printer,
        journal,
        token,
        webhook_secret,
        wake,
        health,
        stop: stop.clone(),
        state: tokio::sync::Mutex::new(None),
    });
    let router = router(app);
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    printer.status(format!(
        "serving http://{addr}/ (dashboard), /healthz, /api/v1/state, /webhooks/github"
    ));
    Ok(Running { stop, task })
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(api::page))
        .route("/healthz", get(api::healthz))
        .route("/api/v1/state", get(api::state))
        .route("/api/v1/workers", get(api::workers))
        .route("/api/v1/tasks/{id}", get(api::task))
        .route("/api/v1/tasks/{id}/log", get(api::log))
        .route("/api/v1/tasks/{id}/log/stream", get(api::log_stream))
        .route(
            "/webhooks/github",
            post(api::webhook).layer(DefaultBodyLimit::max(crate::github::webhook::MAX_BODY)),
        )
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

/// With a token set: every route but the webhook (its own HMAC) and `/healthz` wants it, as
/// `Authorization: Bearer <token>` or the `cwo_token` cookie that `/?token=<token>` sets (a
/// browser's EventSource sends no header, only cookies).
async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/webhooks/github" {
        // Its own HMAC decides; a rebound name gains nothing there.
        return next.run(req).await;
    }
    let Some(token) = &app.token else {
        // No token means loopback only, and only under a loopback name: a web page the
        // operator visits cannot rebind its own domain to 127.0.0.1 and read the API.
        if !loopback_host(req.headers()) {
            return api::error(
                StatusCode::FORBIDDEN,
                "this server answers only to 127.0.0.1, [::1] or localhost without serve.token",
            );
        }
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/healthz" || path == "/webhooks/github" {
        return next.run(req).await;
    }
    if path == "/"
        && let Some(given) = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
    {
        if !same(given.as_bytes(), token.as_bytes()) {
            return unauthorized("the token in the address is not serve.token");
        }
        // The token goes into a cookie and out of the address bar (and the browser's history).
        let secure = if app
            .project
            .settings()
            .serve
            .public_url
            .starts_with("https://")
        {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!("cwo_token={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
        return match HeaderValue::from_str(&cookie) {
            Ok(v) => (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, HeaderValue::from_static("/")),
                    (header::SET_COOKIE, v),
                ],
            )
                .into_response(),
            Err(_) => api::error(
                StatusCode::BAD_REQUEST,
                "serve.token has characters a cookie cannot carry: send it as `Authorization: Bearer <token>`",
            ),
        };
    }
    if authorized(&app, req.headers()) {
        return next.run(req).await;
    }
    unauthorized(
        "this server wants serve.token: `Authorization: Bearer <token>`, or open /?token=<token> once in a browser",
    )
}

/// The token a request carries: the bearer header, else the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if let Some((scheme, bearer)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(bearer.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("cwo_token=").map(String::from))
}

/// Whether the request names this server by a loopback name (`Host`, port aside).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: no browser sends that.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The request carries serve.token (or there is none to carry).
pub(crate) fn authorized(app: &Inner, headers: &HeaderMap) -> bool {
    match &app.token {
        None => true,
        Some(token) => presented(headers).is_some_and(|g| same(g.as_bytes(), token.as_bytes())),
    }
}

/// Equal, in time that does not depend on where they differ (only on the length).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(why: &str) -> Response {
    let mut r = api::error(StatusCode::UNAUTHORIZED, why);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}
