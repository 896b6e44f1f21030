//! Shape 5: activity-log events (REST form with `{"value", "localizedValue"}` objects, the flat
//! export and alert forms), whose `properties.statusMessage` holds the failed operation's error
//! as a JSON string, and the activity log's operation names and HTTP status names.

use serde_json::{Map, Value};

use super::error_body::{innermost, innermost_value, json_error};
use super::resource::{fill, resource_from_str};
use super::{build, Ctx, Found, State, ID_EVENT_DATA_ID, ID_OPERATION_ID, T_EVENT};
use crate::event::{Event, Operation};
use crate::normalize::json::{get_ci, join, kind, opt_str, shape, value_str};
use crate::normalize::{time, Input, NormalizeError};

pub(super) fn activity(
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

/// `Microsoft.Compute/virtualMachines/start/action` → `start`, and so on.
pub(super) fn operation_from_arm_name(name: &str) -> Option<Operation> {
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

#[cfg(test)]
mod tests {
    use super::super::ingest::parse_operation;
    use super::*;

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

    /// A resource type and a verb are enough to tell the operation (the provider namespace
    /// adds nothing to it); only a bare verb is too little.
    #[test]
    fn a_resource_type_and_a_verb_name_an_operation() {
        use Operation::*;
        for (n, op) in [
            ("virtualMachines/write", Some(Create)),
            ("virtualMachines/delete", Some(Delete)),
            ("extensions/delete", Some(Extension)),
            ("start/action", Some(Start)),
            ("/deallocate/action/", Some(Stop)),
            ("delete", None),
            ("/write/", None),
        ] {
            assert_eq!(operation_from_arm_name(n), op, "{n}");
        }
    }
}
