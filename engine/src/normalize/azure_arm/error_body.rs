//! Shapes 1-4 and 7: the plain error `{"error": {...}}`, the async operation status, the
//! deployment wrappers with the cause in `details[]`, an error held in a `message` as a JSON
//! string, and Resource Health's flat `{code, message, details: "text"}`; unwrapped to the
//! innermost error.

use serde_json::{Map, Value};

use super::{
    build, has_error, path_or_root, Ctx, Found, State, EXPECTED, ID_ASYNC_NAME, MAX_NESTING, T_END,
    T_START,
};
use crate::event::{Event, FailureDetail};
use crate::normalize::classify::is_wrapper;
use crate::normalize::json::{self, get_ci, join, kind, opt_str, shape};
use crate::normalize::{time, Input, NormalizeError};

pub(super) fn error_doc(
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
pub(super) fn innermost(
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

pub(super) fn innermost_value(
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
pub(super) fn json_error(s: &str) -> Option<Value> {
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
