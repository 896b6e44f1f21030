//! Normalizer `azure.arm`: failed Azure Resource Manager operations (create, start, ...) to
//! `operation_failure` events.
//!
//! # What it reads
//!
//! Every error shape of DOMAIN.md 3.1, found by looking at the keys (case-insensitively):
//!
//! 1. the plain error `{"error": {"code", "message", "target", "details": [...]}}`;
//! 2. the async operation status `{"status": "Failed", "error", "name", "startTime", "endTime"}`
//!    (a status that is not a failure, `Succeeded` or `InProgress`, yields no event);
//! 3. the deployment wrappers `ResourceDeploymentFailure` / `ResourceOperationFailure` /
//!    `DeploymentFailed` / `InvalidTemplateDeployment` / `MultipleErrorsOccurred` with the
//!    cause in `details[]`;
//! 4. a `message` that holds another JSON error as a string, at any level (DOMAIN.md 8 fact 14);
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
//! 8. DESIGN.md's ingest body `{idempotency_key, resource, operation, attempt?, request?, error,
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

use super::classify::{classify_response, is_wrapper};
use super::json::{self, get_ci, join, kind, opt_int, opt_str, shape, value_str};
use super::{
    hash_id, http, quote, time, Input, NormalizeError, NormalizerState, MAX_PAYLOAD_BYTES,
};
use crate::event::{Event, Failure, FailureDetail, Kind, Operation, Resource, Source, Timestamp};

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
const OPERATIONS: [Operation; 8] = [
    Operation::Create,
    Operation::Start,
    Operation::Stop,
    Operation::Restart,
    Operation::Update,
    Operation::Delete,
    Operation::Extension,
    Operation::Redeploy,
];
const RESOURCE_FIELDS: &[&str] = &[
    "id",
    "name",
    "type",
    "os",
    "region",
    "location",
    "zone",
    "fault_domain",
    "update_domain",
    "availability_set",
    "scale_set",
    "tags",
    "is_self",
];

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

fn fill(into: &mut Resource, from: Resource) {
    let Resource {
        id,
        name,
        type_,
        os,
        region,
        zone,
        fault_domain,
        update_domain,
        availability_set,
        scale_set,
        tags,
        is_self,
    } = from;
    into.id = into.id.take().or(id);
    into.name = into.name.take().or(name);
    into.type_ = into.type_.take().or(type_);
    into.os = into.os.take().or(os);
    into.region = into.region.take().or(region);
    into.zone = into.zone.take().or(zone);
    into.fault_domain = into.fault_domain.or(fault_domain);
    into.update_domain = into.update_domain.or(update_domain);
    into.availability_set = into.availability_set.take().or(availability_set);
    into.scale_set = into.scale_set.take().or(scale_set);
    if into.tags.is_empty() {
        into.tags = tags;
    }
    into.is_self = into.is_self.or(is_self);
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
// Ingest body.

fn ingest(
    obj: &Map<String, Value>,
    path: &str,
    raw: &Value,
    mut ctx: Ctx,
    input: &Input<'_>,
    seen: &mut State,
) -> Result<Option<Event>, NormalizeError> {
    if let Some(key) = opt_str(obj, "idempotency_key", path)? {
        ctx.offer_id(ID_INGEST, key);
    }
    match get_ci(obj, "operation") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let op = parse_operation(s).ok_or_else(|| NormalizeError::Shape {
                path: join(path, "operation"),
                expected: format!(
                    "one of {} or an ARM operation name such as Microsoft.Compute/virtualMachines/write",
                    Operation::NAMES.join(", ")
                ),
                found: format!("\"{}\"", quote(s)),
            })?;
            ctx.offer_operation(Some(op));
        }
        Some(other) => return Err(shape(&join(path, "operation"), "a string", other)),
    }
    if let Some(a) = opt_int(obj, "attempt", path)? {
        if a < 1 {
            return Err(NormalizeError::Shape {
                path: join(path, "attempt"),
                expected: "an attempt number of 1 or more".into(),
                found: format!("number {a}"),
            });
        }
        ctx.attempt = Some(a);
    }
    if let Some(s) = opt_int(obj, "http_status", path)? {
        ctx.offer_status(s);
    }
    match get_ci(obj, "request") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => ctx.request = Some(v.clone()),
        Some(other) => {
            return Err(shape(
                &join(path, "request"),
                "the original request body (a JSON object)",
                other,
            ))
        }
    }
    match get_ci(obj, "resource") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => fill(&mut ctx.resource, resource_from_str(s)),
        Some(Value::Object(r)) => {
            let r = resource_from_object(r, &join(path, "resource"))?;
            fill(&mut ctx.resource, r);
        }
        Some(other) => {
            return Err(shape(
                &join(path, "resource"),
                "an ARM resource id or an object with resource fields",
                other,
            ))
        }
    }
    if let Some(req) = &ctx.request {
        let r = resource_from_request(req);
        fill(&mut ctx.resource, r);
    }
    let epath = join(path, "error");
    let doc = match get_ci(obj, "error") {
        None | Some(Value::Null) => {
            return Err(NormalizeError::Shape {
                path: epath,
                expected: "the ARM error body or the activity-log statusMessage".into(),
                found: "nothing".into(),
            })
        }
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::String(s)) => {
            let t = s.trim_start();
            if t.starts_with("HTTP/") {
                let http = parse_http(t, &epath)?;
                http.apply(&mut ctx)?;
                http.json_body()?
            } else if t.starts_with('{') {
                serde_json::from_str::<Value>(t).map_err(|e| NormalizeError::Shape {
                    path: epath.clone(),
                    expected: "a JSON error body".into(),
                    found: format!(
                        "invalid JSON ({})",
                        crate::event::strip_serde_position(&e.to_string())
                    ),
                })?
            } else {
                return Err(shape(
                    &epath,
                    "a JSON error body, a JSON string holding one, or an HTTP response",
                    &Value::String(s.clone()),
                ));
            }
        }
        Some(other) => {
            return Err(shape(
                &epath,
                "the ARM error body or the activity-log statusMessage",
                other,
            ))
        }
    };
    let inner = json::object(&doc, &epath)?;
    one(inner, &epath, raw, ctx, input, false, seen)
}

// ----------------------------------------------------------------------------------------
// Activity-log event.

fn activity(
    obj: &Map<String, Value>,
    path: &str,
    raw: &Value,
    mut ctx: Ctx,
    input: &Input<'_>,
    seen: &mut State,
) -> Result<Option<Event>, NormalizeError> {
    let status = match value_str(obj, "status", path)? {
        Some(s) => Some(s),
        None => value_str(obj, "resultType", path)?,
    };
    if let Some(s) = status {
        if !(s.eq_ignore_ascii_case("Failed") || s.eq_ignore_ascii_case("Failure")) {
            return Ok(None);
        }
    }
    if let Some(name) = value_str(obj, "operationName", path)? {
        ctx.offer_operation(operation_from_arm_name(name));
    }
    for key in ["eventTimestamp", "time"] {
        if let Some(s) = opt_str(obj, key, path)? {
            ctx.offer_time(T_EVENT, time::parse(&join(path, key), s)?);
        }
    }
    if let Some(id) = opt_str(obj, "operationId", path)? {
        ctx.offer_id(ID_OPERATION_ID, id);
    }
    if let Some(id) = opt_str(obj, "eventDataId", path)? {
        ctx.offer_id(ID_EVENT_DATA_ID, id);
    }
    for key in ["resourceId", "resourceUri"] {
        if let Some(id) = opt_str(obj, key, path)? {
            fill(&mut ctx.resource, resource_from_str(id));
        }
    }
    let ppath = join(path, "properties");
    let props = match get_ci(obj, "properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(other) => return Err(shape(&ppath, "an object", other)),
    };
    let status_code = match props {
        Some(p) => value_str(p, "statusCode", &ppath)?,
        None => None,
    };
    if let Some(sc) = status_code {
        if let Some(n) = http_status_from(sc) {
            ctx.offer_status(n);
        }
    }
    let smpath = join(&ppath, "statusMessage");
    let found = match props.and_then(|p| get_ci(p, "statusMessage")) {
        Some(Value::String(s)) => {
            if let Some(inner) = json_error(s) {
                innermost_value(&inner, &format!("{smpath}(JSON)"), 1, Vec::new())?
            } else {
                // Plain text: the status code is the best code there is.
                let code = status_code
                    .filter(|c| c.parse::<i64>().is_err())
                    .map(str::to_string)
                    .or(value_str(obj, "subStatus", path)?.map(str::to_string))
                    .ok_or_else(|| NormalizeError::Shape {
                        path: smpath.clone(),
                        expected: "a JSON error (or a text message with properties.statusCode)"
                            .into(),
                        found: kind(&Value::String(s.clone())),
                    })?;
                let message = (!s.trim().is_empty()).then(|| s.clone());
                Found {
                    code,
                    messages: message.iter().cloned().collect(),
                    message,
                    details: Vec::new(),
                }
            }
        }
        Some(Value::Object(m)) => innermost(m, &smpath, 1, Vec::new())?,
        None | Some(Value::Null) if ctx.in_list => return Ok(None),
        None | Some(Value::Null) => {
            return Err(NormalizeError::Shape {
                path: smpath,
                expected: "the failed operation's error (a JSON string)".into(),
                found: "nothing".into(),
            })
        }
        Some(other) => return Err(shape(&smpath, "a JSON string", other)),
    };
    build(found, ctx, raw, input, seen)
}

// ----------------------------------------------------------------------------------------
// Error bodies.

fn error_doc(
    obj: &Map<String, Value>,
    path: &str,
    raw: &Value,
    mut ctx: Ctx,
    input: &Input<'_>,
    seen: &mut State,
) -> Result<Option<Event>, NormalizeError> {
    let with_error = has_error(obj);
    let status = get_ci(obj, "status");
    match status {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            if let Some(n) = n.as_i64() {
                ctx.offer_status(n);
            }
        }
        Some(Value::String(s)) => {
            if let Ok(n) = s.trim().parse::<i64>() {
                ctx.offer_status(n);
            } else if !s.eq_ignore_ascii_case("Failed") && !with_error {
                // Succeeded, Canceled without an error, or still running: nothing failed.
                return Ok(None);
            }
        }
        Some(other) => return Err(shape(&join(path, "status"), "a string", other)),
    }
    let async_status =
        status.is_some() || get_ci(obj, "startTime").is_some() || get_ci(obj, "endTime").is_some();
    if let Some(s) = opt_str(obj, "endTime", path)? {
        ctx.offer_time(T_END, time::parse(&join(path, "endTime"), s)?);
    }
    if let Some(s) = opt_str(obj, "startTime", path)? {
        ctx.offer_time(T_START, time::parse(&join(path, "startTime"), s)?);
    }
    if async_status {
        if let Some(name) = opt_str(obj, "name", path)? {
            ctx.offer_id(ID_ASYNC_NAME, name);
        }
    }
    if !with_error {
        return Err(NormalizeError::WrongPayload {
            expected: EXPECTED,
            reason: format!(
                "no `error` object and no `code` at `{}`",
                path_or_root(path)
            ),
        });
    }
    // A bare error object (no `error` member) is an ARM error only with both `code` and
    // `message`: AWS scheduled events, for one, have a `Code` too.
    let wrapped = json::get_any(obj, &["error", "odata.error"]).is_some();
    if !wrapped && json::get_any(obj, &["message"]).is_none() {
        return Err(NormalizeError::WrongPayload {
            expected: EXPECTED,
            reason: format!(
                "the object at `{}` has a `code` but no `message` (and no `error` member): an \
                 ARM error has both{}",
                path_or_root(path),
                if get_ci(obj, "NotBefore").is_some() || get_ci(obj, "EventId").is_some() {
                    "; this looks like an AWS scheduled event (read it with aws.imds)"
                } else {
                    ""
                }
            ),
        });
    }
    let found = innermost(obj, path, 0, Vec::new())?;
    build(found, ctx, raw, input, seen)
}

/// Follows wrappers, `error` members and JSON strings to the innermost error.
fn innermost(
    obj: &Map<String, Value>,
    path: &str,
    depth: usize,
    mut messages: Vec<String>,
) -> Result<Found, NormalizeError> {
    if depth > MAX_NESTING {
        return Err(NormalizeError::Shape {
            path: path_or_root(path).to_string(),
            expected: format!("errors nested at most {MAX_NESTING} levels deep"),
            found: "deeper nesting".into(),
        });
    }
    let code = match get_ci(obj, "code") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(other) => {
            return Err(shape(
                &join(path, "code"),
                "an error code (a string)",
                other,
            ))
        }
    };
    let Some(code) = code else {
        if let Some(e) = json::get_any(obj, &["error", "odata.error"]) {
            return innermost_value(e, &join(path, "error"), depth + 1, messages);
        }
        return Err(NormalizeError::Shape {
            path: join(path, "code"),
            expected: "an error code (a non-empty string)".into(),
            found: get_ci(obj, "code")
                .map(kind)
                .unwrap_or_else(|| "nothing".into()),
        });
    };
    let message = message_of(obj, path)?;
    if let Some(m) = &message {
        messages.push(m.clone());
        if let Some(inner) = json_error(m) {
            return innermost_value(
                &inner,
                &format!("{}(JSON)", join(path, "message")),
                depth + 1,
                messages,
            );
        }
    }
    let dpath = join(path, "details");
    let details_v = get_ci(obj, "details");
    if is_wrapper(&code) || code.eq_ignore_ascii_case("Conflict") {
        let parsed;
        let items: &[Value] = match details_v {
            Some(Value::Array(a)) => a,
            Some(Value::String(s)) => {
                parsed = json_array(s);
                parsed.as_deref().unwrap_or(&[])
            }
            _ => &[],
        };
        for (i, d) in items.iter().enumerate() {
            if let Value::Object(dobj) = d {
                if carries_error(dobj) {
                    return innermost(dobj, &format!("{dpath}[{i}]"), depth + 1, messages);
                }
            }
        }
    }
    let mut details = Vec::new();
    flatten(details_v, &dpath, &mut details, depth + 1)?;
    Ok(Found {
        code,
        message,
        details,
        messages,
    })
}

fn innermost_value(
    v: &Value,
    path: &str,
    depth: usize,
    messages: Vec<String>,
) -> Result<Found, NormalizeError> {
    match v {
        Value::Object(o) => innermost(o, path, depth, messages),
        Value::String(s) => match json_error(s) {
            Some(inner) => innermost_value(&inner, &format!("{path}(JSON)"), depth + 1, messages),
            None => Err(shape(path, "an error object", v)),
        },
        other => Err(shape(path, "an error object", other)),
    }
}

/// Whether a detail is itself an error worth descending into.
fn carries_error(obj: &Map<String, Value>) -> bool {
    get_ci(obj, "code").is_some_and(|c| !c.is_null())
        || get_ci(obj, "error").is_some_and(|e| !e.is_null())
        || get_ci(obj, "message")
            .and_then(Value::as_str)
            .is_some_and(|m| json_error(m).is_some())
}

/// A JSON object in a string that holds an error (`code`, or an `error` member).
fn json_error(s: &str) -> Option<Value> {
    let t = s.trim();
    if !(t.starts_with('{') && t.ends_with('}')) {
        return None;
    }
    let v: Value = serde_json::from_str(t).ok()?;
    let o = v.as_object()?;
    let has = get_ci(o, "code").is_some_and(Value::is_string)
        || get_ci(o, "error").is_some_and(|e| e.is_object() || e.is_string());
    has.then_some(v)
}

fn json_array(s: &str) -> Option<Vec<Value>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    match serde_json::from_str(t).ok()? {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

/// `message` as a string, or OData v3's `{"lang", "value"}`. Empty means not given.
fn message_of(obj: &Map<String, Value>, path: &str) -> Result<Option<String>, NormalizeError> {
    match get_ci(obj, "message") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(m)) => match get_ci(m, "value") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) | None | Some(Value::Null) => Ok(None),
            Some(other) => Err(shape(&join(path, "message.value"), "a string", other)),
        },
        Some(other) => Err(shape(&join(path, "message"), "a string", other)),
    }
}

/// Flattens `details[]` (and their own `details[]`) into `out`.
fn flatten(
    v: Option<&Value>,
    path: &str,
    out: &mut Vec<FailureDetail>,
    depth: usize,
) -> Result<(), NormalizeError> {
    if depth > MAX_NESTING + 1 {
        return Err(NormalizeError::Shape {
            path: path.to_string(),
            expected: format!("details nested at most {MAX_NESTING} levels deep"),
            found: "deeper nesting".into(),
        });
    }
    let items: Vec<&Value> = match v {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        // Resource Health's flat error carries free text here; a JSON array in a string is
        // read as one.
        Some(Value::String(s)) => {
            return match json_array(s) {
                Some(a) => flatten(Some(&Value::Array(a)), path, out, depth),
                None => Ok(()),
            }
        }
        Some(other) => return Err(shape(path, "an array of error details", other)),
    };
    for (i, d) in items.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let obj = json::object(d, &p)?;
        let code = match get_ci(obj, "code") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(shape(&join(&p, "code"), "a string", other)),
        };
        let message = message_of(obj, &p)?;
        let target = match get_ci(obj, "target") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(shape(&join(&p, "target"), "a string", other)),
        };
        if let Some(code) = code {
            out.push(FailureDetail {
                code,
                message,
                target,
            });
        }
        flatten(get_ci(obj, "details"), &join(&p, "details"), out, depth + 1)?;
    }
    Ok(())
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
// Operations.

fn parse_operation(s: &str) -> Option<Operation> {
    let t = s.trim();
    OPERATIONS
        .into_iter()
        .find(|o| o.as_str().eq_ignore_ascii_case(t))
        .or_else(|| operation_from_arm_name(t))
}

/// `Microsoft.Compute/virtualMachines/start/action` → `start`, and so on.
fn operation_from_arm_name(name: &str) -> Option<Operation> {
    let lower = name.trim().to_ascii_lowercase();
    let segs: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() < 2 {
        return None;
    }
    let last = *segs.last()?;
    if segs.contains(&"extensions") && (last == "write" || last == "delete") {
        return Some(Operation::Extension);
    }
    match last {
        "write" => Some(Operation::Create),
        "delete" => Some(Operation::Delete),
        "action" => match *segs.get(segs.len().checked_sub(2)?)? {
            "start" => Some(Operation::Start),
            "poweroff" | "deallocate" => Some(Operation::Stop),
            "restart" => Some(Operation::Restart),
            "redeploy" => Some(Operation::Redeploy),
            _ => None,
        },
        _ => None,
    }
}

/// `409`, `"409"` or an HTTP status name as the activity log writes it (`Conflict`).
fn http_status_from(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    const NAMES: &[(&str, i64)] = &[
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("MethodNotAllowed", 405),
        ("Conflict", 409),
        ("Gone", 410),
        ("PreconditionFailed", 412),
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("NotImplemented", 501),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(t))
        .map(|(_, c)| *c)
}

// ----------------------------------------------------------------------------------------
// Resources.

/// An ARM resource id (parsed), or a bare VM name.
fn resource_from_str(s: &str) -> Resource {
    let t = s.trim();
    if t.starts_with('/') {
        resource_from_id(t)
    } else if t.is_empty() {
        Resource::default()
    } else {
        Resource {
            name: Some(t.to_string()),
            ..Resource::default()
        }
    }
}

/// The resource an ARM id names, parsed by [`super::azure_id`] (the one parser of every Azure
/// normalizer). The subscription and resource group stay in `id` (the event has no fields for
/// them).
fn resource_from_id(id: &str) -> Resource {
    let parsed = super::azure_id::parse(id).unwrap_or_default();
    Resource {
        id: Some(id.to_string()),
        type_: (!parsed.type_.is_empty()).then_some(parsed.type_),
        name: parsed.name,
        scale_set: parsed.scale_set,
        availability_set: parsed.availability_set,
        ..Resource::default()
    }
}

/// `westeurope` from `West Europe` (ARM accepts both).
fn region(s: &str) -> Option<String> {
    let r: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    (!r.is_empty()).then_some(r)
}

fn resource_from_object(obj: &Map<String, Value>, path: &str) -> Result<Resource, NormalizeError> {
    for k in obj.keys() {
        if !RESOURCE_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k)) {
            let hint = crate::fields::did_you_mean(k, RESOURCE_FIELDS.iter().copied())
                .map(|h| format!(" (did you mean `{h}`?)"))
                .unwrap_or_default();
            return Err(NormalizeError::Shape {
                path: join(path, k),
                expected: format!(
                    "one of the resource fields {}{hint}",
                    RESOURCE_FIELDS.join(", ")
                ),
                found: format!("unknown key \"{}\"", quote(k)),
            });
        }
    }
    let s = |key: &str| json::opt_str(obj, key, path).map(|v| v.map(str::to_string));
    let mut r = Resource {
        id: s("id")?,
        name: s("name")?,
        type_: s("type")?,
        os: s("os")?.map(|o| o.trim().to_lowercase()),
        region: match s("region")? {
            Some(v) => region(&v),
            None => s("location")?.as_deref().and_then(region),
        },
        zone: match get_ci(obj, "zone") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => s("zone")?,
        },
        fault_domain: json::opt_int(obj, "fault_domain", path)?,
        update_domain: json::opt_int(obj, "update_domain", path)?,
        availability_set: s("availability_set")?,
        scale_set: s("scale_set")?,
        tags: Default::default(),
        is_self: match get_ci(obj, "is_self") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => return Err(shape(&join(path, "is_self"), "a boolean", other)),
        },
    };
    match get_ci(obj, "tags") {
        None | Some(Value::Null) => {}
        Some(Value::Object(t)) => {
            for (k, v) in t {
                match v {
                    Value::String(s) => {
                        r.tags.insert(k.clone(), s.clone());
                    }
                    other => return Err(shape(&format!("{path}.tags.{k}"), "a string", other)),
                }
            }
        }
        Some(other) => return Err(shape(&join(path, "tags"), "an object of strings", other)),
    }
    if let Some(id) = r.id.clone() {
        fill(&mut r, resource_from_str(&id));
    }
    Ok(r)
}

/// What the original request body says about the VM (leniently: it is the caller's request,
/// not the vendor's payload). `os` only where the body states it: `osDisk.osType`, or the one
/// OS configuration it carries.
fn resource_from_request(req: &Value) -> Resource {
    let Some(body) = req.as_object() else {
        return Resource::default();
    };
    let props = get_ci(body, "properties").and_then(Value::as_object);
    let os_profile = props
        .and_then(|p| get_ci(p, "osProfile"))
        .and_then(Value::as_object);
    let os_type = props
        .and_then(|p| get_ci(p, "storageProfile"))
        .and_then(Value::as_object)
        .and_then(|s| get_ci(s, "osDisk"))
        .and_then(Value::as_object)
        .and_then(|d| get_ci(d, "osType"))
        .and_then(Value::as_str)
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let has = |k: &str| {
        os_profile
            .and_then(|o| get_ci(o, k))
            .is_some_and(Value::is_object)
    };
    let os = os_type.or(
        match (has("windowsConfiguration"), has("linuxConfiguration")) {
            (true, false) => Some("windows".to_string()),
            (false, true) => Some("linux".to_string()),
            _ => None,
        },
    );
    let zone = get_ci(body, "zones")
        .and_then(Value::as_array)
        .filter(|z| z.len() == 1)
        .and_then(|z| z.first())
        .and_then(Value::as_str)
        .map(str::to_string);
    let tags = get_ci(body, "tags")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let name = get_ci(body, "name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty() && !n.trim_start().starts_with('['))
        .map(str::to_string);
    let type_ = get_ci(body, "type")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string);
    let availability_set = props
        .and_then(|p| get_ci(p, "availabilitySet"))
        .and_then(Value::as_object)
        .and_then(|a| get_ci(a, "id"))
        .and_then(Value::as_str)
        .filter(|id| !id.trim_start().starts_with('['))
        .and_then(super::azure_id::parse)
        .and_then(|a| a.availability_set);
    Resource {
        name,
        type_,
        os,
        region: get_ci(body, "location")
            .and_then(Value::as_str)
            .filter(|l| !l.trim_start().starts_with('['))
            .and_then(region),
        zone,
        availability_set,
        tags,
        ..Resource::default()
    }
}

// ----------------------------------------------------------------------------------------
// The raw HTTP response form: one response, its body the rest of the text.

struct Http<'a> {
    response: http::Response<'a>,
    /// Where the body is, for errors.
    path: String,
}

fn parse_http<'a>(text: &'a str, path: &str) -> Result<Http<'a>, NormalizeError> {
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
    fn apply(&self, ctx: &mut Ctx) -> Result<(), NormalizeError> {
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

    fn json_body(&self) -> Result<Value, NormalizeError> {
        if self.response.body.trim().is_empty() {
            return Err(NormalizeError::WrongPayload {
                expected: EXPECTED,
                reason: "the HTTP response has no body".into(),
            });
        }
        json::parse_at(self.response.body, self.response.body_line)
    }
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

    #[test]
    fn operation_names() {
        use Operation::*;
        for (n, op) in [
            ("Microsoft.Compute/virtualMachines/write", Some(Create)),
            (
                "microsoft.compute/virtualmachines/START/action",
                Some(Start),
            ),
            (
                "Microsoft.Compute/virtualMachines/deallocate/action",
                Some(Stop),
            ),
            (
                "Microsoft.Compute/virtualMachines/powerOff/action",
                Some(Stop),
            ),
            (
                "Microsoft.Compute/virtualMachines/restart/action",
                Some(Restart),
            ),
            (
                "Microsoft.Compute/virtualMachines/redeploy/action",
                Some(Redeploy),
            ),
            ("Microsoft.Compute/virtualMachines/delete", Some(Delete)),
            (
                "Microsoft.Compute/virtualMachines/extensions/write",
                Some(Extension),
            ),
            (
                "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/start/action",
                Some(Start),
            ),
            ("Microsoft.Authorization/policies/audit/action", None),
            ("write", None),
            ("/action", None),
            ("", None),
        ] {
            assert_eq!(operation_from_arm_name(n), op, "{n}");
        }
        assert_eq!(parse_operation(" Create "), Some(Create));
        assert_eq!(parse_operation("resize"), None);
    }

    #[test]
    fn resource_ids() {
        let r = resource_from_id(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3",
        );
        assert_eq!(r.name.as_deref(), Some("ss_3"));
        assert_eq!(r.scale_set.as_deref(), Some("ss"));
        assert_eq!(
            r.type_.as_deref(),
            Some("Microsoft.Compute/virtualMachineScaleSets/virtualMachines")
        );
        let r = resource_from_id("/subscriptions/s/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/extensions/cse");
        assert_eq!(r.name.as_deref(), Some("vm1"));
        assert_eq!(
            r.type_.as_deref(),
            Some("Microsoft.Compute/virtualMachines/extensions")
        );
        for odd in [
            "/",
            "/providers",
            "/providers/Microsoft.Compute",
            "/subscriptions/s",
            "////",
        ] {
            let r = resource_from_id(odd);
            assert_eq!(r.id.as_deref(), Some(odd));
        }
    }
}
