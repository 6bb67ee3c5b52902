//! `[serve]`: the HTTP server `cwo serve` runs beside the loop (webhooks, health, the state API
//! and the dashboard).

use serde::{Deserialize, Serialize};

use super::UsdLimit;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// The address the server binds (`--listen` overrides it). Anything but loopback needs
    /// `serve.token`.
    pub listen: String,
    /// A secret reference (`env:NAME` or `sm://…`) to the bearer token every route but
    /// `/webhooks/github` and `/healthz` then requires; "" = none (loopback only).
    pub token: String,
    /// The address GitHub reaches this server at, for `cwo github webhook-url` ("" = the
    /// listen address, which only a tunnel or a proxy makes reachable from GitHub).
    pub public_url: String,
    /// The month's spend the dashboard's budget line holds the fleet against ("" = none).
    pub budget_usd: UsdLimit,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            listen: "127.0.0.1:8484".into(),
            token: String::new(),
            public_url: String::new(),
            budget_usd: UsdLimit(None),
        }
    }
}

impl ServeSettings {
    /// `listen` is a loopback address (the only kind served without a token).
    pub(crate) fn listens_on_loopback(&self) -> bool {
        self.listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }
}
