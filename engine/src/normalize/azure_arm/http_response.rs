//! Shape 6 as a raw HTTP response (status line, headers, blank line, body): the status becomes
//! `failure.http_status`, `Retry-After` becomes `retry_after_s`, `Date` the event time,
//! `x-ms-request-id` the id.

use serde_json::Value;

use super::{digits_to_secs, Ctx, EXPECTED, ID_REQUEST_ID, T_DATE};
use crate::normalize::{http, json, quote, time, NormalizeError};

pub(super) struct Http<'a> {
    response: http::Response<'a>,
    /// Where the body is, for errors.
    path: String,
}

pub(super) fn parse_http<'a>(text: &'a str, path: &str) -> Result<Http<'a>, NormalizeError> {
    let where_ = |what: &str| {
        if path.is_empty() {
            what.to_string()
        } else {
            format!("{path} ({what})")
        }
    };
    let bad_status = |line: &str| NormalizeError::Shape {
        path: where_("HTTP status line"),
        expected: "HTTP/<version> <status> <reason>".into(),
        found: format!("\"{}\"", quote(line)),
    };
    let response = http::parse(text, http::Form::Response).map_err(|e| match e {
        http::Error::Header { line, text } => NormalizeError::Shape {
            path: where_(&format!("HTTP header line {line}")),
            expected: "Name: value".into(),
            found: format!("\"{}\"", quote(text)),
        },
        http::Error::StartLine { text, .. } => bad_status(text),
        http::Error::NoResponse => bad_status(""),
    })?;
    Ok(Http {
        response,
        path: where_("HTTP body"),
    })
}

impl Http<'_> {
    pub(super) fn apply(&self, ctx: &mut Ctx) -> Result<(), NormalizeError> {
        let r = &self.response;
        ctx.offer_status(i64::from(r.status));
        if ctx.retry_after_s.is_none() {
            // ARM sends integer seconds only ("will not support http-date", rpc). A negative
            // value or an HTTP-date is ignored; more than a day is clamped to a day.
            ctx.retry_after_s = r
                .header("Retry-After")
                .and_then(|v| digits_to_secs(v.trim()));
        }
        // A bucket at 0 is the throttling signal (x-ms-ratelimit-remaining-* is sent on every
        // ARM response, so its mere presence is not).
        ctx.rate_limit_exhausted |= r.headers.iter().any(|(n, v)| {
            n.to_ascii_lowercase()
                .starts_with("x-ms-ratelimit-remaining")
                && v.rsplit(';').next().map(str::trim) == Some("0")
        });
        if let Some(d) = r.header("Date") {
            let path = self.path.replace("HTTP body", "HTTP header Date");
            ctx.offer_time(T_DATE, time::parse(&path, d)?);
        }
        if let Some(id) = r.header("x-ms-request-id") {
            ctx.offer_id(ID_REQUEST_ID, id);
        }
        Ok(())
    }

    pub(super) fn json_body(&self) -> Result<Value, NormalizeError> {
        if self.response.body.trim().is_empty() {
            return Err(NormalizeError::WrongPayload {
                expected: EXPECTED,
                reason: "the HTTP response has no body".into(),
            });
        }
        json::parse_at(self.response.body, self.response.body_line)
    }
}
