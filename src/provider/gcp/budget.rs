//! The cloud's own budget alert: a Cloud Billing budget on the project, so Google emails the
//! billing account's administrators when the month's spend crosses the thresholds, whatever cwo
//! (or anything else) is doing.
//!
//! Why hand-written REST: the official Rust clients (googleapis/google-cloud-rust) publish
//! `google-cloud-billing-v1` (the Cloud Billing API: accounts, a project's billing info) but no
//! crate for the Cloud Billing Budget API (billingbudgets.googleapis.com); none is in this
//! machine's cargo registry either, and `cargo search google-cloud-billing` could not be asked
//! here (the registry mirror answers 404 to searches). The unofficial gRPC-generated crates pull
//! tonic and prost for what is five JSON calls. So the calls are made here, and only here, with
//! reqwest and the token (plus quota-project header) from google-cloud-auth: Application Default
//! Credentials, or none at all with `gcp.credentials = "anonymous"` (emulators and tests).
//!
//! API facts used (https://cloud.google.com/billing/docs/reference/budget/rest/v1/billingAccounts.budgets
//! and googleapis/google/cloud/billing/budgets/v1/budget_model.proto):
//! - `POST /v1/billingAccounts/{id}/budgets` creates (the server assigns `name`);
//!   `GET /v1/billingAccounts/{id}/budgets` lists (`pageSize`, `pageToken`, `nextPageToken`);
//!   `PATCH /v1/{name}?updateMask=…` updates, checking `etag`; `DELETE /v1/{name}` deletes.
//! - `amount.specifiedAmount` is a `google.type.Money` (`units` int64 as a string, `nanos`);
//!   `currencyCode` may be left out on create (it is the billing account's), and on update must
//!   match the budget's.
//! - `thresholdRules[].thresholdPercent` is a fraction (0.5 = 50 %); `spendBasis` defaults to
//!   CURRENT_SPEND. Threshold rules are required for the email notifications, which go to the
//!   billing account's administrators and users unless `disableDefaultIamRecipients`.
//! - `budgetFilter.projects` takes `projects/{number}` (the API stores and returns numbers, and
//!   an update with a project ID is refused), hence one Cloud Resource Manager read.
//! - `budgetFilter.labels` allows a single label with a single value; `calendarPeriod` defaults to
//!   MONTH; credits (the free tier among them) are subtracted unless told otherwise.
//!
//! Scope cwo gives its budget: the project AND the label `cwo-managed=true` (the one label the
//! API allows), so the alert counts what cwo creates and labels (VMs, and their boot disks once
//! those carry the labels) in this GCP project, for every cwo project using it, and not the rest
//! of the project's usage. The display name `cwo: <gcp project>` is how cwo finds it again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use crate::config::GcpSettings;
use crate::provider::Check;
use crate::provider::{ProviderError, ProviderErrorKind};

/// A call that failed before Google answered (no connection, a timeout): worth another try; the
/// client's error is kept as the source.
fn transient(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> ProviderError {
    ProviderError::Api {
        kind: ProviderErrorKind::Transient,
        what: what.to_string(),
        source: Box::new(e),
    }
}

/// The role that may create, change and delete budgets on a billing account.
pub(crate) const ROLE: &str = "roles/billing.costsManager";
/// The one label the budget is scoped to.
pub(crate) const LABEL: (&str, &str) = ("cwo-managed", "true");
/// Compute Engine's service id in the Cloud Billing catalog.
const COMPUTE_SERVICE: &str = "services/6F81-5844-456A";
/// Tries of a call that fails with 429 or 5xx.
const TRIES: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The fields of a budget cwo owns; an update leaves every other one (Pub/Sub topic, monitoring
/// channels, ownership) as it is.
const OWNED: &str = "displayName,budgetFilter,amount,thresholdRules,notificationsRule";

/// The display name cwo's budget carries in a GCP project (60 characters at most).
pub(crate) fn display_name(gcp_project: &str) -> String {
    format!("cwo: {gcp_project}")
}

/// "billingAccounts/X" or "X" → "X".
pub(crate) fn account_id(account: &str) -> &str {
    account
        .trim()
        .strip_prefix("billingAccounts/")
        .unwrap_or(account.trim())
}

/// An amount of money as `google.type.Money` keeps it: whole units and billionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    pub(crate) units: i64,
    pub(crate) nanos: i32,
}

/// Why a budget amount (`--amount`) was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum AmountError {
    #[error("`{0}` is not an amount (write it like 5 or 12.50)")]
    NotAnAmount(String),
    #[error("`{0}`: at most 9 decimal places")]
    TooPrecise(String),
    #[error("`{input}` is too large an amount")]
    TooLarge {
        input: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("`{0}`: the amount must be more than 0")]
    NotPositive(String),
}

impl Amount {
    /// Parses a positive decimal such as "5" or "12.50" exactly (no binary floating point).
    pub(crate) fn parse(s: &str) -> Result<Amount, AmountError> {
        let t = s.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |d: &str| d.chars().all(|c| c.is_ascii_digit());
        if whole.is_empty() && frac.is_empty() || !digits(whole) || !digits(frac) {
            return Err(AmountError::NotAnAmount(s.to_string()));
        }
        if frac.len() > 9 {
            return Err(AmountError::TooPrecise(s.to_string()));
        }
        let units: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|source| AmountError::TooLarge {
                input: s.to_string(),
                source,
            })?
        };
        let nanos: i32 = format!("{frac:0<9}").parse().expect("nine digits");
        if units == 0 && nanos == 0 {
            return Err(AmountError::NotPositive(s.to_string()));
        }
        Ok(Amount { units, nanos })
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nanos == 0 {
            write!(f, "{}", self.units)
        } else {
            let frac = format!("{:09}", self.nanos);
            write!(f, "{}.{}", self.units, frac.trim_end_matches('0'))
        }
    }
}

/// `google.type.Money`. `units` is an int64, which JSON carries as a string.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Money {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) currency_code: String,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "String::is_empty"
    )]
    pub(crate) units: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) nanos: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// An int64 field: a string in proto3 JSON, though a number is accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    })
}

impl Money {
    pub(crate) fn amount(&self) -> Amount {
        Amount {
            units: self.units.parse().unwrap_or(0),
            nanos: self.nanos,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BudgetAmount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) specified_amount: Option<Money>,
    /// `lastPeriodAmount`, kept as it is.
    #[serde(flatten)]
    pub(crate) other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ThresholdRule {
    pub(crate) threshold_percent: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) spend_basis: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) projects: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) labels: BTreeMap<String, Vec<Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) services: Vec<String>,
    /// calendarPeriod, customPeriod, credit treatment, subaccounts, resource ancestors.
    #[serde(flatten)]
    pub(crate) other: Map<String, Value>,
}

/// A budget as the API returns it; fields cwo does not know are kept for round trips.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Budget {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) budget_filter: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) amount: Option<BudgetAmount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) threshold_rules: Vec<ThresholdRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) notifications_rule: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) etag: String,
    #[serde(flatten)]
    pub(crate) other: Map<String, Value>,
}

impl Budget {
    pub(crate) fn filter(&self) -> Filter {
        self.budget_filter.clone().unwrap_or_default()
    }

    pub(crate) fn money(&self) -> Option<&Money> {
        self.amount.as_ref()?.specified_amount.as_ref()
    }

    /// Whether the default recipients (the billing account's administrators and users) get the
    /// threshold emails.
    pub(crate) fn emails_admins(&self) -> bool {
        !self
            .notifications_rule
            .as_ref()
            .and_then(|n| n.get("disableDefaultIamRecipients"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Thresholds in percent, with their basis ("" = CURRENT_SPEND).
    pub(crate) fn thresholds(&self) -> Vec<(f64, &str)> {
        self.threshold_rules
            .iter()
            .map(|r| {
                let basis = match r.spend_basis.as_str() {
                    "" => "CURRENT_SPEND",
                    b => b,
                };
                ((r.threshold_percent * 1e6).round() / 1e4, basis)
            })
            .collect()
    }

    /// Whether this budget alerts on this project's Compute Engine spend: it has thresholds and
    /// someone to email, and no filter leaves the project (by its number) or Compute out.
    pub(crate) fn covers(&self, project_number: &str) -> bool {
        let f = self.filter();
        let project = format!("projects/{project_number}");
        !self.threshold_rules.is_empty()
            && (self.emails_admins()
                || self
                    .notifications_rule
                    .as_ref()
                    .and_then(|n| n.get("monitoringNotificationChannels"))
                    .and_then(Value::as_array)
                    .is_some_and(|c| !c.is_empty()))
            && (f.projects.is_empty() || f.projects.contains(&project))
            && (f.services.is_empty() || f.services.iter().any(|s| s == COMPUTE_SERVICE))
            && f.labels
                .iter()
                .all(|(k, v)| k == LABEL.0 && v == &[json!(LABEL.1)])
    }

    /// One line: amount, period, thresholds, scope, recipients.
    pub(crate) fn describe(&self) -> String {
        let f = self.filter();
        let amount = match self.money() {
            Some(m) => format!(
                "{} {}",
                m.amount(),
                if m.currency_code.is_empty() {
                    "(the billing account's currency)"
                } else {
                    m.currency_code.as_str()
                }
            ),
            None => "last period's spend".into(),
        };
        let period = f
            .other
            .get("calendarPeriod")
            .and_then(Value::as_str)
            .unwrap_or("MONTH")
            .to_lowercase();
        let thresholds = self
            .thresholds()
            .iter()
            .map(|(p, b)| match *b {
                "CURRENT_SPEND" => format!("{p}%"),
                b => format!("{p}% ({})", b.to_lowercase().replace('_', " ")),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut scope = vec![if f.projects.is_empty() {
            "every project of the billing account".to_string()
        } else {
            f.projects.join(", ")
        }];
        for (k, v) in &f.labels {
            let v: Vec<String> = v
                .iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect();
            scope.push(format!("label {k}={}", v.join("|")));
        }
        format!(
            "{amount} per {period}; alerts at {}; scope: {}; emails {}",
            if thresholds.is_empty() {
                "none".into()
            } else {
                thresholds
            },
            scope.join(", "),
            if self.emails_admins() {
                "the billing account's administrators and users"
            } else {
                "no default recipients"
            }
        )
    }
}

/// What `cwo budget alert set` asks for.
#[derive(Debug, Clone)]
pub(crate) struct AlertSpec {
    pub(crate) project: String,
    pub(crate) amount: Amount,
    /// Percentages, e.g. 50, 90, 100.
    pub(crate) thresholds: Vec<f64>,
}

impl AlertSpec {
    /// The budget as cwo creates it (no currency: the billing account's is used).
    fn budget(&self, project_number: &str) -> Budget {
        let rules = self
            .thresholds
            .iter()
            .map(|p| ThresholdRule {
                threshold_percent: p / 100.0,
                spend_basis: "CURRENT_SPEND".into(),
            })
            .collect();
        Budget {
            display_name: display_name(&self.project),
            budget_filter: Some(Filter {
                projects: vec![format!("projects/{project_number}")],
                labels: BTreeMap::from([(LABEL.0.to_string(), vec![json!(LABEL.1)])]),
                other: Map::from_iter([("calendarPeriod".to_string(), json!("MONTH"))]),
                ..Filter::default()
            }),
            amount: Some(BudgetAmount {
                specified_amount: Some(Money {
                    currency_code: String::new(),
                    units: self.amount.units.to_string(),
                    nanos: self.amount.nanos,
                }),
                other: Map::new(),
            }),
            threshold_rules: rules,
            notifications_rule: Some(Map::from_iter([(
                "disableDefaultIamRecipients".to_string(),
                json!(false),
            )])),
            ..Budget::default()
        }
    }

    /// `old` changed into what cwo wants, everything else of it kept (its currency, etag, its
    /// notification channels and topic, its filter's credit treatment).
    fn merge(&self, old: &Budget, project_number: &str) -> Budget {
        let want = self.budget(project_number);
        let mut b = old.clone();
        b.display_name = want.display_name;
        let mut filter = old.filter();
        let wf = want.budget_filter.expect("set above");
        filter.projects = wf.projects;
        filter.labels = wf.labels;
        filter.other.remove("customPeriod");
        filter.other.extend(wf.other);
        b.budget_filter = Some(filter);
        let mut money = want
            .amount
            .and_then(|a| a.specified_amount)
            .expect("set above");
        money.currency_code = old
            .money()
            .map(|m| m.currency_code.clone())
            .unwrap_or_default();
        b.amount = Some(BudgetAmount {
            specified_amount: Some(money),
            other: Map::new(),
        });
        b.threshold_rules = want.threshold_rules;
        let mut rule = old.notifications_rule.clone().unwrap_or_default();
        rule.insert("disableDefaultIamRecipients".into(), json!(false));
        b.notifications_rule = Some(rule);
        b
    }
}

/// What `set` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Which API a call went to (the hints differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Budgets,
    ResourceManager,
}

/// A failed call: its kind (as for Compute), what to do about it, and whether it was an etag
/// conflict (someone changed the budget between cwo's read and its update).
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub(crate) struct ApiError {
    pub(crate) kind: ProviderError,
    pub(crate) hints: Vec<String>,
    conflict: bool,
}

impl ApiError {
    fn new(kind: ProviderError) -> ApiError {
        ApiError {
            kind,
            hints: vec![],
            conflict: false,
        }
    }
}

/// The budget alert calls for one GCP project and billing account.
pub(crate) struct BudgetApi {
    http: reqwest::Client,
    billing: String,
    resourcemanager: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
    project: String,
    account: String,
    on_retry: Box<dyn Fn(String) + Send + Sync>,
}

impl BudgetApi {
    /// `on_retry` gets a status line for each retry of a failing call.
    pub(crate) fn new(
        settings: &GcpSettings,
        account: &str,
        on_retry: Box<dyn Fn(String) + Send + Sync>,
    ) -> Result<BudgetApi, ApiError> {
        let credentials = if settings.credentials == "anonymous" {
            None
        } else {
            // The Budget API bills its calls to a quota project, which user credentials do not
            // have by themselves: gcp.project (GOOGLE_CLOUD_QUOTA_PROJECT still wins).
            Some(
                google_cloud_auth::credentials::Builder::default()
                    .with_quota_project_id(&settings.project)
                    .build()
                    .map_err(|e| {
                        let mut err = ApiError::new(ProviderError::Permission(format!(
                            "no Google credentials: {e}"
                        )));
                        err.hints.push("run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file".into());
                        err
                    })?,
            )
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ApiError::new(transient("building the HTTP client", e)))?;
        Ok(BudgetApi {
            http,
            billing: settings.billing_endpoint.trim_end_matches('/').to_string(),
            resourcemanager: settings
                .resourcemanager_endpoint
                .trim_end_matches('/')
                .to_string(),
            credentials,
            project: settings.project.clone(),
            account: account_id(account).to_string(),
            on_retry,
        })
    }

    pub(crate) fn account(&self) -> &str {
        &self.account
    }

    /// One HTTP call; 429 and 5xx (and a connection that fails) are retried with backoff when
    /// `retry` (reads and deletes; a create is retried by `set`, which looks first).
    async fn call(
        &self,
        api: Api,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
        retry: bool,
    ) -> Result<Value, ApiError> {
        let mut delay = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            match self.call_once(api, method.clone(), url, body, what).await {
                Err(e)
                    if retry
                        && e.kind.kind() == ProviderErrorKind::Transient
                        && attempt < TRIES =>
                {
                    (self.on_retry)(format!(
                        "{}; retry {attempt} in {}",
                        e.kind.one_line(),
                        humantime::format_duration(delay)
                    ));
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        api: Api,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, ApiError> {
        let mut req = self.http.request(method, url);
        if let Some(c) = &self.credentials {
            use google_cloud_auth::credentials::CacheableResource;
            match c.headers(Default::default()).await {
                Ok(CacheableResource::New { data, .. }) => req = req.headers(data),
                Ok(CacheableResource::NotModified) => {}
                Err(e) => {
                    let kind = if e.is_transient() {
                        ProviderErrorKind::Transient
                    } else {
                        ProviderErrorKind::Permission
                    };
                    let mut err = ApiError::new(ProviderError::Api {
                        kind,
                        what: format!("{what}: getting a token"),
                        source: Box::new(e),
                    });
                    err.hints
                        .push("run `gcloud auth application-default login`".into());
                    return Err(err);
                }
            }
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::new(transient(what, e)))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(serde_json::from_str(&text).unwrap_or(json!({})));
        }
        Err(self.classify(api, status, &text, what))
    }

    /// Classifies a failed call by its HTTP status and the structured reasons of Google's error
    /// payload (ErrorInfo details, or the legacy `errors[].reason`), never by message text; and
    /// says what to do next.
    fn classify(&self, api: Api, status: u16, body: &str, what: &str) -> ApiError {
        let v: Value = serde_json::from_str(body).unwrap_or(json!({}));
        let message = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or(body.trim());
        let reasons: Vec<String> = v
            .pointer("/error/details")
            .and_then(Value::as_array)
            .into_iter()
            .chain(v.pointer("/error/errors").and_then(Value::as_array))
            .flatten()
            .filter_map(|d| d.get("reason").and_then(Value::as_str))
            .map(|r| r.to_ascii_lowercase())
            .collect();
        let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
        let msg = format!("{what}: HTTP {status}: {message}");
        let (p, a) = (&self.project, &self.account);
        let mut err = ApiError::new(match status {
            404 => ProviderError::NotFound(msg),
            429 => ProviderError::Transient(msg),
            _ if has("ratelimit") || has("rate_limit") => ProviderError::Transient(msg),
            500..=599 => ProviderError::Transient(msg),
            401 | 403 => ProviderError::Permission(msg),
            409 | 412 => ProviderError::InvalidSpec(msg),
            400 => ProviderError::InvalidSpec(msg),
            _ => ProviderError::Transient(msg),
        });
        err.conflict = matches!(status, 409 | 412);
        let disabled = has("service_disabled") || has("accessnotconfigured");
        match (&err.kind, api) {
            (ProviderError::Permission(_), _) if has("user_project_denied") => err.hints.push(format!(
                "cwo bills these API calls to {p} (the quota project): grant roles/serviceusage.serviceUsageConsumer on {p} to the account cwo runs as, or set GOOGLE_CLOUD_QUOTA_PROJECT to a project where you have it"
            )),
            (ProviderError::Permission(_), _) if disabled => err.hints.push(format!(
                "enable the API in {p}, the project cwo bills these calls to: `gcloud services enable {} --project {p}`",
                match api {
                    Api::Budgets => "billingbudgets.googleapis.com",
                    Api::ResourceManager => "cloudresourcemanager.googleapis.com",
                }
            )),
            (ProviderError::Permission(_), Api::Budgets) => {
                err.hints.push(format!(
                    "budgets need the role {ROLE} (Billing Account Costs Manager) on billing account {a}, not on the project: `gcloud billing accounts add-iam-policy-binding {a} --member=user:YOU@EXAMPLE.COM --role={ROLE}` (a billing account administrator can run it), or in the console: Billing > Account management > Add principal"
                ));
                err.hints.push(format!(
                    "check the account ID too: `gcloud billing accounts list` shows the accounts you can see, and `gcloud billing projects describe {p}` the one {p} uses"
                ));
            }
            (ProviderError::Permission(_), Api::ResourceManager) => err.hints.push(format!(
                "cwo reads the project number of {p} from Cloud Resource Manager: grant resourcemanager.projects.get on it (roles/browser), or check gcp.project"
            )),
            (ProviderError::NotFound(_), Api::Budgets) => err.hints.push(format!(
                "billing account {a} does not exist or is not visible to you: `gcloud billing accounts list` shows the accounts you can use, `gcloud billing projects describe {p}` the one {p} uses; pass it as --billing-account or set gcp.billing_account"
            )),
            (ProviderError::NotFound(_), Api::ResourceManager) => err.hints.push(format!(
                "check gcp.project: `gcloud projects describe {p}`"
            )),
            (ProviderError::Transient(_), _) => err.hints.push(
                "the API kept failing after retries; try again in a few minutes".into(),
            ),
            _ => {}
        }
        err
    }

    fn budgets_url(&self) -> String {
        format!(
            "{}/v1/billingAccounts/{}/budgets",
            self.billing, self.account
        )
    }

    /// The project's number (`budgetFilter.projects` takes `projects/{number}`), from Cloud
    /// Resource Manager v3 `projects.get`, whose `name` is `projects/{number}`.
    pub(crate) async fn project_number(&self) -> Result<String, ApiError> {
        let url = format!("{}/v3/projects/{}", self.resourcemanager, self.project);
        let what = format!("reading the number of project {}", self.project);
        let p = self
            .call(
                Api::ResourceManager,
                reqwest::Method::GET,
                &url,
                None,
                &what,
                true,
            )
            .await?;
        p.get("name")
            .and_then(Value::as_str)
            .and_then(|n| n.strip_prefix("projects/"))
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::new(ProviderError::Transient(format!(
                    "{what}: the answer has no project number: {p}"
                )))
            })
    }

    /// Every budget on the billing account, all pages.
    pub(crate) async fn list(&self) -> Result<Vec<Budget>, ApiError> {
        let mut out = Vec::new();
        let mut token = String::new();
        let what = format!("listing the budgets of billing account {}", self.account);
        loop {
            let mut url = format!("{}?pageSize=100", self.budgets_url());
            if !token.is_empty() {
                url.push_str(&format!("&pageToken={token}"));
            }
            let page = self
                .call(Api::Budgets, reqwest::Method::GET, &url, None, &what, true)
                .await?;
            for b in page
                .get("budgets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(serde_json::from_value(b.clone()).map_err(|e| {
                    ApiError::new(ProviderError::Transient(format!("{what}: {e}: {b}")))
                })?);
            }
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = t.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// cwo's budgets for the project (one, unless something made more), by display name.
    pub(crate) async fn find(&self) -> Result<Vec<Budget>, ApiError> {
        let name = display_name(&self.project);
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|b| b.display_name == name)
            .collect())
    }

    /// Creates or updates cwo's budget. Returns it, what was done, and the names of further
    /// budgets with the same display name (left alone; `remove` deletes them all).
    pub(crate) async fn set(
        &self,
        spec: &AlertSpec,
    ) -> Result<(Budget, Outcome, Vec<String>), ApiError> {
        let number = self.project_number().await?;
        let mut delay = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            // Looked up again on every try: a create that failed may have happened anyway, and
            // a conflict means the budget changed since it was read.
            let found = self.find().await?;
            let extra: Vec<String> = found.iter().skip(1).map(|b| b.name.clone()).collect();
            let result = match found.first() {
                None => {
                    let body = serde_json::to_value(spec.budget(&number)).expect("serializes");
                    let what = format!("creating the budget on billing account {}", self.account);
                    self.call(
                        Api::Budgets,
                        reqwest::Method::POST,
                        &self.budgets_url(),
                        Some(&body),
                        &what,
                        false,
                    )
                    .await
                    .map(|b| (b, Outcome::Created))
                }
                Some(old) => {
                    let want = spec.merge(old, &number);
                    if same(old, &want) {
                        return Ok((old.clone(), Outcome::Unchanged, extra));
                    }
                    let body = serde_json::to_value(&want).expect("serializes");
                    let url = format!("{}/v1/{}?updateMask={OWNED}", self.billing, old.name);
                    let what = format!("updating budget {}", old.name);
                    self.call(
                        Api::Budgets,
                        reqwest::Method::PATCH,
                        &url,
                        Some(&body),
                        &what,
                        false,
                    )
                    .await
                    .map(|b| (b, Outcome::Updated))
                }
            };
            match result {
                Ok((b, outcome)) => {
                    let budget = serde_json::from_value(b.clone()).map_err(|e| {
                        ApiError::new(ProviderError::Transient(format!(
                            "the budget API answered with something that is not a budget: {e}: {b}"
                        )))
                    })?;
                    return Ok((budget, outcome, extra));
                }
                Err(e)
                    if (e.conflict || e.kind.kind() == ProviderErrorKind::Transient)
                        && attempt < TRIES =>
                {
                    (self.on_retry)(format!(
                        "{}; looking again, retry {attempt} in {}",
                        e.kind.one_line(),
                        humantime::format_duration(delay)
                    ));
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes cwo's budgets for the project; returns their names. A budget gone meanwhile
    /// counts as deleted.
    pub(crate) async fn remove(&self) -> Result<Vec<String>, ApiError> {
        let mut removed = Vec::new();
        for b in self.find().await? {
            let url = format!("{}/v1/{}", self.billing, b.name);
            let what = format!("deleting budget {}", b.name);
            match self
                .call(
                    Api::Budgets,
                    reqwest::Method::DELETE,
                    &url,
                    None,
                    &what,
                    true,
                )
                .await
            {
                // Just listed, so the account exists: a 404 is this budget, gone meanwhile.
                Ok(_)
                | Err(ApiError {
                    kind: ProviderError::NotFound(_),
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
            removed.push(b.name);
        }
        Ok(removed)
    }
}

/// Whether `want` (cwo's budget merged into `old`) changes anything cwo owns.
fn same(old: &Budget, want: &Budget) -> bool {
    let owned = |b: &Budget| {
        let f = b.filter();
        (
            b.display_name.clone(),
            f.projects,
            f.labels,
            f.other
                .get("calendarPeriod")
                .cloned()
                .unwrap_or(json!("MONTH")),
            f.other.contains_key("customPeriod"),
            b.money().map(Money::amount),
            b.thresholds()
                .into_iter()
                .map(|(p, basis)| (p.to_string(), basis.to_string()))
                .collect::<Vec<_>>(),
            b.emails_admins(),
        )
    };
    owned(old) == owned(want)
}

/// `cwo doctor`'s check: whether a budget alert covers the project (ok), or what to run (warn).
/// It never fails the doctor: a budget alert is advice, not a requirement.
pub(crate) async fn doctor_check(settings: &GcpSettings) -> Check {
    let p = &settings.project;
    let warn = |detail: String, fix: String| Check::warn("budget", detail, fix);
    if settings.billing_account.trim().is_empty() {
        return warn(
            format!(
                "gcp.billing_account is not set: cannot check whether a budget alert covers {p}"
            ),
            format!(
                "find the project's billing account with `gcloud billing projects describe {p} --format='value(billingAccountName)'`, set gcp.billing_account to it, then run `cwo budget alert set --amount 5`"
            ),
        );
    }
    let account = account_id(&settings.billing_account).to_string();
    let set_cmd = format!("cwo budget alert set --amount 5 --billing-account {account}");
    let api = match BudgetApi::new(settings, &account, Box::new(|l| tracing::info!("{l}"))) {
        Ok(a) => a,
        Err(e) => return warn(e.kind.one_line(), e.hints.join("; ")),
    };
    let found = async {
        let number = api.project_number().await?;
        let budgets = api.list().await?;
        let name = display_name(p);
        let pick = budgets
            .iter()
            .find(|b| b.display_name == name && b.covers(&number))
            .or_else(|| budgets.iter().find(|b| b.covers(&number)))
            .cloned();
        Ok::<_, ApiError>((pick, budgets.iter().any(|b| b.display_name == name)))
    }
    .await;
    match found {
        Ok((Some(b), _)) => Check::ok(
            "budget",
            format!(
                "{} \"{}\" covers {p}: {}",
                b.name,
                b.display_name,
                b.describe()
            ),
        ),
        Ok((None, ours)) => warn(
            if ours {
                format!(
                    "cwo's budget on billing account {account} no longer covers {p} (no thresholds, no recipients, or another scope)"
                )
            } else {
                format!("no budget on billing account {account} alerts on {p}'s spend")
            },
            format!("run `{set_cmd}`"),
        ),
        Err(e) => warn(
            format!("cannot read the budgets: {}", e.kind.one_line()),
            e.hints
                .into_iter()
                .chain([format!("then run `{set_cmd}`")])
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_parsed_exactly() {
        assert_eq!(Amount::parse("5"), Ok(Amount { units: 5, nanos: 0 }));
        assert_eq!(
            Amount::parse("12.5"),
            Ok(Amount {
                units: 12,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            Amount::parse("0.000000001"),
            Ok(Amount { units: 0, nanos: 1 })
        );
        assert_eq!(Amount::parse(".25").unwrap().to_string(), "0.25");
        assert_eq!(Amount::parse("12.50").unwrap().to_string(), "12.5");
        assert_eq!(Amount::parse("5."), Ok(Amount { units: 5, nanos: 0 }));
        for bad in [
            "",
            ".",
            "0",
            "0.0",
            "-5",
            "abc",
            "1e3",
            "1.0000000001",
            "5,5",
            "+5",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_refused_amount_is_a_typed_error_that_says_why() {
        let e = Amount::parse("99999999999999999999").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`99999999999999999999` is too large an amount"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the parse error is kept"
        );
        assert_eq!(
            Amount::parse("0"),
            Err(AmountError::NotPositive("0".into()))
        );
    }

    #[test]
    fn the_budget_cwo_creates_is_scoped_and_alerts_the_billing_admins() {
        let spec = AlertSpec {
            project: "p".into(),
            amount: Amount::parse("5").unwrap(),
            thresholds: vec![50.0, 90.0, 100.0],
        };
        let b = serde_json::to_value(spec.budget("123")).unwrap();
        assert_eq!(
            b,
            json!({
                "displayName": "cwo: p",
                "budgetFilter": {"projects": ["projects/123"], "labels": {"cwo-managed": ["true"]}, "calendarPeriod": "MONTH"},
                "amount": {"specifiedAmount": {"units": "5"}},
                "thresholdRules": [
                    {"thresholdPercent": 0.5, "spendBasis": "CURRENT_SPEND"},
                    {"thresholdPercent": 0.9, "spendBasis": "CURRENT_SPEND"},
                    {"thresholdPercent": 1.0, "spendBasis": "CURRENT_SPEND"},
                ],
                "notificationsRule": {"disableDefaultIamRecipients": false},
            })
        );
        assert!(spec.budget("123").covers("123"));
        assert!(!spec.budget("123").covers("456"));
    }

    #[test]
    fn an_update_keeps_what_cwo_does_not_own() {
        let spec = AlertSpec {
            project: "p".into(),
            amount: Amount::parse("7.25").unwrap(),
            thresholds: vec![80.0],
        };
        let old: Budget = serde_json::from_value(json!({
            "name": "billingAccounts/A/budgets/b1", "displayName": "cwo: p", "etag": "e1",
            "budgetFilter": {"projects": ["projects/123"], "creditTypesTreatment": "INCLUDE_ALL_CREDITS",
                             "customPeriod": {"startDate": {"year": 2026, "month": 1, "day": 1}}},
            "amount": {"specifiedAmount": {"currencyCode": "EUR", "units": 5}},
            "thresholdRules": [{"thresholdPercent": 0.5}],
            "notificationsRule": {"pubsubTopic": "projects/p/topics/t", "schemaVersion": "1.0"},
            "ownershipScope": "ALL_USERS",
        }))
        .unwrap();
        let new = serde_json::to_value(spec.merge(&old, "123")).unwrap();
        assert_eq!(new["etag"], "e1");
        assert_eq!(new["ownershipScope"], "ALL_USERS");
        assert_eq!(
            new["amount"]["specifiedAmount"],
            json!({"currencyCode": "EUR", "units": "7", "nanos": 250_000_000})
        );
        assert_eq!(
            new["budgetFilter"]["creditTypesTreatment"],
            "INCLUDE_ALL_CREDITS"
        );
        assert_eq!(new["budgetFilter"]["calendarPeriod"], "MONTH");
        assert!(new["budgetFilter"].get("customPeriod").is_none());
        assert_eq!(
            new["budgetFilter"]["labels"],
            json!({"cwo-managed": ["true"]})
        );
        assert_eq!(
            new["notificationsRule"]["pubsubTopic"],
            "projects/p/topics/t"
        );
        assert_eq!(
            new["notificationsRule"]["disableDefaultIamRecipients"],
            false
        );
        assert!(!same(&old, &spec.merge(&old, "123")));
        let again: Budget = serde_json::from_value(new).unwrap();
        assert!(same(&again, &spec.merge(&again, "123")));
    }
}
