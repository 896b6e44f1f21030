//! The maintenance windows' unit tests, on a virtual clock (`now` is an argument).

#![allow(clippy::unwrap_used, clippy::panic)]

use chrono::{NaiveTime, Weekday};
use chrono_tz::Tz;

use super::*;
use crate::run::pause::Scope;

const ALL: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn hm(s: &str) -> NaiveTime {
    NaiveTime::parse_from_str(s, "%H:%M").unwrap()
}

fn window(name: &str, days: &[Weekday], start: &str, end: &str, tz: Tz) -> Window {
    Window {
        name: name.into(),
        days: days.to_vec(),
        start: hm(start),
        end: hm(end),
        time_zone: tz,
        actions: vec![Action::Drain],
        scope: Scope::All,
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn ev(region: &str) -> Event {
    serde_json::from_value(serde_json::json!({
        "id": "ingest:e\u{1b}1", "time": "2026-12-01T00:00:00Z", "source": "ingest",
        "kind": "maintenance", "resource": {"name": "vm1", "region": region},
        "maintenance": {"type": "reboot", "status": "scheduled"},
    }))
    .unwrap()
}

#[test]
fn a_window_crossing_midnight_belongs_to_the_day_it_opens() {
    // Sunday 22:00 to Monday 04:00, Berlin (CET, UTC+1, in December).
    let w = window(
        "nights",
        &[Weekday::Sun],
        "22:00",
        "04:00",
        chrono_tz::Europe::Berlin,
    );
    // Sunday 2026-12-06 21:59 and 23:59 local.
    assert!(!w.is_open(t("2026-12-06T20:59:00Z")));
    assert!(w.is_open(t("2026-12-06T21:00:00Z")));
    assert!(w.is_open(t("2026-12-06T22:59:00Z")));
    // Monday 00:00 and 03:59 local: still Sunday's window.
    assert!(w.is_open(t("2026-12-06T23:00:00Z")));
    assert!(w.is_open(t("2026-12-07T02:59:00Z")));
    // Monday 04:00 local: closed; Monday 23:00 local: Monday is not listed.
    assert!(!w.is_open(t("2026-12-07T03:00:00Z")));
    assert!(!w.is_open(t("2026-12-07T22:00:00Z")));
    // Saturday 23:00 local: not listed.
    assert!(!w.is_open(t("2026-12-05T22:00:00Z")));
    // Next opening after Monday's close: the next Sunday 22:00 local.
    assert_eq!(
        w.next_open(t("2026-12-07T03:00:00Z")),
        Some(t("2026-12-13T21:00:00Z"))
    );
}

#[test]
fn end_equal_to_start_is_a_whole_day_from_start() {
    let w = window("day", &[Weekday::Wed], "06:00", "06:00", chrono_tz::UTC);
    assert!(!w.is_open(t("2026-12-02T05:59:59Z")));
    assert!(w.is_open(t("2026-12-02T06:00:00Z")));
    assert!(w.is_open(t("2026-12-03T05:59:59Z")));
    assert!(!w.is_open(t("2026-12-03T06:00:00Z")));
}

#[test]
fn berlin_spring_forward() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
    let berlin = chrono_tz::Europe::Berlin;
    let w = window("change", &[Weekday::Sun], "01:30", "03:00", berlin);
    // 01:30 CET = 00:30 UTC; 03:00 CEST = 01:00 UTC: half an hour.
    assert_eq!(
        w.span_on(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap()),
        Some((t("2026-03-29T00:30:00Z"), t("2026-03-29T01:00:00Z")))
    );
    assert!(!w.is_open(t("2026-03-29T00:29:59Z")));
    assert!(w.is_open(t("2026-03-29T00:59:59Z")));
    assert!(!w.is_open(t("2026-03-29T01:00:00Z")));
    // A start inside the gap (02:30 does not exist) opens at the gap's end, 03:00 CEST.
    let gap = window("gap", &[Weekday::Sun], "02:30", "04:00", berlin);
    assert!(!gap.is_open(t("2026-03-29T00:59:59Z")));
    assert!(gap.is_open(t("2026-03-29T01:00:00Z")));
    assert!(!gap.is_open(t("2026-03-29T02:00:00Z")));
    assert_eq!(
        gap.next_open(t("2026-03-28T12:00:00Z")),
        Some(t("2026-03-29T01:00:00Z"))
    );
    // Wholly inside the gap: it does not open that day.
    let inside = window("inside", &[Weekday::Sun], "02:10", "02:50", berlin);
    assert_eq!(
        inside.span_on(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap()),
        None
    );
    assert_eq!(
        inside.next_open(t("2026-03-29T00:00:00Z")),
        Some(t("2026-04-05T00:10:00Z"))
    );
}

#[test]
fn berlin_fall_back() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:00-03:00 happens twice.
    let berlin = chrono_tz::Europe::Berlin;
    let w = window("change", &[Weekday::Sun], "01:30", "03:00", berlin);
    // 01:30 CEST = 23:30 UTC the day before; 03:00 CET = 02:00 UTC: two and a half hours.
    assert_eq!(
        w.span_on(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap()),
        Some((t("2026-10-24T23:30:00Z"), t("2026-10-25T02:00:00Z")))
    );
    // The second 02:30 (CET) is inside.
    assert!(w.is_open(t("2026-10-25T01:30:00Z")));
    assert!(!w.is_open(t("2026-10-25T02:00:00Z")));
    // An ambiguous start takes the earlier instant: 02:30 CEST = 00:30 UTC.
    let amb = window("ambiguous", &[Weekday::Sun], "02:30", "04:00", berlin);
    assert!(!amb.is_open(t("2026-10-25T00:29:59Z")));
    assert!(amb.is_open(t("2026-10-25T00:30:00Z")));
    assert!(amb.is_open(t("2026-10-25T02:59:59Z")));
    assert!(!amb.is_open(t("2026-10-25T03:00:00Z")));
}

#[test]
fn new_york_spring_forward_and_fall_back() {
    let ny = chrono_tz::America::New_York;
    let w = window("change", &[Weekday::Sun], "01:30", "03:00", ny);
    // 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC. 01:30 EST = 06:30 UTC.
    assert_eq!(
        w.span_on(NaiveDate::from_ymd_opt(2026, 3, 8).unwrap()),
        Some((t("2026-03-08T06:30:00Z"), t("2026-03-08T07:00:00Z")))
    );
    assert!(w.is_open(t("2026-03-08T06:59:00Z")));
    assert!(!w.is_open(t("2026-03-08T07:00:00Z")));
    // 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC. 01:30 is ambiguous: the earlier,
    // 01:30 EDT = 05:30 UTC; 03:00 EST = 08:00 UTC.
    assert_eq!(
        w.span_on(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()),
        Some((t("2026-11-01T05:30:00Z"), t("2026-11-01T08:00:00Z")))
    );
    assert!(!w.is_open(t("2026-11-01T05:29:59Z")));
    // The second 01:30 (EST) and 02:30 EST are inside.
    assert!(w.is_open(t("2026-11-01T06:30:00Z")));
    assert!(w.is_open(t("2026-11-01T07:30:00Z")));
    assert!(!w.is_open(t("2026-11-01T08:00:00Z")));
    // From the Saturday before, the next opening is that Sunday's.
    assert_eq!(
        w.next_open(t("2026-10-31T12:00:00Z")),
        Some(t("2026-11-01T05:30:00Z"))
    );
}

#[test]
fn a_day_that_does_not_exist_opens_no_window() {
    // Samoa skipped 2011-12-30 whole (UTC-10 to UTC+14 at 10:00 UTC).
    let w = window("apia", &ALL, "09:00", "10:00", chrono_tz::Pacific::Apia);
    assert_eq!(
        w.span_on(NaiveDate::from_ymd_opt(2011, 12, 30).unwrap()),
        None
    );
    // The 29th's (UTC-10) and the 31st's (UTC+14) do open.
    assert_eq!(
        w.next_open(t("2011-12-29T20:00:00Z")),
        Some(t("2011-12-30T19:00:00Z"))
    );
}

#[test]
fn zones_far_from_utc() {
    // Kiritimati, UTC+14: Monday 09:00 local is Sunday 19:00 UTC.
    let w = window(
        "kiri",
        &[Weekday::Mon],
        "09:00",
        "10:00",
        chrono_tz::Pacific::Kiritimati,
    );
    assert!(w.is_open(t("2026-12-06T19:30:00Z")));
    assert!(!w.is_open(t("2026-12-07T19:30:00Z")));
    assert_eq!(
        w.next_open(t("2026-12-07T00:00:00Z")),
        Some(t("2026-12-13T19:00:00Z"))
    );
    // Pago Pago, UTC-11: Friday 20:00 local is Saturday 07:00 UTC.
    let w = window(
        "pago",
        &[Weekday::Fri],
        "20:00",
        "23:00",
        chrono_tz::Pacific::Pago_Pago,
    );
    assert!(w.is_open(t("2026-12-05T07:00:00Z")));
    assert!(!w.is_open(t("2026-12-04T07:00:00Z")));
}

#[test]
fn next_open_from_inside_is_now_and_from_outside_the_next_opening() {
    let w = window("evenings", &ALL, "18:00", "20:00", chrono_tz::UTC);
    let inside = t("2026-12-02T19:00:00Z");
    assert_eq!(w.next_open(inside), Some(inside));
    assert_eq!(
        w.next_open(t("2026-12-02T20:00:00Z")),
        Some(t("2026-12-03T18:00:00Z"))
    );
    assert_eq!(
        w.next_open(t("2026-12-02T08:00:00Z")),
        Some(t("2026-12-02T18:00:00Z"))
    );
}

#[test]
fn the_days_filter() {
    // Weekends only; 2026-12-02 is a Wednesday.
    let w = window(
        "weekends",
        &[Weekday::Sat, Weekday::Sun],
        "00:00",
        "00:00",
        chrono_tz::UTC,
    );
    assert!(!w.is_open(t("2026-12-02T12:00:00Z")));
    assert!(!w.is_open(t("2026-12-04T23:59:59Z")));
    assert!(w.is_open(t("2026-12-05T00:00:00Z")));
    assert!(w.is_open(t("2026-12-06T23:59:59Z")));
    assert!(!w.is_open(t("2026-12-07T00:00:00Z")));
    assert_eq!(
        w.next_open(t("2026-12-02T12:00:00Z")),
        Some(t("2026-12-05T00:00:00Z"))
    );
}

#[test]
fn the_verdict_holds_outside_escalates_past_the_deadline_and_passes_inside() {
    let now = t("2026-12-02T12:00:00Z");
    let e = ev("westeurope");
    let nights = window("nights", &ALL, "22:00", "04:00", chrono_tz::UTC);
    let ws = vec![nights.clone()];
    // Nothing applies: pass.
    assert_eq!(verdict(&[], &e, Action::Drain, None, now), Verdict::Pass);
    assert_eq!(verdict(&ws, &e, Action::Retry, None, now), Verdict::Pass);
    let mut elsewhere = nights.clone();
    elsewhere.scope = Scope::Region("eastus".into());
    assert_eq!(
        verdict(&[elsewhere], &e, Action::Drain, None, now),
        Verdict::Pass
    );
    // Outside: held until 22:00, with no deadline or one after it.
    let held = Verdict::Hold {
        by: "window",
        scope: "nights".into(),
        reason: "held: outside window nights (opens 2026-12-02T22:00:00Z)".into(),
    };
    assert_eq!(verdict(&ws, &e, Action::Drain, None, now), held);
    assert_eq!(
        verdict(&ws, &e, Action::Drain, Some(t("2026-12-02T22:00:01Z")), now),
        held
    );
    // A deadline at or before the opening: escalate at once.
    let Verdict::Escalate(why) =
        verdict(&ws, &e, Action::Drain, Some(t("2026-12-02T22:00:00Z")), now)
    else {
        panic!("expected an escalation")
    };
    assert_eq!(
        why,
        "`drain` for event ingest:e\\u{1b}1: window nights opens at 2026-12-02T22:00:00Z, \
         after the deadline 2026-12-02T22:00:00Z"
    );
    // Inside: pass.
    assert_eq!(
        verdict(&ws, &e, Action::Drain, None, t("2026-12-02T23:00:00Z")),
        Verdict::Pass
    );
}

#[test]
fn several_windows_are_a_union() {
    let e = ev("westeurope");
    let nights = window("nights", &ALL, "22:00", "04:00", chrono_tz::UTC);
    let lunch = window("lunch", &ALL, "12:00", "13:00", chrono_tz::UTC);
    let ws = vec![nights, lunch];
    assert_eq!(
        verdict(&ws, &e, Action::Drain, None, t("2026-12-02T12:30:00Z")),
        Verdict::Pass
    );
    assert_eq!(
        verdict(&ws, &e, Action::Drain, None, t("2026-12-02T23:30:00Z")),
        Verdict::Pass
    );
    // Between them: held until the earlier opening of either.
    assert_eq!(
        verdict(&ws, &e, Action::Drain, None, t("2026-12-02T14:00:00Z")),
        Verdict::Hold {
            by: "window",
            scope: "nights, lunch".into(),
            reason: "held: outside windows nights, lunch (opens 2026-12-02T22:00:00Z)".into(),
        }
    );
    let Verdict::Escalate(why) = verdict(
        &ws,
        &e,
        Action::Drain,
        Some(t("2026-12-03T11:00:00Z")),
        t("2026-12-03T05:00:00Z"),
    ) else {
        panic!("expected an escalation")
    };
    assert!(
        why.contains("window lunch opens at 2026-12-03T12:00:00Z"),
        "{why}"
    );
}
