//! The standard CEL policies `policies/standard/host-maintenance.yaml`, reproduced exactly as a
//! plugin, so that tests can check that both backends decide the same cases the same way.
//!
//! One component, two policies: `config: { rule: defer }` is
//! `host-maintenance.defer-until-window`, `config: { rule: drain }` is `host-maintenance.drain`.

use keel_plugin::{Ctx, Decision, Event, Plugin, MS_PER_S};
use std::sync::OnceLock;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rule: Rule,
}

#[derive(serde::Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Rule {
    Defer,
    Drain,
}

static RULE: OnceLock<Rule> = OnceLock::new();

const THIRTY_MIN_MS: i64 = 30 * 60 * MS_PER_S;

struct HostMaintenance;

impl Plugin for HostMaintenance {
    fn init(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        let _ = RULE.set(c.rule);
        Ok(())
    }

    fn evaluate(event: Event, ctx: Ctx) -> Option<Decision> {
        let rule = *RULE.get()?;
        if !matches!(event.source.as_str(), "aws.imds" | "gcp.metadata") {
            return None;
        }
        let m = event.maintenance?;
        // `unknown`: the platform does not say whether it is still coming or under way.
        let unknown = m.status == "unknown";
        if m.type_ != "host_maintenance" || !(unknown || m.status == "scheduled") {
            return None;
        }
        let far = m
            .not_before
            .map(|nb| nb - ctx.now > THIRTY_MIN_MS)
            .filter(|_| !unknown);
        match (rule, m.not_before, far) {
            (Rule::Defer, Some(nb), Some(true)) => Some(
                Decision::new("defer")
                    .reason(
                        "host maintenance window is still far; deciding again 30 minutes before it opens",
                    )
                    .params(serde_json::json!({
                        "until": "event.maintenance.not_before - duration(\"30m\")"
                    }))
                    .due(nb - THIRTY_MIN_MS),
            ),
            (Rule::Drain, _, None | Some(false)) => Some(
                Decision::new("drain")
                    .reason("host maintenance window opens soon; draining")
                    .params(serde_json::json!({ "deadline_s": 1800 })),
            ),
            _ => None,
        }
    }
}

keel_plugin::export!(HostMaintenance);
