//! The engine as a Wasm module (`wasm-plugins/engine-module`): built for
//! wasm32-unknown-unknown and run in wasmtime as a core module, it must decide every case of the
//! policy library's tests exactly as the native engine does, report bad policies and bad events
//! as error objects, and never trap on garbage.
//!
//! The module is built by a nested `cargo build` into its own target directory under
//! `CARGO_TARGET_TMPDIR` (the outer cargo holds the lock on the main one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use keel_engine::normalize::{self, Input, NormalizerState};
use keel_engine::testing::{self, TestOptions, DEFAULT_CASE_TIME};
use keel_engine::{Ctx, Decision, Engine, Event, History, Mode, Operation, Timestamp};
use serde_json::{json, Value};
use wasmtime::{Instance, Memory, Module, Store, TypedFunc};

fn root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// Prints past libtest's capture, so the figures show in CI logs.
fn report(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "engine_module: {msg}");
}

// ------------------------------------------------------------------------------------------
// The module.

/// Builds the module (once per test binary) and compiles it for wasmtime.
fn compiled() -> &'static (wasmtime::Engine, Module) {
    static MODULE: OnceLock<(wasmtime::Engine, Module)> = OnceLock::new();
    MODULE.get_or_init(|| {
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("engine-module");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let t = Instant::now();
        let out = Command::new(cargo)
            .current_dir(root())
            .args([
                "build",
                "-p",
                "keel-engine-module",
                "--target",
                "wasm32-unknown-unknown",
                "--release",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cannot run cargo");
        assert!(
            out.status.success(),
            "building the engine module failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        report(&format!("built the module in {:.1?}", t.elapsed()));
        let wasm = target.join("wasm32-unknown-unknown/release/keel_engine_module.wasm");
        let t = Instant::now();
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let module = Module::from_file(&engine, &wasm).expect("the module does not compile");
        report(&format!(
            "compiled it ({} KiB) in {:.1?}",
            std::fs::metadata(&wasm).map_or(0, |m| m.len() / 1024),
            t.elapsed()
        ));
        (engine, module)
    })
}

/// The module's requests and answers in the library test, written out for the JavaScript
/// package's parity test (`wasm-plugins/engine-module/js/test/`): what this test proves alike
/// natively and in wasmtime must decide alike in Node too.
static CORPUS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

/// Writes `value` as `target/tmp/<name>` (a parity corpus of the JavaScript package).
fn write_corpus(name: &str, value: &Value) {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
    report(&format!("wrote {}", path.display()));
}

/// One instance of the module.
struct Guest {
    store: Store<()>,
    instance: Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    free: TypedFunc<(i32, i32), ()>,
    load: TypedFunc<(i32, i32), i32>,
    decide: TypedFunc<(i32, i32, i32), i64>,
    unload: TypedFunc<i32, i32>,
    last_error: TypedFunc<(), i64>,
}

impl Guest {
    fn new() -> Guest {
        let (engine, module) = compiled();
        assert_eq!(
            module.imports().count(),
            0,
            "the engine module must import nothing"
        );
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, module, &[]).unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let version: TypedFunc<(), i32> =
            instance.get_typed_func(&mut store, "abi_version").unwrap();
        assert_eq!(version.call(&mut store, ()).unwrap(), 2);
        Guest {
            alloc: instance.get_typed_func(&mut store, "alloc").unwrap(),
            free: instance.get_typed_func(&mut store, "free").unwrap(),
            load: instance.get_typed_func(&mut store, "load").unwrap(),
            decide: instance.get_typed_func(&mut store, "decide").unwrap(),
            unload: instance.get_typed_func(&mut store, "unload").unwrap(),
            last_error: instance.get_typed_func(&mut store, "last_error").unwrap(),
            memory,
            instance,
            store,
        }
    }

    /// The value of an exported `i32` global.
    fn instance_global(&mut self, name: &str) -> usize {
        let g = self.instance.get_global(&mut self.store, name).unwrap();
        g.get(&mut self.store).i32().unwrap() as u32 as usize
    }

    /// Copies `bytes` into a fresh module buffer.
    fn put(&mut self, bytes: &[u8]) -> (i32, i32) {
        let len = i32::try_from(bytes.len()).unwrap();
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .expect("alloc trapped");
        assert!(ptr != 0 || bytes.is_empty(), "alloc failed");
        self.memory
            .write(&mut self.store, ptr as u32 as usize, bytes)
            .unwrap();
        (ptr, len)
    }

    fn release(&mut self, (ptr, len): (i32, i32)) {
        self.free
            .call(&mut self.store, (ptr, len))
            .expect("free trapped");
    }

    /// Reads and frees a packed result.
    fn take(&mut self, packed: i64) -> Vec<u8> {
        let (ptr, len) = ((packed as u64 >> 32) as u32, packed as u64 as u32);
        let mut buf = vec![0; len as usize];
        self.memory
            .read(&self.store, ptr as usize, &mut buf)
            .expect("a packed result outside the memory");
        self.release((ptr as i32, len as i32));
        buf
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "the module returned invalid JSON ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        })
    }

    /// The error of the latest call, if any.
    fn last_error(&mut self) -> Option<Value> {
        let packed = self
            .last_error
            .call(&mut self.store, ())
            .expect("last_error trapped");
        (packed != 0).then(|| Guest::json(&self.take(packed)))
    }

    /// `load`: the handle, or the error object.
    fn load_raw(&mut self, request: &[u8]) -> Result<i32, Value> {
        let buf = self.put(request);
        let handle = self
            .load
            .call(&mut self.store, buf)
            .unwrap_or_else(|t| panic!("load trapped: {t:?}"));
        self.release(buf);
        let err = self.last_error();
        if handle > 0 {
            assert_eq!(err, None, "an error after a successful load");
            Ok(handle)
        } else {
            let err = err.expect("a failed load without last_error");
            assert_eq!(handle, code(&err), "{err}");
            Err(err)
        }
    }

    fn load(&mut self, request: &Value) -> Result<i32, Value> {
        self.load_raw(request.to_string().as_bytes())
    }

    /// `decide`: the Decision or error JSON.
    fn decide_raw(&mut self, handle: i32, request: &[u8]) -> Value {
        let (ptr, len) = self.put(request);
        let packed = self
            .decide
            .call(&mut self.store, (handle, ptr, len))
            .unwrap_or_else(|t| panic!("decide trapped: {t:?}"));
        self.release((ptr, len));
        let out = Guest::json(&self.take(packed));
        let err = self.last_error();
        if out.get("error").is_some() {
            assert_eq!(
                err.as_ref(),
                Some(&out),
                "last_error differs from the output"
            );
        } else {
            assert_eq!(err, None, "an error after a successful decide");
        }
        out
    }

    fn decide(&mut self, handle: i32, request: &Value) -> Value {
        self.decide_raw(handle, request.to_string().as_bytes())
    }

    /// `normalize`: `{"events", "state"}` or the error object.
    fn normalize(&mut self, request: &Value) -> Value {
        let f: TypedFunc<(i32, i32), i64> = self
            .instance
            .get_typed_func(&mut self.store, "normalize")
            .unwrap();
        let buf = self.put(request.to_string().as_bytes());
        let packed = f
            .call(&mut self.store, buf)
            .unwrap_or_else(|t| panic!("normalize trapped: {t:?}"));
        self.release(buf);
        let out = Guest::json(&self.take(packed));
        let err = self.last_error();
        assert_eq!(err.is_some(), out.get("error").is_some(), "{out}");
        out
    }
}

/// The negative code `load` returns for an error object's kind.
fn code(err: &Value) -> i32 {
    match err["error"]["kind"].as_str() {
        Some("invalid_request") => -1,
        Some("invalid_policies") => -2,
        Some("invalid_event") => -3,
        Some("unknown_handle") => -4,
        Some("internal") => -5,
        other => panic!("unknown error kind {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// The policy library's tests, read as `keel test` reads them.

/// Files under `dir` (recursively, sorted, hidden entries skipped) whose names pass `want`.
fn walk(dir: &Path, want: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, want, out);
        } else if want(&name) {
            out.push(p);
        }
    }
}

/// The `load` request for the policy set at `set` (a directory or a file).
fn load_request(set: &Path) -> Value {
    let mut files = Vec::new();
    walk(set, &keel_engine::is_policy_file, &mut files);
    let root = std::fs::canonicalize(root()).unwrap();
    let files: Vec<Value> = files
        .iter()
        .map(|f| {
            let path = std::fs::canonicalize(f).unwrap();
            let name = path.strip_prefix(&root).unwrap_or(&path);
            json!({"name": name.display().to_string(), "yaml": std::fs::read_to_string(f).unwrap()})
        })
        .collect();
    assert!(!files.is_empty(), "no policy files in {}", set.display());
    json!({ "files": files })
}

fn time(v: &Value) -> Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

/// A step offset: `0`, `30`, `30s`, `15m`, `2h`, `1h30m`, `1d`.
fn offset(v: &Value) -> i64 {
    let s = match v {
        Value::Number(n) => return n.as_i64().unwrap(),
        Value::String(s) => s.trim().trim_start_matches('+'),
        other => panic!("bad offset {other}"),
    };
    let (mut total, mut num) = (0, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => panic!("bad offset {s}"),
        };
        total += num.parse::<i64>().unwrap() * unit;
        num.clear();
    }
    if !num.is_empty() {
        total += num.parse::<i64>().unwrap();
    }
    total
}

/// A partial case event completed as the test runner does: `time` defaults to `at`, `source`
/// to `ingest`, `kind` to the section present, `id` to a content hash.
fn build_event(mut v: Value, at: Option<Timestamp>) -> Event {
    use sha2::{Digest, Sha256};
    let obj = v.as_object_mut().unwrap();
    if !obj.contains_key("time") {
        let t = at.unwrap_or_else(|| DEFAULT_CASE_TIME.parse().unwrap());
        obj.insert("time".into(), Value::String(t.to_rfc3339()));
    }
    obj.entry("source")
        .or_insert_with(|| Value::String("ingest".into()));
    if !obj.contains_key("kind") {
        let kind = ["maintenance", "health", "failure"]
            .into_iter()
            .find(|k| obj.contains_key(*k))
            .unwrap();
        let kind = if kind == "failure" {
            "operation_failure"
        } else {
            kind
        };
        obj.insert("kind".into(), Value::String(kind.into()));
    }
    if !obj.contains_key("id") {
        let digest = Sha256::digest(v.to_string().as_bytes());
        let hex = hex::encode(&digest[..8]);
        v["id"] = Value::String(format!("test:{hex}"));
    }
    serde_json::from_value(v).unwrap()
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// A `from:` source normalized natively, as the test runner does.
fn normalized(from: &Value, dir: &Path, at: Timestamp, state: &mut NormalizerState) -> Vec<Event> {
    let name = from["normalizer"].as_str().unwrap();
    let read = |k: &str| {
        from.get(k)
            .map(|f| std::fs::read(dir.join(f.as_str().unwrap())).unwrap())
    };
    let observed = from.get("observed_at").map_or(at, time);
    let me = from.get("self").map(|v| v.as_str().unwrap().to_string());
    let op = from
        .get("operation")
        .map(|v| Operation::parse(v.as_str().unwrap()).unwrap());
    let (previous, payload) = (read("previous"), read("file").unwrap());
    let input = |bytes| {
        let mut i = Input::new(bytes, observed);
        if let Some(me) = &me {
            i = i.self_name(me);
        }
        if let Some(op) = op {
            i = i.operation(op);
        }
        i
    };
    if let Some(prev) = &previous {
        normalize::normalize(name, &input(prev), state).unwrap();
    }
    let mut events = normalize::normalize(name, &input(&payload), state).unwrap();
    if let Some(with) = from.get("with") {
        events = events
            .into_iter()
            .map(|ev| {
                let mut v = serde_json::to_value(&ev).unwrap();
                merge(&mut v, with);
                serde_json::from_value(v).unwrap()
            })
            .collect();
    }
    if let Some(i) = from.get("index") {
        return vec![events[i.as_u64().unwrap() as usize].clone()];
    }
    if me.is_some() {
        events.retain(|e| e.resource.is_self == Some(true));
    }
    events
}

/// Decides `ev` natively and in the module (full mode, `now`, the history so far, as a
/// `History` and as the module's log) and compares the decisions as JSON.
#[allow(clippy::too_many_arguments)]
fn compare(
    guest: &mut Guest,
    handle: i32,
    native: &Engine,
    ev: &Event,
    now: Timestamp,
    history: (&History, &[Value]),
    record: bool,
    what: &str,
) -> Decision {
    let ctx = Ctx::new(now).with_mode(Mode::Full);
    let mut h = history.0.clone();
    if record {
        h.record_at(ev, now);
    }
    let want = native.decide(ev, &ctx.with_history(&h));
    let request = json!({
        "event": ev,
        "ctx": {"now": now.to_rfc3339(), "mode": "full"},
        "history": history.1,
        "record": record,
    });
    let got = guest.decide(handle, &request);
    CORPUS
        .lock()
        .unwrap()
        .push(json!({"set": handle, "what": what, "request": request, "decision": got}));
    assert_eq!(
        got,
        serde_json::to_value(&want).unwrap(),
        "{what}: the module decided differently"
    );
    want
}

#[test]
fn decides_every_library_case_like_the_native_engine() {
    let policies = root().join("policies");
    let mut tests = Vec::new();
    walk(&policies, &testing::is_test_file, &mut tests);
    assert!(!tests.is_empty());
    // What `keel test` decided, to prove the cases below are the ones it runs.
    let runner = testing::run(&policies, &TestOptions::default()).unwrap();
    let mut expected: BTreeMap<(PathBuf, String), Vec<Decision>> = BTreeMap::new();
    for f in &runner.files {
        for c in &f.cases {
            let all = c.steps.iter().flat_map(|s| s.decisions.iter().cloned());
            expected.insert((f.file.clone(), c.name.clone()), all.collect());
        }
    }

    let mut guest = Guest::new();
    let mut sets: BTreeMap<PathBuf, (i32, Engine)> = BTreeMap::new();
    // Cases compared: single-event ones and sequences; decisions compared.
    let (mut single, mut sequences, mut decisions, mut edges) = (0, 0, 0, 0);
    for test in &tests {
        let doc = keel_engine::yaml::load(test, &std::fs::read(test).unwrap())
            .unwrap()
            .value;
        let dir = test.parent().unwrap();
        let set = doc
            .get("policies")
            .map_or(dir.to_path_buf(), |p| dir.join(p.as_str().unwrap()));
        let key = std::fs::canonicalize(&set).unwrap();
        if !sets.contains_key(&key) {
            let t = Instant::now();
            let handle = guest
                .load(&load_request(&set))
                .unwrap_or_else(|e| panic!("{} does not load in the module: {e}", set.display()));
            let ms = t.elapsed().as_millis();
            let native = Engine::builder().add_path(&set).build().unwrap();
            report(&format!(
                "loaded {} ({} policies) in the module in {ms} ms",
                set.display(),
                native.len()
            ));
            sets.insert(key.clone(), (handle, native));
        }
        let (handle, native) = &sets[&key];
        for case in doc["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let what = format!("{}::{name}", test.display());
            let mut got = Vec::new();
            if let Some(steps) = case.get("steps") {
                // A sequence: the history carries from step to step, replayed into the
                // module as a log of records and decisions.
                let start = time(&case["start"]);
                let (mut history, mut log) = (History::new(), Vec::new());
                let mut state = NormalizerState::default();
                let mut step_events: Vec<(String, Vec<Event>)> = Vec::new();
                for (i, step) in steps.as_array().unwrap().iter().enumerate() {
                    let at = start + chrono::Duration::seconds(offset(&step["at"]));
                    let step_name = step
                        .get("name")
                        .map_or(format!("step {}", i + 1), |v| v.as_str().unwrap().into());
                    let (events, record) = if let Some(ev) = step.get("event") {
                        (vec![build_event(ev.clone(), Some(at))], true)
                    } else if let Some(from) = step.get("from") {
                        (normalized(from, dir, at, &mut state), true)
                    } else if let Some(target) = step.get("redecide") {
                        let target = target.as_str().unwrap();
                        let earlier = step_events
                            .iter()
                            .position(|(n, _)| n == target)
                            .or_else(|| target.parse::<usize>().ok().map(|i| i - 1))
                            .unwrap();
                        (step_events[earlier].1.clone(), false)
                    } else {
                        // A step that only asserts what the gate did (budgets: `released`,
                        // `escalated`) decides nothing.
                        continue;
                    };
                    for ev in &events {
                        let d = compare(
                            &mut guest,
                            *handle,
                            native,
                            ev,
                            at,
                            (&history, &log),
                            record,
                            &format!("{what}::{step_name}"),
                        );
                        if record {
                            history.record_at(ev, at);
                            log.push(serde_json::to_value(ev).unwrap());
                        }
                        history.record_decision_at(ev, &d, at);
                        log.push(json!({"event": ev, "decision": d}));
                        got.push(d);
                    }
                    step_events.push((step_name, if record { events } else { Vec::new() }));
                }
                sequences += 1;
            } else {
                let now = case.get("now").map(time);
                let events = match (case.get("event"), case.get("from")) {
                    (Some(ev), None) => vec![build_event(ev.clone(), now)],
                    (None, Some(from)) => {
                        let at = now.unwrap_or_else(|| DEFAULT_CASE_TIME.parse().unwrap());
                        normalized(from, dir, at, &mut NormalizerState::default())
                    }
                    _ => panic!("{what}: neither `event` nor `from`"),
                };
                for ev in &events {
                    let at = now.unwrap_or(match case.get("event") {
                        Some(_) => ev.time,
                        None => DEFAULT_CASE_TIME.parse().unwrap(),
                    });
                    let d = compare(
                        &mut guest,
                        *handle,
                        native,
                        ev,
                        at,
                        (&History::new(), &[]),
                        true,
                        &what,
                    );
                    // Without a history too: both warn that history queries count 0.
                    let bare = guest.decide(
                        *handle,
                        &json!({"event": ev, "ctx": {"now": at.to_rfc3339(), "mode": "full"}}),
                    );
                    let want = native.decide(ev, &Ctx::new(at).with_mode(Mode::Full));
                    assert_eq!(
                        bare,
                        serde_json::to_value(&want).unwrap(),
                        "{what} (no history)"
                    );
                    // At the ends of time (deadline arithmetic overflows there): still alike,
                    // and no trap.
                    for edge in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
                        let edge: Timestamp = edge.parse().unwrap();
                        let mut moved = ev.clone();
                        moved.time = edge;
                        for (ev, now) in [(ev, edge), (&moved, edge), (&moved, at)] {
                            let what = format!("{what} at {now} with the event at {}", ev.time);
                            compare(
                                &mut guest,
                                *handle,
                                native,
                                ev,
                                now,
                                (&History::new(), &[]),
                                true,
                                &what,
                            );
                            edges += 1;
                        }
                    }
                    got.push(d);
                }
                single += 1;
            }
            decisions += got.len();
            assert_eq!(
                Some(&got),
                expected.get(&(test.clone(), name.to_string())),
                "{what}: these are not the decisions `keel test` makes"
            );
        }
    }
    report(&format!(
        "{single} single-event cases and {sequences} sequences of {} test files ({decisions} decisions, and {edges} at the ends of time) decided alike natively and in the module",
        tests.len(),
    ));
    assert_eq!(
        single + sequences,
        expected.len(),
        "some case of `keel test` was not compared"
    );
    assert!(single >= 60, "only {single} single-event cases compared");
    let sets: serde_json::Map<String, Value> = sets
        .iter()
        .map(|(path, (handle, _))| (handle.to_string(), load_request(path)))
        .collect();
    let cases = std::mem::take(&mut *CORPUS.lock().unwrap());
    write_corpus(
        "engine-module-decide-corpus.json",
        &json!({"sets": sets, "cases": cases}),
    );
}

#[path = "../../engine/tests/common/owners.rs"]
mod owners;

#[test]
fn normalizes_every_vendor_fixture_like_the_native_engine() {
    let dir = root().join("policies/fixtures");
    let cases: BTreeMap<String, Value> =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let mut guest = Guest::new();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".md") && n != "cases.json" && dir.join(n).is_file())
        .collect();
    names.sort();
    let (mut events, mut errors, mut corpus) = (0, 0, Vec::new());
    for name in &names {
        let Some(source) = owners::owner(name) else {
            panic!("{name}: no normalizer owns this fixture");
        };
        let opts = cases.get(name).cloned().unwrap_or(json!({}));
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let observed = opts
            .get("observed_at")
            .map_or(DEFAULT_OBSERVED_AT.parse().unwrap(), time);
        let mut input = Input::new(&bytes, observed);
        let mut request = json!({
            "source": source,
            "payload": text,
            "observed_at": observed.to_rfc3339(),
        });
        if let Some(me) = opts.get("self").and_then(Value::as_str) {
            input = input.self_name(me);
            request["self_name"] = json!(me);
        }
        if let Some(op) = opts.get("operation").and_then(Value::as_str) {
            input = input.operation(Operation::parse(op).unwrap());
            request["operation"] = json!(op);
        }
        if let Some(status) = opts.get("http_status").and_then(Value::as_u64) {
            input = input.http_status(u16::try_from(status).unwrap());
            request["http_status"] = json!(status);
        }
        let got = guest.normalize(&request);
        let mut state = NormalizerState::default();
        match normalize::normalize(source, &input, &mut state) {
            Ok(want) => {
                let want = json!({"events": want, "state": state});
                assert_eq!(got, want, "{name}: the module normalized it differently");
                events += want["events"].as_array().unwrap().len();
            }
            Err(e) => {
                assert_eq!(
                    got["error"]["message"],
                    json!(e.to_string()),
                    "{name}: the module failed differently"
                );
                assert_eq!(got["error"]["path"], "payload", "{name}");
                errors += 1;
            }
        }
        corpus.push(json!({"what": name, "request": request, "result": got}));
        // The same payload as parsed JSON (where it is JSON): the same result.
        if let Ok(parsed) = serde_json::from_str::<Value>(&text) {
            if !parsed.is_string() {
                let mut as_json = request.clone();
                as_json["payload"] = parsed;
                let again = guest.normalize(&as_json);
                if got.get("error").is_none() {
                    assert_eq!(again, got, "{name}: given as JSON, normalized differently");
                }
            }
        }
    }
    report(&format!(
        "{} vendor fixtures normalized alike natively and in the module ({events} events, {errors} refused)",
        names.len()
    ));
    assert!(events >= 40, "only {events} events");
    // State carries between calls: a Scheduled Events document, then an empty one, gives the
    // vanished event as completed in both.
    let doc = std::fs::read_to_string(
        dir.join("azure-scheduled-events-freeze-live-migration-scheduled.json"),
    )
    .unwrap();
    let first = guest.normalize(&json!({"source": "azure.scheduled_events", "payload": doc,
        "observed_at": "2026-04-11T22:11:58Z"}));
    let empty = r#"{"DocumentIncarnation": 99, "Events": []}"#;
    let second = guest.normalize(
        &json!({"source": "azure.scheduled_events", "payload": empty,
        "observed_at": "2026-04-11T23:00:00Z", "state": first["state"]}),
    );
    let mut state: NormalizerState = serde_json::from_value(first["state"].clone()).unwrap();
    let want = normalize::normalize(
        "azure.scheduled_events",
        &Input::new(empty.as_bytes(), "2026-04-11T23:00:00Z".parse().unwrap()),
        &mut state,
    )
    .unwrap();
    assert!(!want.is_empty(), "the vanished event is reported");
    assert_eq!(second["events"], json!(want));
    assert_eq!(second["state"], json!(state));
    // Errors: an unknown normalizer is the request's fault, with a suggestion.
    let unknown = guest.normalize(&json!({"source": "azure.armm", "payload": "{}",
        "observed_at": "2026-01-01T00:00:00Z"}));
    assert_eq!(unknown["error"]["kind"], "invalid_request", "{unknown}");
    assert_eq!(unknown["error"]["path"], "source");
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did you mean `azure.arm`"));
    let broken = guest.normalize(
        &json!({"source": "azure.arm", "payload": "{\n  \"error\": ",
        "observed_at": "2026-01-01T00:00:00Z"}),
    );
    assert_eq!(broken["error"]["kind"], "invalid_payload", "{broken}");
    assert_eq!(broken["error"]["line"], 2, "{broken}");
    write_corpus(
        "engine-module-normalize-corpus.json",
        &json!({"cases": corpus}),
    );
}

/// The observation time of a fixture `cases.json` does not date (as the snapshot test).
const DEFAULT_OBSERVED_AT: &str = "2026-01-01T00:00:00Z";

// ------------------------------------------------------------------------------------------
// Errors.

const AGENT_POLICY: &str = "policies:\n  - name: agent.retry\n    on: [operation_failure]\n    when: event.failure.category == \"vm_agent\" && event.failure.attempt < 2\n    action: retry_without_agent\n    priority: 100\n    reason: no agent\n";

fn agent_event() -> Value {
    json!({
        "id": "azure.arm:op-1", "time": "2021-10-13T14:05:00Z",
        "source": "azure.arm", "kind": "operation_failure",
        "resource": { "name": "web-1", "os": "windows", "region": "eastus2" },
        "failure": { "operation": "create", "code": "ArtifactVersionNotFound",
                     "category": "vm_agent", "transient": false, "attempt": 1 }
    })
}

fn agent_set(guest: &mut Guest) -> i32 {
    guest
        .load(&json!({"files": [{"name": "agent.yaml", "yaml": AGENT_POLICY}]}))
        .unwrap()
}

#[test]
fn an_invalid_policy_set_is_an_error_with_positions() {
    let mut guest = Guest::new();
    let bad = AGENT_POLICY.replace("event.failure.category", "event.failure.categry");
    let err = guest
        .load(&json!({"files": [
            {"name": "good.yaml", "yaml": "policies: []\n"},
            {"name": "policies/bad.yaml", "yaml": bad},
        ]}))
        .unwrap_err();
    assert_eq!(err["error"]["kind"], "invalid_policies", "{err}");
    let diag = &err["error"]["diagnostics"][0];
    assert_eq!(diag["file"], "policies/bad.yaml", "{err}");
    assert_eq!(diag["line"], 4, "{err}");
    let location = diag["location"].as_str().unwrap();
    assert_eq!(location, format!("policies/bad.yaml:4:{}", diag["column"]));
    assert!(
        diag["message"].as_str().unwrap().contains("categry"),
        "{err}"
    );
    assert_eq!(diag["help"], "did you mean `category`?", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("policies/bad.yaml:4:"), "{err}");
    // The same problems as the native engine, in the same order.
    let native = Engine::builder()
        .add_source("good.yaml", "policies: []\n")
        .add_source("policies/bad.yaml", bad)
        .build()
        .unwrap_err();
    assert_eq!(message, native.to_string());

    // Request-level problems of `load`.
    for (request, kind) in [
        (json!({"files": []}), "invalid_policies"),
        (
            json!({"files": [{"name": "a.yaml", "yaml": AGENT_POLICY}], "default_action": "escalate"}),
            "invalid_policies",
        ),
        (
            json!({"files": [{"name": "a.yaml", "yaml": AGENT_POLICY}], "default_action": "reboot"}),
            "invalid_request",
        ),
        (json!({"files": [{"name": "a.yaml"}]}), "invalid_request"),
        (json!({"file": []}), "invalid_request"),
        (json!([]), "invalid_request"),
    ] {
        let err = guest.load(&request).unwrap_err();
        assert_eq!(err["error"]["kind"], kind, "{request}: {err}");
    }
    // A good set with a default action loads.
    let h = guest
        .load(&json!({"files": [{"name": "a.yaml", "yaml": AGENT_POLICY}], "default_action": "acknowledge"}))
        .unwrap();
    let mut ev = agent_event();
    ev["failure"]["category"] = json!("quota");
    let d = guest.decide(
        h,
        &json!({"event": ev, "ctx": {"now": "2021-10-13T14:05:03Z"}}),
    );
    assert_eq!(d["action"], "acknowledge", "{d}");
}

#[test]
fn a_malformed_event_is_an_error() {
    let mut guest = Guest::new();
    let h = agent_set(&mut guest);
    let ctx = json!({"now": "2021-10-13T14:05:03Z"});
    let ok = guest.decide(h, &json!({"event": agent_event(), "ctx": ctx}));
    assert_eq!(ok["action"], "retry_without_agent", "{ok}");

    // An unknown event kind, on the second line of the request.
    let request = format!(
        "{{\"ctx\": {ctx},\n\"event\": {}}}",
        agent_event()
            .to_string()
            .replace("operation_failure", "meltdown")
    );
    let err = guest.decide_raw(h, request.as_bytes());
    assert_eq!(err["error"]["kind"], "invalid_event", "{err}");
    assert_eq!(err["error"]["path"], "event", "{err}");
    assert_eq!(err["error"]["line"], 2, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("meltdown"),
        "{err}"
    );

    let mut cases = Vec::new();
    let mut ev = agent_event();
    ev.as_object_mut().unwrap().remove("id");
    cases.push((json!({"event": ev, "ctx": ctx}), "invalid_event", "event"));
    let mut ev = agent_event();
    ev["failure"]["attempt"] = json!("one");
    cases.push((json!({"event": ev, "ctx": ctx}), "invalid_event", "event"));
    let mut ev = agent_event();
    ev["colour"] = json!("red");
    cases.push((json!({"event": ev, "ctx": ctx}), "invalid_event", "event"));
    cases.push((json!({"event": 7, "ctx": ctx}), "invalid_event", "event"));
    cases.push((
        json!({"event": agent_event(), "ctx": ctx, "history": [agent_event(), {"id": 1}]}),
        "invalid_event",
        "history[1]",
    ));
    cases.push((
        json!({"event": agent_event(), "ctx": ctx, "history": [{"event": agent_event(), "decision": {"action": "drain"}}]}),
        "invalid_request",
        "history[0].decision",
    ));
    for (request, kind, path) in cases {
        let err = guest.decide(h, &request);
        assert_eq!(err["error"]["kind"], kind, "{request}: {err}");
        assert_eq!(err["error"]["path"], path, "{request}: {err}");
    }
    for request in [
        json!({"event": agent_event()}),
        json!({"event": agent_event(), "ctx": {"now": "yesterday"}}),
        json!({"event": agent_event(), "ctx": {"now": "2021-10-13T14:05:03Z", "mode": "slow"}}),
        json!({"event": agent_event(), "ctx": ctx, "history": {}}),
    ] {
        let err = guest.decide(h, &request);
        assert_eq!(err["error"]["kind"], "invalid_request", "{request}: {err}");
    }
    // An unknown handle, and unload.
    let err = guest.decide(h + 100, &json!({"event": agent_event(), "ctx": ctx}));
    assert_eq!(err["error"]["kind"], "unknown_handle", "{err}");
    assert_eq!(guest.unload.call(&mut guest.store, h).unwrap(), 0);
    assert_eq!(guest.last_error(), None);
    assert_eq!(guest.unload.call(&mut guest.store, h).unwrap(), -4);
    assert_eq!(
        guest.last_error().unwrap()["error"]["kind"],
        "unknown_handle"
    );
    let err = guest.decide(h, &json!({"event": agent_event(), "ctx": ctx}));
    assert_eq!(err["error"]["kind"], "unknown_handle", "{err}");
}

/// A deterministic generator for garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn garbage_never_traps_the_module() {
    let mut guest = Guest::new();
    let h = guest
        .load(&load_request(&root().join("policies/standard")))
        .unwrap();
    let good = json!({"event": agent_event(), "ctx": {"now": "2021-10-13T14:05:03Z", "mode": "full"}, "history": [agent_event()]})
        .to_string()
        .into_bytes();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\xff\xfe\x00".to_vec(),
        b"null".to_vec(),
        b"{\"event\": {\"kind\": \"health\"}}".to_vec(),
        "[".repeat(100_000).into_bytes(),
        format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000)).into_bytes(),
        format!("{{\"files\": [{{\"name\": \"x\", \"yaml\": \"{}\"}}]}}", "[".repeat(10_000)).into_bytes(),
        format!("{{\"files\": [{{\"name\": \"x\", \"yaml\": \"policies:\\n - name: d\\n   on: [health]\\n   when: {}true{}\\n   action: drain\\n\"}}]}}", "(".repeat(500), ")".repeat(500)).into_bytes(),
        b"{\"files\": [{\"name\": \"x\", \"yaml\": \"a: &a [*a, *a, *a]\"}]}".to_vec(),
    ];
    // Every prefix of a good request, and random byte flips in it.
    for cut in (0..good.len()).step_by(7) {
        inputs.push(good[..cut].to_vec());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let mut bad = good.clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(bad.len());
            bad[i] = rng.next() as u8;
        }
        inputs.push(bad);
    }
    for _ in 0..50 {
        let len = rng.below(300);
        inputs.push((0..len).map(|_| rng.next() as u8).collect());
    }
    // Values at the edges of what the types hold.
    for (path, value) in [
        ("/time", json!("+262142-12-31T23:59:59Z")),
        ("/time", json!("-262143-01-01T00:00:00Z")),
        ("/time", json!("9999-12-31T23:59:59Z")),
        ("/time", json!("0000-01-01T00:00:00Z")),
        ("/failure/attempt", json!(i64::MAX)),
        ("/failure/attempt", json!(i64::MIN)),
        ("/failure/attempt", json!(1e300)),
        ("/failure/retry_after_s", json!(i64::MAX)),
        ("/resource/name", json!("\u{0}\u{202e}".repeat(1000))),
    ] {
        let mut ev = agent_event();
        ev["failure"]["retry_after_s"] = json!(0);
        *ev.pointer_mut(path).unwrap_or_else(|| panic!("{path}")) = value;
        for now in [
            "2021-10-13T14:05:03Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "+262142-12-31T23:59:59Z",
        ] {
            inputs.push(
                json!({"event": ev, "ctx": {"now": now, "mode": "full"}, "history": [ev, agent_event()]})
                    .to_string()
                    .into_bytes(),
            );
        }
    }
    let mut decisions = 0;
    for input in &inputs {
        let out = guest.decide_raw(h, input);
        if out.get("error").is_none() {
            decisions += 1;
            serde_json::from_value::<Decision>(out).unwrap();
        }
        if let Err(e) = guest.load_raw(input) {
            assert!(e["error"]["message"].is_string(), "{e}");
        }
    }
    report(&format!(
        "{} garbage inputs, none trapped ({decisions} still decided)",
        inputs.len()
    ));
    // Buffers the module does not own.
    for (ptr, len) in [(0, 10), (-16, 100), (i32::MAX, 2), (0x10_0000, i32::MAX)] {
        let code = guest.load.call(&mut guest.store, (ptr, len)).unwrap();
        assert_eq!(code, -1);
        let packed = guest.decide.call(&mut guest.store, (h, ptr, len)).unwrap();
        let out = Guest::json(&guest.take(packed));
        assert_eq!(out["error"]["kind"], "invalid_request", "{out}");
    }
    assert_eq!(guest.alloc.call(&mut guest.store, -1).unwrap(), 0);
    guest.free.call(&mut guest.store, (0, 0)).unwrap();
    // Still working.
    let d = guest.decide_raw(h, &good);
    assert_eq!(d["action"], "retry_without_agent", "{d}");

    // Nothing leaks: with every result freed, the memory stops growing.
    let standard = load_request(&root().join("policies/standard"));
    let cycle = |guest: &mut Guest| {
        let h = guest.load(&standard).unwrap();
        for input in inputs.iter().step_by(10).chain([&good]) {
            guest.decide_raw(h, input);
        }
        assert_eq!(guest.unload.call(&mut guest.store, h).unwrap(), 0);
    };
    cycle(&mut guest);
    let before = guest.memory.data_size(&guest.store);
    for _ in 0..5 {
        cycle(&mut guest);
    }
    let after = guest.memory.data_size(&guest.store);
    report(&format!(
        "memory after one load/decide/unload cycle {} KiB, after five more {} KiB",
        before / 1024,
        after / 1024
    ));
    assert_eq!(before, after, "the module's memory grows: something leaks");
}

/// rustc's default stack for wasm32 (`-z stack-size=1048576`), which the module keeps. The
/// targets link with `--stack-first`: the stack is `[0, STACK)` of linear memory, growing down
/// from its top, so an overflow traps instead of overwriting data.
const STACK: usize = 1 << 20;

impl Guest {
    /// How many bytes of the stack have ever been written (fresh memory is zero there).
    fn stack_used(&self) -> usize {
        let low = self.memory.data(&self.store)[..STACK]
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(STACK);
        STACK - low
    }
}

#[test]
fn the_deepest_accepted_expression_loads_in_the_module() {
    // The `cel` parser recurses per bracket level (the native engine loads on a 64 MiB thread
    // for that); the module loads in place, so its stack must hold the deepest nesting the
    // engine accepts (24 levels), in every bracket kind, with room to spare.
    let depth = 24;
    let parens = format!(
        "{}event.maintenance.duration_s < 10{}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let lists = format!(
        "size({}1{}) == 1 && event.maintenance.duration_s < 10",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    );
    let maps = format!(
        "size({}1{}) == 1 && event.maintenance.duration_s < 10",
        "{\"k\": ".repeat(depth - 1),
        "}".repeat(depth - 1)
    );
    let chain = vec!["event.maintenance.duration_s < 10"; 40].join(" && ");
    let mut guest = Guest::new();
    let data_end = guest.instance_global("__data_end");
    assert!(
        data_end >= STACK,
        "the data is not above a {STACK}-byte stack"
    );
    assert_eq!(guest.stack_used(), 0);
    guest
        .load(&load_request(&root().join("policies/standard")))
        .unwrap();
    let standard = guest.stack_used();
    for (i, when) in [parens, lists, maps, chain].into_iter().enumerate() {
        let yaml = format!(
            "policies:\n  - name: deep\n    on: [maintenance]\n    when: '{when}'\n    action: acknowledge\n"
        );
        // The native engine accepts it (else the test proves nothing).
        let native = Engine::builder()
            .add_source("deep.yaml", yaml.as_str())
            .build()
            .unwrap_or_else(|e| panic!("expression {i} is not accepted natively: {e}"));
        let h = guest
            .load(&json!({"files": [{"name": "deep.yaml", "yaml": yaml}]}))
            .unwrap();
        let ev = json!({"id": "e", "time": "2026-01-01T00:00:00Z", "source": "ingest",
                        "kind": "maintenance", "resource": {},
                        "maintenance": {"type": "freeze", "status": "scheduled", "duration_s": 5}});
        let d = guest.decide(
            h,
            &json!({"event": ev, "ctx": {"now": "2026-01-01T00:00:00Z", "mode": "full"}}),
        );
        let event: Event = serde_json::from_value(ev).unwrap();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let want = native.decide(&event, &Ctx::new(now).with_mode(Mode::Full));
        assert_eq!(d, serde_json::to_value(&want).unwrap());
        assert_eq!(d["action"], "acknowledge", "expression {i}: {d}");
    }
    let deepest = guest.stack_used();
    report(&format!(
        "stack used: {standard} bytes to load policies/standard, {deepest} for the deepest expressions (of {STACK})"
    ));
    assert!(
        deepest < STACK / 4,
        "the deepest expressions use {deepest} bytes of the module's {STACK}-byte stack"
    );
}
