//! Wasm plugin policies: hostile plugins (an infinite loop, unbounded allocation, a panic, an
//! action that does not exist, bad params, a refused `init`, WASI imports, another interface
//! version) become policy errors or load errors, never crashes, and the other policies of the
//! decision still resolve; repeated faults quarantine a plugin in the caller's history; the
//! compile cache is used, and a corrupt entry is rebuilt; the host-maintenance plugin decides
//! exactly like the standard CEL policies it reproduces.
//!
//! The components come from `cargo run -p xtask -- build-plugins` (test.sh runs it first).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use keel_engine::{Action, Ctx, Decision, Engine, Event, History, Mode, Outcome};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dist(name: &str) -> PathBuf {
    let p = repo()
        .join("wasm-plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo run -p xtask -- build-plugins` first",
        p.display()
    );
    p
}

/// One compile cache for the tests (compiling in a debug build is slow).
fn cache() -> Option<PathBuf> {
    Some(std::env::temp_dir().join("keel-plugin-test-cache"))
}

fn now() -> keel_engine::Timestamp {
    "2025-03-01T10:00:00Z".parse().unwrap()
}

fn freeze() -> Event {
    Event::from_json_str(
        r#"{"id": "t:1", "time": "2025-03-01T10:00:00Z", "source": "ingest",
            "kind": "maintenance", "resource": {"id": "vm-1", "name": "vm-1"},
            "maintenance": {"type": "freeze", "status": "scheduled"}}"#,
    )
    .unwrap()
}

/// A set with the hostile plugin in `mode` at priority 100 and a CEL policy that
/// acknowledges freezes at priority 0.
fn hostile_set(mode: &str) -> Result<Engine, keel_engine::LoadError> {
    // A loaded test machine must not turn a slow fault into a deadline one; only the loop is
    // meant to hit the deadline.
    let deadline_ms = if mode == "spin" { 5 } else { 500 };
    let yaml = format!(
        r#"policies:
  - name: hostile
    on: [maintenance]
    plugin:
      path: {path}
      config: {{ mode: {mode} }}
      limits: {{ deadline_ms: {deadline_ms}, memory_mib: 4 }}
    priority: 100
  - name: cel.ack
    on: [maintenance]
    when: event.maintenance.type == "freeze"
    action: acknowledge
    reason: a freeze is harmless
"#,
        path = dist("hostile").display(),
    );
    Engine::builder()
        .plugin_cache_dir(cache())
        .add_source("hostile.yaml", yaml)
        .build()
}

fn decide_full(e: &Engine, h: &History) -> Decision {
    e.decide(
        &freeze(),
        &Ctx::new(now()).with_mode(Mode::Full).with_history(h),
    )
}

fn outcome(d: &Decision, policy: &str) -> Outcome {
    d.trace.outcome(policy).unwrap()
}

/// The hostile plugin faults; the CEL policy still decides.
fn assert_fault(mode: &str, message: &str) {
    let e = hostile_set(mode).unwrap();
    let h = History::new();
    let started = Instant::now();
    let d = decide_full(&e, &h);
    let took = started.elapsed();
    assert_eq!(d.action, Action::Acknowledge, "{mode}: {d:?}");
    assert_eq!(d.policy.as_deref(), Some("cel.ack"), "{mode}");
    assert_eq!(d.errors.len(), 1, "{mode}: {:?}", d.errors);
    assert_eq!(d.errors[0].policy, "hostile");
    assert!(
        d.errors[0].message.contains(message),
        "{mode}: {:?} lacks {message:?}",
        d.errors[0].message
    );
    assert_eq!(outcome(&d, "hostile"), Outcome::Errored);
    assert_eq!(h.plugin_faults("hostile"), 1, "{mode}");
    assert!(took.as_secs() < 5, "{mode} took {took:?}");
}

#[test]
fn an_infinite_loop_hits_the_deadline_twice_and_is_a_policy_error() {
    assert_fault("spin", "ran past its deadline of 5 ms");
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    assert_fault("alloc", "out of memory");
}

#[test]
fn a_panic_is_a_trap() {
    assert_fault("panic", "unreachable");
}

#[test]
fn an_action_that_does_not_exist_is_a_policy_error() {
    assert_fault("bad-action", "action `explode` that does not exist");
}

#[test]
fn params_that_are_not_json_are_a_policy_error() {
    assert_fault("bad-params", "params that are not JSON");
}

#[test]
fn a_deferral_without_due_is_a_policy_error() {
    assert_fault("defer-without-due", "`defer` without a `due` time");
}

#[test]
fn a_well_behaved_plugin_wins_by_priority_and_its_warnings_reach_the_decision() {
    let e = hostile_set("log").unwrap();
    let d = decide_full(&e, &History::new());
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(d.policy.as_deref(), Some("hostile"));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("plugin log warn: hostile plugin says hello")),
        "{:?}",
        d.warnings
    );
    assert!(!d.warnings.iter().any(|w| w.contains("not shown")));
    // Both policies matched; the plugin ranks first.
    let names: Vec<&str> = d.matched.iter().map(|m| m.policy.as_str()).collect();
    assert_eq!(names, ["hostile", "cel.ack"]);
}

#[test]
fn repeated_faults_quarantine_the_plugin_in_the_callers_history() {
    let e = hostile_set("panic").unwrap();
    let mut h = History::new();
    for i in 1..=keel_engine::PLUGIN_QUARANTINE_FAULTS {
        let d = decide_full(&e, &h);
        assert_eq!(outcome(&d, "hostile"), Outcome::Errored);
        assert_eq!(h.plugin_faults("hostile"), i);
        let said = d.warnings.iter().any(|w| w.contains("is quarantined"));
        assert_eq!(said, i == keel_engine::PLUGIN_QUARANTINE_FAULTS, "{d:?}");
    }
    assert_eq!(h.quarantined(), ["hostile"]);
    let d = decide_full(&e, &h);
    assert_eq!(outcome(&d, "hostile"), Outcome::Quarantined);
    assert!(
        d.errors[0].message.contains("quarantined"),
        "{:?}",
        d.errors
    );
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(d.policy.as_deref(), Some("cel.ack"));
    // Fast mode reports it as well.
    let d = e.decide(&freeze(), &Ctx::new(now()).with_history(&h));
    assert!(d.errors.iter().any(|e| e.message.contains("quarantined")));
    // A fresh history (keel test gives each case one) starts clean; so does a release.
    assert!(History::new().quarantined().is_empty());
    h.release_quarantine("hostile");
    assert!(h.quarantined().is_empty());
    assert_eq!(h.plugin_faults("hostile"), 0);
}

#[test]
fn a_clean_call_resets_the_consecutive_fault_count() {
    let bad = hostile_set("panic").unwrap();
    let good = hostile_set("ok").unwrap();
    let h = History::new();
    decide_full(&bad, &h);
    decide_full(&bad, &h);
    assert_eq!(h.plugin_faults("hostile"), 2);
    let d = decide_full(&good, &h);
    assert_eq!(d.policy.as_deref(), Some("hostile"));
    assert_eq!(h.plugin_faults("hostile"), 0);
}

#[test]
fn a_refused_init_is_a_load_error_at_the_config() {
    let err = hostile_set("init-error").unwrap_err();
    let d = &err.diagnostics()[0];
    assert_eq!((d.line(), d.column()), (6, 15), "{err}");
    assert!(
        d.to_string()
            .contains("init refused its config: this plugin refuses to start"),
        "{err}"
    );
}

fn wat_plugin(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let bytes = wat::parse_str(wat).unwrap();
    let p = dir.join(format!("{name}.wasm"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load_one(path: &Path) -> Result<Engine, keel_engine::LoadError> {
    let yaml = format!(
        "policies:\n  - name: p\n    on: [maintenance]\n    plugin: {{ path: {} }}\n",
        path.display()
    );
    Engine::builder()
        .plugin_cache_dir(None)
        .add_source("p.yaml", yaml)
        .build()
}

#[test]
fn a_plugin_importing_wasi_is_refused_with_the_import_named() {
    let dir = tempfile::tempdir().unwrap();
    for (iface, func) in [
        ("wasi:filesystem/preopens@0.2.0", "get-directories"),
        ("wasi:sockets/tcp-create-socket@0.2.0", "create-tcp-socket"),
        ("wasi:clocks/wall-clock@0.2.0", "now"),
    ] {
        let p = wat_plugin(
            dir.path(),
            "wasi",
            &format!(
                r#"(component
                     (import "{iface}" (instance (export "{func}" (func (result u32)))))
                   )"#
            ),
        );
        let err = load_one(&p).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "the plugin imports `{iface}`, which Keel does not grant"
            )),
            "{err}"
        );
        assert!(err.contains("p.yaml:4:"), "{err}");
    }
}

#[test]
fn a_plugin_for_another_interface_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let p = wat_plugin(
        dir.path(),
        "v2",
        r#"(component
             (core module $m (func (export "init")))
             (core instance $i (instantiate $m))
             (type $t (func))
             (func $init (type $t) (canon lift (core func $i "init")))
             (instance $plugin (export "init" (func $init)))
             (export "keel:policy/plugin@2.0.0" (instance $plugin))
           )"#,
    );
    let err = load_one(&p).unwrap_err().to_string();
    assert!(
        err.contains("built for keel:policy@2.0.0; this Keel hosts keel:policy@1.0.0"),
        "{err}"
    );
}

#[test]
fn a_component_without_the_export_or_not_a_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = wat_plugin(dir.path(), "empty", "(component)");
    let err = load_one(&p).unwrap_err().to_string();
    assert!(
        err.contains("does not export `keel:policy/plugin`"),
        "{err}"
    );
    let p = dir.path().join("junk.wasm");
    std::fs::write(&p, b"\0asm junk").unwrap();
    let err = load_one(&p).unwrap_err().to_string();
    assert!(err.contains("not a valid component"), "{err}");
    let err = load_one(&dir.path().join("missing.wasm"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read plugin"), "{err}");
}

#[test]
fn sha256_is_checked() {
    let path = dist("hostile");
    let yaml = |sha: &str| {
        format!(
            "policies:\n  - name: p\n    on: [maintenance]\n    plugin: {{ path: {}, sha256: \"{sha}\", config: {{ mode: ok }} }}\n",
            path.display()
        )
    };
    let wrong = "0".repeat(64);
    let err = Engine::builder()
        .plugin_cache_dir(None)
        .add_source("p.yaml", yaml(&wrong))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("but the policy expects 0000"), "{err}");
    use sha2::Digest;
    let right = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    Engine::builder()
        .plugin_cache_dir(None)
        .add_source("p.yaml", yaml(&right))
        .build()
        .unwrap();
}

#[test]
fn plugin_policies_reject_cel_only_keys_and_bad_limits() {
    let yaml = format!(
        "policies:\n  - name: p\n    on: [maintenance]\n    action: drain\n    plugin: {{ path: {}, limits: {{ deadline_ms: 0, memory_mib: 65, fuel: 1 }} }}\n",
        dist("hostile").display()
    );
    let err = Engine::builder()
        .plugin_cache_dir(None)
        .add_source("p.yaml", yaml)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a plugin policy cannot have `action`"),
        "{err}"
    );
    assert!(
        err.contains("`limits.deadline_ms` must be at least 1"),
        "{err}"
    );
    assert!(
        err.contains("`limits.memory_mib` must be at most 64"),
        "{err}"
    );
    assert!(err.contains("unknown key `fuel`"), "{err}");
}

#[test]
fn a_plugin_must_be_a_map_with_a_path() {
    for (yaml, want) in [
        ("plugin: x.wasm", "`plugin` must be a map"),
        ("plugin: { config: {} }", "`plugin` without `path`"),
        (
            "plugin: { path: x.wasm, config: [1] }",
            "`plugin.config` must be a map",
        ),
        (
            "plugin: { path: x.wasm, sha256: abc }",
            "`plugin.sha256` must be 64 hex digits",
        ),
    ] {
        let err = Engine::builder()
            .plugin_cache_dir(None)
            .add_source(
                "p.yaml",
                format!("policies:\n  - name: p\n    on: [maintenance]\n    {yaml}\n"),
            )
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{yaml}: {err}");
        assert!(err.contains("p.yaml:4:"), "{yaml}: {err}");
    }
}

#[test]
fn compiled_components_are_cached_and_a_corrupt_entry_is_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let yaml = format!(
        "policies:\n  - name: p\n    on: [maintenance]\n    plugin: {{ path: {}, config: {{ mode: ok }} }}\n",
        dist("hostile").display()
    );
    let build = || {
        Engine::builder()
            .plugin_cache_dir(Some(cache.path().to_path_buf()))
            .add_source("p.yaml", yaml.clone())
            .build()
            .unwrap()
    };
    assert_eq!(build().__plugin_cache_use("p"), Some("compiled"));
    assert_eq!(build().__plugin_cache_use("p"), Some("disk"));
    let entries: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.contains("-wasmtime48.0.8-"), "{name}");
    // Flip one byte in the payload: the hash check catches it, and the entry is rebuilt.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    let e = build();
    assert_eq!(e.__plugin_cache_use("p"), Some("rebuilt"));
    let d = e.decide(&freeze(), &Ctx::new(now()));
    assert_eq!(d.action, Action::Acknowledge);
    assert_eq!(build().__plugin_cache_use("p"), Some("disk"));
    // A truncated entry too.
    std::fs::write(&entries[0], b"KEELCWM2").unwrap();
    let e = build();
    assert_eq!(e.__plugin_cache_use("p"), Some("rebuilt"));
    let warnings = e.plugin_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("refused") && warnings[0].contains(&name),
        "{warnings:?}"
    );
    assert_eq!(build().plugin_warnings(), Vec::<String>::new());
    // A cache others can write is not used, and the engine says why.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = build();
    assert_eq!(e.__plugin_cache_use("p"), Some("compiled"));
    let warnings = e.plugin_warnings();
    assert!(
        warnings.len() == 1
            && warnings[0].contains("not used")
            && warnings[0].contains("mode 0775"),
        "{warnings:?}"
    );
}

/// A component that exports `keel:policy/plugin@<major>.0.0`: loading it fails with a message
/// naming that version, so the message tells which compiled component was loaded.
fn versioned_plugin(dir: &Path, major: u32) -> PathBuf {
    wat_plugin(
        dir,
        &format!("v{major}"),
        &format!(
            r#"(component
                 (core module $m (func (export "init")))
                 (core instance $i (instantiate $m))
                 (type $t (func))
                 (func $init (type $t) (canon lift (core func $i "init")))
                 (instance $plugin (export "init" (func $init)))
                 (export "keel:policy/plugin@{major}.0.0" (instance $plugin))
               )"#
        ),
    )
}

/// Loads `path` through the cache in `cache`; the version the loaded component was built
/// for, from the load error.
fn loaded_version(path: &Path, cache: &Path) -> String {
    let yaml = format!(
        "policies:\n  - name: p\n    on: [maintenance]\n    plugin: {{ path: {} }}\n",
        path.display()
    );
    let err = Engine::builder()
        .plugin_cache_dir(Some(cache.to_path_buf()))
        .add_source("p.yaml", yaml)
        .build()
        .unwrap_err()
        .to_string();
    let at = err
        .find("built for keel:policy@")
        .unwrap_or_else(|| panic!("{err}"));
    err[at + "built for keel:policy@".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Two components cached side by side: (the cache, A's entry and its bytes, B's entry and
/// its bytes). A is built for keel:policy@2.0.0 and B for @3.0.0.
struct TwoEntries {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    a: PathBuf,
    a_path: PathBuf,
    b_path: PathBuf,
    b_bytes: Vec<u8>,
    outside: PathBuf,
}

fn two_entries() -> TwoEntries {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("state/plugin-cache");
    let a = versioned_plugin(tmp.path(), 2);
    let b = versioned_plugin(tmp.path(), 3);
    assert_eq!(loaded_version(&a, &cache), "2.0.0");
    let only_a = entries(&cache);
    assert_eq!(only_a.len(), 1, "{only_a:?}");
    assert_eq!(loaded_version(&b, &cache), "3.0.0");
    let both = entries(&cache);
    assert_eq!(both.len(), 2, "{both:?}");
    let b_path = both.iter().find(|p| **p != only_a[0]).unwrap().clone();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    TwoEntries {
        cache,
        a,
        a_path: only_a[0].clone(),
        b_bytes: std::fs::read(&b_path).unwrap(),
        b_path,
        outside,
        _tmp: tmp,
    }
}

#[test]
fn the_cache_and_its_key_are_created_private() {
    let t = two_entries();
    assert_eq!(mode(&t.cache), 0o700);
    let key = t.cache.with_file_name("plugin-cache.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    for e in [&t.a_path, &t.b_path] {
        assert_eq!(mode(e), 0o600, "{}", e.display());
    }
}

#[test]
fn a_forged_cache_entry_is_rebuilt_never_loaded() {
    use sha2::{Digest, Sha256};
    let t = two_entries();
    // 1. B's authentic entry put in A's place: the MAC covers the entry's name.
    std::fs::copy(&t.b_path, &t.a_path).unwrap();
    assert_eq!(loaded_version(&t.a, &t.cache), "2.0.0");
    assert_ne!(std::fs::read(&t.a_path).unwrap(), t.b_bytes, "not rebuilt");
    // 2. B's compiled payload with a valid-looking SHA-256 of it where the MAC goes (what the
    //    cache used to check).
    let payload = &t.b_bytes[40..];
    let mut forged = t.b_bytes[..8].to_vec();
    forged.extend_from_slice(&Sha256::digest(payload));
    forged.extend_from_slice(payload);
    std::fs::write(&t.a_path, &forged).unwrap();
    assert_eq!(loaded_version(&t.a, &t.cache), "2.0.0");
    assert_ne!(std::fs::read(&t.a_path).unwrap(), forged, "not rebuilt");
    // 3. The same with the MAC of another key.
    let key = t.cache.with_file_name("plugin-cache.key");
    std::fs::remove_file(&key).unwrap();
    assert_eq!(loaded_version(&t.a, &t.cache), "2.0.0");
    assert_eq!(
        loaded_version(&t.a, &t.cache),
        "2.0.0",
        "the entry rebuilt under the new key"
    );
    // B's entry, authenticated by the old key, is refused and rebuilt under the new one.
    std::fs::write(&t.b_path, &t.b_bytes).unwrap();
    assert_eq!(
        loaded_version(&versioned_plugin(t.outside.as_path(), 3), &t.cache),
        "3.0.0"
    );
    assert_ne!(std::fs::read(&t.b_path).unwrap(), t.b_bytes, "not rebuilt");
}

#[test]
fn a_symlinked_or_group_writable_cache_entry_is_refused() {
    let t = two_entries();
    // A symbolic link in A's place to an authentic copy of A's own entry: not followed.
    let copy = t.outside.join("a.cwasm");
    std::fs::copy(&t.a_path, &copy).unwrap();
    let copied = std::fs::read(&copy).unwrap();
    std::fs::remove_file(&t.a_path).unwrap();
    std::os::unix::fs::symlink(&copy, &t.a_path).unwrap();
    assert_eq!(loaded_version(&t.a, &t.cache), "2.0.0");
    assert!(
        !std::fs::symlink_metadata(&t.a_path)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still there"
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        copied,
        "the target was touched"
    );
    // A symbolic link to B's entry.
    std::fs::remove_file(&t.a_path).unwrap();
    std::os::unix::fs::symlink(&t.b_path, &t.a_path).unwrap();
    assert_eq!(loaded_version(&t.a, &t.cache), "2.0.0");
    assert!(!std::fs::symlink_metadata(&t.a_path)
        .unwrap()
        .file_type()
        .is_symlink());
    // An authentic entry that group or others could have rewritten.
    for m in [0o620, 0o602] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&t.a_path, std::fs::Permissions::from_mode(m)).unwrap();
        assert_eq!(loaded_version(&t.a, &t.cache), "2.0.0");
        assert_eq!(mode(&t.a_path), 0o600, "mode {m:o}: not rebuilt");
    }
}

#[test]
fn a_cache_directory_or_key_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let a = versioned_plugin(tmp.path(), 2);
    // Group-writable, then world-writable: nothing is read from or written to it.
    let cache = tmp.path().join("shared-cache");
    for m in [0o770, 0o707] {
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(m)).unwrap();
        assert_eq!(loaded_version(&a, &cache), "2.0.0");
        assert_eq!(entries(&cache), Vec::<PathBuf>::new(), "mode {m:o}");
        assert!(!tmp.path().join("shared-cache.key").exists());
    }
    // A symbolic link to a good directory.
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = tmp.path().join("linked");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_eq!(loaded_version(&a, &link), "2.0.0");
    assert_eq!(entries(&real), Vec::<PathBuf>::new());
    // A key others can read (anyone who reads it can forge entries).
    let cache = tmp.path().join("private");
    assert_eq!(loaded_version(&a, &cache), "2.0.0");
    assert_eq!(entries(&cache).len(), 1);
    let key = tmp.path().join("private.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::remove_file(&entries(&cache)[0]).unwrap();
    assert_eq!(loaded_version(&a, &cache), "2.0.0");
    assert_eq!(entries(&cache), Vec::<PathBuf>::new());
}

#[test]
fn one_engine_serves_many_threads() {
    let e = std::sync::Arc::new(hostile_set("ok").unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let d = e.decide(&freeze(), &Ctx::new(now()));
                    assert_eq!(d.policy.as_deref(), Some("hostile"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Every combination of source, type, status, window start and decision time that the
/// host-maintenance policies distinguish, decided by the CEL policies and by the plugin.
#[test]
fn the_host_maintenance_plugin_decides_exactly_like_the_cel_policies() {
    let cel = Engine::from_dir(repo().join("policies/standard/host-maintenance.yaml")).unwrap();
    // The example's policies as shipped, but with a deadline a loaded CI machine cannot miss:
    // this test compares decisions, not speed (the deadline has tests of its own).
    let path = repo().join("wasm-plugins/examples/host-maintenance/policy.yaml");
    let shipped = std::fs::read_to_string(&path).unwrap();
    let relaxed = shipped.replace(
        "      config: { rule: ",
        "      limits: { deadline_ms: 1000 }\n      config: { rule: ",
    );
    let plugins = shipped.matches("    plugin:\n").count();
    assert!(plugins >= 2, "{shipped}");
    assert_eq!(
        relaxed.matches("deadline_ms: 1000").count(),
        plugins,
        "{relaxed}"
    );
    let wasm = Engine::builder()
        .plugin_cache_dir(cache())
        .add_source(path, relaxed)
        .build()
        .unwrap();
    let now = now();
    let mut cases = 0;
    for source in [
        "aws.imds",
        "gcp.metadata",
        "azure.scheduled_events",
        "ingest",
    ] {
        for ty in ["host_maintenance", "reboot", "terminate"] {
            for status in ["scheduled", "started", "completed"] {
                for offset_min in [
                    None,
                    Some(-60),
                    Some(0),
                    Some(29),
                    Some(30),
                    Some(31),
                    Some(24 * 60),
                ] {
                    let nb = offset_min
                        .map(|m| {
                            format!(
                                r#", "not_before": "{}""#,
                                (now + chrono::Duration::minutes(m)).to_rfc3339()
                            )
                        })
                        .unwrap_or_default();
                    let ev = Event::from_json_str(&format!(
                        r#"{{"id": "t:{cases}", "time": "2025-03-01T09:00:00Z", "source": "{source}",
                            "kind": "maintenance", "resource": {{"id": "vm-1"}},
                            "maintenance": {{"type": "{ty}", "status": "{status}"{nb}}}}}"#
                    ))
                    .unwrap();
                    for mode in [Mode::Fast, Mode::Full] {
                        let ctx = Ctx::new(now).with_mode(mode);
                        let (a, b) = (cel.decide(&ev, &ctx), wasm.decide(&ev, &ctx));
                        let what = format!("{source} {ty} {status} {offset_min:?} {mode:?}");
                        assert_eq!(a.action, b.action, "{what}");
                        assert_eq!(a.policy, b.policy, "{what}");
                        assert_eq!(a.reason, b.reason, "{what}");
                        assert_eq!(a.params, b.params, "{what}");
                        assert_eq!(a.due, b.due, "{what}");
                        assert_eq!(a.escalations, b.escalations, "{what}");
                        assert_eq!(a.matched, b.matched, "{what}");
                        assert_eq!(a.errors, b.errors, "{what}");
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 4 * 3 * 3 * 7);
}

#[test]
fn keel_test_runs_the_example_plugins_cases() {
    let report = keel_engine::testing::run(
        &repo().join("wasm-plugins/examples"),
        &keel_engine::testing::TestOptions::default(),
    )
    .unwrap();
    assert!(report.passed(), "{report:?}");
    assert!(report.steps().count() >= 17);
}

/// The hostile plugin in `mode` queries the history with a filter of `entries` entries: the
/// host refuses it, and the plugin says so in its decision's reason.
fn assert_filter_refused(mode: &str, entries: usize) {
    let e = hostile_set(mode).unwrap();
    let mut h = History::new();
    h.record(&freeze());
    let d = decide_full(&e, &h);
    assert_eq!(d.policy.as_deref(), Some("hostile"), "{d:?}");
    let reason = d.reason.as_deref().unwrap_or_default();
    let want = format!("refused: a history filter has at most 16 entries, this one {entries}");
    assert!(reason.contains(&want), "{reason}");
}

/// A history query is compared with every event of its window on the host, where the
/// plugin's deadline does not reach: its filter is refused past 16 entries.
#[test]
fn a_history_filter_wider_than_16_entries_is_refused() {
    assert_filter_refused("wide-filter", 17);
}

/// A filter of 50,000 entries all pointing at one 512 KiB string of the plugin's memory: the
/// host counts the entries before it copies any (copying each, as generated bindings do,
/// asked for 51 GB).
#[test]
fn a_history_filter_aliasing_one_string_is_refused_before_it_is_copied() {
    assert_filter_refused("alias-filter", 50_000);
}

#[test]
fn a_plugin_querying_the_history_without_one_gets_zero_and_a_warning() {
    let e = Engine::builder()
        .plugin_cache_dir(cache())
        .add_path(repo().join("wasm-plugins/examples/error-budget/policy.yaml"))
        .build()
        .unwrap();
    let ev = Event::from_json_str(
        r#"{"id": "t:2", "time": "2025-03-01T10:00:00Z", "source": "ingest",
            "kind": "operation_failure", "resource": {"id": "vm-1", "region": "westeurope"},
            "failure": {"operation": "start", "code": "AllocationFailed", "category": "allocation",
                        "transient": true, "attempt": 1}}"#,
    )
    .unwrap();
    let d = e.decide(&ev, &Ctx::new(now()));
    assert_eq!(d.action, Action::Retry, "{d:?}");
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("no correlation history was given")),
        "{:?}",
        d.warnings
    );
    let mut h = History::new();
    h.record(&ev);
    let d = e.decide(&ev, &Ctx::new(now()).with_history(&h));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

/// The plugin's test file is the standard policy's, with paths one level deeper: the same
/// cases run against both backends (`keel test` runs both files).
#[test]
fn the_host_maintenance_plugin_runs_the_standard_policys_cases_unchanged() {
    let standard =
        std::fs::read_to_string(repo().join("policies/standard/host-maintenance.test.yaml"))
            .unwrap();
    let plugin = std::fs::read_to_string(
        repo().join("wasm-plugins/examples/host-maintenance/host-maintenance.test.yaml"),
    )
    .unwrap();
    assert_eq!(
        plugin,
        standard.replace("../fixtures/", "../../../policies/fixtures/"),
        "regenerate with: sed 's|\\.\\./fixtures/|../../../policies/fixtures/|g' \
         policies/standard/host-maintenance.test.yaml > wasm-plugins/examples/host-maintenance/host-maintenance.test.yaml"
    );
}

/// A plugin's own memory outlives a call on a warm instance; `reset_plugin_instances` (which
/// `keel test` calls before every case) starts it afresh, so cases cannot depend on their order.
#[test]
fn fresh_instances_forget_what_a_plugin_kept_between_calls() {
    let e = hostile_set("stateful").unwrap();
    let h = History::new();
    let first = decide_full(&e, &h);
    assert_eq!(first.action, Action::Drain, "{first:?}");
    let second = decide_full(&e, &h);
    assert_eq!(
        second.action,
        Action::Acknowledge,
        "warm instance kept its state"
    );
    e.reset_plugin_instances();
    let again = decide_full(&e, &h);
    assert_eq!(
        again.action,
        Action::Drain,
        "a fresh instance after the reset: {again:?}"
    );
}

/// `yaml`'s policies, `{hostile}` and `{error_budget}` standing for those components' paths.
fn plugin_set(yaml: &str) -> Engine {
    let yaml = yaml
        .replace("{hostile}", &dist("hostile").display().to_string())
        .replace(
            "{error_budget}",
            &dist("error-budget").display().to_string(),
        );
    Engine::builder()
        .plugin_cache_dir(cache())
        .add_source("set.yaml", yaml)
        .build()
        .unwrap()
}

/// A plugin's action is known only after the call, and it may escalate: fast mode must call
/// a plugin policy even when a higher-ranked policy has already won, or its page is lost.
#[test]
fn fast_mode_calls_a_plugin_policy_ranked_below_the_winner() {
    let e = plugin_set(
        r#"policies:
  - name: cel.ack
    on: [operation_failure]
    action: acknowledge
    priority: 100
  - name: team.error-budget
    on: [operation_failure]
    plugin:
      path: {error_budget}
      config: { budget: 0, window_s: 900, delay_s: 60 }
      limits: { deadline_ms: 1000 }
"#,
    );
    let ev = Event::from_json_str(
        r#"{"id": "t:3", "time": "2025-03-01T10:00:00Z", "source": "ingest",
            "kind": "operation_failure", "resource": {"id": "vm-1", "region": "westeurope"},
            "failure": {"operation": "start", "code": "AllocationFailed", "category": "allocation",
                        "transient": true, "attempt": 1}}"#,
    )
    .unwrap();
    let mut h = History::new();
    h.record(&ev);
    let d = e.decide(&ev, &Ctx::new(now()).with_history(&h));
    assert_eq!(d.action, Action::Acknowledge, "{d:?}");
    assert_eq!(d.policy.as_deref(), Some("cel.ack"));
    assert!(d.not_evaluated.is_empty(), "{:?}", d.not_evaluated);
    let esc: Vec<&str> = d.escalations.iter().map(|x| x.policy.as_str()).collect();
    assert_eq!(esc, ["team.error-budget"], "{d:?}");
}

/// A plugin policy ranks as if it drained, but what it returns may be milder: a policy
/// ranked below it with a stronger action than the plugin's must still be evaluated and
/// win, and `matched` lists the two by what they decided, best first.
#[test]
fn a_plugin_deciding_less_than_it_ranks_yields_to_a_stronger_lower_ranked_policy() {
    let e = plugin_set(
        r#"policies:
  - name: hostile
    on: [maintenance]
    plugin:
      path: {hostile}
      config: { mode: ok }
      limits: { deadline_ms: 1000 }
  - name: cel.defer
    on: [maintenance]
    action: defer
    params: { delay: 10m }
"#,
    );
    let names: Vec<String> = e.policies().map(|p| p.name).collect();
    assert_eq!(names, ["hostile", "cel.defer"], "the plugin ranks first");
    for mode in [Mode::Fast, Mode::Full] {
        let d = e.decide(&freeze(), &Ctx::new(now()).with_mode(mode));
        assert_eq!(d.action, Action::Defer, "{mode:?}: {d:?}");
        assert_eq!(d.policy.as_deref(), Some("cel.defer"), "{mode:?}");
        assert_eq!(d.due, Some(now() + chrono::Duration::minutes(10)));
        let matched: Vec<(&str, Action)> = d
            .matched
            .iter()
            .map(|m| (m.policy.as_str(), m.action))
            .collect();
        assert_eq!(
            matched,
            [
                ("cel.defer", Action::Defer),
                ("hostile", Action::Acknowledge)
            ],
            "{mode:?}"
        );
    }
}

/// The benchmarks' `__plugin_instantiate` must instantiate the plugin policy it names, and
/// refuse a name that is not a plugin policy (else a benchmark measures nothing).
#[test]
fn plugin_instantiate_runs_the_named_plugin_policy_only() {
    let e = hostile_set("ok").unwrap();
    assert_eq!(e.__plugin_instantiate("hostile"), Ok(()));
    let err = e.__plugin_instantiate("cel.ack").unwrap_err();
    assert!(err.contains("no plugin policy `cel.ack`"), "{err}");
    let err = e.__plugin_instantiate("nope").unwrap_err();
    assert!(err.contains("no plugin policy `nope`"), "{err}");
}
