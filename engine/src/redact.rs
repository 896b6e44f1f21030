//! Secret redaction: one list of the JSON keys whose values are secrets, and the function that
//! blanks them at any depth, for everything that leaves memory (a log line, a stored event or
//! decision).
//!
//! A VM create request carries secrets: `osProfile.adminPassword`, `customData` (often a
//! bootstrap script with credentials), extension `protectedSettings`, SSH private keys, storage
//! keys and SAS tokens. They reach the engine inside an ingest body (`Event::raw`,
//! `Failure::request`) and leave it in `Decision::retry.request`. An embedder that logs or
//! stores an event or a decision should pass a copy through [`redact`] (or use
//! [`to_redacted_string`]) and keep the unredacted value in memory only, for the resubmission.
//!
//! A key matches when its name, compared case-insensitively and ignoring `_` and `-`, is one of
//! [`SECRET_KEYS`] or ends with one of [`SECRET_SUFFIXES`]; its value, whatever its type
//! (string, object, array), becomes the string [`REDACTED`]. A string value that holds a PEM
//! private key (`-----BEGIN … PRIVATE KEY-----`) is redacted under any key.
//!
//! ```
//! let mut v = serde_json::json!({"properties": {"osProfile": {"AdminPassword": "hunter2"}}});
//! assert_eq!(keel_engine::redact::redact(&mut v), 1);
//! assert_eq!(v["properties"]["osProfile"]["AdminPassword"], "[redacted]");
//! ```

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Keys whose values are secrets, normalized (lower case, no `_` or `-`). Compared with a key
/// normalized the same way, so `adminPassword`, `AdminPassword` and `admin_password` match.
pub const SECRET_KEYS: &[&str] = &[
    // Azure VM create: the administrator password, custom data and user data (bootstrap
    // scripts routinely carry credentials), and extension settings meant to be encrypted.
    "adminpassword",
    "customdata",
    "userdata",
    "protectedsettings",
    "protectedsettingsfromkeyvault",
    // Generic credentials.
    "password",
    "passphrase",
    "secret",
    "clientsecret",
    "privatekey",
    "sshprivatekey",
    "connectionstring",
    "sas",
    "sastoken",
    "sasurl",
    "accesskey",
    "secretaccesskey",
    "storageaccountkey",
    "primarykey",
    "secondarykey",
    "apikey",
    "token",
    "accesstoken",
    "refreshtoken",
    "authorization",
    "credentials",
];

/// Suffixes that make a key secret too (normalized like [`SECRET_KEYS`]): any `…Password`,
/// `…Secret`, `…PrivateKey`, `…ConnectionString`, `…Token`, `…AccessKey`, `…ApiKey`.
pub const SECRET_SUFFIXES: &[&str] = &[
    "password",
    "secret",
    "privatekey",
    "connectionstring",
    "token",
    "accesskey",
    "apikey",
];

/// Whether a JSON key names a secret (see the module documentation).
pub fn is_secret_key(key: &str) -> bool {
    is_secret_key_bytes(key.as_bytes())
}

/// [`is_secret_key`] of a key's UTF-8 bytes (normalizing them byte by byte is the same as
/// char by char: ASCII case folding leaves the bytes of other characters alone). Normalized
/// on the stack: it runs for every key of everything stored.
fn is_secret_key_bytes(key: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    let mut n = 0;
    for &b in key {
        if b == b'_' || b == b'-' {
            continue;
        }
        let Some(slot) = buf.get_mut(n) else {
            // Longer than any name: only a suffix can match.
            return is_secret_long(key);
        };
        *slot = b.to_ascii_lowercase();
        n += 1;
    }
    is_secret_normalized(&buf[..n])
}

/// [`is_secret_key_bytes`] of a key too long to normalize on the stack.
fn is_secret_long(key: &[u8]) -> bool {
    let k: Vec<u8> = key
        .iter()
        .filter(|b| **b != b'_' && **b != b'-')
        .map(u8::to_ascii_lowercase)
        .collect();
    is_secret_normalized(&k)
}

/// Whether a normalized key (lower case, no `_` or `-`) names a secret.
fn is_secret_normalized(k: &[u8]) -> bool {
    SECRET_KEYS.iter().any(|s| s.as_bytes() == k)
        || SECRET_SUFFIXES.iter().any(|s| k.ends_with(s.as_bytes()))
}

/// Whether a string holds a PEM private key.
fn is_private_key_text(s: &str) -> bool {
    s.contains("-----BEGIN") && s.contains("PRIVATE KEY-----")
}

/// Replaces, at any depth, the value of every secret key (and every string holding a PEM
/// private key) with [`REDACTED`]. Returns how many values it replaced.
pub fn redact(v: &mut Value) -> usize {
    match v {
        Value::Object(m) => {
            let mut n = 0;
            for (k, x) in m.iter_mut() {
                if is_secret_key(k) {
                    if x.as_str() != Some(REDACTED) && !x.is_null() {
                        *x = Value::String(REDACTED.into());
                        n += 1;
                    }
                } else {
                    n += redact(x);
                }
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(redact).sum(),
        Value::String(s) if is_private_key_text(s) => {
            *v = Value::String(REDACTED.into());
            1
        }
        _ => 0,
    }
}

/// `t` as JSON text with its secrets redacted ([`redact`]): for a log line or a stored row.
///
/// Written directly, without building a [`Value`] first, yet exactly as
/// `serde_json::to_string` of the redacted `serde_json::to_value(t)` (object keys sorted).
pub fn to_redacted_string<T: serde::Serialize + ?Sized>(t: &T) -> serde_json::Result<String> {
    match writer::write(t) {
        // Only `str`s and escapes were written.
        Ok(out) => String::from_utf8(out).map_err(serde::ser::Error::custom),
        Err(e) if e.to_string() == writer::UNSUPPORTED => via_value(t),
        Err(e) => Err(e),
    }
}

/// [`to_redacted_string`] through a [`Value`]: what the direct writer must equal.
fn via_value<T: serde::Serialize + ?Sized>(t: &T) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(t)?;
    redact(&mut v);
    serde_json::to_string(&v)
}

mod writer;

/// The JSON paths (`/properties/osProfile/adminPassword`) of the secret values in `v` that
/// were redacted ([`REDACTED`]): a request read back from storage cannot be resubmitted with
/// them.
pub fn redacted_paths(v: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &mut String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    if x.as_str() == Some(REDACTED) {
                        out.push(path.clone());
                    } else {
                        walk(x, path, out);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    if x.as_str() == Some(REDACTED) {
                        out.push(path.clone());
                    } else {
                        walk(x, path, out);
                    }
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut String::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_redacted_at_any_depth_in_any_case() {
        let mut v = json!({
            "location": "eastus2",
            "properties": {
                "osProfile": {
                    "adminUsername": "azureuser",
                    "ADMINPASSWORD": "p1",
                    "customData": "p2",
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": true,
                        "ssh": {"publicKeys": [{"keyData": "ssh-rsa AAAA", "path": "/home/a"}]}
                    },
                    "secrets": [{"sourceVault": {"id": "/x"}}]
                },
                "userData": "p3"
            },
            "resources": [{
                "type": "extensions",
                "properties": {
                    "settings": {"fileUris": ["https://x/a.sh"]},
                    "ProtectedSettings": {"commandToExecute": "p4", "storageAccountKey": "p5"},
                    "protectedSettingsFromKeyVault": {"secretUrl": "p6"}
                }
            }],
            "deep": [[{"Client_Secret": "p7", "connection-string": "p8", "sasToken": "p9",
                       "AccessKey": "p10", "token": "p11", "privateKey": {"pem": "p12"},
                       "password": 13, "note": "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----"}]]
        });
        let n = redact(&mut v);
        let text = v.to_string();
        for i in 1..=13 {
            assert!(!text.contains(&format!("\"p{i}\"")), "p{i} left in {text}");
        }
        assert!(!text.contains("\"pem\""), "{text}");
        assert!(!text.contains(":13"), "{text}");
        assert!(!text.contains("MII"), "{text}");
        // `secrets` lists Key Vault references (ids), not secrets.
        assert_eq!(
            v["properties"]["osProfile"]["secrets"][0]["sourceVault"]["id"],
            "/x"
        );
        // What is not secret stays.
        assert_eq!(v["location"], "eastus2");
        assert_eq!(v["properties"]["osProfile"]["adminUsername"], "azureuser");
        assert_eq!(
            v["properties"]["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"],
            true
        );
        assert_eq!(
            v["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
            "ssh-rsa AAAA"
        );
        assert_eq!(
            v["resources"][0]["properties"]["settings"]["fileUris"][0],
            "https://x/a.sh"
        );
        assert_eq!(n, 13);
        // Redacting twice changes nothing more.
        assert_eq!(redact(&mut v), 0);
        let mut paths = redacted_paths(&v);
        paths.sort();
        assert!(paths.contains(&"/properties/osProfile/ADMINPASSWORD".to_string()));
        assert!(paths.contains(&"/resources/0/properties/ProtectedSettings".to_string()));
        assert!(paths.contains(&"/deep/0/0/note".to_string()));
        assert_eq!(paths.len(), 13, "{paths:?}");
    }

    #[test]
    fn keys_longer_than_the_stack_buffer_are_matched_by_suffix() {
        let long = "x".repeat(70);
        assert!(is_secret_key(&format!("{long}Password")));
        assert!(is_secret_key(&format!("{long}_API-key")));
        assert!(is_secret_key(&format!("{long}Pass_Word")));
        assert!(is_secret_key(&format!("{long}pass-word")));
        assert!(!is_secret_key(&format!("{long}Name")));
        assert!(!is_secret_key(&format!("{long}passwordHint")));
        // Separators do not count toward the length: this one fits, and is a name.
        assert!(is_secret_key(&format!("{}password", "_".repeat(70))));
        assert!(is_secret_key(&format!("{}pass-word", "-_".repeat(40))));
    }

    #[test]
    fn ordinary_keys_are_not_secret() {
        for k in [
            "adminUsername",
            "keyData",
            "tokenType",
            "idempotency_key",
            "disablePasswordAuthentication",
            "vmSize",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
        for k in [
            "adminPassword",
            "x-ms-Secret",
            "bearerToken",
            "SAS",
            "apiKey",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn an_event_serializes_without_its_request_secrets() {
        let ev: crate::Event = serde_json::from_value(json!({
            "id": "azure.arm:op-1", "time": "2021-10-13T14:05:00Z",
            "source": "azure.arm", "kind": "operation_failure",
            "resource": {"name": "web-1"},
            "failure": {"operation": "create", "code": "X", "category": "vm_agent",
                        "transient": false, "attempt": 1,
                        "request": {"properties": {"osProfile": {"adminPassword": "hunter2"}}}},
            "raw": {"request": {"properties": {"osProfile": {"adminPassword": "hunter2"}}}}
        }))
        .unwrap();
        let s = to_redacted_string(&ev).unwrap();
        assert!(!s.contains("hunter2"), "{s}");
        assert_eq!(s.matches(REDACTED).count(), 2, "{s}");
    }
}
