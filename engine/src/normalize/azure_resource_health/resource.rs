//! The resource a Resource Health record is about, from its ARM id.

use super::vocabulary::norm;
use crate::event::Resource;
use crate::normalize::azure_id::{self, AzureId};
use crate::normalize::Input;

pub(super) fn resource_from_id(
    id: Option<&str>,
    rtype: Option<&str>,
    input: &Input<'_>,
) -> Resource {
    let mut r = Resource::default();
    let Some(id) = id.map(str::trim).filter(|s| !s.is_empty()) else {
        r.type_ = rtype.map(canonical_type);
        return r;
    };
    let parsed = parse_arm_id(id);
    r.id = Some(id.to_string());
    r.type_ = rtype
        .map(canonical_type)
        .or((!parsed.type_.is_empty()).then_some(parsed.type_));
    r.name = parsed.name;
    r.scale_set = parsed.scale_set;
    r.availability_set = parsed.availability_set;
    if let (Some(me), Some(name)) = (input.self_name, r.name.as_deref()) {
        r.is_self = Some(me.trim().eq_ignore_ascii_case(name));
    }
    r
}

fn parse_arm_id(id: &str) -> AzureId {
    azure_id::parse(id).unwrap_or_default()
}

/// Well-known types in their canonical casing (alert target ids are lower-case, exported
/// records upper-case); other types are kept as sent.
fn canonical_type(t: &str) -> String {
    azure_id::canonical_type(t)
}

/// `East US` -> `eastus`.
pub(super) fn region(s: &str) -> String {
    norm(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_ids_parse_tolerantly() {
        let a = parse_arm_id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ClassicCompute/virtualMachines /rhctestenvV1PI");
        assert_eq!(a.type_, "Microsoft.ClassicCompute/virtualMachines");
        assert_eq!(a.name.as_deref(), Some("rhctestenvV1PI"));
        // A uniform scale-set VM is named `{scaleSet}_{instanceId}`, as Scheduled Events and the
        // ARM normalizer name it (one parser: `azure_id`).
        let b = parse_arm_id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3");
        assert_eq!(
            b.type_,
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
        );
        assert_eq!(b.name.as_deref(), Some("ss_3"));
        assert_eq!(b.scale_set.as_deref(), Some("ss"));
        assert_eq!(parse_arm_id("<resourceId>").name, None);
        assert_eq!(parse_arm_id("/providers/").name, None);
        assert_eq!(parse_arm_id("/a/providers/ns/t").name, None);
    }
}
