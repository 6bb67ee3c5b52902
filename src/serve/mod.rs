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
}

type App = Arc<Inner>;

/// A running server.
pub(crate) struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, ends the log streams and waits for the open requests.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
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
    let token = match s.serve.token.as_str() {
        "" => None,
        r => Some(crate::secrets::resolve_one("serve.token", r, &s.gcp).await?),
    };
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(ServeError::NeedsToken { addr: listen });
    }
    let webhook_secret = match s.github.webhook_secret.as_str() {
        "" => None,
        r => Some(crate::secrets::resolve_one("github.webhook_secret", r, &s.gcp).await?),
    };
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
    let observed = health::Observed::of(project, &journal, printer).await;
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
    let Some(token) = &app.token else {
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
        let cookie = format!("cwo_token={token}; Path=/; HttpOnly; SameSite=Strict");
        let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    if presented(req.headers()).is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    unauthorized(
        "this server wants serve.token: `Authorization: Bearer <token>`, or open /?token=<token> once in a browser",
    )
}

/// The token a request carries: the bearer header, else the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
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
