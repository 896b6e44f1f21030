//! AWS EC2 instance metadata, IMDSv2 (`docs/protocols.md#aws-instance-metadata`).
//!
//! A session token comes from `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds`; every GET carries it in `X-aws-ec2-metadata-token`.
//! The token is renewed before it expires, and at once when IMDS answers 401 (the request is
//! then sent again, once). Each poll reads `spot/instance-action`,
//! `events/recommendations/rebalance` and `events/maintenance/scheduled`; 404 means "no
//! notice". A round that fails anywhere (a timeout, a 5xx, a 429 or 503 from throttling, a body
//! the normalizer rejects) is counted and backs off, honouring `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::poll::{self, Halt, Poll};
use super::{deliver, read_limited, Failure};
use crate::config::AwsImdsSource;
use crate::run::backoff::{retry_after, Backoff};
use crate::run::{Host, Inbox};

/// The source's name (its metrics label, and its normalizer).
pub const SOURCE: &str = "aws.imds";

/// The metadata paths polled, under `/latest/meta-data/`.
pub const PATHS: [&str; 3] = [
    "spot/instance-action",
    "events/recommendations/rebalance",
    SCHEDULED,
];

/// The path whose read is the whole list of live scheduled events.
const SCHEDULED: &str = "events/maintenance/scheduled";

/// The longest token accepted from IMDS (real ones are about 56 characters).
const MAX_TOKEN_BYTES: usize = 4096;

struct Token {
    value: HeaderValue,
    refresh_at: Instant,
}

struct Poller {
    host: Arc<Host>,
    cfg: AwsImdsSource,
    tx: mpsc::Sender<Inbox>,
    token: Option<Token>,
}

impl Poller {
    /// A fresh session token.
    async fn fetch_token(&mut self) -> Result<HeaderValue, Failure> {
        let ttl = self.cfg.token_ttl.as_secs().clamp(1, 21_600);
        let r = self
            .host
            .http
            .put(format!("{}/latest/api/token", self.cfg.url))
            .header("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())
            .timeout(self.cfg.timeout)
            .send()
            .await
            .map_err(|e| (format!("token request: {e}"), None))?;
        if !r.status().is_success() {
            return Err((
                format!("token request: HTTP {}", r.status()),
                retry_after(r.headers()),
            ));
        }
        let body = read_limited(r)
            .await
            .map_err(|e| (format!("token request: {e}"), None))?;
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if text.is_empty() || text.len() > MAX_TOKEN_BYTES {
            return Err(("token request: IMDS returned no usable token".into(), None));
        }
        let value = HeaderValue::from_str(&text).map_err(|_| {
            (
                "token request: the token is not a valid header value".into(),
                None,
            )
        })?;
        // Renew before expiry: a fifth of the lifetime early, at most a minute.
        let ttl = Duration::from_secs(ttl);
        let margin = (ttl / 5).min(Duration::from_secs(60));
        self.token = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + ttl - margin,
        });
        Ok(value)
    }

    async fn token(&mut self) -> Result<HeaderValue, Failure> {
        match &self.token {
            Some(t) if Instant::now() < t.refresh_at => Ok(t.value.clone()),
            _ => self.fetch_token().await,
        }
    }

    /// GETs one path: its body, or `None` for 404 (no notice). A 401 renews the token and
    /// tries once more.
    async fn get(&mut self, path: &str) -> Result<Option<Vec<u8>>, Failure> {
        let url = format!("{}/latest/meta-data/{path}", self.cfg.url);
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let r = self
                .host
                .http
                .get(&url)
                .header("X-aws-ec2-metadata-token", token)
                .timeout(self.cfg.timeout)
                .send()
                .await
                .map_err(|e| (format!("{path}: {e}"), None))?;
            match r.status() {
                s if s.is_success() => {
                    return read_limited(r)
                        .await
                        .map(Some)
                        .map_err(|e| (format!("{path}: {e}"), None))
                }
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED if !renewed => {
                    // Expired, or IMDS restarted: a new token, then once more.
                    self.token = None;
                    renewed = true;
                }
                s => {
                    let hint = match s.as_u16() {
                        401 => " (a fresh token was refused too)",
                        403 => " (IMDS is turned off or the request is not allowed)",
                        429 | 503 => " (throttled)",
                        _ => "",
                    };
                    return Err((format!("{path}: HTTP {s}{hint}"), retry_after(r.headers())));
                }
            }
        }
    }
}

/// A read of `path` (`None`: 404) as an HTTP transcript, so that the normalizer knows which
/// path answered: a scheduled event that has left [`SCHEDULED`]'s list has ended (AWS clears
/// an event after the work), and a Spot or rebalance notice stays one event for as long as its
/// path lists one; a 404 says there is none.
fn transcript(path: &str, body: Option<Vec<u8>>) -> Vec<u8> {
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", Vec::new()),
    };
    let mut t =
        format!("GET /latest/meta-data/{path} HTTP/1.1\n\nHTTP/1.1 {status}\n\n").into_bytes();
    t.extend_from_slice(&body);
    t
}

impl Poll for Poller {
    /// One round: every path's answer, 404s included, handed to the normalizer as a
    /// [`transcript`].
    async fn round(&mut self) -> Result<Duration, Halt> {
        for path in PATHS {
            let body = transcript(path, self.get(path).await?);
            deliver(&self.tx, SOURCE, body)
                .await
                .map_err(|d| Halt::from(d).within(path))?;
        }
        Ok(self.cfg.interval)
    }
}

/// Polls IMDS every `interval` until the host stops.
pub async fn poll(
    host: Arc<Host>,
    cfg: AwsImdsSource,
    tx: mpsc::Sender<Inbox>,
    stop: watch::Receiver<bool>,
) {
    let backoff = Backoff::new(cfg.interval, cfg.max_backoff.max(cfg.interval));
    let poller = Poller {
        host: host.clone(),
        cfg,
        tx,
        token: None,
    };
    poll::run(&host, SOURCE, "poll", backoff, poller, stop).await;
}
