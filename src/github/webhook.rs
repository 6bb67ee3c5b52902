//! GitHub webhook deliveries, for `cwo serve`'s `POST /webhooks/github`: a delivery is checked
//! before anything in it is read — its
//! `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with `github.webhook_secret`, compared in
//! constant time by `hmac`'s `verify_slice`), then its `X-GitHub-Delivery` id (a replay within a
//! day changes nothing) — and only then does it wake the loop. The payload is a hint: the loop
//! reads GitHub as it always does, so a delivery can never make cwo act on state it did not
//! read itself.
//!
//! GitHub's documentation: "Validating webhook deliveries" (the `sha256=` prefix, the HMAC hex
//! digest of the payload, a constant-time compare) and "Webhook events and payloads" (the
//! `X-GitHub-Event` and `X-GitHub-Delivery` headers; deliveries are capped at 25 MB).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The largest body accepted (413 above it). GitHub caps payloads at 25 MB; the events cwo
/// wakes on are far smaller, and a body is held in memory until its signature is checked.
pub(crate) const MAX_BODY: usize = 5 * 1024 * 1024;

/// How long a delivery id is remembered: one seen again within it is a replay.
pub(crate) const REPLAY_WINDOW_HOURS: i64 = 24;

/// The events that make the loop look at once (the tracker, then the pull requests), with the
/// actions that matter where only some do.
const WAKING: &[(&str, &[&str])] = &[
    ("issues", &["opened", "labeled", "unlabeled", "closed"]),
    ("issue_comment", &[]),
    ("pull_request", &[]),
    ("pull_request_review", &[]),
    ("pull_request_review_comment", &[]),
    ("check_run", &[]),
    ("check_suite", &[]),
    ("status", &[]),
];

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Refused {
    #[error("github.webhook_secret is not set: no delivery can be verified")]
    NoSecret,
    #[error("no X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("X-Hub-Signature-256 is not `sha256=<64 hex digits>`")]
    MalformedSignature,
    #[error("X-Hub-Signature-256 does not match the body (a wrong secret, or a forged delivery)")]
    BadSignature,
}

/// Checks `header` (`sha256=<hex>`) against the HMAC-SHA256 of `body` under `secret`.
pub(crate) fn verify(
    secret: Option<&str>,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), Refused> {
    let secret = secret.ok_or(Refused::NoSecret)?;
    let header = header.ok_or(Refused::MissingSignature)?;
    let hex = header
        .strip_prefix("sha256=")
        .ok_or(Refused::MalformedSignature)?;
    let digest = decode_hex(hex).ok_or(Refused::MalformedSignature)?;
    if digest.len() != 32 {
        return Err(Refused::MalformedSignature);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&digest).map_err(|_| Refused::BadSignature)
}

/// The signature GitHub would send for `body`.
#[cfg(test)]
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Lowercase or uppercase hex to bytes (no crate in the tree does only this).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a verified, new delivery means for the loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// `ping`: GitHub checking the hook.
    Ping,
    /// Look at the tracker and the pull requests now.
    Wake,
    /// An event or action cwo does not act on (answered 200: GitHub need not retry it).
    Ignored(String),
}

/// What `event` (the `X-GitHub-Event` header) with `body` (already verified) means.
pub(crate) fn meaning(event: &str, body: &[u8]) -> Meaning {
    if event == "ping" {
        return Meaning::Ping;
    }
    let Some((_, actions)) = WAKING.iter().find(|(e, _)| *e == event) else {
        return Meaning::Ignored(format!("event {event} is not one cwo acts on"));
    };
    if actions.is_empty() {
        return Meaning::Wake;
    }
    // Only the action is read, and only from a verified body.
    let action = action_of(body).unwrap_or_default();
    if actions.contains(&action.as_str()) {
        Meaning::Wake
    } else {
        Meaning::Ignored(format!("{event} action {action:?} is not one cwo acts on"))
    }
}

/// The payload's `action`: the body is the JSON (content type `application/json`) or, for a
/// hook set to `application/x-www-form-urlencoded`, a form whose `payload` field holds it.
fn action_of(body: &[u8]) -> Option<String> {
    let json = match body.strip_prefix(b"payload=") {
        Some(form) => form_decode(form.split(|b| *b == b'&').next().unwrap_or_default())?,
        None => body.to_vec(),
    };
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("action")?
        .as_str()
        .map(String::from)
}

/// A form field's value: `+` is a space, `%XX` a byte.
fn form_decode(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(value.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// The events `cwo github webhook-url` tells people to subscribe to.
pub(crate) fn events() -> Vec<&'static str> {
    WAKING.iter().map(|(e, _)| *e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_made_with_the_secret_verifies_and_nothing_else_does() {
        let body = br#"{"action":"opened"}"#;
        let good = sign("s3cret", body);
        assert_eq!(verify(Some("s3cret"), Some(&good), body), Ok(()));
        assert_eq!(
            verify(Some("other"), Some(&good), body),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(Some("s3cret"), Some(&good), b"{\"action\":\"closed\"}"),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(Some("s3cret"), None, body),
            Err(Refused::MissingSignature)
        );
        assert_eq!(
            verify(Some("s3cret"), Some("sha1=abcd"), body),
            Err(Refused::MalformedSignature)
        );
        assert_eq!(
            verify(Some("s3cret"), Some("sha256=zz"), body),
            Err(Refused::MalformedSignature)
        );
        assert_eq!(verify(None, Some(&good), body), Err(Refused::NoSecret));
        // GitHub's own example ("Validating webhook deliveries"): secret "It's a Secret to
        // Everybody", payload "Hello, World!".
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn only_the_listed_events_and_actions_wake_the_loop() {
        assert_eq!(meaning("ping", b"{}"), Meaning::Ping);
        assert_eq!(meaning("issues", br#"{"action":"labeled"}"#), Meaning::Wake);
        assert!(matches!(
            meaning("issues", br#"{"action":"edited"}"#),
            Meaning::Ignored(_)
        ));
        assert_eq!(meaning("check_suite", b"not json"), Meaning::Wake);
        // A hook set to the form content type: the JSON is the `payload` field.
        assert_eq!(
            meaning(
                "issues",
                b"payload=%7B%22action%22%3A+%22opened%22%2C%22issue%22%3A%7B%7D%7D"
            ),
            Meaning::Wake
        );
        assert!(matches!(
            meaning("issues", b"payload=%7B%22action%22%3A%22edited%22%7D"),
            Meaning::Ignored(_)
        ));
        assert!(matches!(meaning("star", b"{}"), Meaning::Ignored(_)));
    }
}
