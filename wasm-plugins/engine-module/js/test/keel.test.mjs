// The JavaScript package over the engine module, with Node's own test runner:
//   node --test wasm-plugins/engine-module/js/test/*.test.mjs
// Needs the module beside keel.js (`npm run build`, or `node build.mjs`). The parity tests read
// the corpora `cargo test -p keel-host --test engine_module` writes under target/tmp/.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { History, Keel, KeelError, keel, load, normalize } from "../keel.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..", "..", "..");
const targetTmp = join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "tmp");

/** Every policy file under `dir`, as `load` takes them (names relative to the repository). */
function policyFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...policyFiles(p));
    else if (/\.ya?ml$/.test(name) && !/\.test\.ya?ml$/.test(name)) {
      out.push({ name: relative(root, p), yaml: readFileSync(p, "utf8") });
    }
  }
  return out;
}

const fixture = (name) => readFileSync(join(root, "policies", "fixtures", name), "utf8");

function corpus(name) {
  const path = join(targetTmp, name);
  assert.ok(
    existsSync(path),
    `${path} is missing: run \`cargo test -p keel-host --test engine_module\` first (it writes the parity corpora)`,
  );
  return JSON.parse(readFileSync(path, "utf8"));
}

test("the 2021-10-13 ARM error for a Windows VM: retry without the agent, by the standard library", async () => {
  const policies = await load(policyFiles(join(root, "policies", "standard")));
  const { events } = await normalize("azure.arm", fixture("arm-error-artifact-version-not-found-2021-10-13.json"), {
    observedAt: "2021-10-13T14:05:00Z",
    operation: "create",
  });
  assert.equal(events.length, 1);
  const event = { ...events[0], resource: { ...events[0].resource, id: "web-1", name: "web-1", os: "windows", region: "eastus" } };
  assert.equal(event.failure.category, "vm_agent");
  const d = policies.decide(event, { now: "2021-10-13T14:05:03Z" });
  assert.equal(d.action, "retry_without_agent");
  assert.equal(d.policy, "azure.vm-agent-missing.retry-without-agent");
  // A Linux VM with the same error is not retried without the agent.
  const linux = policies.decide({ ...event, resource: { ...event.resource, os: "linux" } }, { now: new Date("2021-10-13T14:05:03Z") });
  assert.notEqual(linux.action, "retry_without_agent");
  // explain: the per-policy trace and the text `keel eval --explain` prints.
  const x = policies.explain(event, { now: "2021-10-13T14:05:03Z" });
  assert.equal(x.decision.action, "retry_without_agent");
  assert.equal(x.trace.filter((t) => t.won).map((t) => t.policy).join(), "azure.vm-agent-missing.retry-without-agent");
  assert.ok(x.trace.length >= 30, `a trace of every policy, got ${x.trace.length}`);
  assert.match(x.text, /^action: {3}retry_without_agent$/m);
  assert.match(x.text, /matched +azure\.vm-agent-missing\.retry-without-agent {2}<- wins/);
  policies.close();
});

test("decides every library case alike with the native engine (the wasmtime parity corpus)", async () => {
  const { sets, cases } = corpus("engine-module-decide-corpus.json");
  const k = await keel();
  const loaded = new Map();
  for (const [handle, request] of Object.entries(sets)) loaded.set(Number(handle), k.load(request.files));
  let compared = 0;
  for (const c of cases) {
    const set = loaded.get(c.set);
    assert.ok(set, `${c.what}: no set ${c.set}`);
    const { event, ctx, history, record } = c.request;
    const got = set.decide(event, { now: ctx.now, mode: ctx.mode, history, record });
    assert.deepEqual(got, c.decision, c.what);
    compared += 1;
  }
  assert.ok(compared >= 600, `only ${compared} decisions compared`);
  for (const s of loaded.values()) s.close();
});

test("normalizes every vendor fixture alike with the native engine", async () => {
  const { cases } = corpus("engine-module-normalize-corpus.json");
  const k = await keel();
  assert.ok(cases.length >= 50);
  for (const c of cases) {
    const r = c.request;
    const opts = { observedAt: r.observed_at, selfName: r.self_name, httpStatus: r.http_status, operation: r.operation };
    if (c.result.error) {
      assert.throws(() => k.normalize(r.source, r.payload, opts), (e) => e instanceof KeelError && e.message === c.result.error.message, c.what);
    } else {
      assert.deepEqual(k.normalize(r.source, r.payload, opts), c.result, c.what);
    }
  }
  const names = k.normalizers().map((n) => n.name);
  for (const n of ["azure.scheduled_events", "azure.arm", "azure.resource_health", "aws.imds", "gcp.metadata"]) {
    assert.ok(names.includes(n), `${n} in ${names}`);
  }
});

test("Scheduled Events state carries from call to call", async () => {
  const k = await keel();
  const first = k.normalize("azure.scheduled_events", JSON.parse(fixture("azure-scheduled-events-freeze-live-migration-scheduled.json")), {
    observedAt: "2026-04-11T22:11:58Z",
  });
  assert.ok(first.events.length >= 1);
  const second = k.normalize("azure.scheduled_events", { DocumentIncarnation: 99, Events: [] }, {
    observedAt: "2026-04-11T23:00:00Z",
    state: first.state,
  });
  assert.ok(second.events.length >= 1, "the vanished event is reported");
  assert.ok(second.events.every((e) => e.maintenance.status === "ended"), JSON.stringify(second.events.map((e) => e.maintenance)));
  // Without the state, an empty document is nothing.
  assert.deepEqual(k.normalize("azure.scheduled_events", { DocumentIncarnation: 99, Events: [] }, { observedAt: "2026-04-11T23:00:00Z" }).events, []);
});

const POLICY = `policies:
  - name: agent.retry
    on: [operation_failure]
    when: event.failure.category == "vm_agent"
    action: retry_without_agent
    reason: no agent
`;

const EVENT = {
  id: "azure.arm:op-1",
  time: "2021-10-13T14:05:00Z",
  source: "azure.arm",
  kind: "operation_failure",
  resource: { name: "web-1", os: "windows" },
  failure: { operation: "create", code: "ArtifactVersionNotFound", category: "vm_agent", transient: true, attempt: 1 },
};

test("a bad policy is a typed error with every problem's file:line:col", async () => {
  const k = await keel();
  const bad = POLICY.replace("event.failure.category", "event.failure.categry");
  assert.throws(
    () => k.load([{ name: "bad.yaml", yaml: bad }, { name: "worse.yaml", yaml: "policies:\n  - name: x\n    when: (\n" }]),
    (e) => {
      assert.ok(e instanceof KeelError);
      assert.ok(e instanceof Error);
      assert.equal(e.name, "KeelError");
      assert.equal(e.kind, "invalid_policies");
      const bad = e.diagnostics.find((d) => d.file === "bad.yaml");
      assert.ok(bad, JSON.stringify(e.diagnostics));
      assert.equal(bad.line, 4);
      assert.ok(bad.column > 0);
      assert.equal(bad.location, `bad.yaml:4:${bad.column}`);
      assert.equal(bad.help, "did you mean `category`?");
      assert.ok(e.diagnostics.some((d) => d.file === "worse.yaml" && d.line >= 2), JSON.stringify(e.diagnostics));
      assert.match(e.message, /bad\.yaml:4:/);
      return true;
    },
  );
});

test("bad events, payloads, times and handles are typed errors; nothing throws anything else", async () => {
  const k = await keel();
  const set = k.load({ "p.yaml": POLICY });
  const kindOf = (f) => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof KeelError, `not a KeelError: ${e}`);
      return e;
    }
    assert.fail("no error");
  };
  let e = kindOf(() => set.decide({ ...EVENT, kind: "nope" }, { now: "2021-10-13T14:05:03Z" }));
  assert.equal(e.kind, "invalid_event");
  assert.equal(e.path, "event");
  e = kindOf(() => set.decide(EVENT, { now: "yesterday" }));
  assert.equal(e.kind, "invalid_request");
  e = kindOf(() => set.decide(EVENT, { now: new Date("not a date") }));
  assert.equal(e.kind, "invalid_request");
  e = kindOf(() => set.decide(EVENT, { now: "2021-10-13T14:05:03Z", history: [{ event: EVENT, decision: 3 }] }));
  assert.equal(e.kind, "invalid_request");
  assert.equal(e.path, "history[0].decision");
  e = kindOf(() => k.normalize("azure.armm", "{}", { observedAt: "2026-01-01T00:00:00Z" }));
  assert.equal(e.kind, "invalid_request");
  assert.match(e.message, /did you mean `azure\.arm`/);
  e = kindOf(() => k.normalize("azure.arm", '{\n  "error": ', { observedAt: "2026-01-01T00:00:00Z" }));
  assert.equal(e.kind, "invalid_payload");
  assert.equal(e.path, "payload");
  assert.equal(e.line, 2);
  e = kindOf(() => k.normalize("gcp.metadata", { Events: [] }, { observedAt: "2026-01-01T00:00:00Z" }));
  assert.equal(e.kind, "invalid_payload");
  e = kindOf(() => k.load([{ name: "empty.yaml", yaml: "" }], { defaultAction: "escalate" }));
  assert.ok(["invalid_policies", "invalid_request"].includes(e.kind), e.kind);
  set.close();
  set.close(); // twice is harmless
  e = kindOf(() => set.decide(EVENT, { now: "2021-10-13T14:05:03Z" }));
  assert.equal(e.kind, "unknown_handle");
  // Strange JavaScript values: still typed errors.
  const other = k.load({ "p.yaml": POLICY });
  for (const ev of [null, 42, "x", [], { id: 1 }, { ...EVENT, time: "2021-13-45" }]) {
    kindOf(() => other.decide(ev, { now: "2021-10-13T14:05:03Z" }));
  }
  other.close();
  await assert.rejects(Keel.instantiate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0])), (err) => err instanceof Error);
});

test("a history carries correlation and repeats between decisions", async () => {
  const k = await keel();
  const set = k.load({
    "fleet.yaml": `policies:
  - name: fleet
    on: [operation_failure]
    when: >
      history.count({"failure.category": "vm_agent"}, duration("15m")) >= 2
    action: escalate
    reason: fleet
`,
  });
  const h = new History();
  const decided = [];
  for (const [i, id] of ["op-0", "op-1", "op-2"].entries()) {
    const ev = { ...EVENT, id: `azure.arm:${id}`, time: `2021-10-13T14:0${i}:00Z` };
    h.record(ev);
    const d = set.decide(ev, { now: ev.time, history: h, record: false });
    h.recordDecision(ev, d);
    decided.push(d);
  }
  assert.deepEqual(decided.map((d) => d.escalations.length), [0, 1, 1]);
  assert.deepEqual(decided.map((d) => d.escalations[0]?.repeat ?? false), [false, false, true]);
  // Without a history, history queries count 0 and the decision warns.
  const bare = set.decide(EVENT, { now: EVENT.time });
  assert.equal(bare.escalations.length, 0);
  assert.ok(bare.warnings.length >= 1);
  set.close();
});

test("memory does not grow over 10,000 decisions, nor over loads and closes", async () => {
  const k = await Keel.instantiate(); // its own instance: nothing else allocates in it
  const policies = k.load(policyFiles(join(root, "policies", "standard")));
  const event = { ...EVENT, resource: { ...EVENT.resource, region: "eastus" } };
  for (let i = 0; i < 1000; i++) policies.decide(event, { now: "2021-10-13T14:05:03Z", mode: i % 2 ? "full" : "fast" });
  const warm = k.memoryBytes;
  for (let i = 0; i < 10000; i++) {
    const d = policies.decide({ ...event, id: `azure.arm:op-${i}` }, { now: "2021-10-13T14:05:03Z", mode: i % 2 ? "full" : "fast" });
    if (i % 1000 === 0) assert.equal(d.action, "retry_without_agent");
  }
  assert.equal(k.memoryBytes, warm, `memory grew from ${warm} to ${k.memoryBytes} bytes over 10,000 decisions`);
  for (let i = 0; i < 200; i++) {
    k.load({ "p.yaml": POLICY }).close();
    try {
      k.load({ "bad.yaml": "policies: [" });
    } catch {
      // expected
    }
  }
  assert.equal(k.memoryBytes, warm, `memory grew to ${k.memoryBytes} bytes over 200 loads`);
  policies.close();
});
