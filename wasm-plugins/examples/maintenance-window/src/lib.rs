//! Drain only inside a daily maintenance window in a time zone; defer to the window's next
//! opening otherwise.
//!
//! ```yaml
//! plugin:
//!   path: ../../dist/maintenance-window.wasm
//!   config: { window: "02:00-04:00", tz: "Asia/Tokyo" }
//! ```
//!
//! The window may wrap midnight (`"22:00-02:00"`). Only scheduled maintenance is decided.
//! When the window's opening falls in a daylight-saving gap, the first valid local time
//! after it is used.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use keel_plugin::{Ctx, Decision, Event, Plugin};
use std::sync::OnceLock;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `HH:MM-HH:MM`, local time.
    window: String,
    /// An IANA time zone, e.g. `Europe/Berlin`.
    tz: String,
    /// Runbook drain deadline, seconds.
    #[serde(default)]
    deadline_s: Option<i64>,
}

struct Window {
    start: NaiveTime,
    end: NaiveTime,
    tz: Tz,
    deadline_s: i64,
}

static WINDOW: OnceLock<Window> = OnceLock::new();

fn parse_time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| format!("`{s}` is not a time HH:MM"))
}

impl Window {
    fn parse(c: Config) -> Result<Window, String> {
        let (a, b) = c
            .window
            .split_once('-')
            .ok_or_else(|| format!("window `{}` must look like 02:00-04:00", c.window))?;
        let (start, end) = (parse_time(a)?, parse_time(b)?);
        if start == end {
            return Err("the window is empty: start and end are equal".into());
        }
        let tz: Tz = c.tz.parse().map_err(|_| {
            format!(
                "unknown time zone `{}` (use an IANA name such as Asia/Tokyo)",
                c.tz
            )
        })?;
        Ok(Window {
            start,
            end,
            tz,
            deadline_s: c.deadline_s.unwrap_or(1800),
        })
    }

    fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The first local opening of the window strictly after `now`.
    fn next_opening(&self, now: DateTime<Tz>) -> Option<DateTime<Tz>> {
        let today: NaiveDate = now.date_naive();
        for days in 0..3 {
            let date = today.checked_add_signed(Duration::days(days))?;
            let mut local = date.and_time(self.start);
            // A daylight-saving gap: walk forward to the first time that exists.
            for _ in 0..4 {
                if let Some(t) = self.tz.from_local_datetime(&local).earliest() {
                    if t > now {
                        return Some(t);
                    }
                    break;
                }
                local += Duration::minutes(30);
            }
        }
        None
    }
}

struct MaintenanceWindow;

impl Plugin for MaintenanceWindow {
    fn init(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        let w = Window::parse(c)?;
        let _ = WINDOW.set(w);
        Ok(())
    }

    fn evaluate(event: Event, ctx: Ctx) -> Option<Decision> {
        let w = WINDOW.get()?;
        let m = event.maintenance?;
        if m.status != "scheduled" {
            return None;
        }
        let now = w.tz.timestamp_millis_opt(ctx.now).single()?;
        let local = now.time().with_nanosecond(0)?;
        if w.contains(local) {
            return Some(
                Decision::new("drain")
                    .reason(format!(
                        "inside the maintenance window {}-{} {}",
                        w.start.format("%H:%M"),
                        w.end.format("%H:%M"),
                        w.tz
                    ))
                    .params(serde_json::json!({ "deadline_s": w.deadline_s })),
            );
        }
        let next = w.next_opening(now)?;
        Some(
            Decision::new("defer")
                .reason(format!(
                    "outside the maintenance window; deferring to its next opening {}",
                    next.format("%Y-%m-%d %H:%M %Z")
                ))
                .due(next.timestamp_millis()),
        )
    }
}

keel_plugin::export!(MaintenanceWindow);
