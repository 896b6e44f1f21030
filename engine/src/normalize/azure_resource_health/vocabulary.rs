//! Resource Health's vocabulary: availability states, reason fields and VM health annotation
//! names.

use serde_json::{Map, Value};

use super::str_field;
use crate::event::{HealthState, ReasonType};
use crate::normalize::NormalizeError;

/// Lower-case with spaces, `_` and `-` removed: "Platform Initiated" == "PlatformInitiated".
pub(super) fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

pub(super) fn parse_state(s: &str) -> HealthState {
    match norm(s).as_str() {
        "available" => HealthState::Available,
        "degraded" => HealthState::Degraded,
        "unavailable" => HealthState::Unavailable,
        // "unknown" and any value Azure adds later: never read as healthy or as an outage.
        _ => HealthState::Unknown,
    }
}

/// What one free-string reason field says.
#[derive(Clone, Copy, PartialEq)]
enum Says {
    User,
    Planned,
    Unplanned,
    /// Given, but decides nothing ("Platform Initiated", "Not Applicable", "Unknown", new values).
    Nothing,
}

fn classify_reason(s: &str) -> Says {
    match norm(s).as_str() {
        "userinitiated" | "customerinitiated" | "user" | "customer" => Says::User,
        "planned" | "plannedmaintenance" => Says::Planned,
        "unplanned" | "outage" => Says::Unplanned,
        // platforminitiated, vminitiated, notapplicable, notapplicaple (sic), unknown, ...
        _ => Says::Nothing,
    }
}

/// The reason fields of an availabilityStatus's or a HealthResources event's `properties`.
pub(super) const PROPERTIES_REASON_KEYS: &[&str] = &[
    "reasonType",
    "context",
    "category",
    "healthEventCause",
    "healthEventCategory",
];

/// `reason_type` from the free-string fields `keys` of `obj`, then from the annotation.
/// `None` when no field is given at all (absent, null or "").
pub(super) fn reason_type(
    obj: &Map<String, Value>,
    keys: &[&str],
    path: &str,
    annotation: Option<&str>,
) -> Result<Option<ReasonType>, NormalizeError> {
    let mut said = Vec::new();
    for key in keys {
        if let Some(s) = str_field(obj, &[*key], path)? {
            said.push(classify_reason(s));
        }
    }
    let decided = if said.contains(&Says::User) {
        Some(ReasonType::UserInitiated)
    } else if said.contains(&Says::Planned) {
        Some(ReasonType::Planned)
    } else if said.contains(&Says::Unplanned) {
        Some(ReasonType::Unplanned)
    } else {
        annotation.and_then(annotation_reason)
    };
    Ok(decided.or(if said.is_empty() {
        None
    } else {
        Some(ReasonType::Unknown)
    }))
}

/// The reason an annotation name implies (Microsoft's table of VM health annotations:
/// <https://learn.microsoft.com/en-us/azure/service-health/resource-health-vm-annotation>);
/// `None` for names that imply nothing or are not known.
fn annotation_reason(name: &str) -> Option<ReasonType> {
    let n = name.to_ascii_lowercase();
    let n = n.as_str();
    // Customer-initiated control-plane operations, including
    // VirtualMachineRedeployInitiatedByControlPlaneDueToPlannedMaintenance (Customer context
    // despite its name) and the …TrackingId variants.
    if n.contains("initiatedbycontrolplane") {
        return Some(ReasonType::UserInitiated);
    }
    const USER: &[&str] = &[
        "virtualmachinedeallocationinitiated",
        "virtualmachinerestarted",
        "virtualmachinesizechanged",
        "virtualmachineconfigurationupdated",
        "virtualmachineallocated",
    ];
    const PLANNED: &[&str] = &[
        "virtualmachinerebootinitiatedforplannedmaintenance",
        "virtualmachinemigrationinitiatedforplannedmaintenance",
        "virtualmachinehostrebootedforplannedmaintenance",
        "virtualmachineplannedfreezestarted",
        "virtualmachineplannedfreezesucceeded",
        "virtualmachineplannedfreezefailed",
    ];
    const UNPLANNED: &[&str] = &[
        "virtualmachinehostrebootedforrepair",
        "virtualmachinemigrationinitiatedforrepair",
        "virtualmachinehostcrashed",
        "virtualmachinestorageoffline",
        "livemigrationsucceeded",
        "livemigrationfailure",
        "virtualmachinemigrationscheduledfordegradedhardware",
        "virtualmachinescheduledformigrationwithgraceperiod",
        "virtualmachinemigratedduetohardwarefailure",
        "virtualmachinepreempted",
        "virtualmachineprovisioningtimedout",
        "accelnetunhealthy",
        "networkunhealthy",
    ];
    // Families with suffixed variants (…WithRedeployDeadline, …LiveMigrationEligible, …).
    const UNPLANNED_PREFIXES: &[&str] = &[
        "virtualmachinepossiblydegradedduetohardwarefailure",
        "possiblydegradedduetohardwarefailure",
        "virtualmachinescheduledforservicehealing",
    ];
    if USER.contains(&n) {
        Some(ReasonType::UserInitiated)
    } else if PLANNED.contains(&n) {
        Some(ReasonType::Planned)
    } else if UNPLANNED.contains(&n) || UNPLANNED_PREFIXES.iter().any(|p| n.starts_with(p)) {
        Some(ReasonType::Unplanned)
    } else {
        None
    }
}

/// An annotation name (`VirtualMachineHostCrashed`) rather than prose or an opaque id.
pub(super) fn looks_like_annotation(s: &str) -> bool {
    (6..=200).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphabetic())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_matched_without_case_or_spaces() {
        assert!(matches!(
            classify_reason("Platform Initiated"),
            Says::Nothing
        ));
        assert!(matches!(classify_reason("Customer Initiated"), Says::User));
        assert!(matches!(classify_reason("UserInitiated"), Says::User));
        assert!(matches!(classify_reason("user_initiated"), Says::User));
        assert!(matches!(classify_reason(" planned "), Says::Planned));
        assert!(matches!(classify_reason("UNPLANNED"), Says::Unplanned));
        assert!(matches!(classify_reason("Not Applicaple"), Says::Nothing));
    }

    #[test]
    fn annotation_table() {
        assert_eq!(
            annotation_reason("VirtualMachineHostCrashed"),
            Some(ReasonType::Unplanned)
        );
        assert_eq!(
            annotation_reason(
                "VirtualMachineRedeployInitiatedByControlPlaneDueToPlannedMaintenance"
            ),
            Some(ReasonType::UserInitiated)
        );
        assert_eq!(
            annotation_reason("PossiblyDegradedDueToHardwareFailureWithRedeployDeadline"),
            Some(ReasonType::Unplanned)
        );
        assert_eq!(annotation_reason("VirtualMachineCrashed"), None);
        assert_eq!(annotation_reason("SomethingNew"), None);
        assert!(looks_like_annotation("VirtualMachineHostCrashed"));
        assert!(!looks_like_annotation(
            "Virtual machine has experienced an unexpected event"
        ));
        assert!(!looks_like_annotation("A80024E1883D37UR8B017591A1BEFCCB"));
        assert!(!looks_like_annotation(
            "a80024e1-883d-37ur-8b01-7591a1befccb"
        ));
    }
}
