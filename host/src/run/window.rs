//! Maintenance windows (`windows:` in `keel.yaml`): when the actions a window names may
//! start. Pure: time comes in as an argument.
//!
//! A window opens on each of its `days` (local, in its `time_zone`) at `start` and closes at
//! `end` the same day, or the next day when `end` is at or before `start` (`22:00`–`04:00`
//! listed for Sunday is open from Sunday 22:00 to Monday 04:00). Several windows that apply
//! to the same action and event make a union: the action may start while any one is open.
//!
//! Daylight saving time, in the window's zone (the IANA database, through `chrono-tz`):
//! * a local time that does not exist (the spring-forward gap: 02:30 in Europe/Berlin on the
//!   last Sunday of March) stands for the first instant after the gap (03:00 CEST);
//! * a local time that exists twice (the fall-back hour) stands for the earlier instant (the
//!   first 02:30, CEST).
//!
//! So a window may be shorter or longer than its wall-clock span on a change night, and one
//! that lies wholly inside a gap does not open that day.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use keel_engine::{escape, Action, Decision, Event};

use super::gate::Verdict;
use super::Host;
use crate::config::Window;

/// How many local days ahead [`Window::next_open`] looks (a window opens at least once a
/// week when it has a day).
pub const SEARCH_DAYS: i64 = 8;

/// The instant a local date and time stands for in `tz` (see the module documentation for
/// the DST rules); `None` only beyond chrono's range.
fn resolve(tz: chrono_tz::Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(early, _) => Some(early.with_timezone(&Utc)),
        LocalResult::None => after_gap(tz, local),
    }
}

/// The first instant whose local time in `tz` is at or after `local`, a time inside a gap:
/// the end of the gap. Searched over the 26 hours before `local` read as UTC minus the offset
/// before the gap (no zone's offset moves by a day); local time only grows there.
fn after_gap(tz: chrono_tz::Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let local_of = |t: i64| {
        DateTime::from_timestamp(t, 0).map(|u| tz.from_utc_datetime(&u.naive_utc()).naive_local())
    };
    let naive = local.and_utc();
    let before = tz.offset_from_utc_datetime(&(naive - Duration::days(1)).naive_utc());
    let before = chrono::Offset::fix(&before).local_minus_utc();
    // At `hi` the local time is past `local` (the offset grew across the gap).
    let mut hi = naive.timestamp() - i64::from(before);
    let mut lo = hi - 26 * 3600;
    if local_of(hi)? < local || local_of(lo)? >= local {
        return None;
    }
    // Invariant: local(lo) < local <= local(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_of(mid)? >= local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

impl Window {
    /// The instants the window opened on the local date `day` opens and closes, `[open,
    /// close)`; `None` when it does not open that day (not one of its days, or wholly inside a
    /// DST gap).
    pub fn span_on(&self, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        use chrono::Datelike;
        if !self.days.contains(&day.weekday()) {
            return None;
        }
        let end_day = if self.end <= self.start {
            day.succ_opt()?
        } else {
            day
        };
        let open = resolve(self.time_zone, day.and_time(self.start))?;
        let close = resolve(self.time_zone, end_day.and_time(self.end))?;
        (open < close).then_some((open, close))
    }

    /// The local dates whose openings may cover `now` or come after it, in order.
    fn days_around(&self, now: DateTime<Utc>, ahead: i64) -> impl Iterator<Item = NaiveDate> {
        let today = now.with_timezone(&self.time_zone).date_naive();
        (-1..=ahead).filter_map(move |k| today.checked_add_signed(Duration::days(k)))
    }

    /// Whether the window is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.days_around(now, 1)
            .filter_map(|d| self.span_on(d))
            .any(|(open, close)| open <= now && now < close)
    }

    /// The first instant at or after `now` at which the window is open: `now` itself when it
    /// is open, else its next opening; `None` when it does not open within [`SEARCH_DAYS`].
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.days_around(now, SEARCH_DAYS)
            .filter_map(|d| self.span_on(d))
            .filter(|(_, close)| now < *close)
            .map(|(open, _)| open.max(now))
            .min()
    }

    /// Whether the window applies to `action` on `ev` (its actions and scope).
    pub fn applies(&self, action: Action, ev: &Event) -> bool {
        self.actions.contains(&action) && self.scope.matches(ev)
    }
}

/// An instant as the reasons write it: RFC 3339, whole seconds, `Z`.
fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The windows' verdict on `action` for `ev` at `now` (see [`Host::window_verdict`]).
pub fn verdict(
    windows: &[Window],
    ev: &Event,
    action: Action,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Verdict {
    let applying: Vec<&Window> = windows.iter().filter(|w| w.applies(action, ev)).collect();
    if applying.is_empty() || applying.iter().any(|w| w.is_open(now)) {
        return Verdict::Pass;
    }
    let names = applying
        .iter()
        .map(|w| w.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let (which, does) = if applying.len() == 1 {
        ("window", "does")
    } else {
        ("windows", "do")
    };
    // The earliest opening of any of them, and whose it is.
    let next = applying
        .iter()
        .filter_map(|w| w.next_open(now).map(|t| (t, w.name.as_str())))
        .min();
    match (next, deadline) {
        (Some((t, name)), Some(dl)) if t >= dl => Verdict::Escalate(format!(
            "`{}` for event {}: window {name} opens at {}, after the deadline {}",
            action.as_str(),
            escape(&ev.id),
            at(t),
            at(dl)
        )),
        (None, Some(dl)) => Verdict::Escalate(format!(
            "`{}` for event {}: {which} {names} {does} not open in the next {SEARCH_DAYS} \
             days, before the deadline {}",
            action.as_str(),
            escape(&ev.id),
            at(dl)
        )),
        (Some((t, _)), _) => Verdict::Hold {
            by: "window",
            scope: names.clone(),
            reason: format!("held: outside {which} {names} (opens {})", at(t)),
        },
        (None, None) => Verdict::Hold {
            by: "window",
            scope: names.clone(),
            reason: format!(
                "held: outside {which} {names} (not open in the next {SEARCH_DAYS} days)"
            ),
        },
    }
}

impl Host {
    /// The maintenance windows' verdict for `d` on `ev` at `now`; `deadline` from
    /// `pause::hold_deadline` (None: may wait however long).
    ///
    /// [`Verdict::Pass`] when no window applies to the action and event, or one that applies
    /// is open; else [`Verdict::Hold`] until the next opening, or [`Verdict::Escalate`] when
    /// that opening is at or after the deadline (waiting cannot help). `escalate` and `none`
    /// always pass.
    pub(crate) fn window_verdict(
        &self,
        ev: &Event,
        d: &Decision,
        deadline: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Verdict {
        if matches!(d.action, Action::Escalate | Action::None) {
            return Verdict::Pass;
        }
        verdict(&self.cfg.windows, ev, d.action, deadline, now)
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
