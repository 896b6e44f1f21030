//! A deterministic generator of realistic policy sets and events for the benchmarks.
//!
//! Policies are spread over the three event kinds and keyed on the fields operators really
//! test (maintenance type and status, region, error code, OS, health state), with numeric
//! guards and about one in twenty written with constructs only the CEL interpreter runs
//! (`exists`, `matches`), so that only a few policies match any one event.

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
const TYPES: [&str; 5] = ["freeze", "reboot", "redeploy", "preempt", "terminate"];
const ACTIONS_M: [&str; 4] = ["drain", "acknowledge", "defer", "escalate"];
const ACTIONS_F: [&str; 3] = ["retry", "retry_without_agent", "escalate"];
const ACTIONS_H: [&str; 3] = ["drain", "escalate", "none"];

/// A policy file with `n` policies.
pub fn policies(n: usize) -> String {
    let mut y = String::from("policies:\n");
    for i in 0..n {
        let region = REGIONS[(i / 3) % REGIONS.len()];
        let (on, when, action) = match i % 3 {
            0 => {
                let t = TYPES[(i / 7) % TYPES.len()];
                let when = if i % 20 == 9 {
                    format!(
                        r#"event.maintenance.type == "{t}" && event.resource.region == "{region}" && event.resource.name.matches("^web-[0-9]+$")"#
                    )
                } else {
                    format!(
                        r#"event.maintenance.type == "{t}" && event.maintenance.status == "scheduled" && event.resource.region == "{region}" && (!has(event.maintenance.duration_s) || event.maintenance.duration_s > {})"#,
                        i % 60
                    )
                };
                ("maintenance", when, ACTIONS_M[i % ACTIONS_M.len()])
            }
            1 => {
                let code = CODES[(i / 3) % CODES.len()];
                let when = if i % 20 == 10 {
                    format!(
                        r#"event.failure.code == "{code}" && event.resource.region == "{region}" && event.failure.details.exists(d, d.code.startsWith("VM"))"#
                    )
                } else {
                    format!(
                        r#"event.failure.code == "{code}" && event.resource.region == "{region}" && event.resource.os in ["windows", "linux"] && event.failure.attempt < {}"#,
                        2 + i % 3
                    )
                };
                ("operation_failure", when, ACTIONS_F[i % ACTIONS_F.len()])
            }
            _ => {
                let when = format!(
                    r#"event.health.state in ["degraded", "unavailable"] && event.resource.region == "{region}" && has(event.health.reason_type) && event.health.reason_type == "{}""#,
                    if i % 2 == 0 { "planned" } else { "unplanned" }
                );
                ("health", when, ACTIONS_H[i % ACTIONS_H.len()])
            }
        };
        let params = match action {
            "defer" => "\n    params: { delay: 15m }",
            "escalate" => "\n    params: { dedup: { by: [resource.region] } }",
            "retry" => "\n    params: { delay_s: 30, backoff: exponential, max_attempts: 3 }",
            _ => "",
        };
        y.push_str(&format!(
            "  - name: gen.{i:05}\n    on: [{on}]\n    when: '{}'\n    action: {action}\n    priority: {}{params}\n",
            when.replace('\'', "''"),
            (i * 37) % 100
        ));
    }
    y
}

/// `n` event JSON texts of mixed kinds.
pub fn events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let region = REGIONS[(i * 7) % REGIONS.len()];
            let res = format!(
                r#""resource": {{"id": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-{i}", "name": "web-{i}", "type": "Microsoft.Compute/virtualMachines", "os": "{}", "region": "{region}", "zone": "{}", "tags": {{"team": "payments", "env": "prod"}}}}"#,
                if i % 2 == 0 { "windows" } else { "linux" },
                1 + i % 3
            );
            match i % 3 {
                0 => format!(
                    r#"{{"id": "azure.scheduled_events:{i:08X}-1111-2222-3333-444455556666", "time": "2026-04-20T22:26:58Z", "source": "azure.scheduled_events", "kind": "maintenance", {res}, "maintenance": {{"type": "{}", "status": "scheduled", "not_before": "2026-04-20T22:41:58Z", "duration_s": {}, "initiator": "platform", "description": "Virtual machine is being paused because of a memory-preserving Live Migration operation.", "vendor_id": "{i:08X}-1111-2222-3333-444455556666", "vendor_type": "Freeze", "incarnation": {}}}}}"#,
                    TYPES[i % TYPES.len()],
                    5 + i % 30,
                    1 + i % 9
                ),
                1 => format!(
                    r#"{{"id": "azure.arm:op-{i}", "time": "2021-10-13T14:05:00Z", "source": "azure.arm", "kind": "operation_failure", {res}, "failure": {{"operation": "create", "code": "{}", "message": "The artifact version 'Microsoft.WindowsAzure.GuestAgent' was not found in the regional repository 'CRPProd'.", "http_status": 404, "attempt": {}, "details": [{{"code": "VMAgentArtifactNotFound", "message": "not found"}}], "category": "vm_agent", "transient": false}}}}"#,
                    CODES[i % CODES.len()],
                    1 + i % 3
                ),
                _ => format!(
                    r#"{{"id": "azure.resource_health:{i}", "time": "2018-01-05T03:00:00Z", "source": "azure.resource_health", "kind": "health", {res}, "health": {{"state": "{}", "previous_state": "available", "reason_type": "{}", "summary": "We're sorry, your virtual machine is unavailable because we are applying a maintenance update to the host.", "annotation": "VirtualMachineHostRebootedForPlannedMaintenance", "occurred_at": "2018-01-05T02:58:00Z"}}}}"#,
                    if i % 2 == 0 { "unavailable" } else { "degraded" },
                    if i % 4 < 2 { "planned" } else { "unplanned" }
                ),
            }
        })
        .collect()
}
