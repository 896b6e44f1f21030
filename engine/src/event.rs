//! The normalized event: one shape for every platform signal Keel understands.
//!
//! Every vendor payload (Azure Scheduled Events, Resource Health, ARM errors, AWS and GCP
//! metadata) is turned into an [`Event`] by a normalizer. Policies read events through CEL as
//! `event.<path>`; the paths they may read are exactly the fields below (see
//! [`crate::fields`]). The JSON form uses snake_case keys and lower-case enum values, and is
//! described by the committed `engine/schema/event.schema.json`.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A timestamp: RFC 3339 on the wire, always UTC inside Keel.
pub type Timestamp = DateTime<Utc>;

/// One normalized platform event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// `<source>:<vendor id>` where the vendor gives one, else `<source>:` and a content hash.
    /// A re-read of the same notice yields the same id.
    pub id: String,
    /// The vendor's time for the event where there is one, else when it was observed.
    #[serde(deserialize_with = "rfc3339")]
    pub time: Timestamp,
    /// Which normalizer produced the event.
    pub source: Source,
    /// The family of signal; selects which of `maintenance`, `health`, `failure` is present.
    pub kind: Kind,
    /// The VM (or other resource) the event is about. Fields are absent when unknown.
    #[serde(default)]
    pub resource: Resource,
    /// Present when `kind` is `maintenance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Present when `kind` is `health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Present when `kind` is `operation_failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The vendor payload the event came from, kept for audit. Policies cannot read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
}

/// Which normalizer produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Source {
    /// Azure IMDS `/metadata/scheduledevents`.
    #[serde(rename = "azure.scheduled_events")]
    AzureScheduledEvents,
    /// The legacy Azure `/metadata/v1/maintenance` endpoint.
    #[serde(rename = "azure.maintenance_v1")]
    AzureMaintenanceV1,
    /// Azure Resource Health (REST, activity log, alerts, Event Grid).
    #[serde(rename = "azure.resource_health")]
    AzureResourceHealth,
    /// Azure Resource Manager operation failures.
    #[serde(rename = "azure.arm")]
    AzureArm,
    /// AWS EC2 instance metadata.
    #[serde(rename = "aws.imds")]
    AwsImds,
    /// GCP Compute Engine metadata server.
    #[serde(rename = "gcp.metadata")]
    GcpMetadata,
    /// Reported to the host's ingest endpoint, or written by hand.
    #[serde(rename = "ingest")]
    Ingest,
}

impl Source {
    /// Every source, in documentation order.
    pub const ALL: [Source; 7] = [
        Source::AzureScheduledEvents,
        Source::AzureMaintenanceV1,
        Source::AzureResourceHealth,
        Source::AzureArm,
        Source::AwsImds,
        Source::GcpMetadata,
        Source::Ingest,
    ];

    /// The wire name, e.g. `azure.scheduled_events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::AzureScheduledEvents => "azure.scheduled_events",
            Source::AzureMaintenanceV1 => "azure.maintenance_v1",
            Source::AzureResourceHealth => "azure.resource_health",
            Source::AzureArm => "azure.arm",
            Source::AwsImds => "aws.imds",
            Source::GcpMetadata => "gcp.metadata",
            Source::Ingest => "ingest",
        }
    }
}

/// The family of an event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A maintenance notice (scheduled events, spot interruptions, GCP maintenance-event).
    Maintenance,
    /// A resource-health change.
    Health,
    /// A failed management operation (create, start, update, delete, ...).
    OperationFailure,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Maintenance, Kind::Health, Kind::OperationFailure];

    /// The wire name, e.g. `operation_failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Maintenance => "maintenance",
            Kind::Health => "health",
            Kind::OperationFailure => "operation_failure",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The resource an event is about. Every field is optional: absent means unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// The full resource id (ARM id, EC2 instance id, GCP instance id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The VM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The resource type, e.g. `Microsoft.Compute/virtualMachines`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Operating system family, lower-case: `windows` or `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Region, e.g. `westeurope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Platform fault domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<i64>,
    /// Platform update domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_domain: Option<i64>,
    /// Availability set name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_set: Option<String>,
    /// Scale set name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_set: Option<String>,
    /// Resource tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// True when this is the host's own VM (set when the normalizer knows the local name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_self: Option<bool>,
}

/// What a maintenance notice announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// The kind of impact.
    #[serde(rename = "type")]
    pub type_: MaintenanceType,
    /// Where the event is in its lifecycle.
    pub status: MaintenanceStatus,
    /// The earliest time the platform may start (absent once started, or when unknown).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rfc3339_opt"
    )]
    pub not_before: Option<Timestamp>,
    /// The end of the announced window, where the vendor gives one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rfc3339_opt"
    )]
    pub not_after: Option<Timestamp>,
    /// Expected impact in seconds; absent when unknown (never 0 for unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<i64>,
    /// Who caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<Initiator>,
    /// The vendor's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The vendor's event id, exactly as sent (echo it back when acknowledging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// The raw vendor type string, e.g. `system-maintenance`, `TERMINATE_ON_HOST_MAINTENANCE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_type: Option<String>,
    /// The document incarnation (Azure) or ETag-derived counter (GCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<i64>,
    /// True when `status` was inferred (e.g. from an event vanishing) rather than reported.
    #[serde(default, skip_serializing_if = "is_false")]
    pub inferred: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every value's wire name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($wire),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

wire_enum! {
    /// The kind of impact a maintenance notice announces.
    MaintenanceType {
        /// The VM is paused for a few seconds (memory-preserving update).
        Freeze = "freeze",
        /// The VM is rebooted.
        Reboot = "reboot",
        /// The VM moves to another host (local disks are lost).
        Redeploy = "redeploy",
        /// A spot/low-priority VM is evicted.
        Preempt = "preempt",
        /// A scale-set instance is being deleted.
        Terminate = "terminate",
        /// The VM is live-migrated.
        LiveMigrate = "live_migrate",
        /// The instance is stopped (AWS).
        Stop = "stop",
        /// The instance is retired (AWS).
        Retire = "retire",
        /// Host maintenance of unspecified impact.
        HostMaintenance = "host_maintenance",
        /// A rebalance recommendation (AWS spot).
        Rebalance = "rebalance",
        /// A type Keel does not know yet; `vendor_type` has the raw value.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// Where a maintenance event is in its lifecycle.
    MaintenanceStatus {
        /// Announced, not started.
        Scheduled = "scheduled",
        /// In progress.
        Started = "started",
        /// Finished.
        Completed = "completed",
        /// Withdrawn before it started.
        Canceled = "canceled",
        /// Gone, and the evidence does not say whether it ran or was withdrawn (for example a
        /// Scheduled Event that vanished after an incarnation gap: the poller may have missed
        /// its whole Started phase).
        Ended = "ended",
        /// A status Keel does not know yet; `vendor_type`-like raw text is kept in `raw`.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// Who caused a maintenance event.
    Initiator {
        /// The cloud platform.
        Platform = "platform",
        /// The VM's owner (a user-initiated reboot, redeploy, scale-in, ...).
        User = "user",
    }
}

wire_enum! {
    /// A resource's availability.
    HealthState {
        /// Healthy.
        Available = "available",
        /// Running with reduced performance or a warning.
        Degraded = "degraded",
        /// Down.
        Unavailable = "unavailable",
        /// No signal (also the steady state of a deallocated VM).
        Unknown = "unknown",
    }
}

wire_enum! {
    /// Why a health state changed.
    ReasonType {
        /// Planned platform maintenance.
        Planned = "planned",
        /// An unplanned platform failure.
        Unplanned = "unplanned",
        /// Caused by the owner.
        UserInitiated = "user_initiated",
        /// Not given.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// The management operation that failed.
    Operation {
        /// Create a VM.
        Create = "create",
        /// Start a VM.
        Start = "start",
        /// Stop or deallocate a VM.
        Stop = "stop",
        /// Restart a VM.
        Restart = "restart",
        /// Update a VM.
        Update = "update",
        /// Delete a VM.
        Delete = "delete",
        /// Install or update an extension.
        Extension = "extension",
        /// Redeploy a VM.
        Redeploy = "redeploy",
    }
}

wire_enum! {
    /// What class of failure an operation error is, from the classification table.
    Category {
        /// The VM agent artifact or the agent itself (the 2021-10-13 outage).
        VmAgent = "vm_agent",
        /// An extension failed (download, handler, timeout).
        Extension = "extension",
        /// OS provisioning timed out.
        ProvisioningTimeout = "provisioning_timeout",
        /// No capacity for the VM size or zone.
        Allocation = "allocation",
        /// A quota is exhausted.
        Quota = "quota",
        /// Throttled by ARM or a resource provider.
        Throttled = "throttled",
        /// Conflicts with the resource's state or another operation.
        Conflict = "conflict",
        /// The image is unusable (not generalized, not found).
        Image = "image",
        /// A network problem (DNS, firewall, routing).
        Network = "network",
        /// A platform-internal error.
        Internal = "internal",
        /// Not classified.
        Unknown = "unknown",
    }
}

/// A resource-health change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// The new state.
    pub state: HealthState,
    /// The state before, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<HealthState>,
    /// Planned, unplanned or user-initiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_type: Option<ReasonType>,
    /// The vendor's summary, e.g. "applying a maintenance update to the host".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The annotation or cause that says why (e.g. `VirtualMachineHostRebootedForPlannedMaintenance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
    /// When the change happened.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rfc3339_opt"
    )]
    pub occurred_at: Option<Timestamp>,
    /// When the platform expects resolution.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rfc3339_opt"
    )]
    pub resolution_eta: Option<Timestamp>,
}

/// A failed management operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// The operation that failed.
    pub operation: Operation,
    /// The innermost error code, as sent.
    pub code: String,
    /// The innermost error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The HTTP status of the failed call, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i64>,
    /// Which attempt failed (1 for the first). The host counts attempts per resource and
    /// operation.
    #[serde(default = "one")]
    pub attempt: i64,
    /// The error's `details[]`, flattened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FailureDetail>,
    /// Seconds to wait before retrying, from `Retry-After` or the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<i64>,
    /// The failure class.
    pub category: Category,
    /// Whether retrying the same request may succeed.
    #[serde(default)]
    pub transient: bool,
    /// The original request body, for `retry` and `retry_without_agent`. Policies cannot read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
}

fn one() -> i64 {
    1
}

/// A timestamp with RFC 3339's four-digit year. chrono also reads years such as `+262142`,
/// and time arithmetic on those overflows chrono inside the `cel` interpreter, which panics;
/// they are rejected here, with the JSON position. (Years -1 and 10000 are allowed: a
/// four-digit year with an offset can land there in UTC.)
fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let t = Timestamp::deserialize(d)?;
    if (-1..=10000).contains(&t.year()) {
        Ok(t)
    } else {
        Err(serde::de::Error::custom(format!(
            "timestamp {} is out of range: RFC 3339 years have four digits",
            t.to_rfc3339()
        )))
    }
}

fn rfc3339_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    #[derive(Deserialize)]
    struct Checked(#[serde(deserialize_with = "rfc3339")] Timestamp);
    Ok(Option::<Checked>::deserialize(d)?.map(|c| c.0))
}

/// One entry of an error's `details[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureDetail {
    /// The detail's code.
    pub code: String,
    /// The detail's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The detail's target, where given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Why an event document could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The bytes are not UTF-8.
    #[error("not UTF-8: invalid byte at offset {offset} (line {line}, column {column})")]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The JSON is malformed or does not have the event's shape.
    #[error("line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// The document is larger than [`MAX_EVENT_BYTES`].
    #[error("event document is {size} bytes; the limit is {MAX_EVENT_BYTES}")]
    TooLarge {
        /// The document's size.
        size: usize,
    },
}

/// The largest event document [`Event::from_json_bytes`] accepts (8 MiB).
pub const MAX_EVENT_BYTES: usize = 8 << 20;

impl Event {
    /// Parses one event from JSON bytes, with positions in errors. Nesting deeper than 128
    /// levels, non-UTF-8 bytes, unknown fields and unknown enum values are errors.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Event, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { size: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let offset = e.valid_up_to();
            let (line, column) = crate::diag::line_col_of_byte(&bytes[..offset], offset);
            EventError::NotUtf8 {
                offset,
                line,
                column,
            }
        })?;
        Event::from_json_str(text)
    }

    /// Parses one event from a JSON string. See [`Event::from_json_bytes`].
    pub fn from_json_str(text: &str) -> Result<Event, EventError> {
        serde_json::from_str(text).map_err(|e| EventError::Json {
            line: e.line(),
            column: e.column(),
            message: strip_serde_position(&e.to_string()),
        })
    }
}

/// serde_json appends " at line L column C" to its messages; we print positions ourselves.
pub(crate) fn strip_serde_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
