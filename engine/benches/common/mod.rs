//! A deterministic generator of policy sets and events for the benchmarks, shaped like real
//! sets rather than easy ones.
//!
//! Every policy is a conjunction of three to seven tests over mixed fields: equality and
//! `in` lists over the enum-like fields (maintenance type, status and initiator, operation,
//! error code and category, health states and reason), `in` lists of one to four regions,
//! resource tags (`has()`-guarded or not), the OS, numeric guards (`duration_s`, `attempt`,
//! optional ones behind `!has(…) ||`) and `has()` guards. About one policy in seven is
//! kind-agnostic (`on` all three kinds, testing only the resource and the source), and one
//! in twenty uses `matches` or `exists` (a quantifier over the error's details). Values are
//! drawn with a fixed-seed generator, so the same `n` always gives the same set; the events
//! draw from the same value pools, so a few policies match each event and many more share
//! one or two of its values.

#![allow(dead_code)]

pub const REGIONS: [&str; 20] = [
    "eastus",
    "eastus2",
    "westus",
    "westus2",
    "westus3",
    "centralus",
    "northeurope",
    "westeurope",
    "uksouth",
    "ukwest",
    "francecentral",
    "germanywestcentral",
    "swedencentral",
    "japaneast",
    "japanwest",
    "australiaeast",
    "southeastasia",
    "eastasia",
    "brazilsouth",
    "canadacentral",
];
pub const CODES: [&str; 12] = [
    "ArtifactVersionNotFound",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OSProvisioningTimedOut",
    "VMExtensionProvisioningError",
    "InternalExecutionError",
    "OperationNotAllowed",
    "SkuNotAvailable",
    "RetryableError",
    "VMAgentStatusCommunicationError",
    "OverconstrainedAllocationRequest",
    "TooManyRequests",
];
const TYPES: [&str; 6] = [
    "freeze",
    "reboot",
    "redeploy",
    "preempt",
    "terminate",
    "live_migrate",
];
const STATUSES: [&str; 2] = ["scheduled", "started"];
const INITIATORS: [&str; 2] = ["platform", "user"];
const OPERATIONS: [&str; 5] = ["create", "start", "update", "delete", "restart"];
const CATEGORIES: [&str; 6] = [
    "vm_agent",
    "allocation",
    "provisioning_timeout",
    "quota",
    "throttled",
    "internal",
];
const STATES: [&str; 3] = ["degraded", "unavailable", "unknown"];
const PREVIOUS: [&str; 2] = ["available", "degraded"];
const REASONS: [&str; 3] = ["planned", "unplanned", "user_initiated"];
const OSES: [&str; 2] = ["windows", "linux"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TEAMS: [&str; 6] = ["payments", "search", "infra", "ml", "web", "data"];
const SOURCES: [&str; 3] = [
    "azure.scheduled_events",
    "azure.arm",
    "azure.resource_health",
];
const ACTIONS_M: [&str; 4] = ["drain", "acknowledge", "defer", "escalate"];
const ACTIONS_F: [&str; 3] = ["retry", "retry_without_agent", "escalate"];
const ACTIONS_H: [&str; 3] = ["drain", "escalate", "none"];
const ACTIONS_ANY: [&str; 3] = ["escalate", "none", "drain"];

/// SplitMix64: small, deterministic, good enough to spread values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `pct`%.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    /// `k` distinct values of `xs`.
    pub fn some<'a>(&mut self, xs: &[&'a str], k: usize) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        while out.len() < k.min(xs.len()) {
            let x = self.pick(xs);
            if !out.contains(&x) {
                out.push(x);
            }
        }
        out
    }
}

/// `field == "v"` for one value, `field in ["a", "b"]` for more.
fn one_of(field: &str, values: &[&str]) -> String {
    if values.len() == 1 {
        format!(r#"{field} == "{}""#, values[0])
    } else {
        let list: Vec<String> = values.iter().map(|v| format!(r#""{v}""#)).collect();
        format!("{field} in [{}]", list.join(", "))
    }
}

/// Tests on the resource that any kind can carry: regions, tags, the OS.
fn resource_tests(r: &mut Rng, t: &mut Vec<String>, region_pct: u64) {
    if r.pct(region_pct) {
        let k = 1 + r.below(3);
        t.push(one_of("event.resource.region", &r.some(&REGIONS, k)));
    }
    if r.pct(35) {
        let env = r.pick(&ENVS);
        if r.pct(50) {
            t.push(format!(
                r#"has(event.resource.tags.env) && event.resource.tags.env == "{env}""#
            ));
        } else {
            t.push(format!(r#"event.resource.tags.env == "{env}""#));
        }
    }
    if r.pct(25) {
        let k = 1 + r.below(3);
        t.push(one_of("event.resource.tags.team", &r.some(&TEAMS, k)));
    }
    if r.pct(30) {
        t.push(one_of("event.resource.os", &[r.pick(&OSES)]));
    }
}

/// A policy file with `n` policies, one in twenty using `matches` or `exists`.
pub fn policies(n: usize) -> String {
    policies_with(n, true)
}

/// The same set, with or without its `matches`/`exists` policies' extra test.
pub fn policies_with(n: usize, with_interp: bool) -> String {
    let mut r = Rng::new(0x6b65_656c);
    let mut y = String::from("policies:\n");
    for i in 0..n {
        let mut t: Vec<String> = Vec::new();
        let interp = with_interp && i % 20 == 9;
        let roll = r.below(100);
        let (on, action) = if roll < 30 {
            let k = 1 + r.below(2);
            t.push(one_of("event.maintenance.type", &r.some(&TYPES, k)));
            if r.pct(50) {
                t.push(one_of("event.maintenance.status", &[r.pick(&STATUSES)]));
            }
            if r.pct(30) {
                t.push(one_of(
                    "event.maintenance.initiator",
                    &[r.pick(&INITIATORS)],
                ));
            }
            resource_tests(&mut r, &mut t, 85);
            if r.pct(50) {
                t.push(format!(
                    "(!has(event.maintenance.duration_s) || event.maintenance.duration_s > {})",
                    r.below(60)
                ));
            }
            if r.pct(20) {
                t.push("has(event.maintenance.not_before)".into());
            }
            if interp {
                t.push(r#"event.resource.name.matches("^web-[0-9]+$")"#.into());
            }
            ("maintenance", r.pick(&ACTIONS_M))
        } else if roll < 60 {
            let k = 1 + r.below(3);
            t.push(one_of("event.failure.code", &r.some(&CODES, k)));
            if r.pct(40) {
                let k = 1 + r.below(2);
                t.push(one_of("event.failure.category", &r.some(&CATEGORIES, k)));
            }
            if r.pct(40) {
                let k = 1 + r.below(3);
                t.push(one_of("event.failure.operation", &r.some(&OPERATIONS, k)));
            }
            resource_tests(&mut r, &mut t, 80);
            if r.pct(60) {
                t.push(format!("event.failure.attempt < {}", 2 + r.below(3)));
            }
            if interp {
                t.push(r#"event.failure.details.exists(d, d.code.startsWith("VM"))"#.into());
            }
            ("operation_failure", r.pick(&ACTIONS_F))
        } else if roll < 85 {
            let k = 1 + r.below(2);
            t.push(one_of("event.health.state", &r.some(&STATES, k)));
            if r.pct(40) {
                t.push(one_of("event.health.previous_state", &[r.pick(&PREVIOUS)]));
            }
            if r.pct(60) {
                let reason = r.pick(&REASONS);
                t.push(format!(
                    r#"has(event.health.reason_type) && event.health.reason_type == "{reason}""#
                ));
            }
            resource_tests(&mut r, &mut t, 80);
            if interp {
                t.push(r#"event.health.summary.matches("maintenance")"#.into());
            }
            ("health", r.pick(&ACTIONS_H))
        } else {
            // Kind-agnostic: only what every event carries.
            if r.pct(70) {
                t.push(one_of("event.source", &[r.pick(&SOURCES)]));
            }
            resource_tests(&mut r, &mut t, 100);
            if r.pct(60) {
                let env = r.pick(&ENVS);
                t.push(format!(r#"event.resource.tags.env == "{env}""#));
            }
            if t.is_empty() || interp {
                t.push(r#"event.resource.name.startsWith("web-")"#.into());
            }
            (
                "maintenance, health, operation_failure",
                r.pick(&ACTIONS_ANY),
            )
        };
        let params = match action {
            "defer" => "\n    params: { delay: 15m }",
            "escalate" => "\n    params: { dedup: { by: [resource.region] } }",
            "retry" => "\n    params: { delay_s: 30, backoff: exponential, max_attempts: 3 }",
            _ => "",
        };
        y.push_str(&format!(
            "  - name: gen.{i:05}\n    on: [{on}]\n    when: '{}'\n    action: {action}\n    priority: {}{params}\n",
            t.join(" && ").replace('\'', "''"),
            r.below(100)
        ));
    }
    y
}

/// `n` event JSON texts of mixed kinds, drawing from the same value pools as the policies.
pub fn events(n: usize) -> Vec<String> {
    let mut r = Rng::new(0x6576_656e_7473);
    (0..n)
        .map(|i| {
            let region = r.pick(&REGIONS);
            let os = r.pick(&OSES);
            let tags = if r.pct(80) {
                format!(
                    r#"{{"team": "{}", "env": "{}"}}"#,
                    r.pick(&TEAMS),
                    r.pick(&ENVS)
                )
            } else {
                "{}".to_string()
            };
            let res = format!(
                r#""resource": {{"id": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-{i}", "name": "web-{i}", "type": "Microsoft.Compute/virtualMachines", "os": "{os}", "region": "{region}", "zone": "{}", "tags": {tags}}}"#,
                1 + i % 3
            );
            match i % 3 {
                0 => format!(
                    r#"{{"id": "azure.scheduled_events:{i:08X}-1111-2222-3333-444455556666", "time": "2026-04-20T22:26:58Z", "source": "azure.scheduled_events", "kind": "maintenance", {res}, "maintenance": {{"type": "{}", "status": "{}", "not_before": "2026-04-20T22:41:58Z", "duration_s": {}, "initiator": "{}", "description": "Virtual machine is being paused because of a memory-preserving Live Migration operation.", "vendor_id": "{i:08X}-1111-2222-3333-444455556666", "vendor_type": "Freeze", "incarnation": {}}}}}"#,
                    r.pick(&TYPES),
                    r.pick(&STATUSES),
                    5 + r.below(30),
                    r.pick(&INITIATORS),
                    1 + i % 9
                ),
                1 => format!(
                    r#"{{"id": "azure.arm:op-{i}", "time": "2021-10-13T14:05:00Z", "source": "azure.arm", "kind": "operation_failure", {res}, "failure": {{"operation": "{}", "code": "{}", "message": "The artifact version 'Microsoft.WindowsAzure.GuestAgent' was not found in the regional repository 'CRPProd'.", "http_status": 404, "attempt": {}, "details": [{{"code": "VMAgentArtifactNotFound", "message": "not found"}}], "category": "{}", "transient": false}}}}"#,
                    r.pick(&OPERATIONS),
                    r.pick(&CODES),
                    1 + r.below(3),
                    r.pick(&CATEGORIES)
                ),
                _ => format!(
                    r#"{{"id": "azure.resource_health:{i}", "time": "2018-01-05T03:00:00Z", "source": "azure.resource_health", "kind": "health", {res}, "health": {{"state": "{}", "previous_state": "{}", "reason_type": "{}", "summary": "We're sorry, your virtual machine is unavailable because we are applying a maintenance update to the host.", "annotation": "VirtualMachineHostRebootedForPlannedMaintenance", "occurred_at": "2018-01-05T02:58:00Z"}}}}"#,
                    r.pick(&STATES),
                    r.pick(&PREVIOUS),
                    r.pick(&REASONS)
                ),
            }
        })
        .collect()
}
