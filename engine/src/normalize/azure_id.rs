//! Azure Resource Manager resource ids, parsed one way for every Azure normalizer, so that one
//! VM gets one name whichever source reports it (correlation and dedup keys depend on it).
//!
//! An id is `/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}`,
//! optionally followed by child resources (`/{type}/{name}`…) and by an extension resource
//! (`/providers/{namespace}/{type}/{name}`…, e.g. a Resource Health status). ARM ids are
//! case-insensitive; they are parsed tolerantly: segments are trimmed (sample ids hold
//! spaces), empty segments (doubled or trailing slashes) are ignored.
//!
//! The name is the one Scheduled Events and the instance metadata use:
//! * a VM (`Microsoft.Compute/virtualMachines/{name}`): its name; a VM of a scale set in
//!   flexible orchestration is such a plain VM and keeps its own name (e.g. `ss_1a2b3c4d`);
//! * a VM of a scale set in uniform orchestration
//!   (`…/virtualMachineScaleSets/{ss}/virtualMachines/{instanceId}`): `{ss}_{instanceId}`;
//! * any other resource, or a child of one (a VM extension, a disk of a scale-set VM): the
//!   name of the top-level resource (the VM for its extensions, `{ss}_{instanceId}` for the
//!   children of a uniform scale-set VM).

/// What an ARM resource id says about the resource it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureId {
    /// The full nested type, e.g. `Microsoft.Compute/virtualMachines/extensions`, in the
    /// canonical casing for well-known compute types, else as written.
    pub type_: String,
    /// The resource's name for correlation (see the module documentation); `None` when the id
    /// names a type but no resource.
    pub name: Option<String>,
    /// The scale set, for a scale set, a VM of a uniform scale set, or a child of either.
    pub scale_set: Option<String>,
    /// The availability set, for an availability-set id.
    pub availability_set: Option<String>,
}

/// Well-known types in their canonical casing.
const KNOWN_TYPES: &[&str] = &[
    "Microsoft.Compute/virtualMachines",
    "Microsoft.Compute/virtualMachines/extensions",
    "Microsoft.Compute/virtualMachineScaleSets",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/extensions",
    "Microsoft.Compute/availabilitySets",
    "Microsoft.ClassicCompute/virtualMachines",
];

/// `t` in its canonical casing if it is a well-known type, else trimmed as written.
pub fn canonical_type(t: &str) -> String {
    let t = t.trim();
    KNOWN_TYPES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(t))
        .map_or_else(|| t.to_string(), |k| (*k).to_string())
}

/// Parses `id`; `None` when it has no `providers/{namespace}/{type}` part (junk, a bare
/// name, a subscription or resource-group id).
pub fn parse(id: &str) -> Option<AzureId> {
    let segs: Vec<&str> = id
        .split('/')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let p = segs
        .iter()
        .position(|s| s.eq_ignore_ascii_case("providers"))?;
    let rest = segs.get(p + 1..).unwrap_or(&[]);
    // The resource ends where an extension resource (`/providers/…`) starts.
    let end = rest
        .iter()
        .position(|s| s.eq_ignore_ascii_case("providers"))
        .unwrap_or(rest.len());
    let (ns, pairs) = rest.get(..end)?.split_first()?;
    let types: Vec<&str> = pairs.iter().step_by(2).copied().collect();
    let names: Vec<&str> = pairs.iter().skip(1).step_by(2).copied().collect();
    if types.is_empty() {
        return None;
    }
    let mut out = AzureId {
        type_: canonical_type(&format!("{ns}/{}", types.join("/"))),
        name: names.first().map(|n| (*n).to_string()),
        ..AzureId::default()
    };
    let compute = ns.eq_ignore_ascii_case("Microsoft.Compute");
    let (Some(t0), Some(n0)) = (types.first(), names.first()) else {
        return Some(out);
    };
    if compute && t0.eq_ignore_ascii_case("virtualMachineScaleSets") {
        out.scale_set = Some((*n0).to_string());
        if let (Some(t1), Some(n1)) = (types.get(1), names.get(1)) {
            if t1.eq_ignore_ascii_case("virtualMachines") {
                out.name = Some(format!("{n0}_{n1}"));
            }
        }
    } else if compute && t0.eq_ignore_ascii_case("availabilitySets") {
        out.availability_set = Some((*n0).to_string());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RG: &str = "/subscriptions/s1/resourceGroups/rg";

    fn p(tail: &str) -> AzureId {
        parse(&format!("{RG}{tail}")).unwrap()
    }

    #[test]
    fn a_vm() {
        let a = p("/providers/Microsoft.Compute/virtualMachines/web-1");
        assert_eq!(a.type_, "Microsoft.Compute/virtualMachines");
        assert_eq!(a.name.as_deref(), Some("web-1"));
        assert_eq!((a.scale_set, a.availability_set), (None, None));
    }

    #[test]
    fn a_uniform_scale_set_vm_is_named_as_scheduled_events_name_it() {
        let a = p("/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7");
        assert_eq!(
            a.type_,
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
        );
        assert_eq!(a.name.as_deref(), Some("ss_7"));
        assert_eq!(a.scale_set.as_deref(), Some("ss"));
        // The scale set itself.
        let s = p("/providers/Microsoft.Compute/virtualMachineScaleSets/ss");
        assert_eq!(s.type_, "Microsoft.Compute/virtualMachineScaleSets");
        assert_eq!(s.name.as_deref(), Some("ss"));
        assert_eq!(s.scale_set.as_deref(), Some("ss"));
    }

    #[test]
    fn a_flexible_scale_set_vm_is_a_plain_vm_with_its_own_name() {
        let a = p("/providers/Microsoft.Compute/virtualMachines/ss_1a2b3c4d");
        assert_eq!(a.type_, "Microsoft.Compute/virtualMachines");
        assert_eq!(a.name.as_deref(), Some("ss_1a2b3c4d"));
        assert_eq!(a.scale_set, None);
    }

    #[test]
    fn an_availability_set() {
        let a = p("/providers/Microsoft.Compute/availabilitySets/as-1");
        assert_eq!(a.type_, "Microsoft.Compute/availabilitySets");
        assert_eq!(a.name.as_deref(), Some("as-1"));
        assert_eq!(a.availability_set.as_deref(), Some("as-1"));
    }

    #[test]
    fn case_variations_parse_alike_with_canonical_types() {
        let want = p("/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7");
        for id in [
            "/SUBSCRIPTIONS/s1/RESOURCEGROUPS/rg/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/ss/VIRTUALMACHINES/7",
            "/subscriptions/s1/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/ss/virtualmachines/7",
        ] {
            assert_eq!(parse(id).unwrap(), want, "{id}");
        }
        let vm = parse(
            "/subscriptions/s1/resourcegroups/rg/providers/microsoft.compute/VIRTUALMACHINES/web-1",
        )
        .unwrap();
        assert_eq!(vm.type_, "Microsoft.Compute/virtualMachines");
        assert_eq!(vm.name.as_deref(), Some("web-1"));
        let avs = parse(
            "/subscriptions/s1/resourceGroups/rg/providers/microsoft.compute/AVAILABILITYSETS/as-1",
        )
        .unwrap();
        assert_eq!(avs.availability_set.as_deref(), Some("as-1"));
    }

    #[test]
    fn trailing_and_doubled_slashes_and_spaces_are_ignored() {
        let want = p("/providers/Microsoft.Compute/virtualMachines/web-1");
        for tail in [
            "/providers/Microsoft.Compute/virtualMachines/web-1/",
            "/providers/Microsoft.Compute/virtualMachines/web-1//",
            "//providers//Microsoft.Compute/virtualMachines/web-1",
            "/providers/Microsoft.Compute/virtualMachines /web-1 ",
        ] {
            assert_eq!(p(tail), want, "{tail}");
        }
    }

    #[test]
    fn child_and_extension_resources_name_their_vm() {
        let ext = p("/providers/Microsoft.Compute/virtualMachines/web-1/extensions/x");
        assert_eq!(ext.type_, "Microsoft.Compute/virtualMachines/extensions");
        assert_eq!(ext.name.as_deref(), Some("web-1"));
        let ss_ext = p("/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7/extensions/x");
        assert_eq!(ss_ext.name.as_deref(), Some("ss_7"));
        assert_eq!(ss_ext.scale_set.as_deref(), Some("ss"));
        let health = p("/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7/providers/Microsoft.ResourceHealth/availabilityStatuses/current");
        assert_eq!(
            health.type_,
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
        );
        assert_eq!(health.name.as_deref(), Some("ss_7"));
    }

    #[test]
    fn other_types_keep_their_casing_and_top_level_name() {
        let a = p("/providers/Microsoft.Sql/servers/s1/databases/db1");
        assert_eq!(a.type_, "Microsoft.Sql/servers/databases");
        assert_eq!(a.name.as_deref(), Some("s1"));
        assert_eq!((a.scale_set, a.availability_set), (None, None));
    }

    #[test]
    fn junk_is_none_or_nameless() {
        for id in [
            "",
            "/",
            "<resourceId>",
            "web-1",
            "/subscriptions/s1",
            "/subscriptions/s1/resourceGroups/rg",
            "/providers/",
            "/providers/Microsoft.Compute",
            "/a/providers/providers/x",
        ] {
            assert_eq!(parse(id), None, "{id}");
        }
        let nameless = parse("/a/providers/ns/t").unwrap();
        assert_eq!((nameless.type_.as_str(), nameless.name), ("ns/t", None));
        // A scale set with a dangling child type names the scale set.
        let a = p("/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines");
        assert_eq!(a.name.as_deref(), Some("ss"));
        assert_eq!(a.scale_set.as_deref(), Some("ss"));
    }
}
