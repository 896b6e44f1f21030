//! An error budget over the correlation history: retry a failed operation while few
//! resources in the region fail the same way; once more than `budget` distinct resources have
//! failed with the same category within `window_s`, stop retrying and escalate (a platform
//! incident is paged once: the engine deduplicates escalations by key).
//!
//! ```yaml
//! plugin:
//!   path: ../../dist/error-budget.wasm
//!   config: { budget: 3, window_s: 900, delay_s: 60 }
//! ```

use keel_plugin::{history, Ctx, Decision, Event, Level, Plugin};
use std::sync::OnceLock;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// How many distinct failing resources are tolerated in the window.
    budget: i64,
    /// The window, seconds.
    #[serde(default = "default_window")]
    window_s: i64,
    /// Retry delay, seconds.
    #[serde(default = "default_delay")]
    delay_s: i64,
}

fn default_window() -> i64 {
    900
}

fn default_delay() -> i64 {
    60
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct ErrorBudget;

impl Plugin for ErrorBudget {
    fn init(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if c.budget < 0 || c.window_s <= 0 || c.delay_s < 0 {
            return Err("budget and delay_s must be >= 0 and window_s > 0".into());
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn evaluate(event: Event, _ctx: Ctx) -> Option<Decision> {
        let c = CONFIG.get()?;
        let f = event.failure?;
        if !f.transient && f.category != "vm_agent" {
            return None;
        }
        let region = event.resource.region.unwrap_or_default();
        let filter = [
            ("failure.category", f.category.as_str()),
            ("resource.region", region.as_str()),
        ];
        let failing = match history::resources(&filter, c.window_s) {
            Ok(n) => n,
            Err(e) => {
                keel_plugin::log(Level::Error, &format!("history query failed: {e}"));
                return None;
            }
        };
        if failing > c.budget {
            return Some(
                Decision::new("escalate")
                    .reason(format!(
                        "error budget spent: {failing} resources failed with {} in {} within {}s (budget {})",
                        f.category, region, c.window_s, c.budget
                    ))
                    .params(serde_json::json!({ "severity": "critical" })),
            );
        }
        Some(
            Decision::new("retry")
                .reason(format!(
                    "{} failure within the error budget ({failing} of {} resources); retrying",
                    f.category, c.budget
                ))
                .params(serde_json::json!({ "delay_s": c.delay_s })),
        )
    }
}

keel_plugin::export!(ErrorBudget);
