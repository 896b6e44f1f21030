//! The event paths policies may read, with their types, and typed access to them.
//!
//! The `cel` crate has no type checker, so a typo such as `event.maintenence.type` would make a
//! policy silently never match. Every `event.…` path in a policy is therefore checked at load
//! against this table, which a test keeps in step with the generated JSON Schema. The same
//! table gives the native evaluator and the policy index typed, allocation-free access to the
//! event in place.

use std::collections::BTreeMap;

use crate::event::{
    Category, Event, FailureDetail, HealthState, Initiator, Kind, MaintenanceStatus,
    MaintenanceType, Operation, ReasonType, Source, Timestamp,
};

/// The static type of an event path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A free string.
    Str,
    /// A string from a closed set of values.
    Enum(&'static [&'static str]),
    /// A 64-bit integer.
    Int,
    /// A boolean.
    Bool,
    /// A timestamp.
    Time,
    /// A map of strings to strings (`resource.tags`).
    StrMap,
    /// A list of `{code, message, target}` objects (`failure.details`).
    DetailList,
    /// An object with fields of its own.
    Object,
}

impl FieldType {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Str | FieldType::Enum(_) => "string",
            FieldType::Int => "int",
            FieldType::Bool => "bool",
            FieldType::Time => "timestamp",
            FieldType::StrMap => "map(string, string)",
            FieldType::DetailList => "list",
            FieldType::Object => "object",
        }
    }
}

/// A value read from an event in place.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'e> {
    /// A string (also an enum's wire name).
    Str(&'e str),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A timestamp.
    Time(Timestamp),
    /// `resource.tags`.
    StrMap(&'e BTreeMap<String, String>),
    /// `failure.details`.
    Details(&'e [FailureDetail]),
    /// An object that is present (its fields are read separately).
    Object,
}

/// The result of reading a path: present, absent (has() is false), or an absent parent.
pub(crate) type Read<'e> = Result<Option<FieldValue<'e>>, &'static str>;

/// One readable path.
pub struct Field {
    /// The path below `event`, e.g. `failure.code`.
    pub path: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// Whether the policy index may key on equality tests against it.
    pub discrete: bool,
    pub(crate) get: fn(&Event) -> Read<'_>,
}

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Field")
            .field("path", &self.path)
            .field("ty", &self.ty)
            .finish()
    }
}

/// A readable path: only [`lookup`] makes one, so it always names a field of [`FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldId(usize);

impl FieldId {
    /// Every field, in table order.
    pub(crate) fn all() -> impl Iterator<Item = FieldId> {
        (0..FIELDS.len()).map(FieldId)
    }
}

fn s(v: &Option<String>) -> Option<FieldValue<'_>> {
    v.as_deref().map(FieldValue::Str)
}
fn i(v: Option<i64>) -> Option<FieldValue<'static>> {
    v.map(FieldValue::Int)
}
fn t(v: Option<Timestamp>) -> Option<FieldValue<'static>> {
    v.map(FieldValue::Time)
}
fn e(v: &'static str) -> Option<FieldValue<'static>> {
    Some(FieldValue::Str(v))
}

macro_rules! part {
    ($ev:ident . $part:ident, $name:literal, |$p:ident| $body:expr) => {
        match &$ev.$part {
            Some($p) => Ok($body),
            None => Err($name),
        }
    };
}

const KINDS: &[&str] = &["maintenance", "health", "operation_failure"];
const SOURCES: &[&str] = &[
    "azure.scheduled_events",
    "azure.maintenance_v1",
    "azure.resource_health",
    "azure.arm",
    "aws.imds",
    "gcp.metadata",
    "ingest",
];

/// Every path a policy may read below `event`.
pub static FIELDS: &[Field] = &[
    Field {
        path: "id",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| Ok(Some(FieldValue::Str(&ev.id))),
    },
    Field {
        path: "time",
        ty: FieldType::Time,
        discrete: false,
        get: |ev| Ok(Some(FieldValue::Time(ev.time))),
    },
    Field {
        path: "source",
        ty: FieldType::Enum(SOURCES),
        discrete: true,
        get: |ev| Ok(e(ev.source.as_str())),
    },
    Field {
        path: "kind",
        ty: FieldType::Enum(KINDS),
        discrete: true,
        get: |ev| Ok(e(ev.kind.as_str())),
    },
    Field {
        path: "resource",
        ty: FieldType::Object,
        discrete: false,
        get: |_| Ok(Some(FieldValue::Object)),
    },
    Field {
        path: "resource.id",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| Ok(s(&ev.resource.id)),
    },
    Field {
        path: "resource.name",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| Ok(s(&ev.resource.name)),
    },
    Field {
        path: "resource.type",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| Ok(s(&ev.resource.type_)),
    },
    Field {
        path: "resource.os",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| Ok(s(&ev.resource.os)),
    },
    Field {
        path: "resource.region",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| Ok(s(&ev.resource.region)),
    },
    Field {
        path: "resource.zone",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| Ok(s(&ev.resource.zone)),
    },
    Field {
        path: "resource.fault_domain",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| Ok(i(ev.resource.fault_domain)),
    },
    Field {
        path: "resource.update_domain",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| Ok(i(ev.resource.update_domain)),
    },
    Field {
        path: "resource.availability_set",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| Ok(s(&ev.resource.availability_set)),
    },
    Field {
        path: "resource.scale_set",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| Ok(s(&ev.resource.scale_set)),
    },
    Field {
        path: "resource.tags",
        ty: FieldType::StrMap,
        discrete: false,
        get: |ev| Ok(Some(FieldValue::StrMap(&ev.resource.tags))),
    },
    Field {
        path: "resource.is_self",
        ty: FieldType::Bool,
        discrete: false,
        get: |ev| Ok(ev.resource.is_self.map(FieldValue::Bool)),
    },
    Field {
        path: "maintenance",
        ty: FieldType::Object,
        discrete: false,
        get: |ev| Ok(ev.maintenance.as_ref().map(|_| FieldValue::Object)),
    },
    Field {
        path: "maintenance.type",
        ty: FieldType::Enum(MaintenanceType::NAMES),
        discrete: true,
        get: |ev| part!(ev.maintenance, "maintenance", |m| e(m.type_.as_str())),
    },
    Field {
        path: "maintenance.status",
        ty: FieldType::Enum(MaintenanceStatus::NAMES),
        discrete: true,
        get: |ev| part!(ev.maintenance, "maintenance", |m| e(m.status.as_str())),
    },
    Field {
        path: "maintenance.not_before",
        ty: FieldType::Time,
        discrete: false,
        get: |ev| part!(ev.maintenance, "maintenance", |m| t(m.not_before)),
    },
    Field {
        path: "maintenance.not_after",
        ty: FieldType::Time,
        discrete: false,
        get: |ev| part!(ev.maintenance, "maintenance", |m| t(m.not_after)),
    },
    Field {
        path: "maintenance.duration_s",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| part!(ev.maintenance, "maintenance", |m| i(m.duration_s)),
    },
    Field {
        path: "maintenance.initiator",
        ty: FieldType::Enum(Initiator::NAMES),
        discrete: true,
        get: |ev| {
            part!(ev.maintenance, "maintenance", |m| m
                .initiator
                .map(|x| FieldValue::Str(x.as_str())))
        },
    },
    Field {
        path: "maintenance.description",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| part!(ev.maintenance, "maintenance", |m| s(&m.description)),
    },
    Field {
        path: "maintenance.vendor_id",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| part!(ev.maintenance, "maintenance", |m| s(&m.vendor_id)),
    },
    Field {
        path: "maintenance.vendor_type",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| part!(ev.maintenance, "maintenance", |m| s(&m.vendor_type)),
    },
    Field {
        path: "maintenance.incarnation",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| part!(ev.maintenance, "maintenance", |m| i(m.incarnation)),
    },
    Field {
        path: "maintenance.inferred",
        ty: FieldType::Bool,
        discrete: false,
        get: |ev| {
            part!(ev.maintenance, "maintenance", |m| Some(FieldValue::Bool(
                m.inferred
            )))
        },
    },
    Field {
        path: "health",
        ty: FieldType::Object,
        discrete: false,
        get: |ev| Ok(ev.health.as_ref().map(|_| FieldValue::Object)),
    },
    Field {
        path: "health.state",
        ty: FieldType::Enum(HealthState::NAMES),
        discrete: true,
        get: |ev| part!(ev.health, "health", |h| e(h.state.as_str())),
    },
    Field {
        path: "health.previous_state",
        ty: FieldType::Enum(HealthState::NAMES),
        discrete: true,
        get: |ev| {
            part!(ev.health, "health", |h| h
                .previous_state
                .map(|x| FieldValue::Str(x.as_str())))
        },
    },
    Field {
        path: "health.reason_type",
        ty: FieldType::Enum(ReasonType::NAMES),
        discrete: true,
        get: |ev| {
            part!(ev.health, "health", |h| h
                .reason_type
                .map(|x| FieldValue::Str(x.as_str())))
        },
    },
    Field {
        path: "health.summary",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| part!(ev.health, "health", |h| s(&h.summary)),
    },
    Field {
        path: "health.annotation",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| part!(ev.health, "health", |h| s(&h.annotation)),
    },
    Field {
        path: "health.occurred_at",
        ty: FieldType::Time,
        discrete: false,
        get: |ev| part!(ev.health, "health", |h| t(h.occurred_at)),
    },
    Field {
        path: "health.resolution_eta",
        ty: FieldType::Time,
        discrete: false,
        get: |ev| part!(ev.health, "health", |h| t(h.resolution_eta)),
    },
    Field {
        path: "failure",
        ty: FieldType::Object,
        discrete: false,
        get: |ev| Ok(ev.failure.as_ref().map(|_| FieldValue::Object)),
    },
    Field {
        path: "failure.operation",
        ty: FieldType::Enum(Operation::NAMES),
        discrete: true,
        get: |ev| part!(ev.failure, "failure", |f| e(f.operation.as_str())),
    },
    Field {
        path: "failure.code",
        ty: FieldType::Str,
        discrete: true,
        get: |ev| part!(ev.failure, "failure", |f| Some(FieldValue::Str(&f.code))),
    },
    Field {
        path: "failure.message",
        ty: FieldType::Str,
        discrete: false,
        get: |ev| part!(ev.failure, "failure", |f| s(&f.message)),
    },
    Field {
        path: "failure.http_status",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| part!(ev.failure, "failure", |f| i(f.http_status)),
    },
    Field {
        path: "failure.attempt",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| part!(ev.failure, "failure", |f| Some(FieldValue::Int(f.attempt))),
    },
    Field {
        path: "failure.details",
        ty: FieldType::DetailList,
        discrete: false,
        get: |ev| {
            part!(ev.failure, "failure", |f| Some(FieldValue::Details(
                &f.details
            )))
        },
    },
    Field {
        path: "failure.retry_after_s",
        ty: FieldType::Int,
        discrete: false,
        get: |ev| part!(ev.failure, "failure", |f| i(f.retry_after_s)),
    },
    Field {
        path: "failure.category",
        ty: FieldType::Enum(Category::NAMES),
        discrete: true,
        get: |ev| part!(ev.failure, "failure", |f| e(f.category.as_str())),
    },
    Field {
        path: "failure.transient",
        ty: FieldType::Bool,
        discrete: false,
        get: |ev| {
            part!(ev.failure, "failure", |f| Some(FieldValue::Bool(
                f.transient
            )))
        },
    },
];

/// Paths that exist on the event but that policies may not read, with the reason.
pub(crate) const UNREADABLE: &[(&str, &str)] = &[
    (
        "raw",
        "the vendor payload is kept for audit and is not evaluated",
    ),
    (
        "failure.request",
        "the request body is for runbooks, not for policies",
    ),
];

/// Finds a path's field.
pub fn lookup(path: &str) -> Option<FieldId> {
    FIELDS.iter().position(|f| f.path == path).map(FieldId)
}

/// The field of `id`.
pub fn field(id: FieldId) -> &'static Field {
    &FIELDS[id.0]
}

/// Reads a field from an event in place.
pub(crate) fn read(ev: &Event, id: FieldId) -> Read<'_> {
    (FIELDS[id.0].get)(ev)
}

/// The fields directly below `prefix` (`""` for the top level).
pub(crate) fn children(prefix: &str) -> impl Iterator<Item = &'static str> + '_ {
    FIELDS.iter().filter_map(move |f| {
        let rest = if prefix.is_empty() {
            f.path
        } else {
            f.path.strip_prefix(prefix)?.strip_prefix('.')?
        };
        (!rest.contains('.')).then_some(rest)
    })
}

/// The closest name among `candidates`, if close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Kind names, for the `on:` check.
pub(crate) fn kind_names() -> impl Iterator<Item = &'static str> {
    Kind::ALL.into_iter().map(Kind::as_str)
}

/// Source names.
pub fn source_names() -> impl Iterator<Item = &'static str> {
    Source::ALL.into_iter().map(Source::as_str)
}
