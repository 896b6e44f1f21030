//! Managed-identity tokens from Azure IMDS, for Resource Health and `arm` steps.
//!
//! `GET {endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=<resource>`
//! (plus `client_id=<id>` for a user-assigned identity) with `Metadata: true` answers
//! `{"access_token", "expires_in", "expires_on", "resource", "token_type": "Bearer", ...}`,
//! where `expires_in` and `expires_on` (Unix seconds) are strings. The token is cached until
//! shortly before it expires (a fifth of its lifetime early, at most five minutes), and
//! forgotten when a caller reports that it was refused (a 401): the next call fetches a new
//! one. Concurrent callers share one fetch.
//!
//! The token is a [`Secret`]: its `Debug` form never shows it, and no message of this module
//! contains it. Error bodies from IMDS are escaped and truncated before they are reported.

use std::time::Duration;

use keel_engine::escape;
use reqwest::header::HeaderValue;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::backoff::retry_after;
use super::http::read_limited;
use crate::config::{AzureIdentity, Secret};

/// The IMDS api-version of the token endpoint.
pub const TOKEN_API_VERSION: &str = "2018-02-01";

/// The longest access token accepted (real ones are a few kilobytes).
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// The lifetime assumed when IMDS gives neither `expires_in` nor `expires_on`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The request did not complete (connection refused, timeout).
    #[error("managed identity: {0}")]
    Request(String),
    /// IMDS answered with an error status.
    #[error("managed identity: HTTP {status}{detail}")]
    Status {
        /// The status.
        status: u16,
        /// `: error: description` from IMDS's body (escaped, truncated), or empty.
        detail: String,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// IMDS answered 200 with no usable token.
    #[error("managed identity: {0}")]
    BadResponse(String),
}

impl IdentityError {
    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IdentityError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether asking again later may succeed (IMDS advises retrying 404, 410, 429 and 5xx:
    /// the identity may still be being assigned, or IMDS is busy).
    pub fn transient(&self) -> bool {
        match self {
            IdentityError::Request(_) => true,
            IdentityError::Status { status, .. } => {
                matches!(status, 404 | 408 | 410 | 429) || *status >= 500
            }
            IdentityError::BadResponse(_) => false,
        }
    }
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// A caching client of the managed-identity token endpoint.
pub struct TokenClient {
    http: reqwest::Client,
    cfg: AzureIdentity,
    cache: Mutex<Option<Cached>>,
}

/// A short text from a JSON or text body, escaped for messages.
fn short(s: &str) -> String {
    let t: String = s.chars().take(200).collect();
    let t = if t.len() < s.len() { t + "…" } else { t };
    escape(&t)
}

/// `: error: description` from an IMDS error body.
fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(short);
            match (field("error"), field("error_description")) {
                (Some(e), Some(d)) => format!(": {e}: {d}"),
                (Some(e), None) | (None, Some(e)) => format!(": {e}"),
                (None, None) => String::new(),
            }
        }
        Err(_) if text.trim().is_empty() => String::new(),
        Err(_) => format!(": {}", short(text.trim())),
    }
}

/// Seconds from a JSON string or number.
fn seconds(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The token and its lifetime from a 200 body.
fn parse_token(body: &[u8]) -> Result<(Secret, Duration), IdentityError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| IdentityError::BadResponse("the token response is not JSON".into()))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
        .filter(|t| t.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            IdentityError::BadResponse("the token response has no usable access_token".into())
        })?;
    if let Some(tt) = v.get("token_type").and_then(Value::as_str) {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(IdentityError::BadResponse(format!(
                "token_type is {}, not Bearer",
                short(tt)
            )));
        }
    }
    // `expires_in` is relative, so immune to clock skew; `expires_on` is the fallback.
    let lifetime = seconds(v.get("expires_in"))
        .or_else(|| {
            seconds(v.get("expires_on")).map(|on| on.saturating_sub(chrono::Utc::now().timestamp()))
        })
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or(DEFAULT_LIFETIME);
    Ok((Secret::new(token.to_string()), lifetime))
}

/// When to fetch a token of `lifetime` again: a fifth of its lifetime early, at most five
/// minutes. `expires_in` is the server's: a huge one saturates instead of overflowing.
fn refresh_at(now: Instant, lifetime: Duration) -> Instant {
    let margin = (lifetime / 5).min(Duration::from_secs(300));
    super::backoff::later(now, lifetime.saturating_sub(margin))
}

impl TokenClient {
    /// A client for the identity `cfg`; nothing is requested until a token is needed.
    pub fn new(http: reqwest::Client, cfg: AzureIdentity) -> TokenClient {
        TokenClient {
            http,
            cfg,
            cache: Mutex::new(None),
        }
    }

    /// A valid token: the cached one, or a fresh one.
    pub async fn token(&self) -> Result<Secret, IdentityError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        let (token, lifetime) = self.fetch().await?;
        *cache = Some(Cached {
            token: token.clone(),
            refresh_at: refresh_at(Instant::now(), lifetime),
        });
        Ok(token)
    }

    /// Forgets the cached token (a server refused it): the next call fetches a new one.
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// The `Authorization` header value for a token, marked sensitive.
    pub fn bearer(token: &Secret) -> Result<HeaderValue, IdentityError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
            IdentityError::BadResponse("the token is not a valid header value".into())
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    async fn fetch(&self) -> Result<(Secret, Duration), IdentityError> {
        let mut query: Vec<(&str, &str)> = vec![
            ("api-version", TOKEN_API_VERSION),
            ("resource", self.cfg.resource.as_str()),
        ];
        if let Some(id) = &self.cfg.client_id {
            query.push(("client_id", id.as_str()));
        }
        let r = self
            .http
            .get(format!(
                "{}/metadata/identity/oauth2/token",
                self.cfg.endpoint
            ))
            .query(&query)
            .header("Metadata", "true")
            .timeout(self.cfg.timeout)
            .send()
            .await
            // reqwest's message names the URL, which holds no secret (the token is in the
            // response, never in a request).
            .map_err(|e| IdentityError::Request(escape(&e.to_string())))?;
        let status = r.status();
        let ra = retry_after(r.headers());
        let body = read_limited(r)
            .await
            .map_err(|e| IdentityError::Request(escape(&e)))?;
        if !status.is_success() {
            return Err(IdentityError::Status {
                status: status.as_u16(),
                detail: error_detail(&body),
                retry_after: ra,
            });
        }
        parse_token(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_imds_token_responses_and_never_shows_the_token() {
        let body = br#"{"access_token":"eyJ0eXAi.secret","refresh_token":"","expires_in":"3599","expires_on":"1506484173","not_before":"1506480273","resource":"https://management.azure.com/","token_type":"Bearer"}"#;
        let Ok((t, life)) = parse_token(body) else {
            unreachable!("a valid response")
        };
        assert_eq!(t.expose(), "eyJ0eXAi.secret");
        assert_eq!(life, Duration::from_secs(3599));
        assert!(!format!("{t:?}").contains("secret"));
        assert!(parse_token(br#"{"access_token":""}"#).is_err());
        assert!(parse_token(br#"{"access_token":"a b"}"#).is_err());
        assert!(parse_token(br#"{"access_token":"x","token_type":"pop"}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
        let d = error_detail(
            br#"{"error":"invalid_request","error_description":"Identity not found\u001b[31m"}"#,
        );
        assert!(
            d.starts_with(": invalid_request: Identity not found"),
            "{d}"
        );
        assert!(!d.contains('\u{1b}'), "{d}");
    }

    #[test]
    fn a_huge_token_lifetime_saturates() {
        let body = format!(r#"{{"access_token":"t","expires_in":"{}"}}"#, i64::MAX);
        let Ok((_, life)) = parse_token(body.as_bytes()) else {
            unreachable!("a valid response")
        };
        assert_eq!(life, Duration::from_secs(i64::MAX as u64));
        let now = Instant::now();
        let at = refresh_at(now, life);
        assert_eq!(at.duration_since(now), super::super::backoff::FAR_FUTURE);
        assert_eq!(
            refresh_at(now, Duration::from_secs(3600)).duration_since(now),
            Duration::from_secs(3300)
        );
    }
}
