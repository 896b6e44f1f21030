//! The failed operation's resource: from an ARM resource id, a VM name, an ingest body's
//! resource object or the original request body.

use serde_json::{Map, Value};

use crate::event::Resource;
use crate::normalize::azure_id;
use crate::normalize::json::{self, get_ci, join, shape};
use crate::normalize::{quote, NormalizeError};

const RESOURCE_FIELDS: &[&str] = &[
    "id",
    "name",
    "type",
    "os",
    "region",
    "location",
    "zone",
    "fault_domain",
    "update_domain",
    "availability_set",
    "scale_set",
    "tags",
    "is_self",
];

/// Fills what `into` lacks from `from` (outer layers win).
pub(super) fn fill(into: &mut Resource, from: Resource) {
    let Resource {
        id,
        name,
        type_,
        os,
        region,
        zone,
        fault_domain,
        update_domain,
        availability_set,
        scale_set,
        tags,
        is_self,
    } = from;
    into.id = into.id.take().or(id);
    into.name = into.name.take().or(name);
    into.type_ = into.type_.take().or(type_);
    into.os = into.os.take().or(os);
    into.region = into.region.take().or(region);
    into.zone = into.zone.take().or(zone);
    into.fault_domain = into.fault_domain.or(fault_domain);
    into.update_domain = into.update_domain.or(update_domain);
    into.availability_set = into.availability_set.take().or(availability_set);
    into.scale_set = into.scale_set.take().or(scale_set);
    if into.tags.is_empty() {
        into.tags = tags;
    }
    into.is_self = into.is_self.or(is_self);
}

/// An ARM resource id (parsed), or a bare VM name.
pub(super) fn resource_from_str(s: &str) -> Resource {
    let t = s.trim();
    if t.starts_with('/') {
        resource_from_id(t)
    } else if t.is_empty() {
        Resource::default()
    } else {
        Resource {
            name: Some(t.to_string()),
            ..Resource::default()
        }
    }
}

/// The resource an ARM id names, parsed by [`super::azure_id`] (the one parser of every Azure
/// normalizer). The subscription and resource group stay in `id` (the event has no fields for
/// them).
fn resource_from_id(id: &str) -> Resource {
    let parsed = azure_id::parse(id).unwrap_or_default();
    Resource {
        id: Some(id.to_string()),
        type_: (!parsed.type_.is_empty()).then_some(parsed.type_),
        name: parsed.name,
        scale_set: parsed.scale_set,
        availability_set: parsed.availability_set,
        ..Resource::default()
    }
}

/// `westeurope` from `West Europe` (ARM accepts both).
fn region(s: &str) -> Option<String> {
    let r: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    (!r.is_empty()).then_some(r)
}

pub(super) fn resource_from_object(
    obj: &Map<String, Value>,
    path: &str,
) -> Result<Resource, NormalizeError> {
    for k in obj.keys() {
        if !RESOURCE_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k)) {
            let hint = crate::fields::did_you_mean(k, RESOURCE_FIELDS.iter().copied())
                .map(|h| format!(" (did you mean `{h}`?)"))
                .unwrap_or_default();
            return Err(NormalizeError::Shape {
                path: join(path, k),
                expected: format!(
                    "one of the resource fields {}{hint}",
                    RESOURCE_FIELDS.join(", ")
                ),
                found: format!("unknown key \"{}\"", quote(k)),
            });
        }
    }
    let s = |key: &str| json::opt_str(obj, key, path).map(|v| v.map(str::to_string));
    let mut r = Resource {
        id: s("id")?,
        name: s("name")?,
        type_: s("type")?,
        os: s("os")?.map(|o| o.trim().to_lowercase()),
        region: match s("region")? {
            Some(v) => region(&v),
            None => s("location")?.as_deref().and_then(region),
        },
        zone: match get_ci(obj, "zone") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => s("zone")?,
        },
        fault_domain: json::opt_int(obj, "fault_domain", path)?,
        update_domain: json::opt_int(obj, "update_domain", path)?,
        availability_set: s("availability_set")?,
        scale_set: s("scale_set")?,
        tags: Default::default(),
        is_self: match get_ci(obj, "is_self") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => return Err(shape(&join(path, "is_self"), "a boolean", other)),
        },
    };
    match get_ci(obj, "tags") {
        None | Some(Value::Null) => {}
        Some(Value::Object(t)) => {
            for (k, v) in t {
                match v {
                    Value::String(s) => {
                        r.tags.insert(k.clone(), s.clone());
                    }
                    other => return Err(shape(&format!("{path}.tags.{k}"), "a string", other)),
                }
            }
        }
        Some(other) => return Err(shape(&join(path, "tags"), "an object of strings", other)),
    }
    if let Some(id) = r.id.clone() {
        fill(&mut r, resource_from_str(&id));
    }
    Ok(r)
}

/// What the original request body says about the VM (leniently: it is the caller's request,
/// not the vendor's payload). `os` only where the body states it: `osDisk.osType`, or the one
/// OS configuration it carries.
pub(super) fn resource_from_request(req: &Value) -> Resource {
    let Some(body) = req.as_object() else {
        return Resource::default();
    };
    let props = get_ci(body, "properties").and_then(Value::as_object);
    let os_profile = props
        .and_then(|p| get_ci(p, "osProfile"))
        .and_then(Value::as_object);
    let os_type = props
        .and_then(|p| get_ci(p, "storageProfile"))
        .and_then(Value::as_object)
        .and_then(|s| get_ci(s, "osDisk"))
        .and_then(Value::as_object)
        .and_then(|d| get_ci(d, "osType"))
        .and_then(Value::as_str)
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let has = |k: &str| {
        os_profile
            .and_then(|o| get_ci(o, k))
            .is_some_and(Value::is_object)
    };
    let os = os_type.or(
        match (has("windowsConfiguration"), has("linuxConfiguration")) {
            (true, false) => Some("windows".to_string()),
            (false, true) => Some("linux".to_string()),
            _ => None,
        },
    );
    let zone = get_ci(body, "zones")
        .and_then(Value::as_array)
        .filter(|z| z.len() == 1)
        .and_then(|z| z.first())
        .and_then(Value::as_str)
        .map(str::to_string);
    let tags = get_ci(body, "tags")
        .and_then(Value::as_object)
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let name = get_ci(body, "name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty() && !n.trim_start().starts_with('['))
        .map(str::to_string);
    let type_ = get_ci(body, "type")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string);
    let availability_set = props
        .and_then(|p| get_ci(p, "availabilitySet"))
        .and_then(Value::as_object)
        .and_then(|a| get_ci(a, "id"))
        .and_then(Value::as_str)
        .filter(|id| !id.trim_start().starts_with('['))
        .and_then(azure_id::parse)
        .and_then(|a| a.availability_set);
    Resource {
        name,
        type_,
        os,
        region: get_ci(body, "location")
            .and_then(Value::as_str)
            .filter(|l| !l.trim_start().starts_with('['))
            .and_then(region),
        zone,
        availability_set,
        tags,
        ..Resource::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids() {
        let r = resource_from_id(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3",
        );
        assert_eq!(r.name.as_deref(), Some("ss_3"));
        assert_eq!(r.scale_set.as_deref(), Some("ss"));
        assert_eq!(
            r.type_.as_deref(),
            Some("Microsoft.Compute/virtualMachineScaleSets/virtualMachines")
        );
        let r = resource_from_id("/subscriptions/s/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/extensions/cse");
        assert_eq!(r.name.as_deref(), Some("vm1"));
        assert_eq!(
            r.type_.as_deref(),
            Some("Microsoft.Compute/virtualMachines/extensions")
        );
        for odd in [
            "/",
            "/providers",
            "/providers/Microsoft.Compute",
            "/subscriptions/s",
            "////",
        ] {
            let r = resource_from_id(odd);
            assert_eq!(r.id.as_deref(), Some(odd));
        }
    }
}
