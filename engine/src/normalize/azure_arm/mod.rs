//! Normalizer `azure.arm`: failed Azure Resource Manager operations (create, start, ...) to
//! `operation_failure` events.
//!
//! # What it reads
//!
//! Every error shape Resource Manager returns (the protocol: `docs/protocols.md`, "Azure Resource
//! Manager operations"; Microsoft's documentation:
//! <https://github.com/Azure/azure-resource-manager-rpc/blob/master/v1.0/common-api-details.md>,
//! <https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/async-operations>),
//! found by looking at the keys (case-insensitively):
//!
//! 1. the plain error `{"error": {"code", "message", "target", "details": [...]}}`;
//! 2. the async operation status `{"status": "Failed", "error", "name", "startTime", "endTime"}`
//!    (a status that is not a failure, `Succeeded` or `InProgress`, yields no event);
//! 3. the deployment wrappers `ResourceDeploymentFailure` / `ResourceOperationFailure` /
//!    `DeploymentFailed` / `InvalidTemplateDeployment` / `MultipleErrorsOccurred` with the
//!    cause in `details[]`;
//! 4. a `message` that holds another JSON error as a string, at any level (deployments report
//!    the resource's own error that way);
//! 5. activity-log events (REST form with `{"value", "localizedValue"}` objects, flat export
//!    and alert forms, a list `{"value": [...]}` or a bare array as `az monitor activity-log
//!    list` prints it, and the legacy webhook and common-schema alert envelopes), whose
//!    `properties.statusMessage` is a JSON string; an event whose status is not `Failed` yields
//!    nothing;
//! 6. the Compute throttling body without the `error` wrapper, also as a raw HTTP response
//!    (status line, headers, blank line, body): the status becomes `failure.http_status`,
//!    `Retry-After` becomes `retry_after_s`, `Date` the event time, `x-ms-request-id` the id;
//! 7. Resource Health's flat `{code, message, details: "text"}` (the free-text details are
//!    kept in `raw` only: a detail needs a code);
//! 8. Keel's ingest body `{idempotency_key, resource, operation, attempt?, request?, error,
//!    http_status?}`, where `error` is any of the above (as JSON, as a JSON string such as an
//!    activity-log `statusMessage`, or as a raw HTTP response string) and `resource` an ARM
//!    resource id, a VM name, or an object with the event's resource fields.
//!
//! An error object without the `error` wrapper (shapes 6 and 7) must have both `code` and
//! `message`, as every ARM error does: other vendors' objects also have a `code` (AWS's
//! scheduled events `[{Code, Description, EventId, NotAfter, NotBefore, State}]`), and are
//! rejected with [`NormalizeError::WrongPayload`] rather than read as failures.
//!
//! Nested errors are unwrapped to the innermost one, through wrapper codes (and a `Conflict`
//! that carries a nested error) and JSON strings, at most [`MAX_NESTING`] levels deep; the
//! innermost code, message and flattened `details[]` are what [`classify`](super::classify)
//! sees, never a wrapper.
//!
//! # The operation
//!
//! `failure.operation` is never guessed. It comes from, in this order: the caller
//! ([`normalize_with_operation`]), the ingest body's `operation` (a wire name such as `create`,
//! or an ARM operation name), or the activity log's `operationName`
//! (`…/write` → `create`, `…/extensions/write` → `extension`, `…/delete` → `delete`,
//! `…/start/action` → `start`, `…/powerOff|deallocate/action` → `stop`, `…/restart/action` →
//! `restart`, `…/redeploy/action` → `redeploy`; ARM's `write` is create-or-update, and Keel
//! reads it as `create` because the `retry_without_agent` transform refuses a body that is not
//! a create anyway). A bare error body or async status does not say which operation failed:
//! it is rejected with [`NormalizeError::WrongPayload`] saying how to supply it. In a list of
//! activity-log events, an entry whose operation cannot be told (say
//! `Microsoft.Authorization/policies/audit/action`) or that carries no `statusMessage` is
//! skipped rather than failing the list; a single such event is an error.
//!
//! # Retry-After
//!
//! `failure.retry_after_s` comes from [`Input::retry_after_s`], else the HTTP `Retry-After`
//! header (integer seconds), else a message's "try again after 'N' seconds". Values from 0 to
//! [`MAX_RETRY_AFTER_S`] (one day) are kept; larger ones are clamped to it (a server asking
//! for more than a day is either broken or hostile, and the engine adds the delay to the
//! decision time); negative ones are ignored.
//!
//! # Ids and times
//!
//! `azure.arm:<vendor id>` from, in order: the ingest `idempotency_key`, the async operation's
//! `name`, the activity log's `operationId`, its `eventDataId`, the HTTP `x-ms-request-id`.
//! Without one, a content hash over (code, message, resource id or name, operation, attempt)
//! and the payload's own time (`endTime`, `eventTimestamp`, `startTime`, the HTTP `Date`), or,
//! when the payload has no time, the time the same content was first seen, kept in the
//! [`State`] (at most [`MAX_TRACKED`] entries, the oldest dropped). A bare error body re-read
//! at another moment therefore gets the same id, as long as the caller persists the state
//! ([`normalize_with_operation`] has no state: there the first-seen time is `observed_at`).
//! `event.time` is that payload time, else the first-seen time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::classify::classify_response;
use super::json::{self, get_ci, join, kind};
use super::{hash_id, quote, Input, NormalizeError, NormalizerState, MAX_PAYLOAD_BYTES};
use crate::event::{Event, Failure, FailureDetail, Kind, Operation, Resource, Source, Timestamp};

mod activity_log;
mod error_body;
mod http_response;
mod ingest;
mod resource;

use activity_log::activity;
use error_body::error_doc;
use http_response::parse_http;
use ingest::ingest;
use resource::{fill, resource_from_str};

/// How deep errors may nest (wrappers, details and JSON strings together) before the payload
/// is rejected.
pub const MAX_NESTING: usize = 16;

/// The largest `retry_after_s` an event carries (one day); larger values are clamped to it.
pub const MAX_RETRY_AFTER_S: i64 = 86_400;

/// Bound on the first-seen times kept in the [`State`].
pub const MAX_TRACKED: usize = 1024;

/// What the normalizer remembers between calls: when failures that carry neither a vendor id
/// nor a time of their own were first seen, so that a re-read gets the same id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// First-seen time by content key (a hash of code, message, resource, operation and
    /// attempt).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_seen: BTreeMap<String, Timestamp>,
}

impl State {
    /// The first-seen time of `key`, recording `now` if it is new, then trimming the oldest
    /// entries beyond [`MAX_TRACKED`] (never `key` itself).
    fn remember(&mut self, key: &str, now: Timestamp) -> Timestamp {
        if let Some(t) = self.first_seen.get(key) {
            return *t;
        }
        self.first_seen.insert(key.to_string(), now);
        while self.first_seen.len() > MAX_TRACKED {
            let oldest = self
                .first_seen
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.first_seen.remove(&k);
                }
                None => break,
            }
        }
        now
    }
}

/// A `Retry-After` in seconds as Keel keeps it: negative is ignored, more than a day is a day.
pub fn clamp_retry_after(secs: i64) -> Option<i64> {
    (secs >= 0).then(|| secs.min(MAX_RETRY_AFTER_S))
}

/// A run of ASCII digits as seconds, clamped (a number too long for `i64` is more than a day).
fn digits_to_secs(digits: &str) -> Option<i64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<i64>()
            .map_or(MAX_RETRY_AFTER_S, |n| n.min(MAX_RETRY_AFTER_S)),
    )
}

const SOURCE: &str = "azure.arm";
const EXPECTED: &str = "Resource Manager error";
/// Normalizes one ARM failure payload (see the module documentation for the shapes). A payload
/// that reports no failure (an operation still running or succeeded) gives no event. The state
/// changes only when the payload is read without error.
pub fn normalize(
    input: &Input<'_>,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let mut seen = state.azure_arm.clone();
    let events = run(input, input.operation, &mut seen)?;
    state.azure_arm = seen;
    Ok(events)
}

/// [`normalize`] for a caller that knows which operation failed (for example the host that
/// polled the `Azure-AsyncOperation` URL of its own create); `operation` wins over what the
/// payload says. The same as setting [`Input::operation`], except that no state is kept: a
/// payload with neither an id nor a time gets an id from `observed_at` (use [`normalize`] with
/// a persisted [`NormalizerState`] for ids that survive a re-read).
pub fn normalize_with_operation(
    input: &Input<'_>,
    operation: Operation,
) -> Result<Vec<Event>, NormalizeError> {
    run(input, Some(operation), &mut State::default())
}

// ----------------------------------------------------------------------------------------
// What is known about the failure besides the error itself. Outer layers (caller, HTTP
// envelope, ingest body) are read first and win; inner layers only fill what is missing.
// Times and ids are ranked (lower wins) because an inner time can be better than an outer one.

#[derive(Debug, Clone, Default)]
struct Ctx {
    operation: Option<Operation>,
    vendor_id: Option<(u8, String)>,
    time: Option<(u8, Timestamp)>,
    resource: Resource,
    http_status: Option<i64>,
    retry_after_s: Option<i64>,
    rate_limit_exhausted: bool,
    attempt: Option<i64>,
    request: Option<Value>,
    /// Inside a list: skip an entry whose operation cannot be told instead of failing.
    in_list: bool,
}

const ID_INGEST: u8 = 0;
const ID_ASYNC_NAME: u8 = 1;
const ID_OPERATION_ID: u8 = 2;
const ID_EVENT_DATA_ID: u8 = 3;
const ID_REQUEST_ID: u8 = 4;
const T_END: u8 = 0;
const T_EVENT: u8 = 1;
const T_START: u8 = 2;
const T_DATE: u8 = 3;

impl Ctx {
    fn offer_id(&mut self, rank: u8, id: &str) {
        let id = id.trim();
        if id.is_empty() {
            return;
        }
        if self.vendor_id.as_ref().is_none_or(|(r, _)| rank < *r) {
            self.vendor_id = Some((rank, id.to_string()));
        }
    }

    fn offer_time(&mut self, rank: u8, t: Option<Timestamp>) {
        if let Some(t) = t {
            if self.time.as_ref().is_none_or(|(r, _)| rank < *r) {
                self.time = Some((rank, t));
            }
        }
    }

    fn offer_status(&mut self, status: i64) {
        if self.http_status.is_none() && (100..=599).contains(&status) {
            self.http_status = Some(status);
        }
    }

    fn offer_operation(&mut self, op: Option<Operation>) {
        if self.operation.is_none() {
            self.operation = op;
        }
    }
}

/// The innermost error.
#[derive(Debug)]
struct Found {
    code: String,
    message: Option<String>,
    details: Vec<FailureDetail>,
    /// Every message on the way in, outermost first (for "try again after 'N' seconds").
    messages: Vec<String>,
}

// ----------------------------------------------------------------------------------------

fn run(
    input: &Input<'_>,
    known: Option<Operation>,
    seen: &mut State,
) -> Result<Vec<Event>, NormalizeError> {
    if input.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(NormalizeError::TooLarge {
            size: input.payload.len(),
        });
    }
    let text = json::text(input.payload)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut ctx = Ctx {
        operation: known,
        ..Ctx::default()
    };
    if let Some(s) = input.http_status {
        ctx.offer_status(i64::from(s));
    }
    ctx.retry_after_s = input.retry_after_s.and_then(clamp_retry_after);
    let doc = if text.trim_start().starts_with("HTTP/") {
        let http = parse_http(text.trim_start(), "")?;
        http.apply(&mut ctx)?;
        http.json_body()?
    } else {
        json::parse_at(text, 0)?
    };
    match &doc {
        Value::Array(items) => list(items, "", &ctx, input, seen),
        Value::Object(obj) => {
            if let Some(Value::Array(items)) = get_ci(obj, "value") {
                if !has_error(obj) {
                    return list(items, "value", &ctx, input, seen);
                }
            }
            Ok(one(obj, "", &doc, ctx, input, true, seen)?
                .into_iter()
                .collect())
        }
        other => Err(NormalizeError::WrongPayload {
            expected: EXPECTED,
            reason: format!("the payload is {}, not an error object", kind(other)),
        }),
    }
}

fn list(
    items: &[Value],
    prefix: &str,
    ctx: &Ctx,
    input: &Input<'_>,
    seen: &mut State,
) -> Result<Vec<Event>, NormalizeError> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{prefix}[{i}]");
        let obj = json::object(item, &path)?;
        let mut c = ctx.clone();
        c.in_list = true;
        if let Some(e) = one(obj, &path, item, c, input, true, seen)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// One document: an ingest body, an alert, an activity-log event or an error body.
fn one(
    obj: &Map<String, Value>,
    path: &str,
    raw: &Value,
    mut ctx: Ctx,
    input: &Input<'_>,
    allow_ingest: bool,
    seen: &mut State,
) -> Result<Option<Event>, NormalizeError> {
    if allow_ingest && is_ingest(obj) {
        return ingest(obj, path, raw, ctx, input, seen);
    }
    if let Some(Value::Object(data)) = get_ci(obj, "data") {
        if let Some(al) = get_ci(data, "context")
            .and_then(Value::as_object)
            .and_then(|c| get_ci(c, "activityLog"))
            .and_then(Value::as_object)
        {
            return activity(
                al,
                &join(path, "data.context.activityLog"),
                raw,
                ctx,
                input,
                seen,
            );
        }
        if let Some(ac) = get_ci(data, "alertContext").and_then(Value::as_object) {
            let target = get_ci(data, "essentials")
                .and_then(Value::as_object)
                .and_then(|e| get_ci(e, "alertTargetIDs"))
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str);
            if let Some(id) = target {
                let r = resource_from_str(id);
                fill(&mut ctx.resource, r);
            }
            return activity(ac, &join(path, "data.alertContext"), raw, ctx, input, seen);
        }
    }
    if is_activity(obj) {
        return activity(obj, path, raw, ctx, input, seen);
    }
    error_doc(obj, path, raw, ctx, input, seen)
}

fn has_error(obj: &Map<String, Value>) -> bool {
    ["error", "code", "odata.error"]
        .iter()
        .any(|k| get_ci(obj, k).is_some_and(|v| !v.is_null()))
}

fn is_ingest(obj: &Map<String, Value>) -> bool {
    get_ci(obj, "idempotency_key").is_some()
        || (get_ci(obj, "error").is_some()
            && ["operation", "resource", "attempt", "request"]
                .iter()
                .any(|k| get_ci(obj, k).is_some()))
}

fn is_activity(obj: &Map<String, Value>) -> bool {
    let status_message = get_ci(obj, "properties")
        .and_then(Value::as_object)
        .is_some_and(|p| get_ci(p, "statusMessage").is_some());
    status_message
        || (get_ci(obj, "operationName").is_some()
            && [
                "eventTimestamp",
                "eventDataId",
                "operationId",
                "resultType",
                "submissionTimestamp",
                "correlationId",
            ]
            .iter()
            .any(|k| get_ci(obj, k).is_some()))
}

// ----------------------------------------------------------------------------------------
// The event.

fn build(
    found: Found,
    ctx: Ctx,
    raw: &Value,
    input: &Input<'_>,
    seen: &mut State,
) -> Result<Option<Event>, NormalizeError> {
    let Some(operation) = ctx.operation else {
        if ctx.in_list {
            return Ok(None);
        }
        return Err(NormalizeError::WrongPayload {
            expected: EXPECTED,
            reason: format!(
                "the payload (error `{}`) does not say which operation failed, and Keel does not \
                 guess it: send it in an ingest body {{\"operation\": \"create\", \"resource\": ..., \
                 \"error\": <payload>}}, send the activity-log event (its operationName says), or \
                 give the operation (`keel normalize --operation create`, `from.operation` in a \
                 test case, Input::operation)",
                quote(&found.code)
            ),
        });
    };
    let Found {
        code,
        message,
        details,
        messages,
    } = found;
    let retry_after_s = ctx
        .retry_after_s
        .or_else(|| messages.iter().rev().find_map(|m| retry_after_in(m)));
    let c = classify_response(
        &code,
        message.as_deref(),
        ctx.http_status,
        &details,
        ctx.rate_limit_exhausted,
    );
    let mut resource = ctx.resource;
    if resource.is_self.is_none() {
        if let (Some(me), Some(name)) = (input.self_name, resource.name.as_deref()) {
            resource.is_self = Some(name.eq_ignore_ascii_case(me));
        }
    }
    let attempt = ctx.attempt.unwrap_or(1);
    let payload_time = ctx.time.map(|(_, t)| t);
    let who = resource
        .id
        .as_deref()
        .or(resource.name.as_deref())
        .unwrap_or("");
    let attempt_s = attempt.to_string();
    let content = [
        code.as_str(),
        message.as_deref().unwrap_or(""),
        who,
        operation.as_str(),
        attempt_s.as_str(),
    ];
    // Without a time of its own, the failure's time is when this content was first seen
    // (never the observation time of a re-read), and so is its id's epoch. Only content
    // without a vendor id needs it.
    let time = match (payload_time, &ctx.vendor_id) {
        (Some(t), _) => t,
        (None, Some(_)) => input.observed_at,
        (None, None) => seen.remember(&hash_id(SOURCE, &content), input.observed_at),
    };
    let id = match ctx.vendor_id {
        Some((_, v)) => format!("{SOURCE}:{v}"),
        None => {
            let epoch = time.to_rfc3339();
            let mut parts = content.to_vec();
            parts.push(&epoch);
            hash_id(SOURCE, &parts)
        }
    };
    Ok(Some(Event {
        id,
        time,
        source: Source::AzureArm,
        kind: Kind::OperationFailure,
        resource,
        maintenance: None,
        health: None,
        failure: Some(Failure {
            operation,
            code,
            message,
            http_status: ctx.http_status,
            attempt,
            details,
            retry_after_s,
            category: c.category,
            transient: c.transient,
            request: ctx.request,
        }),
        raw: Some(raw.clone()),
    }))
}

/// "Please try again after '372' seconds." → 372 (clamped to [`MAX_RETRY_AFTER_S`]).
fn retry_after_in(message: &str) -> Option<i64> {
    let lower = message.to_ascii_lowercase();
    for (i, _) in lower.match_indices("after ") {
        let Some(rest) = lower.get(i + "after ".len()..) else {
            continue;
        };
        let rest = rest.trim_start_matches(['\'', '"']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            continue;
        }
        let Some(after) = rest.get(digits.len()..) else {
            continue;
        };
        if after
            .trim_start_matches(['\'', '"'])
            .trim_start()
            .starts_with("second")
        {
            return digits_to_secs(&digits);
        }
    }
    None
}

// ----------------------------------------------------------------------------------------
// Small helpers.

/// How the root path is shown in messages.
fn path_or_root(path: &str) -> &str {
    if path.is_empty() {
        "$"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outer layers are read first and win: at an equal rank (an HTTP response in an ingest
    /// body, itself inside an HTTP response) the inner layer's id and time never replace the
    /// outer one's; only a better rank does.
    #[test]
    fn at_an_equal_rank_the_outer_layer_keeps_its_id_and_time() {
        let t = |s: &str| s.parse::<Timestamp>().ok();
        let mut ctx = Ctx::default();
        ctx.offer_id(ID_REQUEST_ID, "outer-request");
        ctx.offer_id(ID_REQUEST_ID, "inner-request");
        assert_eq!(ctx.vendor_id, Some((ID_REQUEST_ID, "outer-request".into())));
        ctx.offer_id(ID_ASYNC_NAME, "operation");
        ctx.offer_id(ID_REQUEST_ID, "late-request");
        assert_eq!(ctx.vendor_id, Some((ID_ASYNC_NAME, "operation".into())));
        ctx.offer_time(T_DATE, t("2021-10-13T07:02:15Z"));
        ctx.offer_time(T_DATE, t("2021-10-13T07:05:00Z"));
        assert_eq!(ctx.time, Some((T_DATE, t("2021-10-13T07:02:15Z").unwrap())));
        ctx.offer_time(T_END, t("2021-10-13T07:01:00Z"));
        assert_eq!(ctx.time, Some((T_END, t("2021-10-13T07:01:00Z").unwrap())));
    }

    #[test]
    fn retry_after_from_messages() {
        assert_eq!(
            retry_after_in("Please try again after '372' seconds."),
            Some(372)
        );
        assert_eq!(retry_after_in("try again after 6 seconds"), Some(6));
        assert_eq!(retry_after_in("retry after some time"), None);
        // Absurd values are clamped to a day, however long.
        assert_eq!(
            retry_after_in("after '99999999999999' seconds"),
            Some(MAX_RETRY_AFTER_S)
        );
        assert_eq!(
            retry_after_in("try again after 99999999999999999999999999 seconds"),
            Some(MAX_RETRY_AFTER_S)
        );
        assert_eq!(
            retry_after_in("try again after 86400 seconds"),
            Some(86_400)
        );
        assert_eq!(
            retry_after_in("try again after 86401 seconds"),
            Some(86_400)
        );
        assert_eq!(retry_after_in("try again after 0 seconds"), Some(0));
        assert_eq!(retry_after_in("try again after -5 seconds"), None);
        assert_eq!(retry_after_in("after 'é"), None);
    }
}
