//! Shape 8: Keel's ingest body `{idempotency_key, resource, operation, attempt?, request?,
//! error, http_status?}`, where `error` is any other shape (as JSON, a JSON string or a raw HTTP
//! response string) and `resource` an ARM resource id, a VM name or an object of resource
//! fields.

use serde_json::{Map, Value};

use super::activity_log::operation_from_arm_name;
use super::http_response::parse_http;
use super::resource::{fill, resource_from_object, resource_from_request, resource_from_str};
use super::{one, Ctx, State, ID_INGEST};
use crate::event::{Event, Operation};
use crate::normalize::json::{self, get_ci, join, opt_int, opt_str, shape};
use crate::normalize::{quote, Input, NormalizeError};

pub(super) fn ingest(
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

/// The wire names an ingest body's `operation` may give.
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

/// A wire name (`create`) or an ARM operation name (`…/virtualMachines/write`).
pub(super) fn parse_operation(s: &str) -> Option<Operation> {
    let t = s.trim();
    OPERATIONS
        .into_iter()
        .find(|o| o.as_str().eq_ignore_ascii_case(t))
        .or_else(|| operation_from_arm_name(t))
}
