//! Which normalizer reads a vendor fixture in `policies/fixtures/`, by file-name prefix; shared by
//! the snapshot test and the cross-source test (include it with `#[path]`).

/// Which normalizer reads a fixture, by file-name prefix (first match wins).
pub const OWNERS: &[(&str, &str)] = &[
    ("arm-error-", "azure.arm"),
    ("aws-", "aws.imds"),
    ("azure-scheduled-events-", "azure.scheduled_events"),
    // IMDS's answer to a request without api-version: the Scheduled Events poller gets it.
    ("azure-imds-error-", "azure.scheduled_events"),
    ("azure-maintenance-v1-", "azure.maintenance_v1"),
    ("azure-instanceinfo-v1", "azure.maintenance_v1"),
    ("azure-resource-health-", "azure.resource_health"),
    ("azure-activity-log-", "azure.resource_health"),
    ("azure-alert-", "azure.resource_health"),
    ("azure-eventgrid-health-", "azure.resource_health"),
    ("gcp-", "gcp.metadata"),
];

/// The normalizer that reads fixture `name`, if its prefix is known.
pub fn owner(name: &str) -> Option<&'static str> {
    OWNERS
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, o)| *o)
}
