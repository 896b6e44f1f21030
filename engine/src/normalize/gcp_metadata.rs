//! Normalizer for the GCP Compute Engine metadata server (the protocol: `docs/protocols.md`,
//! "GCP metadata"; Google's documentation:
//! <https://cloud.google.com/compute/docs/metadata/getting-live-migration-notice>).
//!
//! The payload kind is detected from its shape (or, for an HTTP transcript, from the request
//! path):
//!
//! | payload | event |
//! | --- | --- |
//! | `instance/maintenance-event` text: `NONE` | nothing, or `completed` for the value seen before (stateful, below) |
//! | `MIGRATE_ON_HOST_MAINTENANCE` | `live_migrate`, `started` |
//! | `TERMINATE_ON_HOST_MAINTENANCE`, `SHUTDOWN_ON_HOST_MAINTENANCE` | `terminate`, `started` |
//! | any other value (a token such as `FOO_ON_HOST_MAINTENANCE`) | `unknown`, `started`: Google's advice is to treat any non-`NONE` value as maintenance imminent |
//! | `instance/preempted` text `TRUE` / `FALSE` | `preempt`, `started` / nothing |
//! | `instance/upcoming-maintenance` JSON (snake_case; the REST `UpcomingMaintenance` in camelCase, bare, wrapped in `upcomingMaintenance`, or inside an Instance's `resourceStatus`) | `host_maintenance`, see below |
//! | an HTTP transcript (`.http`) | the last response; a numeric `ETag` becomes `incarnation` (Google's ETags are hex change tokens and are ignored) |
//! | HTTP 404, Google's `Error 404 (Not Found)` page, or an empty body | nothing (upcoming-maintenance answers 404 when none is planned) |
//! | the 403 body `Missing Metadata-Flavor:Google header.` | a `WrongPayload` error naming the missing header |
//!
//! `maintenance-event` is stateful ([`State`]): the first time a non-`NONE` value is read the
//! normalizer records the value and that observation time ("first seen") and emits a `started`
//! event with `not_before` = first seen + 60 s (Google changes the value 60 seconds before the
//! maintenance starts; GPU VMs get an hour, which the payload does not say, so 60 s is the
//! conservative bound) and id = hash(value, first seen). Re-reading the same value emits
//! **nothing** (like an unchanged Azure incarnation): the event was already reported and its id
//! would be the same. The value returning to `NONE` emits the same id with status `completed`;
//! a direct change to another non-`NONE` value emits `completed` (marked `inferred`) for the old
//! value and `started` for the new one. `NONE` with nothing before emits nothing. `preempted`
//! works the same way: the first `TRUE` emits, a repeated `TRUE` does not, `FALSE` resets.
//!
//! `upcoming-maintenance` mapping: `maintenance_status` `PENDING` → `scheduled`, `ONGOING` →
//! `started`, `UNKNOWN` / `UNDEFINED_MAINTENANCE_STATUS` / absent / new values → `unknown` (the
//! document says maintenance is coming or under way, not which). The impact (live
//! migration or stop) depends on the VM's `onHostMaintenance` policy, which the document does not
//! carry, so the type is `host_maintenance` with the raw `type` (`SCHEDULED`, `UNSCHEDULED`,
//! `MULTIPLE`, ...) in `vendor_type`. `not_before` = `window_start_time` (else
//! `start_time_window.earliest`), `not_after` = `window_end_time`; `event.time` = `not_before`.
//! The id hashes the type and `latest_window_start_time` (fixed when Google plans the
//! maintenance, so it survives an owner's reschedule, which moves `window_start_time`), else the
//! window start, else the first-seen time kept in state. A re-read emits the same event again.
//! `maintenance_reasons` become the description.

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{self, get_ci, join};
use super::platform_maintenance;
use super::{
    hash_id, http, quote, self_resource, stamp, time, Input, NormalizeError, NormalizerState,
};
use crate::event::{
    Event, Maintenance, MaintenanceStatus, MaintenanceType, Resource, Source, Timestamp,
};

const SOURCE: &str = "gcp.metadata";
const EXPECTED: &str = "GCP metadata";

/// GCP's notice before maintenance starts.
const NOTICE_S: i64 = 60;

/// State carried between calls: the last `maintenance-event` value and when it was first seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The last `instance/maintenance-event` value read, as sent (`NONE` included); absent
    /// before the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_event: Option<String>,
    /// When the current non-`NONE` value was first seen: the epoch of its event id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_event_since: Option<Timestamp>,
    /// When `instance/preempted` was first seen `TRUE`; cleared by `FALSE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_since: Option<Timestamp>,
    /// When an upcoming-maintenance document without any window time was first seen; cleared
    /// by a 404 (no upcoming maintenance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcoming_since: Option<Timestamp>,
}

/// What the normalizer knows about the call.
struct Ctx<'a> {
    observed_at: Timestamp,
    self_name: Option<&'a str>,
    incarnation: Option<i64>,
}

/// The metadata key a transcript's last response answered, where known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    MaintenanceEvent,
    Preempted,
    Upcoming,
    Unknown,
}

/// Normalizes one GCP metadata payload (see the module documentation for what is read).
pub fn normalize(
    input: &Input<'_>,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let text = json::text(input.payload)?;
    let st = &mut state.gcp_metadata;
    let self_name = input.self_name.filter(|s| !s.trim().is_empty());
    if http::is_transcript(text) {
        let resp = http::transcript(text, EXPECTED)?;
        let ctx = Ctx {
            observed_at: input.observed_at,
            self_name,
            incarnation: resp.header_values("etag").last().and_then(etag_number),
        };
        let key = resp.target().map(key_of).unwrap_or(Key::Unknown);
        return body(&resp.text(), Some(resp.status), key, &ctx, st);
    }
    let ctx = Ctx {
        observed_at: input.observed_at,
        self_name,
        incarnation: None,
    };
    body(text, input.http_status, Key::Unknown, &ctx, st)
}

fn wrong(reason: String) -> NormalizeError {
    NormalizeError::WrongPayload {
        expected: EXPECTED,
        reason,
    }
}

fn missing_flavor(status: &str) -> NormalizeError {
    wrong(format!(
        "{status}\"Missing Metadata-Flavor:Google header.\": the request lacked the `Metadata-Flavor: Google` header, so the metadata server refused it"
    ))
}

/// Reads one response body, given its HTTP status where known.
fn body(
    text: &str,
    status: Option<u16>,
    key: Key,
    ctx: &Ctx<'_>,
    st: &mut State,
) -> Result<Vec<Event>, NormalizeError> {
    let t = text.trim();
    let flavor = t.to_ascii_lowercase().contains("missing metadata-flavor");
    match status {
        None => {}
        Some(s) if (200..300).contains(&s) => {}
        Some(404) => {
            // upcoming-maintenance answers 404 when no maintenance is planned.
            if matches!(key, Key::Upcoming | Key::Unknown) {
                st.upcoming_since = None;
            }
            return Ok(Vec::new());
        }
        Some(403) if flavor => return Err(missing_flavor("HTTP 403 ")),
        Some(s) => {
            let hint = match s {
                503 => " (the metadata server can answer 503 during maintenance; retry after 1 s)",
                403 => " (forbidden)",
                _ => "",
            };
            return Err(wrong(format!("HTTP {s}{hint}: \"{}\"", quote(t))));
        }
    }
    if flavor {
        return Err(missing_flavor(""));
    }
    if t.is_empty() {
        if status.is_some() {
            return Err(wrong(
                "an empty response body (the metadata keys always have a value)".into(),
            ));
        }
        return Ok(Vec::new());
    }
    if t.starts_with('<') {
        if t.contains("<title>Error 404 (Not Found)") {
            if matches!(key, Key::Upcoming | Key::Unknown) {
                st.upcoming_since = None;
            }
            return Ok(Vec::new());
        }
        return Err(wrong(format!(
            "an HTML page that is not Google's 404 page: \"{}\"",
            quote(t)
        )));
    }
    if t.starts_with('{') || t.starts_with('[') || t.starts_with('"') {
        let v = json::parse(t.as_bytes())?;
        return json_payload(&v, key, ctx, st);
    }
    text_value(t, key, ctx, st, Value::String(t.to_string()))
}

/// The keys that mark an `UpcomingMaintenance` object (snake_case metadata, camelCase REST).
const UPCOMING_KEYS: &[&str] = &[
    "maintenance_status",
    "maintenanceStatus",
    "window_start_time",
    "windowStartTime",
    "window_end_time",
    "windowEndTime",
    "latest_window_start_time",
    "latestWindowStartTime",
    "can_reschedule",
    "canReschedule",
    "start_time_window",
    "startTimeWindow",
    "maintenance_on_shutdown",
    "maintenanceOnShutdown",
    "maintenance_reasons",
    "maintenanceReasons",
];

/// `UpcomingMaintenance.Type` values (a bare `{"type": ...}` is only read with one of these).
const UPCOMING_TYPES: &[&str] = &[
    "SCHEDULED",
    "UNSCHEDULED",
    "MULTIPLE",
    "UNKNOWN_TYPE",
    "UNDEFINED_TYPE",
];

fn json_payload(
    v: &Value,
    key: Key,
    ctx: &Ctx<'_>,
    st: &mut State,
) -> Result<Vec<Event>, NormalizeError> {
    match v {
        // `?alt=json` returns the text value as a JSON string.
        Value::String(s) => text_value(s.trim(), key, ctx, st, v.clone()),
        Value::Object(o) => {
            if let Some((k, u)) = first_key(o, &["upcomingMaintenance", "upcoming_maintenance"]) {
                if u.is_null() {
                    return Ok(Vec::new());
                }
                let uo = json::object(u, k)?;
                return upcoming(uo, k, u, Resource::default(), ctx, st).map(|e| vec![e]);
            }
            if let Some((k, rs)) = first_key(o, &["resourceStatus", "resource_status"]) {
                // An Instance resource from the Compute REST API.
                let rso = json::object(rs, k)?;
                let resource = instance_resource(o, ctx)?;
                let Some((uk, u)) =
                    first_key(rso, &["upcomingMaintenance", "upcoming_maintenance"])
                        .filter(|(_, u)| !u.is_null())
                else {
                    return Ok(Vec::new());
                };
                let p = format!("{k}.{uk}");
                let uo = json::object(u, &p)?;
                return upcoming(uo, &p, u, resource, ctx, st).map(|e| vec![e]);
            }
            let typed = get_ci(o, "type").and_then(Value::as_str).is_some_and(|t| {
                UPCOMING_TYPES
                    .iter()
                    .any(|k| t.trim().eq_ignore_ascii_case(k))
            });
            if typed || UPCOMING_KEYS.iter().any(|k| get_ci(o, k).is_some()) {
                return upcoming(o, "", v, self_resource(ctx.self_name), ctx, st).map(|e| vec![e]);
            }
            let keys: Vec<String> = o
                .keys()
                .take(8)
                .map(|k| format!("\"{}\"", quote(k)))
                .collect();
            Err(wrong(format!(
                "a JSON object with keys [{}]; expected an upcoming-maintenance document (type, maintenance_status, window_start_time, ...)",
                keys.join(", ")
            )))
        }
        other => Err(wrong(format!("JSON {}", json::kind(other)))),
    }
}

/// A text value: `maintenance-event` or `preempted`.
fn text_value(
    t: &str,
    key: Key,
    ctx: &Ctx<'_>,
    st: &mut State,
    raw: Value,
) -> Result<Vec<Event>, NormalizeError> {
    let token = (1..=128).contains(&t.len())
        && t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !token {
        return Err(wrong(format!(
            "expected a maintenance-event value (NONE, MIGRATE_ON_HOST_MAINTENANCE, TERMINATE_ON_HOST_MAINTENANCE, ...), TRUE/FALSE (instance/preempted) or upcoming-maintenance JSON; found \"{}\"",
            quote(t)
        )));
    }
    let boolean = t.eq_ignore_ascii_case("TRUE") || t.eq_ignore_ascii_case("FALSE");
    match key {
        Key::Preempted if boolean => Ok(preempted(t, ctx, st, raw)),
        Key::Preempted => Err(NormalizeError::Shape {
            path: "instance/preempted".into(),
            expected: "TRUE or FALSE".into(),
            found: format!("string \"{}\"", quote(t)),
        }),
        Key::Upcoming => Err(wrong(format!(
            "instance/upcoming-maintenance returns JSON; found text \"{}\"",
            quote(t)
        ))),
        Key::Unknown if boolean => Ok(preempted(t, ctx, st, raw)),
        Key::MaintenanceEvent | Key::Unknown => Ok(maintenance_event(t, ctx, st, raw)),
    }
}

fn is_none_value(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("NONE")
}

/// Maps a non-`NONE` maintenance-event value.
fn maintenance_event_type(v: &str) -> MaintenanceType {
    match v.trim().to_ascii_uppercase().as_str() {
        "MIGRATE_ON_HOST_MAINTENANCE" => MaintenanceType::LiveMigrate,
        "TERMINATE_ON_HOST_MAINTENANCE" | "SHUTDOWN_ON_HOST_MAINTENANCE" => {
            MaintenanceType::Terminate
        }
        _ => MaintenanceType::Unknown,
    }
}

/// The stateful `maintenance-event` transition.
fn maintenance_event(value: &str, ctx: &Ctx<'_>, st: &mut State, raw: Value) -> Vec<Event> {
    let previous = st
        .maintenance_event
        .clone()
        .filter(|p| !is_none_value(p))
        .zip(st.maintenance_event_since);
    let mut out = Vec::new();
    if is_none_value(value) {
        if let Some((pv, since)) = previous {
            out.push(maintenance_event_event(
                &pv,
                since,
                MaintenanceStatus::Completed,
                false,
                ctx,
                raw,
            ));
        }
        st.maintenance_event = Some(value.to_string());
        st.maintenance_event_since = None;
        return out;
    }
    if let Some((pv, since)) = previous {
        if pv.trim().eq_ignore_ascii_case(value) {
            // Unchanged: already reported, nothing new.
            return out;
        }
        // Changed without passing through NONE: the old maintenance is over.
        out.push(maintenance_event_event(
            &pv,
            since,
            MaintenanceStatus::Completed,
            true,
            ctx,
            raw.clone(),
        ));
    }
    out.push(maintenance_event_event(
        value,
        ctx.observed_at,
        MaintenanceStatus::Started,
        false,
        ctx,
        raw,
    ));
    st.maintenance_event = Some(value.to_string());
    st.maintenance_event_since = Some(ctx.observed_at);
    out
}

fn maintenance_event_event(
    value: &str,
    since: Timestamp,
    status: MaintenanceStatus,
    inferred: bool,
    ctx: &Ctx<'_>,
    raw: Value,
) -> Event {
    let id = hash_id(
        SOURCE,
        &[
            "instance/maintenance-event",
            &value.trim().to_ascii_uppercase(),
            &stamp(&since),
        ],
    );
    let mut m = platform_maintenance(maintenance_event_type(value), status);
    m.not_before = since.checked_add_signed(Duration::seconds(NOTICE_S));
    m.vendor_type = Some(value.trim().to_string());
    m.incarnation = ctx.incarnation;
    m.inferred = inferred;
    event(id, ctx.observed_at, self_resource(ctx.self_name), m, raw)
}

/// The stateful `preempted` transition.
fn preempted(value: &str, ctx: &Ctx<'_>, st: &mut State, raw: Value) -> Vec<Event> {
    if !value.eq_ignore_ascii_case("TRUE") {
        st.preempted_since = None;
        return Vec::new();
    }
    if st.preempted_since.is_some() {
        return Vec::new();
    }
    st.preempted_since = Some(ctx.observed_at);
    let id = hash_id(SOURCE, &["instance/preempted", &stamp(&ctx.observed_at)]);
    let mut m = platform_maintenance(MaintenanceType::Preempt, MaintenanceStatus::Started);
    m.incarnation = ctx.incarnation;
    vec![event(
        id,
        ctx.observed_at,
        self_resource(ctx.self_name),
        m,
        raw,
    )]
}

/// One `UpcomingMaintenance` object.
fn upcoming(
    o: &Map<String, Value>,
    path: &str,
    raw: &Value,
    resource: Resource,
    ctx: &Ctx<'_>,
    st: &mut State,
) -> Result<Event, NormalizeError> {
    let type_raw = opt_str(o, &["type"], path)?;
    let status_raw = opt_str(o, &["maintenance_status", "maintenanceStatus"], path)?;
    let window_start = opt_time(o, &["window_start_time", "windowStartTime"], path)?;
    let window_end = opt_time(o, &["window_end_time", "windowEndTime"], path)?;
    let latest_start = opt_time(
        o,
        &["latest_window_start_time", "latestWindowStartTime"],
        path,
    )?;
    let earliest = match first_key(o, &["start_time_window", "startTimeWindow"]) {
        None | Some((_, Value::Null)) => None,
        Some((k, w)) => {
            let p = join(path, k);
            opt_time(json::object(w, &p)?, &["earliest"], &p)?
        }
    };
    let reasons = match first_key(o, &["maintenance_reasons", "maintenanceReasons"]) {
        None | Some((_, Value::Null)) => Vec::new(),
        Some((k, r)) => {
            let p = join(path, k);
            let mut out = Vec::new();
            for (i, item) in json::array(r, &p)?.iter().enumerate() {
                match item {
                    Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                    other => return Err(json::shape(&format!("{p}[{i}]"), "a string", other)),
                }
            }
            out
        }
    };
    let status = match status_raw.map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        Some("PENDING") => MaintenanceStatus::Scheduled,
        Some("ONGOING") => MaintenanceStatus::Started,
        // UNKNOWN, UNDEFINED_MAINTENANCE_STATUS, absent or a new value: the document says
        // maintenance is coming or under way, not which; `scheduled` would say it has not
        // begun.
        _ => MaintenanceStatus::Unknown,
    };
    let not_before = window_start.or(earliest);
    let epoch = match latest_start.or(not_before).or(window_end) {
        Some(t) => t,
        None => *st.upcoming_since.get_or_insert(ctx.observed_at),
    };
    let type_norm = type_raw
        .map(|t| t.trim().to_ascii_uppercase())
        .unwrap_or_default();
    let id = hash_id(
        SOURCE,
        &["instance/upcoming-maintenance", &type_norm, &stamp(&epoch)],
    );
    let mut m = platform_maintenance(MaintenanceType::HostMaintenance, status);
    m.not_before = not_before;
    m.not_after = window_end;
    m.vendor_type = type_raw.map(|t| t.trim().to_string());
    m.incarnation = ctx.incarnation;
    if !reasons.is_empty() {
        m.description = Some(format!("maintenance reasons: {}", reasons.join(", ")));
    }
    Ok(event(
        id,
        not_before.unwrap_or(ctx.observed_at),
        resource,
        m,
        raw.clone(),
    ))
}

/// The resource of a Compute REST Instance (`id`, `name`, `zone` URL).
fn instance_resource(o: &Map<String, Value>, ctx: &Ctx<'_>) -> Result<Resource, NormalizeError> {
    let id = match get_ci(o, "id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(other) => return Err(json::shape("id", "a string or number", other)),
    };
    let name = opt_str(o, &["name"], "")?.map(|s| s.trim().to_string());
    let zone =
        opt_str(o, &["zone"], "")?.map(|z| z.trim().rsplit('/').next().unwrap_or(z).to_string());
    let is_self = match (ctx.self_name, name.as_deref()) {
        (Some(me), Some(n)) => Some(me.trim().eq_ignore_ascii_case(n)),
        _ => None,
    };
    Ok(Resource {
        id,
        name,
        zone,
        is_self,
        ..Resource::default()
    })
}

/// The first of `keys` present (case-insensitively), with the key as written in `keys`.
fn first_key<'v, 'k>(o: &'v Map<String, Value>, keys: &[&'k str]) -> Option<(&'k str, &'v Value)> {
    keys.iter().find_map(|k| get_ci(o, k).map(|v| (*k, v)))
}

/// [`json::opt_str`] under the first of `keys` present.
fn opt_str<'v>(
    o: &'v Map<String, Value>,
    keys: &[&str],
    path: &str,
) -> Result<Option<&'v str>, NormalizeError> {
    match first_key(o, keys) {
        None => Ok(None),
        Some((k, _)) => json::opt_str(o, k, path),
    }
}

fn opt_time(
    o: &Map<String, Value>,
    keys: &[&str],
    path: &str,
) -> Result<Option<Timestamp>, NormalizeError> {
    match first_key(o, keys) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((k, Value::String(s))) => time::parse(&join(path, k), s),
        Some((k, other)) => Err(json::shape(
            &join(path, k),
            "an RFC 3339 time string",
            other,
        )),
    }
}

fn key_of(path: &str) -> Key {
    let p = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    if p.ends_with("instance/maintenance-event") {
        Key::MaintenanceEvent
    } else if p.ends_with("instance/preempted") {
        Key::Preempted
    } else if p.ends_with("instance/upcoming-maintenance") {
        Key::Upcoming
    } else {
        Key::Unknown
    }
}

/// An ETag used as `incarnation` only when it is a plain number (Google's are hex tokens).
fn etag_number(etag: &str) -> Option<i64> {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn event(id: String, time: Timestamp, resource: Resource, m: Maintenance, raw: Value) -> Event {
    super::maintenance_event_of(Source::GcpMetadata, id, time, resource, m, raw)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(etag_number("6e1d1a2b3c4d5e6f"), None);
        assert_eq!(etag_number("\"42\""), Some(42));
        assert_eq!(etag_number("W/\"7\""), Some(7));
        assert_eq!(etag_number("99999999999999999999999"), None);
        assert_eq!(etag_number(""), None);
    }

    #[test]
    fn signed_etags_are_not_numbers() {
        // Only plain digits are an incarnation: Rust's integer parsing would also take a sign,
        // and a "-1" or "+42" token is not a counter the metadata server keeps.
        assert_eq!(etag_number("-1"), None);
        assert_eq!(etag_number("\"+42\""), None);
    }

    #[test]
    fn keys_from_paths() {
        assert_eq!(
            key_of("/computeMetadata/v1/instance/maintenance-event?wait_for_change=true"),
            Key::MaintenanceEvent
        );
        assert_eq!(
            key_of("/computeMetadata/v1/instance/preempted"),
            Key::Preempted
        );
        assert_eq!(
            key_of("/computeMetadata/v1/instance/upcoming-maintenance/"),
            Key::Upcoming
        );
        assert_eq!(key_of("/computeMetadata/v1/instance/id"), Key::Unknown);
    }

    #[test]
    fn transcript_reads_etag_and_path() {
        let t = "GET /computeMetadata/v1/instance/preempted HTTP/1.1\nMetadata-Flavor: Google\n\nHTTP/1.1 200 OK\nETag: \"12\"\n\nTRUE\n";
        let r = http::transcript(t, EXPECTED).unwrap();
        assert_eq!(
            (r.status, r.header_values("etag").last(), r.text().as_str()),
            (200, Some("\"12\""), "TRUE")
        );
        assert_eq!(r.target().map(key_of), Some(Key::Preempted));
    }
}
