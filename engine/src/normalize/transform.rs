//! The request transform behind the `retry_without_agent` action.
//!
//! [`retry_without_agent`] takes the body of a failed VM create (as sent to `PUT
//! …/providers/Microsoft.Compute/virtualMachines/{name}`, or the same VM written as an ARM
//! template resource with `type`, `apiVersion`, `name` and child `resources`) and returns the
//! body to resubmit:
//!
//! * `properties.osProfile.windowsConfiguration.provisionVMAgent = false` (or
//!   `linuxConfiguration` for Linux). The configuration object the body has decides; when it
//!   has neither, `properties.storageProfile.osDisk.osType` does, and the object is created.
//! * `properties.osProfile.allowExtensionOperations = false` ("may only be set to False when
//!   no extensions are present on the virtual machine", [vm-rest]).
//! * everything that runs through the agent removed: child `resources[]` of type `extensions`
//!   or `Microsoft.Compute/virtualMachines/extensions` (every VM extension is run by the
//!   agent), of type `runCommands` or `Microsoft.Compute/virtualMachines/runCommands` (Run
//!   Command "uses the VM agent to run scripts"), and `properties.extensionProfile`. Other
//!   children stay, and `resources` stays (possibly empty) where the body had it.
//!
//! Nothing else changes. Keys are matched case-insensitively (ARM does) and an existing key
//! keeps its spelling.
//!
//! The agent can only be left out when the VM is created (`osProfile` cannot change
//! afterwards: ARM refuses the change with `PropertyChangeNotAllowed`), so the transform
//! refuses, with a [`TransformError`], a body
//! that is not a single VM, is not a create, attaches a specialized OS disk (no `osProfile` is
//! allowed then), or asks for something that needs the agent and would make the retry invalid:
//! certificates in `osProfile.secrets` ("Certificates cannot be added to your VM if the VM agent
//! is not provisioned", vm-errors), and the `patchSettings` of automatic guest patching
//! (`patchMode` or `assessmentMode` `AutomaticByPlatform`, `enableHotpatching`: "The property
//! provisionVMAgent must be true", [vm-rest]).
//!
//! ```
//! use keel_engine::normalize::transform::retry_without_agent;
//! use serde_json::json;
//!
//! let body = json!({
//!     "location": "eastus2",
//!     "properties": {
//!         "hardwareProfile": { "vmSize": "Standard_D2s_v3" },
//!         "osProfile": { "computerName": "web-1", "adminUsername": "azureuser",
//!                        "windowsConfiguration": { "enableAutomaticUpdates": true } },
//!         "storageProfile": { "osDisk": { "createOption": "FromImage" } }
//!     }
//! });
//! let retry = retry_without_agent(&body)?;
//! assert_eq!(retry["properties"]["osProfile"]["windowsConfiguration"]["provisionVMAgent"], false);
//! assert_eq!(retry["properties"]["osProfile"]["allowExtensionOperations"], false);
//! assert_eq!(retry["properties"]["hardwareProfile"], body["properties"]["hardwareProfile"]);
//! # Ok::<(), keel_engine::normalize::transform::TransformError>(())
//! ```

use serde_json::{Map, Value};

use super::json::get_ci;

/// Why a request body cannot be turned into a retry without the VM agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The body is not a JSON object.
    #[error("the request body is {found}, not a JSON object")]
    NotAnObject {
        /// What it is.
        found: String,
    },
    /// The body is not a virtual machine.
    #[error("not a virtual machine create request: {reason}")]
    NotAVirtualMachine {
        /// Why.
        reason: String,
    },
    /// The body is a virtual machine scale set.
    #[error(
        "`{path}` shows a virtual machine scale set: retry_without_agent rewrites single-VM create \
         requests only (a scale set's agent setting lives in virtualMachineProfile.osProfile, and \
         changing it on an existing set is a model update)"
    )]
    ScaleSet {
        /// The key that shows it.
        path: String,
    },
    /// The body is for an operation other than create.
    #[error(
        "not a create request: {reason}; the VM agent can only be left out when the VM is created \
         (osProfile cannot change afterwards)"
    )]
    NotACreate {
        /// Why.
        reason: String,
    },
    /// The OS disk is attached from a specialized disk.
    #[error(
        "`properties.storageProfile.osDisk.createOption` is Attach: a VM attached from a specialized \
         disk is not provisioned, takes no osProfile, and keeps whatever agent its disk has"
    )]
    SpecializedDisk,
    /// The body does not say whether the VM is Windows or Linux.
    #[error(
        "cannot tell whether the VM is Windows or Linux: `properties.osProfile` has neither \
         windowsConfiguration nor linuxConfiguration, and `properties.storageProfile.osDisk.osType` \
         is {found}"
    )]
    UnknownOs {
        /// What `osType` is.
        found: String,
    },
    /// The body says both Windows and Linux.
    #[error("the body contradicts itself about the OS: {reason}")]
    ConflictingOs {
        /// How.
        reason: String,
    },
    /// The body asks for something that needs the VM agent.
    #[error("`{path}` needs the VM agent ({reason}); a retry without the agent would be rejected")]
    RequiresAgent {
        /// Where.
        path: String,
        /// Why it needs the agent.
        reason: &'static str,
    },
    /// A value has the wrong type.
    #[error("`{path}`: expected {expected}, found {found}")]
    Shape {
        /// Where.
        path: String,
        /// What was expected.
        expected: &'static str,
        /// What was there.
        found: String,
    },
}

const VM_TYPE: &str = "Microsoft.Compute/virtualMachines";
const VMSS_TYPE: &str = "Microsoft.Compute/virtualMachineScaleSets";
/// Keys that only an update (PATCH) body or an action carries at the top level.
const UPDATE_ONLY_KEYS: &[&str] = &["tags", "identity", "plan", "zones", "location"];
/// Keys of `properties` that show a VM (create or update).
const VM_PROPERTY_KEYS: &[&str] = &[
    "hardwareProfile",
    "storageProfile",
    "networkProfile",
    "diagnosticsProfile",
    "availabilitySet",
    "securityProfile",
    "additionalCapabilities",
    "billingProfile",
    "licenseType",
    "priority",
    "evictionPolicy",
    "extensionsTimeBudget",
    "extensionProfile",
    "scheduledEventsProfile",
    "scheduledEventsPolicy",
    "userData",
    "capacityReservation",
    "applicationProfile",
    "proximityPlacementGroup",
    "host",
    "hostGroup",
    "virtualMachineScaleSet",
    "platformFaultDomain",
];

/// Returns the body to retry a failed VM create with: the VM agent not provisioned, extension
/// operations disallowed and every extension removed; nothing else changed. See the module
/// documentation for what is refused.
pub fn retry_without_agent(request: &Value) -> Result<Value, TransformError> {
    let body = request
        .as_object()
        .ok_or_else(|| TransformError::NotAnObject {
            found: describe(request),
        })?;

    if let Some(t) = get_ci(body, "type") {
        let t = t.as_str().ok_or_else(|| shape("type", "a string", t))?;
        if t.eq_ignore_ascii_case(VMSS_TYPE) {
            return Err(TransformError::ScaleSet {
                path: "type".into(),
            });
        }
        if !t.eq_ignore_ascii_case(VM_TYPE) {
            return Err(TransformError::NotAVirtualMachine {
                reason: format!("`type` is \"{}\", not {VM_TYPE}", short(t)),
            });
        }
    }

    let Some(props) = get_ci(body, "properties").filter(|v| !v.is_null()) else {
        if body.is_empty()
            || body
                .keys()
                .all(|k| UPDATE_ONLY_KEYS.iter().any(|u| u.eq_ignore_ascii_case(k)))
        {
            return Err(TransformError::NotACreate {
                reason: "the body has no `properties` (an empty body is a start, restart or \
                         deallocate action; tags or identity alone are an update)"
                    .into(),
            });
        }
        return Err(TransformError::NotAVirtualMachine {
            reason: if get_ci(body, "resources").is_some() || get_ci(body, "$schema").is_some() {
                "it has no `properties`: pass the VM resource itself, not the whole template".into()
            } else {
                "it has no `properties` object".into()
            },
        });
    };
    let props = props
        .as_object()
        .ok_or_else(|| shape("properties", "an object", props))?;

    if get_ci(props, "virtualMachineProfile").is_some() {
        return Err(TransformError::ScaleSet {
            path: "properties.virtualMachineProfile".into(),
        });
    }

    let storage = match get_ci(props, "storageProfile") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => return Err(shape("properties.storageProfile", "an object", other)),
    };
    let os_disk = match storage.and_then(|s| get_ci(s, "osDisk")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(shape(
                "properties.storageProfile.osDisk",
                "an object",
                other,
            ));
        }
    };
    if let Some(opt) = os_disk.and_then(|d| get_ci(d, "createOption")) {
        let opt = opt.as_str().ok_or_else(|| {
            shape(
                "properties.storageProfile.osDisk.createOption",
                "a string",
                opt,
            )
        })?;
        if opt.eq_ignore_ascii_case("Attach") {
            return Err(TransformError::SpecializedDisk);
        }
    }

    let os_profile = match get_ci(props, "osProfile") {
        None | Some(Value::Null) => {
            let vm_keys = props
                .keys()
                .any(|k| VM_PROPERTY_KEYS.iter().any(|v| v.eq_ignore_ascii_case(k)));
            if storage.is_none() && !vm_keys && !props.is_empty() {
                return Err(TransformError::NotAVirtualMachine {
                    reason: "it has neither `properties.osProfile` nor `properties.storageProfile`"
                        .into(),
                });
            }
            return Err(TransformError::NotACreate {
                reason: "the body has no `properties.osProfile`, so it updates an existing VM (or \
                         is an action such as start)"
                    .into(),
            });
        }
        Some(Value::Object(m)) => m,
        Some(other) => return Err(shape("properties.osProfile", "an object", other)),
    };

    // Which configuration to change.
    let os_type = match os_disk.and_then(|d| get_ci(d, "osType")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(shape(
                "properties.storageProfile.osDisk.osType",
                "a string",
                other,
            ));
        }
    };
    let win = present(
        os_profile,
        "windowsConfiguration",
        "properties.osProfile.windowsConfiguration",
    )?;
    let lin = present(
        os_profile,
        "linuxConfiguration",
        "properties.osProfile.linuxConfiguration",
    )?;
    let config_key =
        match (win, lin) {
            (true, true) => return Err(TransformError::ConflictingOs {
                reason:
                    "`properties.osProfile` has both windowsConfiguration and linuxConfiguration"
                        .into(),
            }),
            (true, false) => "windowsConfiguration",
            (false, true) => "linuxConfiguration",
            (false, false) => match os_type {
                Some(t) if t.eq_ignore_ascii_case("Windows") => "windowsConfiguration",
                Some(t) if t.eq_ignore_ascii_case("Linux") => "linuxConfiguration",
                Some(t) => {
                    return Err(TransformError::UnknownOs {
                        found: format!("\"{}\"", short(t)),
                    })
                }
                None => {
                    return Err(TransformError::UnknownOs {
                        found: "absent".into(),
                    })
                }
            },
        };
    if let Some(t) = os_type {
        let expected = if config_key == "windowsConfiguration" {
            "Windows"
        } else {
            "Linux"
        };
        if !t.eq_ignore_ascii_case(expected) {
            return Err(TransformError::ConflictingOs {
                reason: format!(
                    "`properties.osProfile.{config_key}` is given but \
                     `properties.storageProfile.osDisk.osType` is \"{}\"",
                    short(t)
                ),
            });
        }
    }

    // What would make the retry invalid without the agent.
    if let Some(secrets) = get_ci(os_profile, "secrets").filter(|v| !v.is_null()) {
        let list = secrets
            .as_array()
            .ok_or_else(|| shape("properties.osProfile.secrets", "an array", secrets))?;
        if !list.is_empty() {
            return Err(TransformError::RequiresAgent {
                path: "properties.osProfile.secrets".into(),
                reason: "certificates cannot be added to a VM whose agent is not provisioned",
            });
        }
    }
    if let Some(cfg) = get_ci(os_profile, config_key).and_then(Value::as_object) {
        let base = format!("properties.osProfile.{config_key}.patchSettings");
        if let Some(ps) = get_ci(cfg, "patchSettings").filter(|v| !v.is_null()) {
            let ps = ps
                .as_object()
                .ok_or_else(|| shape(&base, "an object", ps))?;
            for key in ["patchMode", "assessmentMode"] {
                if let Some(v) = get_ci(ps, key).and_then(Value::as_str) {
                    if v.eq_ignore_ascii_case("AutomaticByPlatform") {
                        return Err(TransformError::RequiresAgent {
                            path: format!("{base}.{key}"),
                            reason: "AutomaticByPlatform requires provisionVMAgent to be true",
                        });
                    }
                }
            }
            if get_ci(ps, "enableHotpatching").and_then(Value::as_bool) == Some(true) {
                return Err(TransformError::RequiresAgent {
                    path: format!("{base}.enableHotpatching"),
                    reason: "hotpatching requires provisionVMAgent to be true",
                });
            }
        }
    }
    let resources = match get_ci(body, "resources") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(other) => return Err(shape("resources", "an array", other)),
    };
    if let Some(list) = resources {
        for (i, r) in list.iter().enumerate() {
            if let Some(t) = r.as_object().and_then(|o| get_ci(o, "type")) {
                if !t.is_string() {
                    return Err(shape(&format!("resources[{i}].type"), "a string", t));
                }
            }
        }
    }

    // Checks done: build the new body.
    let mut out = body.clone();
    if let Some(k) = key_ci(&out, "resources") {
        if let Some(Value::Array(list)) = out.get_mut(&k) {
            list.retain(|r| !needs_agent(r));
        }
    }
    let props_key = key_ci(&out, "properties").unwrap_or_else(|| "properties".into());
    let Some(Value::Object(props)) = out.get_mut(&props_key) else {
        return Err(TransformError::NotAVirtualMachine {
            reason: "it has no `properties` object".into(),
        });
    };
    if let Some(k) = key_ci(props, "extensionProfile") {
        props.remove(&k);
    }
    let os_key = key_ci(props, "osProfile").unwrap_or_else(|| "osProfile".into());
    let Some(Value::Object(os)) = props.get_mut(&os_key) else {
        return Err(TransformError::NotACreate {
            reason: "the body has no `properties.osProfile`".into(),
        });
    };
    set_ci(os, "allowExtensionOperations", Value::Bool(false));
    let cfg_key = key_ci(os, config_key).unwrap_or_else(|| config_key.to_string());
    let cfg = os
        .entry(cfg_key)
        .or_insert_with(|| Value::Object(Map::new()));
    if cfg.is_null() {
        *cfg = Value::Object(Map::new());
    }
    if let Value::Object(cfg) = cfg {
        set_ci(cfg, "provisionVMAgent", Value::Bool(false));
    }
    Ok(Value::Object(out))
}

/// Child resource types that run through the VM agent.
const AGENT_CHILD_TYPES: &[&str] = &[
    "extensions",
    "Microsoft.Compute/virtualMachines/extensions",
    "runCommands",
    "Microsoft.Compute/virtualMachines/runCommands",
];

/// Whether a child resource runs through the VM agent (an extension or a run command).
fn needs_agent(r: &Value) -> bool {
    r.as_object()
        .and_then(|o| get_ci(o, "type"))
        .and_then(Value::as_str)
        .is_some_and(|t| {
            AGENT_CHILD_TYPES
                .iter()
                .any(|a| a.eq_ignore_ascii_case(t.trim()))
        })
}

/// Whether `key` holds an object (absent and null: false; anything else: a shape error).
fn present(obj: &Map<String, Value>, key: &str, path: &str) -> Result<bool, TransformError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(_)) => Ok(true),
        Some(other) => Err(shape(path, "an object", other)),
    }
}

/// The spelling `key` has in `obj`, if present (exact match first).
fn key_ci(obj: &Map<String, Value>, key: &str) -> Option<String> {
    if obj.contains_key(key) {
        return Some(key.to_string());
    }
    obj.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

/// Sets `key` (keeping an existing spelling) to `value`.
fn set_ci(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let k = key_ci(obj, key).unwrap_or_else(|| key.to_string());
    obj.insert(k, value);
}

fn short(s: &str) -> String {
    crate::normalize::quote(s)
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{}\"", short(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn shape(path: &str, expected: &'static str, found: &Value) -> TransformError {
    TransformError::Shape {
        path: path.to_string(),
        expected,
        found: describe(found),
    }
}
