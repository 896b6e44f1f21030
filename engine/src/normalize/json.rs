//! JSON helpers shared by the normalizers: bounded parsing, case-insensitive keys, typed
//! field access with paths in errors.

use serde_json::{Map, Value};

use super::{quote, NormalizeError};

/// Parses a payload as JSON: UTF-8 checked, nesting bounded by serde_json's limit (128).
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, NormalizeError> {
    parse_at(text(bytes)?, 0)
}

/// Parses JSON text that starts after `line_offset` lines of the payload (an HTTP body), so
/// that errors name the payload's line.
pub(crate) fn parse_at(text: &str, line_offset: usize) -> Result<Value, NormalizeError> {
    serde_json::from_str(text).map_err(|e| NormalizeError::Json {
        line: e.line() + line_offset,
        column: e.column(),
        message: crate::event::strip_serde_position(&e.to_string()),
    })
}

/// The payload as UTF-8 text.
pub(crate) fn text(bytes: &[u8]) -> Result<&str, NormalizeError> {
    std::str::from_utf8(bytes).map_err(|e| NormalizeError::NotUtf8 {
        offset: e.valid_up_to(),
    })
}

/// Looks a key up case-insensitively (exact match first).
pub(crate) fn get_ci<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The first of `keys` present (case-insensitively) and not null.
pub(crate) fn get_any<'v>(obj: &'v Map<String, Value>, keys: &[&str]) -> Option<&'v Value> {
    keys.iter()
        .filter_map(|k| get_ci(obj, k))
        .find(|v| !v.is_null())
}

/// A short description of a JSON value's type, for errors.
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string \"{}\"", quote(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// `v` as an object, or a shape error at `path`.
pub(crate) fn object<'v>(
    v: &'v Value,
    path: &str,
) -> Result<&'v Map<String, Value>, NormalizeError> {
    v.as_object().ok_or_else(|| shape(path, "an object", v))
}

/// `v` as an array, or a shape error at `path`.
pub(crate) fn array<'v>(v: &'v Value, path: &str) -> Result<&'v Vec<Value>, NormalizeError> {
    v.as_array().ok_or_else(|| shape(path, "an array", v))
}

/// An optional string field: absent, null and `""` are `None` ("not given").
pub(crate) fn opt_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'v str>, NormalizeError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(shape(&join(path, key), "a string", other)),
    }
}

/// [`opt_str`] for a field that may also be `{"value": "...", "localizedValue": "..."}` (the
/// activity log's REST form,
/// <https://learn.microsoft.com/en-us/azure/azure-monitor/essentials/activity-log-schema>): then
/// its `value`.
pub(crate) fn value_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'v str>, NormalizeError> {
    match get_ci(obj, key) {
        Some(Value::Object(o)) => opt_str(o, "value", &join(path, key)),
        _ => opt_str(obj, key, path),
    }
}

/// A required non-empty string field.
pub(crate) fn req_str<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'v str, NormalizeError> {
    opt_str(obj, key, path)?.ok_or_else(|| NormalizeError::Shape {
        path: join(path, key),
        expected: "a non-empty string".into(),
        found: get_ci(obj, key)
            .map(kind)
            .unwrap_or_else(|| "nothing".into()),
    })
}

/// An optional integer given as a number or a numeric string.
pub(crate) fn opt_int(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<i64>, NormalizeError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| shape(&join(path, key), "an integer", &Value::Number(n.clone()))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| shape(&join(path, key), "an integer", &Value::String(s.clone()))),
        Some(other) => Err(shape(&join(path, key), "an integer", other)),
    }
}

/// `path.key`, or `key` at the root (`""` or `"$"`).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() || path == "$" {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A shape error.
pub(crate) fn shape(path: &str, expected: &str, found: &Value) -> NormalizeError {
    NormalizeError::Shape {
        path: path.to_string(),
        expected: expected.to_string(),
        found: kind(found),
    }
}
