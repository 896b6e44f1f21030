//! `guards:` in `keel.yaml`: the blast-radius guards the engine applies after resolution
//! (`keel_engine::GuardConfig`). Absent, or any key absent: the engine's defaults, all on.

use keel_engine::GuardConfig;
use serde_json::Value;

use super::V;

/// Reads `guards:` (`retry_budget`, `storm`, `flap`, each with `enabled` and its figures).
pub(super) fn parse_guards(v: &mut V<'_>, g: Option<&Value>) -> GuardConfig {
    let mut cfg = GuardConfig::default();
    let Some(g) = g else { return cfg };
    v.keys("/guards", g, &["retry_budget", "storm", "flap"]);
    if let Some(r) = g.get("retry_budget") {
        let p = "/guards/retry_budget";
        let b = &mut cfg.retry_budget;
        v.keys(
            p,
            r,
            &[
                "enabled",
                "ratio",
                "min_retries",
                "host_min_retries",
                "window",
            ],
        );
        b.enabled = v.boolean(&format!("{p}/enabled"), r.get("enabled"), b.enabled);
        b.ratio = ratio(v, &format!("{p}/ratio"), r.get("ratio"), b.ratio);
        b.min_retries = whole(
            v,
            &format!("{p}/min_retries"),
            r.get("min_retries"),
            b.min_retries,
        );
        b.host_min_retries = whole(
            v,
            &format!("{p}/host_min_retries"),
            r.get("host_min_retries"),
            b.host_min_retries,
        );
        b.window_s = seconds(v, p, r, "window", b.window_s);
    }
    if let Some(s) = g.get("storm") {
        let p = "/guards/storm";
        let b = &mut cfg.storm;
        v.keys(p, s, &["enabled", "threshold", "window", "cooldown"]);
        b.enabled = v.boolean(&format!("{p}/enabled"), s.get("enabled"), b.enabled);
        b.threshold = whole(
            v,
            &format!("{p}/threshold"),
            s.get("threshold"),
            b.threshold,
        )
        .max(1);
        b.window_s = seconds(v, p, s, "window", b.window_s);
        b.cooldown_s = seconds(v, p, s, "cooldown", b.cooldown_s);
    }
    if let Some(f) = g.get("flap") {
        let p = "/guards/flap";
        let b = &mut cfg.flap;
        v.keys(p, f, &["enabled", "max_attempts", "window", "reset_after"]);
        b.enabled = v.boolean(&format!("{p}/enabled"), f.get("enabled"), b.enabled);
        b.max_attempts = whole(
            v,
            &format!("{p}/max_attempts"),
            f.get("max_attempts"),
            b.max_attempts,
        );
        b.window_s = seconds(v, p, f, "window", b.window_s);
        b.reset_after_s = seconds(v, p, f, "reset_after", b.reset_after_s);
    }
    cfg
}

/// A fraction from 0 to 1.
fn ratio(v: &mut V<'_>, ptr: &str, val: Option<&Value>, default: f64) -> f64 {
    match val {
        None => default,
        Some(n) => match n.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                v.err(ptr, "expected a fraction from 0 to 1, such as 0.1");
                default
            }
        },
    }
}

/// A whole number from 0 to 1000000.
fn whole(v: &mut V<'_>, ptr: &str, val: Option<&Value>, default: u32) -> u32 {
    match val {
        None => default,
        Some(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(c) if c <= 1_000_000 => c,
            _ => {
                v.err(ptr, "expected a whole number from 0 to 1000000");
                default
            }
        },
    }
}

/// A positive duration (`keel_engine::parse_duration`), in whole seconds (at least 1).
fn seconds(v: &mut V<'_>, p: &str, map: &Value, key: &str, default_s: i64) -> i64 {
    let default = std::time::Duration::from_secs(u64::try_from(default_s).unwrap_or(1));
    let d = v.positive_at(p, map, key, default);
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}
