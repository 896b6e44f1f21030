//! `retry_without_agent`: realistic VM create bodies (written from the Compute REST reference,
//! `virtual-machines/create-or-update`, and the ARM template reference for
//! `Microsoft.Compute/virtualMachines` and its `extensions` children), every changed field,
//! the rest unchanged byte for byte, and every refusal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_engine::normalize::transform::{retry_without_agent, TransformError};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Removes the members at these JSON pointers (missing ones are ignored).
fn without(v: &Value, pointers: &[&str]) -> Value {
    let mut v = v.clone();
    for p in pointers {
        let (parent, key) = p.rsplit_once('/').unwrap();
        if let Some(Value::Object(m)) = v.pointer_mut(parent) {
            m.remove(key);
        }
    }
    v
}

/// Everything but `touched` is unchanged, compared as serialized bytes.
fn assert_rest_unchanged(before: &Value, after: &Value, touched: &[&str]) {
    let a = serde_json::to_string(&without(before, touched)).unwrap();
    let b = serde_json::to_string(&without(after, touched)).unwrap();
    assert_eq!(a, b);
}

/// A Windows VM as an ARM template resource, with a Custom Script extension and a domain join
/// (JsonADDomainExtension) as child resources, written both ways ARM accepts the child type.
fn windows_template_resource() -> Value {
    json!({
        "type": "Microsoft.Compute/virtualMachines",
        "apiVersion": "2024-03-01",
        "name": "[parameters('vmName')]",
        "location": "[parameters('location')]",
        "tags": {"team": "web", "costCenter": "1234"},
        "zones": ["1"],
        "dependsOn": ["[resourceId('Microsoft.Network/networkInterfaces', variables('nicName'))]"],
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D4s_v5"},
            "osProfile": {
                "computerName": "[parameters('vmName')]",
                "adminUsername": "[parameters('adminUsername')]",
                "adminPassword": "[parameters('adminPassword')]",
                "windowsConfiguration": {
                    "enableAutomaticUpdates": true,
                    "provisionVMAgent": true,
                    "timeZone": "W. Europe Standard Time",
                    "patchSettings": {"patchMode": "AutomaticByOS", "assessmentMode": "ImageDefault"}
                }
            },
            "storageProfile": {
                "imageReference": {"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2022-datacenter-azure-edition", "version": "latest"},
                "osDisk": {"name": "[concat(parameters('vmName'), '-os')]", "caching": "ReadWrite", "createOption": "FromImage",
                           "managedDisk": {"storageAccountType": "Premium_LRS"}, "deleteOption": "Delete"},
                "dataDisks": [{"lun": 0, "createOption": "Empty", "diskSizeGB": 256, "managedDisk": {"storageAccountType": "Premium_LRS"}}]
            },
            "networkProfile": {"networkInterfaces": [{"id": "[resourceId('Microsoft.Network/networkInterfaces', variables('nicName'))]", "properties": {"primary": true}}]},
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": true}},
            "securityProfile": {"securityType": "TrustedLaunch", "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}}
        },
        "resources": [
            {
                "type": "extensions",
                "apiVersion": "2024-03-01",
                "name": "CustomScriptExtension",
                "location": "[parameters('location')]",
                "dependsOn": ["[parameters('vmName')]"],
                "properties": {
                    "publisher": "Microsoft.Compute",
                    "type": "CustomScriptExtension",
                    "typeHandlerVersion": "1.10",
                    "autoUpgradeMinorVersion": true,
                    "settings": {"fileUris": ["https://contosoartifacts.blob.core.windows.net/scripts/bootstrap.ps1"]},
                    "protectedSettings": {"commandToExecute": "powershell -ExecutionPolicy Unrestricted -File bootstrap.ps1"}
                }
            },
            {
                "type": "Microsoft.Compute/virtualMachines/extensions",
                "apiVersion": "2024-03-01",
                "name": "[concat(parameters('vmName'), '/joindomain')]",
                "location": "[parameters('location')]",
                "dependsOn": ["[resourceId('Microsoft.Compute/virtualMachines/extensions', parameters('vmName'), 'CustomScriptExtension')]"],
                "properties": {
                    "publisher": "Microsoft.Compute",
                    "type": "JsonADDomainExtension",
                    "typeHandlerVersion": "1.3",
                    "autoUpgradeMinorVersion": true,
                    "settings": {"Name": "corp.contoso.com", "OUPath": "OU=Web,DC=corp,DC=contoso,DC=com", "User": "corp.contoso.com\\svc-join", "Restart": "true", "Options": "3"},
                    "protectedSettings": {"Password": "[parameters('domainJoinPassword')]"}
                }
            },
            {
                "type": "runCommands",
                "apiVersion": "2024-03-01",
                "name": "warmup",
                "location": "[parameters('location')]",
                "properties": {"source": {"script": "Write-Output ready"}, "asyncExecution": false}
            },
            {
                "type": "providers/locks",
                "apiVersion": "2016-09-01",
                "name": "Microsoft.Authorization/vmLock",
                "dependsOn": ["[parameters('vmName')]"],
                "properties": {"level": "CanNotDelete", "notes": "Production VM"}
            }
        ]
    })
}

/// A Linux VM as the body of `PUT …/virtualMachines/{name}` (no `type`, no `name`).
fn linux_put_body() -> Value {
    json!({
        "location": "westeurope",
        "tags": {"role": "worker"},
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_B2s"},
            "storageProfile": {
                "imageReference": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts-gen2", "version": "latest"},
                "osDisk": {"createOption": "FromImage", "caching": "ReadWrite", "managedDisk": {"storageAccountType": "StandardSSD_LRS"}}
            },
            "osProfile": {
                "computerName": "worker-1",
                "adminUsername": "azureuser",
                "customData": "I2Nsb3VkLWNvbmZpZwpwYWNrYWdlczogW25naW54XQo=",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH4xQ6V5V8l1vR2l6m1dG0i0p3k5mZ1pZJ1l0n2YtQkZ worker@ci"}]},
                    "patchSettings": {"patchMode": "ImageDefault"}
                }
            },
            "networkProfile": {"networkInterfaces": [{"id": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-workers/providers/Microsoft.Network/networkInterfaces/worker-1-nic", "properties": {"primary": true}}]},
            "priority": "Spot",
            "evictionPolicy": "Deallocate",
            "billingProfile": {"maxPrice": -1}
        }
    })
}

/// A Windows VM body with its extensions in `properties.extensionProfile` and, as a GET of a
/// VM returns them, in `resources[]` with full ids.
fn body_with_extension_profile() -> Value {
    json!({
        "location": "eastus2",
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "imageReference": {"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer", "sku": "2019-datacenter-gensecond", "version": "latest"},
                "osDisk": {"createOption": "FromImage", "osType": "Windows"}
            },
            "osProfile": {
                "computerName": "app-1",
                "adminUsername": "azureuser",
                "adminPassword": "<secret>",
                "allowExtensionOperations": true,
                "windowsConfiguration": {"enableAutomaticUpdates": true}
            },
            "networkProfile": {"networkInterfaces": [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/app-1-nic"}]},
            "extensionsTimeBudget": "PT1H30M",
            "extensionProfile": {
                "extensionsTimeBudget": "PT1H",
                "extensions": [
                    {"name": "AzureMonitorWindowsAgent", "properties": {"publisher": "Microsoft.Azure.Monitor", "type": "AzureMonitorWindowsAgent", "typeHandlerVersion": "1.0", "autoUpgradeMinorVersion": true}}
                ]
            }
        },
        "resources": [
            {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app-1/extensions/IaaSAntimalware",
             "name": "IaaSAntimalware", "type": "Microsoft.Compute/virtualMachines/extensions", "location": "eastus2",
             "properties": {"publisher": "Microsoft.Azure.Security", "type": "IaaSAntimalware", "typeHandlerVersion": "1.3"}}
        ]
    })
}

/// The smallest create: no OS configuration object at all, the OS only in `osDisk.osType`.
fn minimal_windows_body() -> Value {
    json!({
        "location": "northeurope",
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_B2ms"},
            "storageProfile": {
                "imageReference": {"id": "/subscriptions/s/resourceGroups/images/providers/Microsoft.Compute/galleries/g/images/win2022/versions/1.0.3"},
                "osDisk": {"createOption": "FromImage", "osType": "Windows"}
            },
            "osProfile": {"computerName": "min-1", "adminUsername": "azureuser", "adminPassword": "<secret>"},
            "networkProfile": {"networkInterfaces": [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/min-1-nic"}]}
        }
    })
}

// ----------------------------------------------------------------------------------------
// What changes.

#[test]
fn windows_template_resource_with_child_extensions() {
    let before = windows_template_resource();
    let after = retry_without_agent(&before).unwrap();
    let os = &after["properties"]["osProfile"];
    assert_eq!(os["windowsConfiguration"]["provisionVMAgent"], json!(false));
    assert_eq!(os["allowExtensionOperations"], json!(false));
    // Both extensions and the run command go; the lock stays.
    assert_eq!(after["resources"], json!([before["resources"][3].clone()]));
    assert!(os.get("linuxConfiguration").is_none());
    assert_rest_unchanged(
        &before,
        &after,
        &[
            "/properties/osProfile/windowsConfiguration/provisionVMAgent",
            "/properties/osProfile/allowExtensionOperations",
            "/resources",
        ],
    );
    // The other settings of windowsConfiguration are untouched.
    assert_eq!(
        os["windowsConfiguration"]["patchSettings"],
        before["properties"]["osProfile"]["windowsConfiguration"]["patchSettings"]
    );
}

#[test]
fn linux_put_body_with_linux_configuration() {
    let before = linux_put_body();
    let after = retry_without_agent(&before).unwrap();
    let os = &after["properties"]["osProfile"];
    assert_eq!(os["linuxConfiguration"]["provisionVMAgent"], json!(false));
    assert_eq!(os["allowExtensionOperations"], json!(false));
    assert!(os.get("windowsConfiguration").is_none());
    assert!(
        after.get("resources").is_none(),
        "no resources key is added"
    );
    assert_rest_unchanged(
        &before,
        &after,
        &[
            "/properties/osProfile/linuxConfiguration/provisionVMAgent",
            "/properties/osProfile/allowExtensionOperations",
        ],
    );
}

#[test]
fn body_with_extension_profile_and_extension_resources() {
    let before = body_with_extension_profile();
    let after = retry_without_agent(&before).unwrap();
    assert!(after["properties"].get("extensionProfile").is_none());
    assert_eq!(after["resources"], json!([]));
    let os = &after["properties"]["osProfile"];
    assert_eq!(
        os["allowExtensionOperations"],
        json!(false),
        "true is overwritten"
    );
    assert_eq!(os["windowsConfiguration"]["provisionVMAgent"], json!(false));
    assert_eq!(
        after["properties"]["extensionsTimeBudget"],
        json!("PT1H30M"),
        "not an extension"
    );
    assert_rest_unchanged(
        &before,
        &after,
        &[
            "/properties/extensionProfile",
            "/properties/osProfile/windowsConfiguration/provisionVMAgent",
            "/properties/osProfile/allowExtensionOperations",
            "/resources",
        ],
    );
}

#[test]
fn minimal_body_gets_the_configuration_object_from_os_type() {
    let before = minimal_windows_body();
    let after = retry_without_agent(&before).unwrap();
    assert_eq!(
        after["properties"]["osProfile"]["windowsConfiguration"],
        json!({"provisionVMAgent": false})
    );
    assert_eq!(
        after["properties"]["osProfile"]["allowExtensionOperations"],
        json!(false)
    );
    assert_rest_unchanged(
        &before,
        &after,
        &[
            "/properties/osProfile/windowsConfiguration",
            "/properties/osProfile/allowExtensionOperations",
        ],
    );
    // Linux the same way, and a null configuration is replaced.
    let mut lin = minimal_windows_body();
    lin["properties"]["storageProfile"]["osDisk"]["osType"] = json!("linux");
    lin["properties"]["osProfile"]["linuxConfiguration"] = Value::Null;
    let after = retry_without_agent(&lin).unwrap();
    assert_eq!(
        after["properties"]["osProfile"]["linuxConfiguration"],
        json!({"provisionVMAgent": false})
    );
    assert!(after["properties"]["osProfile"]
        .get("windowsConfiguration")
        .is_none());
}

#[test]
fn keys_are_matched_case_insensitively_and_keep_their_spelling() {
    let before = json!({
        "Location": "eastus",
        "Properties": {
            "OSProfile": {"computerName": "c", "adminUsername": "u", "AllowExtensionOperations": true,
                          "WindowsConfiguration": {"ProvisionVmAgent": true}},
            "storageProfile": {"osDisk": {"CreateOption": "fromImage"}}
        }
    });
    let after = retry_without_agent(&before).unwrap();
    let os = &after["Properties"]["OSProfile"];
    assert_eq!(
        os["WindowsConfiguration"],
        json!({"ProvisionVmAgent": false})
    );
    assert_eq!(os["AllowExtensionOperations"], json!(false));
    assert_eq!(os.as_object().unwrap().len(), 4, "no second spelling added");
}

#[test]
fn the_transform_is_idempotent() {
    for body in [
        windows_template_resource(),
        linux_put_body(),
        body_with_extension_profile(),
        minimal_windows_body(),
    ] {
        let once = retry_without_agent(&body).unwrap();
        assert_eq!(retry_without_agent(&once).unwrap(), once);
    }
}

// ----------------------------------------------------------------------------------------
// What is refused.

#[test]
fn refuses_what_is_not_a_json_object() {
    for v in [
        json!(null),
        json!([windows_template_resource()]),
        json!("PUT"),
        json!(3),
    ] {
        assert!(
            matches!(
                retry_without_agent(&v),
                Err(TransformError::NotAnObject { .. })
            ),
            "{v}"
        );
    }
}

#[test]
fn refuses_another_resource_type() {
    let nic = json!({"type": "Microsoft.Network/networkInterfaces", "apiVersion": "2023-09-01", "name": "nic", "location": "eastus",
                     "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {"privateIPAllocationMethod": "Dynamic"}}]}});
    match retry_without_agent(&nic) {
        Err(TransformError::NotAVirtualMachine { reason }) => {
            assert!(reason.contains("networkInterfaces"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // No osProfile and no storageProfile: not a VM.
    let disk = json!({"location": "eastus", "sku": {"name": "Premium_LRS"}, "properties": {"creationData": {"createOption": "Empty"}, "diskSizeGB": 128}});
    assert!(matches!(
        retry_without_agent(&disk),
        Err(TransformError::NotAVirtualMachine { .. })
    ));
    // A whole template.
    let template = json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "contentVersion": "1.0.0.0",
                          "resources": [windows_template_resource()]});
    match retry_without_agent(&template) {
        Err(TransformError::NotAVirtualMachine { reason }) => {
            assert!(reason.contains("whole template"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refuses_a_scale_set() {
    let vmss = json!({"type": "Microsoft.Compute/virtualMachineScaleSets", "name": "ss", "sku": {"name": "Standard_D2s_v5", "capacity": 3},
                      "properties": {"virtualMachineProfile": {"osProfile": {"computerNamePrefix": "ss", "adminUsername": "u"}}}});
    assert_eq!(
        retry_without_agent(&vmss),
        Err(TransformError::ScaleSet {
            path: "type".into()
        })
    );
    let mut untyped = vmss.clone();
    untyped.as_object_mut().unwrap().remove("type");
    assert_eq!(
        retry_without_agent(&untyped),
        Err(TransformError::ScaleSet {
            path: "properties.virtualMachineProfile".into()
        })
    );
}

#[test]
fn refuses_an_update_or_an_action_and_says_so() {
    // A resize (PATCH) has no osProfile.
    let resize = json!({"properties": {"hardwareProfile": {"vmSize": "Standard_D8s_v5"}}});
    match retry_without_agent(&resize) {
        Err(e @ TransformError::NotACreate { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("not a create request") && s.contains("osProfile"),
                "{s}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A start/restart/deallocate action has no body; a tags update has no properties.
    for body in [json!({}), json!({"tags": {"a": "b"}})] {
        assert!(
            matches!(
                retry_without_agent(&body),
                Err(TransformError::NotACreate { .. })
            ),
            "{body}"
        );
    }
    // A full PUT that keeps the storage profile but drops osProfile is an update too.
    let mut upd = minimal_windows_body();
    upd["properties"]
        .as_object_mut()
        .unwrap()
        .remove("osProfile");
    assert!(matches!(
        retry_without_agent(&upd),
        Err(TransformError::NotACreate { .. })
    ));
}

#[test]
fn refuses_a_specialized_os_disk() {
    let attach = json!({"location": "eastus", "properties": {
        "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
        "storageProfile": {"osDisk": {"osType": "Windows", "createOption": "Attach",
                                      "managedDisk": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/migrated-os"}}},
        "networkProfile": {"networkInterfaces": [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/n"}]}}});
    assert_eq!(
        retry_without_agent(&attach),
        Err(TransformError::SpecializedDisk)
    );
    assert!(TransformError::SpecializedDisk
        .to_string()
        .contains("Attach"));
}

#[test]
fn refuses_when_the_os_is_unknown_or_contradictory() {
    let mut b = minimal_windows_body();
    b["properties"]["storageProfile"]["osDisk"]
        .as_object_mut()
        .unwrap()
        .remove("osType");
    assert_eq!(
        retry_without_agent(&b),
        Err(TransformError::UnknownOs {
            found: "absent".into()
        })
    );
    b["properties"]["storageProfile"]["osDisk"]["osType"] = json!("Plan9");
    assert!(matches!(
        retry_without_agent(&b),
        Err(TransformError::UnknownOs { .. })
    ));

    let mut both = linux_put_body();
    both["properties"]["osProfile"]["windowsConfiguration"] = json!({});
    assert!(matches!(
        retry_without_agent(&both),
        Err(TransformError::ConflictingOs { .. })
    ));

    let mut mismatch = linux_put_body();
    mismatch["properties"]["storageProfile"]["osDisk"]["osType"] = json!("Windows");
    assert!(matches!(
        retry_without_agent(&mismatch),
        Err(TransformError::ConflictingOs { .. })
    ));
}

#[test]
fn refuses_settings_that_need_the_agent() {
    let mut certs = windows_template_resource();
    certs["properties"]["osProfile"]["secrets"] = json!([{"sourceVault": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"},
        "vaultCertificates": [{"certificateUrl": "https://kv.vault.azure.net/secrets/web/abc", "certificateStore": "My"}]}]);
    assert_eq!(
        retry_without_agent(&certs),
        Err(TransformError::RequiresAgent {
            path: "properties.osProfile.secrets".into(),
            reason: "certificates cannot be added to a VM whose agent is not provisioned"
        })
    );
    // An empty secrets list is fine.
    certs["properties"]["osProfile"]["secrets"] = json!([]);
    assert!(retry_without_agent(&certs).is_ok());

    for (key, value, path) in [
        (
            "patchMode",
            json!("AutomaticByPlatform"),
            "properties.osProfile.windowsConfiguration.patchSettings.patchMode",
        ),
        (
            "assessmentMode",
            json!("automaticbyplatform"),
            "properties.osProfile.windowsConfiguration.patchSettings.assessmentMode",
        ),
        (
            "enableHotpatching",
            json!(true),
            "properties.osProfile.windowsConfiguration.patchSettings.enableHotpatching",
        ),
    ] {
        let mut b = windows_template_resource();
        b["properties"]["osProfile"]["windowsConfiguration"]["patchSettings"][key] = value;
        match retry_without_agent(&b) {
            Err(TransformError::RequiresAgent { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{key}: {other:?}"),
        }
    }
    let mut lin = linux_put_body();
    lin["properties"]["osProfile"]["linuxConfiguration"]["patchSettings"]["patchMode"] =
        json!("AutomaticByPlatform");
    assert!(matches!(
        retry_without_agent(&lin),
        Err(TransformError::RequiresAgent { .. })
    ));
}

#[test]
fn wrong_types_are_shape_errors_with_paths() {
    let cases = [
        (json!({"type": 5, "properties": {}}), "type"),
        (json!({"properties": "x"}), "properties"),
        (
            json!({"properties": {"osProfile": "x", "storageProfile": {}}}),
            "properties.osProfile",
        ),
        (
            json!({"properties": {"osProfile": {}, "storageProfile": []}}),
            "properties.storageProfile",
        ),
        (
            json!({"properties": {"osProfile": {}, "storageProfile": {"osDisk": 1}}}),
            "properties.storageProfile.osDisk",
        ),
        (
            json!({"properties": {"osProfile": {}, "storageProfile": {"osDisk": {"createOption": 1}}}}),
            "properties.storageProfile.osDisk.createOption",
        ),
        (
            json!({"properties": {"osProfile": {"windowsConfiguration": true}}}),
            "properties.osProfile.windowsConfiguration",
        ),
        (
            json!({"properties": {"osProfile": {"windowsConfiguration": {}, "secrets": "x"}}}),
            "properties.osProfile.secrets",
        ),
        (
            json!({"properties": {"osProfile": {"windowsConfiguration": {}}}, "resources": {}}),
            "resources",
        ),
        (
            json!({"properties": {"osProfile": {"windowsConfiguration": {}}}, "resources": [{"type": 1}]}),
            "resources[0].type",
        ),
    ];
    for (body, path) in cases {
        match retry_without_agent(&body) {
            Err(TransformError::Shape { path: p, .. }) => assert_eq!(p, path, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

// ----------------------------------------------------------------------------------------
// Fuzzing.

fn arb_body() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "type",
        "properties",
        "osProfile",
        "storageProfile",
        "osDisk",
        "osType",
        "createOption",
        "windowsConfiguration",
        "linuxConfiguration",
        "provisionVMAgent",
        "allowExtensionOperations",
        "extensionProfile",
        "resources",
        "virtualMachineProfile",
        "secrets",
        "patchSettings",
        "patchMode",
        "hardwareProfile",
        "tags",
    ]);
    let strings = prop::sample::select(vec![
        "Microsoft.Compute/virtualMachines",
        "extensions",
        "Microsoft.Compute/virtualMachines/extensions",
        "Microsoft.Compute/virtualMachineScaleSets",
        "Windows",
        "Linux",
        "Attach",
        "FromImage",
        "AutomaticByPlatform",
        "",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        strings.prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// Whatever is returned has no agent, no extensions, and is a fixed point.
fn check(v: &Value) -> Result<(), TestCaseError> {
    match retry_without_agent(v) {
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(out) => {
            let os = out["properties"]["osProfile"].as_object().unwrap();
            let agent_false = ["windowsConfiguration", "linuxConfiguration"]
                .iter()
                .any(|k| os.get(*k).and_then(|c| c.get("provisionVMAgent")) == Some(&json!(false)));
            prop_assert!(agent_false);
            prop_assert_eq!(os.get("allowExtensionOperations"), Some(&json!(false)));
            prop_assert!(out["properties"].get("extensionProfile").is_none());
            if let Some(Value::Array(rs)) = out.get("resources") {
                for r in rs {
                    let t = r.get("type").and_then(Value::as_str).unwrap_or("");
                    prop_assert!(!t.eq_ignore_ascii_case("extensions"));
                    prop_assert!(
                        !t.eq_ignore_ascii_case("Microsoft.Compute/virtualMachines/extensions")
                    );
                    prop_assert!(!t.eq_ignore_ascii_case("runCommands"));
                }
            }
            prop_assert_eq!(retry_without_agent(&out).unwrap(), out);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_panics_and_what_it_returns_has_no_agent(v in arb_body()) {
        check(&v)?;
    }

    #[test]
    fn mutated_real_bodies_never_panic(which in 0usize..4, path_key in prop::sample::select(vec![
        "/properties", "/properties/osProfile", "/properties/storageProfile", "/properties/osProfile/windowsConfiguration",
        "/properties/storageProfile/osDisk", "/resources", "/type",
    ]), replacement in arb_body()) {
        let mut body = [windows_template_resource(), linux_put_body(), body_with_extension_profile(), minimal_windows_body()][which].clone();
        if let Some(slot) = body.pointer_mut(path_key) {
            *slot = replacement;
        }
        check(&body)?;
    }
}

// ----------------------------------------------------------------------------------------
// cargo-mutants survivors: what the errors say.

/// A template is recognized by either of its markers: a nested template or a copied
/// `resources` list has no `$schema`, and a template skeleton may have no `resources` yet.
#[test]
fn a_template_is_named_by_its_resources_or_its_schema_alone() {
    for template in [
        json!({"resources": [windows_template_resource()]}),
        json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#", "contentVersion": "1.0.0.0"}),
    ] {
        match retry_without_agent(&template) {
            Err(TransformError::NotAVirtualMachine { reason }) => {
                assert!(reason.contains("whole template"), "{template}: {reason}")
            }
            other => panic!("{template}: {other:?}"),
        }
    }
}

/// The errors say what was found, so a caller who passed the wrong value can see which.
#[test]
fn errors_describe_the_value_found() {
    for (v, found) in [
        (json!(null), "null"),
        (json!(true), "the boolean true"),
        (json!(3), "the number 3"),
        (json!("PUT"), "the string \"PUT\""),
        (json!([1]), "an array"),
    ] {
        assert_eq!(
            retry_without_agent(&v),
            Err(TransformError::NotAnObject {
                found: found.into()
            })
        );
    }
    let e = retry_without_agent(&json!({"properties": "x"})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "`properties`: expected an object, found the string \"x\""
    );
}
