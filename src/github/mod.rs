//! GitHub's REST API as cwo uses it: one repository, one token held by the controller.
//!
//! octocrab is the HTTP client (TLS, base URI for GitHub Enterprise Server, timeouts, the GitHub
//! App's JWT). cwo reads responses into its own small structs (`api.rs`) rather than octocrab's
//! models: those require dozens of fields cwo never reads, and a field a GHES version leaves out
//! would fail every poll.
//!
//! Being a good API citizen
//! (<https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api>):
//! - every GET is conditional: the ETag of the last answer goes back as `If-None-Match`, and a
//!   304 (which costs no rate limit) is answered from the cache, so an idle poll is free;
//! - `x-ratelimit-remaining: 0` or a `retry-after` stops every request until the reset (a short
//!   wait is waited out, a long one is returned as [`GithubError::RateLimited`] for the loop to
//!   report), so cwo never hammers;
//! - 5xx and lost connections are retried with backoff (requests that cannot duplicate anything);
//! - lists are paginated (`per_page=100`, following `Link: rel="next"`).

pub(crate) mod webhook;

mod api;
mod error;

pub use api::*;
pub use error::GithubError;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;

use crate::config::{GcpSettings, GithubSettings};

/// A rate-limit wait up to this long is waited out inside the request; a longer one is returned.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(20);
/// Retries of a request that met a 5xx or a lost connection.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

impl RepoRef {
    pub fn parse(s: &str) -> Option<RepoRef> {
        let (owner, name) = s.trim().split_once('/')?;
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (ok(owner) && ok(name)).then(|| RepoRef {
            owner: owner.into(),
            name: name.into(),
        })
    }

    /// The repository a git remote URL names: `https://HOST/owner/name(.git)`,
    /// `git@HOST:owner/name(.git)`, `ssh://git@HOST/owner/name`. Returns the host too.
    pub fn from_remote_url(url: &str) -> Option<(String, RepoRef)> {
        let url = url.trim();
        let (host, path) = if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
            let (authority, path) = rest.split_once('/')?;
            let host = authority.rsplit('@').next()?;
            (host.to_string(), path)
        } else {
            // scp-like: [user@]host:path
            let (authority, path) = url.split_once(':')?;
            let host = authority.rsplit('@').next()?;
            (host.to_string(), path)
        };
        let path = path.trim_end_matches('/').trim_end_matches(".git");
        let repo = RepoRef::parse(path)?;
        Some((host, repo))
    }
}

/// Where the token came from (named in every credential error, never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `github.token`, a secret reference.
    Setting(String),
    Env(&'static str),
    GhCli,
    App(u64),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Setting(r) => write!(f, "github.token ({r})"),
            TokenSource::Env(v) => write!(f, "${v}"),
            TokenSource::GhCli => f.write_str("`gh auth token`"),
            TokenSource::App(id) => write!(f, "GitHub App {id}'s installation token"),
        }
    }
}

/// An installation token, when it expires, and the installation it is for.
type Minted = (String, DateTime<Utc>, u64);

/// How cwo authenticates: a token, or a GitHub App whose installation tokens it mints.
#[derive(Clone)]
enum Auth {
    Token(String),
    App {
        app_id: u64,
        /// The App-authenticated client (JWT bearer) that mints installation tokens.
        app: octocrab::Octocrab,
        minted: Arc<Mutex<Option<Minted>>>,
    },
}

/// The GitHub settings' credentials, resolved on the controller: `github.app_id` + `app_key`,
/// else `github.token`, else GH_TOKEN, GITHUB_TOKEN, `gh auth token`.
pub struct Credentials {
    auth: Auth,
    source: TokenSource,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({})", self.source)
    }
}

impl Credentials {
    pub async fn resolve(
        gh: &GithubSettings,
        gcp: &GcpSettings,
    ) -> Result<Credentials, GithubError> {
        if gh.app_id != 0 {
            let pem = crate::secrets::resolve_one("github.app_key", &gh.app_key, gcp)
                .await
                .map_err(GithubError::Secret)?;
            let app_err = |message: String| GithubError::App {
                app_id: gh.app_id,
                message,
            };
            let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                app_err(format!(
                    "github.app_key is not an RSA private key in PEM: {e}"
                ))
            })?;
            let app = builder(&gh.api_url)?
                .app(octocrab::models::AppId(gh.app_id), key)
                .build()
                .map_err(|source| GithubError::Client {
                    api: gh.api_url.clone(),
                    source: Box::new(source),
                })?;
            return Ok(Credentials {
                auth: Auth::App {
                    app_id: gh.app_id,
                    app,
                    minted: Arc::default(),
                },
                source: TokenSource::App(gh.app_id),
            });
        }
        let (token, source) = if !gh.token.is_empty() {
            let t = crate::secrets::resolve_one("github.token", &gh.token, gcp)
                .await
                .map_err(GithubError::Secret)?;
            (t, TokenSource::Setting(gh.token.clone()))
        } else if let Some((t, var)) = ["GH_TOKEN", "GITHUB_TOKEN"].into_iter().find_map(|v| {
            std::env::var(v)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| (t, v))
        }) {
            (t, TokenSource::Env(var))
        } else {
            let out = tokio::process::Command::new("gh")
                .args(["auth", "token", "--hostname"])
                .arg(host_of(&gh.api_url))
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .await;
            match out {
                Ok(o) if o.status.success() && !o.stdout.trim_ascii().is_empty() => (
                    String::from_utf8_lossy(&o.stdout).trim().to_string(),
                    TokenSource::GhCli,
                ),
                _ => return Err(GithubError::NoToken),
            }
        };
        Ok(Credentials {
            auth: Auth::Token(token.trim().to_string()),
            source,
        })
    }

    /// A plain token (tests and tools that already hold one).
    pub fn token(token: String, source: TokenSource) -> Credentials {
        Credentials {
            auth: Auth::Token(token),
            source,
        }
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }
}

/// The host GitHub's web and git live on for an API URL: `api.github.com` → `github.com`,
/// `https://HOST/api/v3` → `HOST`.
pub fn host_of(api_url: &str) -> String {
    let rest = api_url.split_once("://").map_or(api_url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority {
        "api.github.com" => "github.com".into(),
        a => a.to_string(),
    }
}

fn builder(
    api_url: &str,
) -> Result<
    octocrab::OctocrabBuilder<
        octocrab::NoSvc,
        octocrab::DefaultOctocrabBuilderConfig,
        octocrab::NoAuth,
        octocrab::NotLayerReady,
    >,
    GithubError,
> {
    octocrab::Octocrab::builder()
        .base_uri(api_url)
        .map(|b| {
            b.set_connect_timeout(Some(Duration::from_secs(10)))
                .set_read_timeout(Some(Duration::from_secs(60)))
        })
        .map_err(|source| GithubError::Client {
            api: api_url.to_string(),
            source: Box::new(source),
        })
}

/// A cached GET: the ETag and the body it stands for.
struct Cached {
    etag: HeaderValue,
    body: bytes::Bytes,
    next: Option<String>,
}

/// What the client counts (the benchmark and `cwo status` read it).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests that reached GitHub.
    pub requests: AtomicU64,
    /// Conditional GETs answered 304 (free).
    pub not_modified: AtomicU64,
    /// Times a request waited for or stopped at the rate limit.
    pub rate_limited: AtomicU64,
}

/// The client for one repository. Cheap to clone. Its requests run on a runtime of its own, so
/// the blocking tracker calls and the async loop share one connection pool whatever thread they
/// come from.
#[derive(Clone)]
pub struct Github {
    inner: Arc<Inner>,
}

struct Inner {
    octo: octocrab::Octocrab,
    rt: Runtime,
    api_url: String,
    repo: RepoRef,
    credentials: Credentials,
    cache: Mutex<HashMap<String, Cached>>,
    /// No request leaves before this instant (a used-up rate limit).
    blocked_until: Mutex<Option<DateTime<Utc>>>,
    stats: Stats,
    login: tokio::sync::OnceCell<String>,
    installation: tokio::sync::OnceCell<u64>,
    /// The last `x-oauth-scopes` header seen (classic tokens only).
    scopes: Mutex<Option<String>>,
}

/// A runtime of the client's own, shut down in the background when the client goes (a runtime
/// dropped inside async code would panic).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One HTTP request cwo makes.
pub(crate) struct Call<'a> {
    method: http::Method,
    path: String,
    body: Option<&'a serde_json::Value>,
    /// Safe to send again after a 5xx or a lost connection.
    idempotent: bool,
}

/// An answer: the `Link: rel="next"` URL and the body.
struct Answer {
    next: Option<String>,
    body: bytes::Bytes,
}

impl Github {
    pub fn new(
        api_url: &str,
        repo: RepoRef,
        credentials: Credentials,
    ) -> Result<Github, GithubError> {
        let api_url = api_url.trim_end_matches('/').to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cwo-github")
            .enable_all()
            .build()
            .map_err(|e| GithubError::NoRepo(format!("cannot start the GitHub client: {e}")))?;
        let octo = {
            let _guard = rt.enter();
            builder(&api_url)?
                .build()
                .map_err(|source| GithubError::Client {
                    api: api_url.clone(),
                    source: Box::new(source),
                })?
        };
        Ok(Github {
            inner: Arc::new(Inner {
                octo,
                rt: Runtime(Some(rt)),
                api_url,
                repo,
                credentials,
                cache: Mutex::default(),
                blocked_until: Mutex::default(),
                stats: Stats::default(),
                login: tokio::sync::OnceCell::new(),
                installation: tokio::sync::OnceCell::new(),
                scopes: Mutex::default(),
            }),
        })
    }

    pub fn repo(&self) -> &RepoRef {
        &self.inner.repo
    }

    pub fn api_url(&self) -> &str {
        &self.inner.api_url
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn token_source(&self) -> &TokenSource {
        &self.inner.credentials.source
    }

    /// A classic token's OAuth scopes, as GitHub's last answer listed them (`None`: not a
    /// classic token, or nothing asked yet; fine-grained and App tokens have permissions
    /// instead, seen in the repository's `permissions`).
    pub fn token_scopes(&self) -> Option<Vec<String>> {
        let s = self.inner.scopes.lock().unwrap().clone()?;
        Some(
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.inner
            .rt
            .0
            .as_ref()
            .expect("the runtime lives as long as the client")
    }

    /// Runs `f` on the client's runtime and waits for it from synchronous code (the tracker's
    /// calls, on the blocking pool or any other thread).
    pub fn block_on<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let rt = self.runtime();
        let handle = rt.handle().clone();
        // A thread of its own: `block_on` may not run on a thread that drives async code.
        std::thread::scope(|s| {
            s.spawn(move || handle.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs `f` on the client's runtime from async code.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let rt = self.runtime();
        match rt.spawn(f).await {
            Ok(v) => v,
            Err(e) => match e.try_into_panic() {
                Ok(p) => std::panic::resume_unwind(p),
                Err(e) => panic!("a GitHub request was cancelled: {e}"),
            },
        }
    }

    /// The token for an API request or one git push (an App's installation token, minted or
    /// renewed when fewer than ten minutes of its hour are left). Git gets it through its
    /// environment only.
    pub async fn git_token(&self) -> Result<String, GithubError> {
        match &self.inner.credentials.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::App { .. } => self.app_token().await,
        }
    }

    async fn app_token(&self) -> Result<String, GithubError> {
        let Auth::App {
            app_id,
            app,
            minted,
        } = &self.inner.credentials.auth
        else {
            unreachable!("only called for an App");
        };
        if let Some((t, exp, _)) = minted.lock().unwrap().as_ref()
            && *exp - Utc::now() > chrono::Duration::minutes(10)
        {
            return Ok(t.clone());
        }
        let installation = *self
            .inner
            .installation
            .get_or_try_init(|| async {
                let path = format!("/repos/{}/installation", self.inner.repo);
                let v: serde_json::Value = self.app_call(app, http::Method::GET, &path).await?;
                v["id"].as_u64().ok_or_else(|| GithubError::App {
                    app_id: *app_id,
                    message: format!("is not installed on {}", self.inner.repo),
                })
            })
            .await?;
        let path = format!("/app/installations/{installation}/access_tokens");
        let v: serde_json::Value = self.app_call(app, http::Method::POST, &path).await?;
        let token = v["token"].as_str().unwrap_or_default().to_string();
        let exp = v["expires_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|| Utc::now() + chrono::Duration::minutes(59));
        if token.is_empty() {
            return Err(GithubError::App {
                app_id: *app_id,
                message: "GitHub minted no installation token".into(),
            });
        }
        *minted.lock().unwrap() = Some((token.clone(), exp, installation));
        Ok(token)
    }

    /// A request authenticated as the App itself (JWT bearer, added by octocrab).
    async fn app_call(
        &self,
        app: &octocrab::Octocrab,
        method: http::Method,
        path: &str,
    ) -> Result<serde_json::Value, GithubError> {
        let app_id = match &self.inner.credentials.auth {
            Auth::App { app_id, .. } => *app_id,
            Auth::Token(_) => 0,
        };
        let req = app
            .build_request(
                http::Request::builder().method(method.clone()).uri(path),
                None::<&()>,
            )
            .map_err(|e| GithubError::App {
                app_id,
                message: e.to_string(),
            })?;
        let res = app
            .execute(req)
            .await
            .map_err(|source| GithubError::Transport {
                method: method.to_string(),
                path: path.to_string(),
                api: self.inner.api_url.clone(),
                source: Box::new(source),
            })?;
        let status = res.status().as_u16();
        let body = app.body_to_string(res).await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(GithubError::App {
                app_id,
                message: format!(
                    "{method} {path} answered {status}: {}",
                    message_of(body.as_bytes())
                ),
            });
        }
        serde_json::from_str(&body).map_err(|source| GithubError::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// GET `path` (conditional), decoded.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, GithubError> {
        let a = self.send(Call::get(path)).await?;
        decode(path, &a.body)
    }

    /// Every page of a list.
    pub(crate) async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<T>, GithubError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{sep}per_page=100"));
        let mut out = Vec::new();
        while let Some(p) = next.take() {
            let a = self.send(Call::get(&p)).await?;
            out.extend(decode::<Vec<T>>(&p, &a.body)?);
            next = a.next;
        }
        Ok(out)
    }

    /// A write; `idempotent` = safe to send again after a 5xx.
    pub(crate) async fn write<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        idempotent: bool,
    ) -> Result<T, GithubError> {
        let a = self
            .send(Call {
                method,
                path: path.to_string(),
                body,
                idempotent,
            })
            .await?;
        let bytes: &[u8] = if a.body.is_empty() { b"null" } else { &a.body };
        decode(path, bytes)
    }

    /// Sends one request: waits out a short rate limit, retries 5xx and lost connections
    /// (idempotent requests only), answers a 304 from the cache, and types the errors.
    async fn send(&self, call: Call<'_>) -> Result<Answer, GithubError> {
        let inner = &self.inner;
        let path = self.full_path(&call.path);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_for_rate_limit().await?;
            let cached_etag = (call.method == http::Method::GET)
                .then(|| {
                    inner
                        .cache
                        .lock()
                        .unwrap()
                        .get(&path)
                        .map(|c| c.etag.clone())
                })
                .flatten();
            let token = self.git_token().await?;
            let mut builder = http::Request::builder()
                .method(call.method.clone())
                .uri(path.as_str())
                .header(http::header::ACCEPT, "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28");
            let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                GithubError::BadCredentials {
                    source_: inner.credentials.source.clone(),
                    message: "the token has characters a header cannot carry".into(),
                }
            })?;
            auth.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, auth);
            if let Some(etag) = &cached_etag {
                builder = builder.header(http::header::IF_NONE_MATCH, etag.clone());
            }
            let req = inner
                .octo
                .build_request(builder, call.body)
                .map_err(|source| self.transport(&call, source))?;
            inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            let res = match inner.octo.execute(req).await {
                Ok(r) => r,
                Err(source) if call.idempotent && attempt <= RETRIES => {
                    tracing::warn!(path = %call.path, error = %source, "GitHub request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                Err(source) => return Err(self.transport(&call, source)),
            };
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            self.note_rate_limit(status, &headers);
            let next = next_link(&headers);
            if let Some(scopes) = headers.get("x-oauth-scopes").and_then(|v| v.to_str().ok()) {
                *inner.scopes.lock().unwrap() = Some(scopes.to_string());
            }
            let etag = headers.get(http::header::ETAG).cloned();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .map(|b| b.to_bytes())
                .map_err(|source| self.transport(&call, source))?;
            match status {
                304 => {
                    inner.stats.not_modified.fetch_add(1, Ordering::Relaxed);
                    let cache = inner.cache.lock().unwrap();
                    if let Some(c) = cache.get(&path) {
                        return Ok(Answer {
                            next: c.next.clone(),
                            body: c.body.clone(),
                        });
                    }
                    drop(cache);
                    continue;
                }
                200..=299 => {
                    if call.method == http::Method::GET
                        && let Some(etag) = etag
                    {
                        inner.cache.lock().unwrap().insert(
                            path.clone(),
                            Cached {
                                etag,
                                body: body.clone(),
                                next: next.clone(),
                            },
                        );
                    }
                    return Ok(Answer { next, body });
                }
                403 | 429 if self.rate_limited_now() => {
                    inner.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    // Waited out (or returned) at the top of the loop; a write is not sent
                    // twice unless it is idempotent.
                    if !call.idempotent && call.method == http::Method::POST {
                        return Err(self.rate_limit_error());
                    }
                    continue;
                }
                500..=599 if call.idempotent && attempt <= RETRIES => {
                    tracing::warn!(path = %call.path, status, "GitHub answered with a server error; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                _ => return Err(self.status_error(&call, status, &body)),
            }
        }
    }

    /// The path on the API as octocrab's base URI wants it (absolute `Link` URLs are cut to
    /// their path, since they name the same host).
    fn full_path(&self, path: &str) -> String {
        if let Some(rest) = path.split_once("://").map(|(_, r)| r) {
            let p = rest.find('/').map_or("/", |i| &rest[i..]);
            // The API's own path prefix (GHES: /api/v3) is in the link; octocrab adds it again.
            let prefix = self
                .inner
                .api_url
                .split_once("://")
                .map_or("", |(_, r)| r.find('/').map_or("", |i| &r[i..]));
            return p.strip_prefix(prefix).unwrap_or(p).to_string();
        }
        path.to_string()
    }

    fn transport(&self, call: &Call<'_>, source: octocrab::Error) -> GithubError {
        GithubError::Transport {
            method: call.method.to_string(),
            path: call.path.clone(),
            api: self.inner.api_url.clone(),
            source: Box::new(source),
        }
    }

    fn status_error(&self, call: &Call<'_>, status: u16, body: &[u8]) -> GithubError {
        let (method, path) = (call.method.to_string(), call.path.clone());
        let message = message_of(body);
        let repo_path = format!("/repos/{}", self.inner.repo);
        match status {
            401 => GithubError::BadCredentials {
                source_: self.inner.credentials.source.clone(),
                message,
            },
            404 if path == repo_path => GithubError::RepoNotVisible {
                repo: self.inner.repo.to_string(),
                api: self.inner.api_url.clone(),
                source_: self.inner.credentials.source.clone(),
            },
            404 => GithubError::NotFound { method, path },
            403 => GithubError::Forbidden {
                method,
                path,
                message,
            },
            422 => GithubError::Validation {
                method,
                path,
                message,
            },
            _ => GithubError::Status {
                method,
                path,
                status,
                message,
            },
        }
    }

    /// Reads the rate-limit headers of an answer: a used-up limit blocks every request until
    /// its reset (`x-ratelimit-reset`) or for `retry-after` seconds.
    fn note_rate_limit(&self, status: u16, headers: &HeaderMap) {
        let num = |name: &str| -> Option<i64> { headers.get(name)?.to_str().ok()?.parse().ok() };
        let now = Utc::now();
        let until =
            if let Some(secs) = num("retry-after").filter(|_| status == 403 || status == 429) {
                Some(now + chrono::Duration::seconds(secs.max(1)))
            } else if num("x-ratelimit-remaining") == Some(0) {
                num("x-ratelimit-reset")
                    .and_then(|r| DateTime::from_timestamp(r, 0))
                    .map(|t| t.max(now + chrono::Duration::seconds(1)))
            } else if status == 429 {
                // Rate limited without headers: GitHub's docs say to wait at least a minute.
                Some(now + chrono::Duration::seconds(60))
            } else {
                None
            };
        *self.inner.blocked_until.lock().unwrap() = until;
    }

    fn rate_limited_now(&self) -> bool {
        self.inner
            .blocked_until
            .lock()
            .unwrap()
            .is_some_and(|u| u > Utc::now())
    }

    fn rate_limit_error(&self) -> GithubError {
        let until = self
            .inner
            .blocked_until
            .lock()
            .unwrap()
            .unwrap_or_else(Utc::now);
        GithubError::RateLimited { until }
    }

    /// Before a request: a used-up limit that resets soon is waited out (and said on stderr);
    /// a later reset is returned, and no request is sent.
    async fn wait_for_rate_limit(&self) -> Result<(), GithubError> {
        let Some(until) = *self.inner.blocked_until.lock().unwrap() else {
            return Ok(());
        };
        let left = (until - Utc::now()).to_std().unwrap_or_default();
        if left.is_zero() {
            return Ok(());
        }
        if left > MAX_INLINE_WAIT {
            return Err(GithubError::RateLimited { until });
        }
        eprintln!(
            "GitHub's rate limit is used up; waiting {:.0}s for its reset",
            left.as_secs_f64().ceil()
        );
        tokio::time::sleep(left).await;
        Ok(())
    }
}

impl<'a> Call<'a> {
    fn get(path: &str) -> Call<'a> {
        Call {
            method: http::Method::GET,
            path: path.to_string(),
            body: None,
            idempotent: true,
        }
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, GithubError> {
    serde_json::from_slice(body).map_err(|source| GithubError::Decode {
        path: path.to_string(),
        source,
    })
}

/// GitHub's `message` (and the first validation error's), or the body's first line.
fn message_of(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut m = v["message"].as_str().unwrap_or("").to_string();
            if let Some(e) = v["errors"].as_array().and_then(|e| e.first()) {
                let detail = e["message"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| e["code"].as_str().map(str::to_string));
                if let Some(d) = detail {
                    m = format!("{m}: {d}");
                }
            }
            m
        }
        Err(_) => String::from_utf8_lossy(body)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(http::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        rel.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_name_their_repository() {
        let cases = [
            ("https://github.com/o/r.git", "github.com", "o/r"),
            ("https://github.com/o/r", "github.com", "o/r"),
            ("git@github.com:o/r.git", "github.com", "o/r"),
            (
                "ssh://git@ghe.example:2222/team/repo.x.git",
                "ghe.example:2222",
                "team/repo.x",
            ),
            (
                "http://127.0.0.1:8080/acme/widgets.git",
                "127.0.0.1:8080",
                "acme/widgets",
            ),
        ];
        for (url, host, repo) in cases {
            let (h, r) = RepoRef::from_remote_url(url).unwrap_or_else(|| panic!("{url}"));
            assert_eq!((h.as_str(), r.to_string().as_str()), (host, repo), "{url}");
        }
        assert_eq!(RepoRef::from_remote_url("/srv/git/repo.git"), None);
        assert_eq!(RepoRef::from_remote_url("../other"), None);
    }

    #[test]
    fn api_urls_give_the_web_host() {
        assert_eq!(host_of("https://api.github.com"), "github.com");
        assert_eq!(host_of("https://ghe.corp/api/v3"), "ghe.corp");
        assert_eq!(host_of("http://127.0.0.1:9/api/v3"), "127.0.0.1:9");
    }

    #[test]
    fn the_next_link_is_found_among_the_others() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::LINK,
            HeaderValue::from_static(
                "<https://api.github.com/repositories/1/issues?page=2>; rel=\"next\", <https://api.github.com/repositories/1/issues?page=5>; rel=\"last\"",
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/issues?page=2")
        );
    }
}
