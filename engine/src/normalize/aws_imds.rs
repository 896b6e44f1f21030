//! Normalizer for AWS EC2 maintenance and Spot notices (the protocol: `docs/protocols.md`, "AWS
//! instance metadata"; AWS's documentation:
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>,
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instances-status-check_sched.html>).
//!
//! The payload kind is detected from its shape, so one normalizer reads every AWS channel:
//!
//! | payload | event |
//! | --- | --- |
//! | IMDS `spot/instance-action` `{"action", "time"}` | `terminate` → `preempt`, `stop`/`hibernate` → `stop`, other → `unknown`; `scheduled`, `not_before` = `time`, `vendor_type` = the action |
//! | IMDS `spot/termination-time` (a bare timestamp) | `preempt`, `scheduled`, `not_before` = the time |
//! | IMDS `events/recommendations/rebalance` `{"noticeTime"}` | `rebalance`, `scheduled`, no `not_before` (it promises no interruption) |
//! | IMDS `events/maintenance/scheduled` and `.../history` (arrays of `{Code, Description, EventId, NotAfter, NotBefore, State}`) | one event per entry, see below |
//! | `aws ec2 describe-instance-status` output (`{"InstanceStatuses": [...]}`, `{"Events": [...]}` or the `[[...]]` of `--query InstanceStatuses[].Events`) | one event per entry, `InstanceEventId`, ISO 8601 times, instance id and zone where given |
//! | EventBridge `EC2 Spot Instance Interruption Warning` / `EC2 Instance Rebalance Recommendation` | as the IMDS notices; instance id and region from the envelope |
//! | an HTTP transcript (`.http`: request and status lines, headers, body) | the last response is read as above |
//! | an empty body, or IMDS's own `404 - Not Found` page (status 404 or none) | no events: IMDS answers 404 while no notice exists |
//!
//! Scheduled-event codes: `system-reboot` and `instance-reboot` → `reboot`, `instance-stop` →
//! `stop`, `instance-retirement` → `retire`, `system-maintenance` → `host_maintenance` (see
//! `code_type` for why not `freeze`), anything else → `unknown`; `vendor_type` is always the raw
//! code. `State` `active` → `scheduled`, `completed` → `completed`, `canceled` → `canceled`, an
//! unknown state → `scheduled` (aws-node-termination-handler also treats anything that is not
//! canceled or completed as live). Without `State` (the EC2 API shape) the `[Completed]` /
//! `[Canceled]` prefix of `Description` decides. An empty `NotBefore` is malformed; an empty
//! `NotAfter` is not given. `Code` is required: an entry without one is not an AWS scheduled
//! event (Azure's Scheduled Events entries also have `EventId` and `NotBefore`, and are
//! rejected with [`NormalizeError::WrongPayload`], as is any object with Azure's
//! `DocumentIncarnation`). `duration_s` stays absent: `NotAfter - NotBefore` is the window, not
//! the impact.
//!
//! # Ids
//!
//! - An active scheduled event: `aws.imds:<EventId>`, the vendor id as is, so it stays the same
//!   when the owner reschedules it (`NotBefore` moves) and matches the EC2 API's
//!   `InstanceEventId` for the same event.
//! - A completed, canceled (or otherwise not active) entry:
//!   `aws.imds:<EventId>/<state>/<NotBefore, RFC 3339>`. AWS's own history example reuses one
//!   `EventId` for a canceled and a completed entry; the history is deduplicated on
//!   (`EventId`, `State`, `NotBefore`), and terminal entries never change, so the id is stable
//!   across re-reads. Duplicate ids within one document are dropped (first one wins).
//! - Notices without a vendor id (Spot, rebalance, entries without `EventId`): a hash over the
//!   kind, the action and the payload's time. EventBridge events use the envelope `id`. A Spot
//!   or rebalance notice read from its path (an HTTP transcript of it, as `keel run` hands
//!   them over) hashes the path and when it was first read ([`State::spot_since`]): it stays
//!   one event whatever time later reads give, until a read finds none.
//!
//! # A cleared event
//!
//! AWS ends a scheduled event in one of two ways: it marks it (`State` `completed`, or the
//! `[Completed]` prefix) or clears it from `events/maintenance/scheduled`. A cleared event
//! is seen only by comparing two reads of that list, so the normalizer remembers the live
//! entries of the last read ([`State::scheduled`]), and only of a read it knows came from that
//! path: an HTTP transcript of it (a 404 there is an empty list; `keel run` hands its reads
//! over that way). A bare array is not enough (`history` is an array too). An entry that
//! leaves the list is `completed` once its `NotBefore` has passed, else `canceled`, marked
//! `inferred`, with the id a listed entry of that state would have (below), at the
//! observation time.
//!
//! Otherwise the normalizer keeps no state: every AWS notice carries its own time or id. A notice without
//! its documented time (`time`, `noticeTime`, the EventBridge `time`) is an error, as in
//! aws-node-termination-handler. Every initiator is `platform`. In-VM payloads (IMDS) are about
//! this host: with [`Input::self_name`] set they get `resource.name` = that name and
//! `is_self: true`; EC2 API and EventBridge payloads get `is_self` from comparing the name to the
//! instance id.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{self, get_ci, join, opt_str, req_str};
use super::platform_maintenance;
use super::{
    hash_id, http, quote, self_resource, stamp, time, Input, NormalizeError, NormalizerState,
};
use crate::event::{
    Event, Maintenance, MaintenanceStatus, MaintenanceType, Resource, Source, Timestamp,
};

const SOURCE: &str = "aws.imds";
const EXPECTED: &str = "AWS IMDS";

/// State carried between calls: the live events of the last `events/maintenance/scheduled`
/// list read, so that one that leaves the list is known to have ended (AWS: after the work
/// "the event is cleared", or marked `[Completed]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The live (not completed or canceled) entries of the last scheduled list read from its
    /// path, as their events, by `EventId`; at most [`MAX_TRACKED`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scheduled: BTreeMap<String, Event>,
    /// When the `spot/instance-action` notice now listed was first read from its path (the
    /// epoch of its id); cleared by a read that finds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_since: Option<Timestamp>,
    /// The same for `events/recommendations/rebalance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance_since: Option<Timestamp>,
}

/// Bound on tracked scheduled events (an instance has a handful at most), so that a hostile
/// endpoint cannot grow the state without limit.
const MAX_TRACKED: usize = 64;

/// What the normalizer knows about the call.
struct Ctx<'a> {
    self_name: Option<&'a str>,
}

/// Which IMDS path an HTTP transcript's last response answered, where that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    TerminationTime,
    /// `events/maintenance/scheduled`: the whole list of live events ([`State::scheduled`]).
    Scheduled,
    /// `spot/instance-action` ([`State::spot_since`]).
    InstanceAction,
    /// `events/recommendations/rebalance` ([`State::rebalance_since`]).
    Rebalance,
    Token,
    Other,
}

/// Where a scheduled-event entry came from.
#[derive(Debug, Clone, Copy)]
enum Channel<'v> {
    /// IMDS, in the VM: the entry is about this host.
    Imds,
    /// The EC2 API (`describe-instance-status`): about the instance named, if any.
    Ec2Api {
        instance_id: Option<&'v str>,
        zone: Option<&'v str>,
    },
}

/// Normalizes one AWS payload (see the module documentation for what is read).
pub fn normalize(
    input: &Input<'_>,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let text = json::text(input.payload)?;
    let ctx = Ctx {
        self_name: input.self_name.filter(|s| !s.trim().is_empty()),
    };
    if http::is_transcript(text) {
        let resp = http::transcript(text, EXPECTED)?;
        let endpoint = resp.target().map(endpoint_of).unwrap_or(Endpoint::Other);
        if endpoint == Endpoint::Token {
            return Err(wrong(
                "the transcript ends with the IMDSv2 token response (PUT /latest/api/token), which holds no notice"
                    .into(),
            ));
        }
        let mut events = body(&resp.text(), Some(resp.status), endpoint, &ctx)?;
        let st = &mut state.aws_imds;
        match endpoint {
            Endpoint::Scheduled => cleared(st, &mut events, input.observed_at),
            Endpoint::InstanceAction => {
                same_notice(
                    &mut st.spot_since,
                    "spot/instance-action",
                    &mut events,
                    input.observed_at,
                );
            }
            Endpoint::Rebalance => {
                same_notice(
                    &mut st.rebalance_since,
                    "events/recommendations/rebalance",
                    &mut events,
                    input.observed_at,
                );
            }
            _ => {}
        }
        return Ok(events);
    }
    body(text, input.http_status, Endpoint::Other, &ctx)
}

/// After a read of the `spot/instance-action` or the rebalance path (`events`: its notice,
/// none for a 404): a notice stays one event for as long as the path lists one, whatever time
/// it gives (a corrected notice, or a mock that dates it afresh at every read, would otherwise
/// be a new event, drained again, at every read). Its id hashes the path and when it was first
/// read; a read that finds none ends it, and the next notice is a new event.
fn same_notice(
    since: &mut Option<Timestamp>,
    path: &str,
    events: &mut [Event],
    observed_at: Timestamp,
) {
    let [ev] = events else {
        *since = None;
        return;
    };
    let first = *since.get_or_insert(observed_at);
    ev.id = hash_id(SOURCE, &[path, "first read", &stamp(&first)]);
}

/// After a read of the `events/maintenance/scheduled` path (`events`, its list; none for a
/// 404): each live event of the previous read that is no longer listed has ended, as AWS
/// clears an event after the work. It is `completed` once its `NotBefore` has passed, else
/// `canceled`, marked `inferred`, with the id a listed entry of that state would have, at
/// `observed_at`. The live events listed are remembered for the next read.
fn cleared(st: &mut State, events: &mut Vec<Event>, observed_at: Timestamp) {
    let listed: HashSet<&str> = events
        .iter()
        .filter_map(|e| e.maintenance.as_ref()?.vendor_id.as_deref())
        .collect();
    let mut ended = Vec::new();
    for (vid, ev) in &st.scheduled {
        if listed.contains(vid.as_str()) {
            continue;
        }
        let mut ev = ev.clone();
        let Some(m) = ev.maintenance.as_mut() else {
            continue;
        };
        let Some(nb) = m.not_before else {
            continue;
        };
        let (status, label) = if observed_at >= nb {
            (MaintenanceStatus::Completed, "completed")
        } else {
            (MaintenanceStatus::Canceled, "canceled")
        };
        m.status = status;
        m.inferred = true;
        ev.id = format!("{SOURCE}:{vid}/{label}/{}", stamp(&nb));
        ev.time = observed_at;
        ended.push(ev);
    }
    st.scheduled = events
        .iter()
        .filter_map(|e| {
            let m = e.maintenance.as_ref()?;
            if m.status != MaintenanceStatus::Scheduled {
                return None;
            }
            Some((m.vendor_id.clone()?, e.clone()))
        })
        .take(MAX_TRACKED)
        .collect();
    events.extend(ended);
}

fn wrong(reason: String) -> NormalizeError {
    NormalizeError::WrongPayload {
        expected: EXPECTED,
        reason,
    }
}

/// Reads one response body, given its HTTP status where known.
fn body(
    text: &str,
    status: Option<u16>,
    endpoint: Endpoint,
    ctx: &Ctx<'_>,
) -> Result<Vec<Event>, NormalizeError> {
    let t = text.trim();
    match status {
        None => {}
        Some(s) if (200..300).contains(&s) => {}
        Some(404) => {
            // IMDS answers 404 for spot/instance-action, spot/termination-time and the
            // rebalance path until a notice exists: "no notice", but only with IMDS's own page.
            if t.is_empty() || is_imds_page(t, "404 - Not Found") {
                return Ok(Vec::new());
            }
            return Err(wrong(format!(
                "HTTP 404 with a body that is neither empty nor IMDS's 404 page: \"{}\"",
                quote(t)
            )));
        }
        Some(s) => return Err(wrong(format!("HTTP {s}{}", status_hint(s)))),
    }
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if t.starts_with('<') {
        if is_imds_page(t, "404 - Not Found") {
            return Ok(Vec::new());
        }
        if let Some(title) = imds_error_title(t) {
            let hint = title
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .map(status_hint)
                .unwrap_or("");
            return Err(wrong(format!(
                "IMDS error page \"{}\"{hint}",
                quote(&title)
            )));
        }
        return Err(wrong(format!(
            "an HTML or XML page that is not IMDS's 404 page: \"{}\"",
            quote(t)
        )));
    }
    if t.starts_with('{') || t.starts_with('[') {
        let v = json::parse(t.as_bytes())?;
        return json_payload(&v, ctx);
    }
    termination_time(t, endpoint, ctx)
}

fn status_hint(status: u16) -> &'static str {
    match status {
        400 => " (bad request: e.g. an IMDSv2 token PUT with a TTL outside 1-21600)",
        401 => " (unauthorized: the IMDSv2 token is missing or expired; fetch a new one)",
        403 => " (forbidden: the request is not allowed or IMDS is turned off)",
        429 | 503 => " (IMDS is throttled or unavailable; retry with exponential backoff)",
        _ => "",
    }
}

/// IMDS's error pages (404, 401, 400, ...) share one XHTML template; compare whitespace-collapsed.
fn imds_page(title: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?> <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\"> <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\"> <head> <title>{title}</title> </head> <body> <h1>{title}</h1> </body> </html>"
    )
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_imds_page(t: &str, title: &str) -> bool {
    collapse(t) == imds_page(title)
}

/// The title of an IMDS error page (`401 - Unauthorized`), if `t` is exactly one.
fn imds_error_title(t: &str) -> Option<String> {
    let start = t.find("<title>")? + "<title>".len();
    let rest = t.get(start..)?;
    let end = rest.find("</title>")?;
    let title = collapse(rest.get(..end)?);
    // Three digits, " - ", then a text: the collapsed title cannot end in a space, so a title
    // passing both checks has one.
    let code_ok = title
        .get(..3)
        .is_some_and(|c| c.chars().all(|ch| ch.is_ascii_digit()))
        && title.get(3..6) == Some(" - ");
    (code_ok && is_imds_page(t, &title)).then_some(title)
}

/// The legacy `spot/termination-time`: a bare timestamp.
fn termination_time(
    t: &str,
    endpoint: Endpoint,
    ctx: &Ctx<'_>,
) -> Result<Vec<Event>, NormalizeError> {
    match time::parse("spot/termination-time", t) {
        Ok(Some(at)) => {
            let mut m = platform_maintenance(MaintenanceType::Preempt, MaintenanceStatus::Scheduled);
            m.not_before = Some(at);
            let id = hash_id(SOURCE, &["spot/termination-time", &stamp(&at)]);
            Ok(vec![event(
                id,
                at,
                self_resource(ctx.self_name),
                m,
                Value::String(t.to_string()),
            )])
        }
        Ok(None) => Ok(Vec::new()),
        // AWS: when no termination is scheduled, termination-time "is either not present (so you
        // receive an HTTP 404 error) or contains a value that is not a time value". Only when the
        // transcript says the body came from that path is a non-time value "no notice".
        Err(_) if endpoint == Endpoint::TerminationTime => Ok(Vec::new()),
        Err(e) if t.starts_with(|c: char| c.is_ascii_digit()) => Err(e),
        Err(_) => Err(wrong(format!(
            "expected JSON (spot/instance-action, rebalance, scheduled events, EventBridge), a bare timestamp (spot/termination-time), IMDS's 404 page or an empty body; found text \"{}\"",
            quote(t)
        ))),
    }
}

fn json_payload(v: &Value, ctx: &Ctx<'_>) -> Result<Vec<Event>, NormalizeError> {
    let mut out = Out::default();
    match v {
        Value::Array(items) => scheduled_list(items, ctx, &mut out)?,
        Value::Object(o) => {
            if get_ci(o, "DocumentIncarnation").is_some() {
                return Err(wrong(
                    "an Azure Scheduled Events document (it has `DocumentIncarnation`); read it with azure.scheduled_events"
                        .into(),
                ));
            }
            if get_ci(o, "detail-type").is_some() {
                out.push(eventbridge(o, v, ctx)?);
            } else if get_ci(o, "action").is_some() {
                out.push(instance_action(o, v, ctx)?);
            } else if get_ci(o, "noticeTime").is_some() {
                out.push(rebalance(o, v, ctx)?);
            } else if let Some(s) = get_ci(o, "InstanceStatuses") {
                instance_statuses(s, ctx, &mut out)?;
            } else if let Some(e) = get_ci(o, "Events") {
                let no_instance = Channel::Ec2Api {
                    instance_id: None,
                    zone: None,
                };
                if !e.is_null() {
                    for (j, item) in json::array(e, "Events")?.iter().enumerate() {
                        let p = format!("Events[{j}]");
                        let o = json::object(item, &p)?;
                        out.push(scheduled_event(o, item, &p, no_instance, ctx)?);
                    }
                }
            } else {
                let keys: Vec<String> = o
                    .keys()
                    .take(8)
                    .map(|k| format!("\"{}\"", quote(k)))
                    .collect();
                return Err(wrong(format!(
                    "a JSON object with keys [{}]; expected `action` (spot/instance-action), `noticeTime` (rebalance), `detail-type` (EventBridge), `InstanceStatuses` or `Events` (describe-instance-status), or an array of scheduled events",
                    keys.join(", ")
                )));
            }
        }
        other => return Err(wrong(format!("JSON {}", json::kind(other)))),
    }
    Ok(out.events)
}

/// Events in document order, without duplicate ids.
#[derive(Default)]
struct Out {
    events: Vec<Event>,
    seen: HashSet<String>,
}

impl Out {
    fn push(&mut self, ev: Event) {
        if self.seen.insert(ev.id.clone()) {
            self.events.push(ev);
        }
    }
}

/// An IMDS `events/maintenance/scheduled` or `history` array (or the `[[...]]` output of
/// `describe-instance-status --query InstanceStatuses[].Events`).
fn scheduled_list(items: &[Value], ctx: &Ctx<'_>, out: &mut Out) -> Result<(), NormalizeError> {
    let no_instance = Channel::Ec2Api {
        instance_id: None,
        zone: None,
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("[{i}]");
        match item {
            Value::Object(o) => {
                let channel = if get_ci(o, "InstanceEventId").is_some() {
                    no_instance
                } else {
                    Channel::Imds
                };
                out.push(scheduled_event(o, item, &p, channel, ctx)?);
            }
            Value::Array(inner) => {
                for (j, it) in inner.iter().enumerate() {
                    let p2 = format!("{p}[{j}]");
                    let o = json::object(it, &p2)?;
                    out.push(scheduled_event(o, it, &p2, no_instance, ctx)?);
                }
            }
            other => return Err(json::shape(&p, "an object (a scheduled event)", other)),
        }
    }
    Ok(())
}

/// The full `describe-instance-status` output.
fn instance_statuses(v: &Value, ctx: &Ctx<'_>, out: &mut Out) -> Result<(), NormalizeError> {
    for (i, st) in json::array(v, "InstanceStatuses")?.iter().enumerate() {
        let p = format!("InstanceStatuses[{i}]");
        let o = json::object(st, &p)?;
        let channel = Channel::Ec2Api {
            instance_id: opt_str(o, "InstanceId", &p)?,
            zone: opt_str(o, "AvailabilityZone", &p)?,
        };
        let Some(events) = get_ci(o, "Events").filter(|e| !e.is_null()) else {
            continue;
        };
        let ep = join(&p, "Events");
        for (j, item) in json::array(events, &ep)?.iter().enumerate() {
            let p2 = format!("{ep}[{j}]");
            let eo = json::object(item, &p2)?;
            out.push(scheduled_event(eo, item, &p2, channel, ctx)?);
        }
    }
    Ok(())
}

/// One scheduled-event entry (IMDS `EventId` or EC2 API `InstanceEventId`).
fn scheduled_event(
    o: &Map<String, Value>,
    raw: &Value,
    path: &str,
    channel: Channel<'_>,
    ctx: &Ctx<'_>,
) -> Result<Event, NormalizeError> {
    let event_id = match opt_str(o, "EventId", path)? {
        Some(s) => Some(vendor_token(s, &join(path, "EventId"))?),
        None => match opt_str(o, "InstanceEventId", path)? {
            Some(s) => Some(vendor_token(s, &join(path, "InstanceEventId"))?),
            None => None,
        },
    };
    let code = opt_str(o, "Code", path)?;
    let description = opt_str(o, "Description", path)?;
    // An empty NotBefore is malformed (aws-node-termination-handler rejects it too).
    let not_before = req_time(o, "NotBefore", path)?;
    let not_after = match opt_str(o, "NotAfter", path)? {
        Some(s) => time::parse(&join(path, "NotAfter"), s)?,
        None => None,
    };
    let (status, label) = match opt_str(o, "State", path)? {
        Some(s) => {
            let l = s.trim().to_ascii_lowercase();
            let plain = l.len() <= 32
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_');
            if !plain {
                return Err(NormalizeError::Shape {
                    path: join(path, "State"),
                    expected: "active, completed or canceled".into(),
                    found: format!("string \"{}\"", quote(s)),
                });
            }
            let st = match l.as_str() {
                "completed" => MaintenanceStatus::Completed,
                "canceled" | "cancelled" => MaintenanceStatus::Canceled,
                // "active", and states AWS may add: live until AWS says otherwise.
                _ => MaintenanceStatus::Scheduled,
            };
            let l = if l == "cancelled" {
                "canceled".to_string()
            } else {
                l
            };
            (st, l)
        }
        None => {
            // The EC2 API has no State: finished events keep their id and get a prefix.
            let d = description.unwrap_or("").trim_start().to_ascii_lowercase();
            if d.starts_with("[completed]") {
                (MaintenanceStatus::Completed, "completed".to_string())
            } else if d.starts_with("[canceled]") || d.starts_with("[cancelled]") {
                (MaintenanceStatus::Canceled, "canceled".to_string())
            } else {
                (MaintenanceStatus::Scheduled, "active".to_string())
            }
        }
    };
    // Checked last, so that a malformed AWS entry reports its malformed field first.
    let Some(code) = code else {
        return Err(missing_code(o, path));
    };
    let (resource, instance_id) = match channel {
        Channel::Imds => (self_resource(ctx.self_name), None),
        Channel::Ec2Api { instance_id, zone } => (
            Resource {
                zone: zone.map(str::to_string),
                ..instance_resource(instance_id, ctx)
            },
            instance_id,
        ),
    };
    let nb_stamp = stamp(&not_before);
    let id = match event_id {
        Some(e) if label == "active" => format!("{SOURCE}:{e}"),
        Some(e) => format!("{SOURCE}:{e}/{label}/{nb_stamp}"),
        None => hash_id(
            SOURCE,
            &[
                "events/maintenance",
                &code.to_ascii_lowercase(),
                &label,
                &nb_stamp,
                instance_id.unwrap_or(""),
            ],
        ),
    };
    let mut m = platform_maintenance(code_type(code), status);
    m.not_before = Some(not_before);
    m.not_after = not_after;
    m.description = description.map(str::to_string);
    m.vendor_id = event_id.map(str::to_string);
    m.vendor_type = Some(code.to_string());
    Ok(event(id, not_before, resource, m, raw.clone()))
}

/// The error for a scheduled-event entry without `Code`: another vendor's entry, or a
/// malformed one.
fn missing_code(o: &Map<String, Value>, path: &str) -> NormalizeError {
    let azure = [
        "EventType",
        "EventStatus",
        "Resources",
        "EventSource",
        "DurationInSeconds",
    ]
    .iter()
    .any(|k| get_ci(o, k).is_some());
    if azure {
        return wrong(format!(
            "`{}` is an Azure Scheduled Events entry (EventType/EventStatus), not an AWS scheduled event (which has `Code`); read it with azure.scheduled_events",
            if path.is_empty() { "$" } else { path }
        ));
    }
    NormalizeError::Shape {
        path: join(path, "Code"),
        expected: "a scheduled-event code (system-reboot, system-maintenance, instance-reboot, instance-stop, instance-retirement, ...)".into(),
        found: get_ci(o, "Code")
            .map(json::kind)
            .unwrap_or_else(|| "nothing".into()),
    }
}

/// Maps a scheduled-event `Code`.
fn code_type(code: &str) -> MaintenanceType {
    match code.trim().to_ascii_lowercase().as_str() {
        "system-reboot" | "instance-reboot" => MaintenanceType::Reboot,
        "instance-stop" => MaintenanceType::Stop,
        "instance-retirement" => MaintenanceType::Retire,
        // Not `freeze`: AWS documents system-maintenance as either
        // network maintenance (the instance keeps running but loses connectivity briefly) or
        // power maintenance (the instance is taken offline briefly and rebooted), and the payload
        // does not say which. `freeze` promises a memory-preserving pause, which is wrong for
        // both; `host_maintenance` ("host maintenance of unspecified impact") is what AWS says.
        // Policies that must plan for the worst case should treat it as a possible reboot.
        "system-maintenance" => MaintenanceType::HostMaintenance,
        _ => MaintenanceType::Unknown,
    }
}

/// Maps a Spot `instance-action`.
fn spot_action_type(action: &str) -> MaintenanceType {
    match action.trim().to_ascii_lowercase().as_str() {
        "terminate" => MaintenanceType::Preempt,
        "stop" | "hibernate" => MaintenanceType::Stop,
        _ => MaintenanceType::Unknown,
    }
}

/// IMDS `spot/instance-action`.
fn instance_action(
    o: &Map<String, Value>,
    raw: &Value,
    ctx: &Ctx<'_>,
) -> Result<Event, NormalizeError> {
    let action = req_str(o, "action", "")?;
    let at = req_time(o, "time", "")?;
    let mut m = platform_maintenance(spot_action_type(action), MaintenanceStatus::Scheduled);
    m.not_before = Some(at);
    m.vendor_type = Some(action.to_string());
    let id = hash_id(
        SOURCE,
        &[
            "spot/instance-action",
            &action.trim().to_ascii_lowercase(),
            &stamp(&at),
        ],
    );
    Ok(event(id, at, self_resource(ctx.self_name), m, raw.clone()))
}

/// IMDS `events/recommendations/rebalance`.
fn rebalance(o: &Map<String, Value>, raw: &Value, ctx: &Ctx<'_>) -> Result<Event, NormalizeError> {
    let at = req_time(o, "noticeTime", "")?;
    // A rebalance recommendation promises no interruption: no not_before.
    let m = platform_maintenance(MaintenanceType::Rebalance, MaintenanceStatus::Scheduled);
    let id = hash_id(SOURCE, &["events/recommendations/rebalance", &stamp(&at)]);
    Ok(event(id, at, self_resource(ctx.self_name), m, raw.clone()))
}

/// EventBridge Spot interruption warnings and rebalance recommendations.
fn eventbridge(
    o: &Map<String, Value>,
    raw: &Value,
    ctx: &Ctx<'_>,
) -> Result<Event, NormalizeError> {
    let dt = req_str(o, "detail-type", "")?;
    let spot = if dt
        .trim()
        .eq_ignore_ascii_case("EC2 Spot Instance Interruption Warning")
    {
        true
    } else if dt
        .trim()
        .eq_ignore_ascii_case("EC2 Instance Rebalance Recommendation")
    {
        false
    } else {
        return Err(wrong(format!(
            "EventBridge detail-type \"{}\" is neither `EC2 Spot Instance Interruption Warning` nor `EC2 Instance Rebalance Recommendation`",
            quote(dt)
        )));
    };
    let at = req_time(o, "time", "")?;
    let region = opt_str(o, "region", "")?;
    let detail = match get_ci(o, "detail") {
        None | Some(Value::Null) => None,
        Some(d) => Some(json::object(d, "detail")?),
    };
    let mut instance_id = match detail {
        Some(d) => opt_str(d, "instance-id", "detail")?,
        None => None,
    };
    if instance_id.is_none() {
        instance_id = instance_from_resources(o)?;
    }
    let envelope_id = match opt_str(o, "id", "")? {
        Some(s) => Some(vendor_token(s, "id")?),
        None => None,
    };
    let (mut m, action) = if spot {
        let d = detail.ok_or_else(|| NormalizeError::Shape {
            path: "detail".into(),
            expected: "an object with `instance-action`".into(),
            found: "nothing".into(),
        })?;
        let action = req_str(d, "instance-action", "detail")?;
        let mut m = platform_maintenance(spot_action_type(action), MaintenanceStatus::Scheduled);
        m.vendor_type = Some(action.to_string());
        (m, action.trim().to_ascii_lowercase())
    } else {
        (
            platform_maintenance(MaintenanceType::Rebalance, MaintenanceStatus::Scheduled),
            String::new(),
        )
    };
    // The envelope `time` is when the warning was emitted; the interruption follows about two
    // minutes later ("best effort"), so not_before stays absent rather than being guessed.
    m.vendor_id = envelope_id.map(str::to_string);
    let id = match envelope_id {
        Some(e) => format!("{SOURCE}:{e}"),
        None => hash_id(
            SOURCE,
            &[
                if spot {
                    "eventbridge/spot-interruption"
                } else {
                    "eventbridge/rebalance"
                },
                &action,
                instance_id.unwrap_or(""),
                &stamp(&at),
            ],
        ),
    };
    let resource = Resource {
        region: region.map(str::to_string),
        ..instance_resource(instance_id, ctx)
    };
    Ok(event(id, at, resource, m, raw.clone()))
}

/// The instance id from an EventBridge `resources` ARN (`arn:aws:ec2:<region>:<account>:instance/<id>`).
fn instance_from_resources(o: &Map<String, Value>) -> Result<Option<&str>, NormalizeError> {
    let Some(r) = get_ci(o, "resources").filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let arr = json::array(r, "resources")?;
    Ok(arr.iter().filter_map(Value::as_str).find_map(|arn| {
        let rest = arn.strip_prefix("arn:")?;
        let (_, res) = rest.rsplit_once(':')?;
        res.strip_prefix("instance/").filter(|id| !id.is_empty())
    }))
}

/// An EC2 instance named by id (EC2 API, EventBridge): this host's if the id is its name.
fn instance_resource(instance_id: Option<&str>, ctx: &Ctx<'_>) -> Resource {
    Resource {
        id: instance_id.map(str::to_string),
        is_self: match (ctx.self_name, instance_id) {
            (Some(n), Some(i)) => Some(n.trim().eq_ignore_ascii_case(i)),
            _ => None,
        },
        ..Resource::default()
    }
}

fn req_time(o: &Map<String, Value>, key: &str, path: &str) -> Result<Timestamp, NormalizeError> {
    let s = req_str(o, key, path)?;
    let p = join(path, key);
    time::parse(&p, s)?.ok_or_else(|| NormalizeError::Shape {
        path: p,
        expected: "a time".into(),
        found: format!("string \"{}\"", quote(s)),
    })
}

/// A vendor id that is safe to embed in an event id.
fn vendor_token<'v>(s: &'v str, path: &str) -> Result<&'v str, NormalizeError> {
    let ok = s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(s)
    } else {
        Err(NormalizeError::Shape {
            path: path.to_string(),
            expected: "an id of at most 256 letters, digits, '-', '_', '.' or ':'".into(),
            found: format!("string \"{}\"", quote(s)),
        })
    }
}

fn endpoint_of(path: &str) -> Endpoint {
    let p = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    if p.ends_with("spot/termination-time") {
        Endpoint::TerminationTime
    } else if p.ends_with("events/maintenance/scheduled") {
        Endpoint::Scheduled
    } else if p.ends_with("spot/instance-action") {
        Endpoint::InstanceAction
    } else if p.ends_with("events/recommendations/rebalance") {
        Endpoint::Rebalance
    } else if p.ends_with("api/token") {
        Endpoint::Token
    } else {
        Endpoint::Other
    }
}

fn event(id: String, time: Timestamp, resource: Resource, m: Maintenance, raw: Value) -> Event {
    super::maintenance_event_of(Source::AwsImds, id, time, resource, m, raw)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn transcript_last_response_and_its_path() {
        let t = "PUT /latest/api/token HTTP/1.1\nX: 1\n\nHTTP/1.1 200 OK\n\ntoken\n\nGET /latest/meta-data/spot/termination-time HTTP/1.1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nnot a time\r\n";
        let r = http::transcript(t, EXPECTED).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "not a time");
        assert_eq!(r.target().map(endpoint_of), Some(Endpoint::TerminationTime));
    }

    #[test]
    fn transcript_without_response_is_an_error() {
        assert!(http::transcript("GET / HTTP/1.1\nHost: x\n\n", EXPECTED).is_err());
        assert!(http::transcript("HTTP/1.1 200 OK\nno colon here\n\nbody", EXPECTED).is_err());
    }

    #[test]
    fn error_page_titles() {
        assert!(is_imds_page(
            &imds_page("404 - Not Found"),
            "404 - Not Found"
        ));
        assert_eq!(
            imds_error_title(&imds_page("401 - Unauthorized")).as_deref(),
            Some("401 - Unauthorized")
        );
        assert_eq!(
            imds_error_title("<html><title>401 - x</title></html>"),
            None
        );
        // An IMDS-shaped page is an error page only under a `NNN - text` title.
        for title in [
            "abc - Unauthorized",
            "401 Unauthorized",
            "4x1 - Unauthorized",
            "401 -",
        ] {
            assert_eq!(imds_error_title(&imds_page(title)), None, "{title}");
        }
        assert_eq!(
            imds_error_title(&imds_page("503 - Service Unavailable")).as_deref(),
            Some("503 - Service Unavailable")
        );
    }
}
