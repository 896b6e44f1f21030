//! The redacted JSON of every event the vendor fixtures and the ingest bodies normalize to, and
//! of the standard policies' decision on each, is what the `Value` path gives: the stored and
//! logged JSON did not change when the direct writer replaced it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use keel_engine::normalize::{normalize, Input, NormalizerState, NORMALIZERS};
use keel_engine::redact::{redact, to_redacted_string};
use keel_engine::{Ctx, Engine, Event};

/// `to_value`, [`redact`], `to_string`: the reference.
fn reference<T: serde::Serialize>(t: &T) -> String {
    let mut v = serde_json::to_value(t).unwrap();
    redact(&mut v);
    serde_json::to_string(&v).unwrap()
}

fn json_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

#[test]
fn every_fixture_event_and_decision_is_written_as_the_value_path_writes_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine = Engine::from_dir(root.join("../policies/standard")).unwrap();
    let mut files = Vec::new();
    json_files(&root.join("../policies/fixtures"), &mut files);
    json_files(&root.join("tests/data"), &mut files);
    let at = "2026-01-01T00:00:00Z".parse().unwrap();
    let (mut events, mut secrets) = (0, 0);
    // No vendor payload carries a secret: an ingest body with a create request that does.
    let mut body: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("tests/data/ingest/vm-agent-windows-2021-10-13.json")).unwrap(),
    )
    .unwrap();
    body["request"] = serde_json::json!({
        "location": "eastus2",
        "properties": {
            "osProfile": {"adminUsername": "azureuser", "adminPassword": "hunter2",
                          "customData": "IyEvYmluL3NoCg==", "secrets": []},
            "extensionProfile": {"extensions": [{"name": "cse", "properties": {
                "settings": {"fileUris": ["https://x/a.sh"]},
                "protectedSettings": {"storageAccountKey": "k", "commandToExecute": "sh a.sh"}}}]},
            "note": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----",
            "userData": null
        }
    });
    let with_secrets = (
        "an ingest body with secrets",
        serde_json::to_vec(&body).unwrap(),
    );
    let read = files
        .iter()
        .map(|f| (f.to_str().unwrap(), std::fs::read(f).unwrap()));
    for (file, bytes) in std::iter::once(with_secrets).chain(read) {
        // Every normalizer on every file (what one refuses costs nothing here), and the file
        // itself when it is a normalized event.
        let as_event = serde_json::from_slice::<Event>(&bytes)
            .ok()
            .map(|e| ("event", vec![e]));
        let normalized = NORMALIZERS.iter().filter_map(|n| {
            let mut state = NormalizerState::default();
            let evs = normalize(n.name, &Input::new(&bytes, at), &mut state).ok()?;
            Some((n.name, evs))
        });
        for (name, evs) in normalized.chain(as_event) {
            for ev in evs {
                events += 1;
                let text = to_redacted_string(&ev).unwrap();
                assert_eq!(text, reference(&ev), "{file}: {name}");
                secrets += usize::from(text.contains("[redacted]"));
                let d = engine.decide(&ev, &Ctx::new(ev.time));
                assert_eq!(
                    to_redacted_string(&d).unwrap(),
                    reference(&d),
                    "{file}: {name}: the decision"
                );
            }
        }
    }
    assert!(events > 40, "only {events} events: the fixtures moved?");
    assert!(secrets > 0, "no fixture event carried a secret to redact");
}
