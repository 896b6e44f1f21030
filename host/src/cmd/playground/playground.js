// The playground page: everything runs here, in the browser, on Keel's engine module (keel.js);
// the server only serves files. Untrusted text (policy names, messages, payloads) is only ever
// put in the page as text, never as HTML.
import { History, Keel, KeelError } from "./keel.js";

const $ = (id) => document.getElementById(id);

/** Which normalizer reads a library fixture, by file-name prefix (first match wins). */
const OWNERS = [
  ["arm-error-", "azure.arm"],
  ["aws-", "aws.imds"],
  ["azure-scheduled-events-", "azure.scheduled_events"],
  ["azure-imds-error-", "azure.scheduled_events"],
  ["azure-maintenance-v1-", "azure.maintenance_v1"],
  ["azure-instanceinfo-v1", "azure.maintenance_v1"],
  ["azure-resource-health-", "azure.resource_health"],
  ["azure-activity-log-", "azure.resource_health"],
  ["azure-alert-", "azure.resource_health"],
  ["azure-eventgrid-health-", "azure.resource_health"],
  ["gcp-", "gcp.metadata"],
];

const SCRATCH = "my-policies.yaml";
const SCRATCH_TEXT = `# Your own policies: they load with the standard library (untick it to load this file alone).
policies:
  - name: my.windows-create-fails
    on: [operation_failure]
    when: event.failure.operation == "create" && event.resource.os == "windows"
    action: escalate
    priority: 10
    reason: a Windows VM could not be created
`;

const SAMPLE_EVENT = {
  id: "azure.arm:3f6d9a2e-6b1c-4c52-9f0e-2b7a1d4c8e90",
  time: "2021-10-13T14:05:00Z",
  source: "azure.arm",
  kind: "operation_failure",
  resource: { id: "web-1", name: "web-1", os: "windows", region: "eastus" },
  failure: { operation: "create", code: "ArtifactVersionNotFound", category: "vm_agent", transient: true, attempt: 1 },
};

const OUTCOMES = {
  skipped_by_index: "skipped by index",
  false: "evaluated false",
  matched: "matched",
  exhausted: "matched, retries spent",
  errored: "errored",
  not_evaluated: "not evaluated",
  quarantined: "quarantined plugin",
};

const files = new Map(); // name -> { yaml, original }
let fixtures = [];
let current = SCRATCH;
let keel;
let diagnostics = [];
let lastRun = null;

function status(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", bad);
}

function option(select, value, label = value) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  select.append(o);
  return o;
}

function inputKind() {
  return document.querySelector('input[name="input-kind"]:checked').value;
}

// ---- the editor: gutter and highlight layers under the textarea ----------------------------

function renderEditor() {
  const text = $("editor").value;
  const lines = text.split("\n");
  const bad = new Set(diagnostics.filter((d) => d.file === current && d.line > 0).map((d) => d.line));
  const gutter = $("gutter");
  const highlight = $("highlight");
  gutter.replaceChildren();
  highlight.replaceChildren();
  lines.forEach((line, i) => {
    const n = document.createElement("span");
    n.textContent = String(i + 1);
    n.dataset.line = String(i + 1);
    const h = document.createElement("span");
    h.textContent = line.length > 0 ? line : " ";
    h.dataset.line = String(i + 1);
    if (bad.has(i + 1)) {
      n.className = "error";
      h.className = "error";
    }
    gutter.append(n);
    highlight.append(h);
  });
  syncScroll();
}

function syncScroll() {
  $("gutter").scrollTop = $("editor").scrollTop;
  $("highlight").scrollTop = $("editor").scrollTop;
  $("highlight").scrollLeft = $("editor").scrollLeft;
}

function selectFile(name) {
  current = name;
  $("policy-file").value = name;
  $("editor").value = files.get(name).yaml;
  renderEditor();
}

function goTo(d) {
  if (!files.has(d.file)) return;
  selectFile(d.file);
  const editor = $("editor");
  const lines = editor.value.split("\n");
  const start = lines.slice(0, d.line - 1).reduce((n, l) => n + l.length + 1, 0) + Math.max(0, d.column - 1);
  editor.focus();
  editor.setSelectionRange(start, start);
  editor.scrollTop = Math.max(0, (d.line - 5) * 18);
  syncScroll();
}

function showDiagnostics(list) {
  diagnostics = list;
  const ul = $("diagnostics");
  ul.replaceChildren();
  for (const d of list) {
    const li = document.createElement("li");
    li.textContent = `${d.location}: ${d.message}${d.help ? `\n  help: ${d.help}` : ""}`;
    li.dataset.file = d.file;
    li.dataset.line = String(d.line);
    li.addEventListener("click", () => goTo(d));
    ul.append(li);
  }
  renderEditor();
}

// ---- running: load, normalize, decide ---------------------------------------------------------

function policySet() {
  const list = [];
  if ($("use-library").checked) {
    for (const [name, f] of files) list.push({ name, yaml: f.yaml });
  } else {
    list.push({ name: current, yaml: files.get(current).yaml });
  }
  return keel.load(list);
}

function merge(base, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out = base !== null && typeof base === "object" && !Array.isArray(base) ? { ...base } : {};
  for (const [k, v] of Object.entries(patch)) out[k] = merge(out[k], v);
  return out;
}

function inputEvents() {
  const text = $("payload").value;
  if (inputKind() === "event") {
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new Error(`the event is not JSON: ${e.message}`);
    }
    return { events: Array.isArray(parsed) ? parsed : [parsed], normalized: null };
  }
  const options = {};
  if ($("operation").value) options.operation = $("operation").value;
  options.observedAt = $("observed-at").value.trim() || new Date().toISOString();
  const { events } = keel.normalize($("source").value, text, options);
  let patch = null;
  const withText = $("with").value.trim();
  if (withText) {
    try {
      patch = JSON.parse(withText);
    } catch (e) {
      throw new Error(`"Merge into each event" is not JSON: ${e.message}`);
    }
  }
  const merged = patch ? events.map((e) => merge(e, patch)) : events;
  return { events: merged, normalized: merged };
}

function clearOutput() {
  for (const id of ["action", "policy", "reason"]) $(id).textContent = "–";
  $("action").classList.remove("acted");
  $("escalations").replaceChildren();
  $("errors").replaceChildren();
  $("trace").tBodies[0].replaceChildren();
  $("decision-json").textContent = "";
}

function showDecision(d) {
  $("action").textContent = d.action;
  $("action").classList.toggle("acted", d.action !== "none");
  $("policy").textContent = d.policy ?? "– (default)";
  $("reason").textContent = d.reason ?? "";
  for (const e of d.escalations ?? []) {
    const div = document.createElement("div");
    div.className = "escalation";
    div.textContent = `escalate [${e.severity}] ${e.policy}: ${e.reason}${e.repeat ? " (repeat)" : ""}`;
    $("escalations").append(div);
  }
  for (const e of [...(d.errors ?? []).map((x) => `${x.policy}: ${x.message}`), ...(d.warnings ?? [])]) {
    const div = document.createElement("div");
    div.className = "error-item";
    div.textContent = e;
    $("errors").append(div);
  }
  const body = $("trace").tBodies[0];
  for (const t of d.trace ?? []) {
    const tr = document.createElement("tr");
    tr.className = t.outcome;
    if (t.policy === d.policy) tr.classList.add("won");
    const a = document.createElement("td");
    a.textContent = OUTCOMES[t.outcome] ?? t.outcome;
    const b = document.createElement("td");
    b.textContent = t.policy + (t.policy === d.policy ? "  ← wins" : "");
    tr.append(a, b);
    body.append(tr);
  }
  $("decision-json").textContent = JSON.stringify(d, null, 2);
}

function run() {
  if (!keel) return;
  clearOutput();
  let set;
  try {
    set = policySet();
  } catch (e) {
    if (e instanceof KeelError && e.kind === "invalid_policies") {
      showDiagnostics(e.diagnostics);
      status(`${e.diagnostics.length} problem${e.diagnostics.length === 1 ? "" : "s"} in the policies`, true);
    } else {
      showDiagnostics([]);
      status(String(e.message ?? e), true);
    }
    lastRun = null;
    return;
  }
  showDiagnostics([]);
  try {
    const { events, normalized } = inputEvents();
    $("events").textContent = JSON.stringify(normalized ?? events, null, 2);
    $("events-box").open = normalized != null;
    if (events.length === 0) {
      status("the payload gives no event (nothing to decide)");
      lastRun = null;
      return;
    }
    const history = new History();
    let decision;
    let now;
    for (const ev of events) {
      now = $("now").value.trim() || ev?.time;
      history.record(ev);
      decision = set.decide(ev, { now, mode: "full", history, record: false });
      history.recordDecision(ev, decision);
    }
    showDecision(decision);
    lastRun = { event: events[events.length - 1], decision, now };
    status(`decided ${events.length} event${events.length === 1 ? "" : "s"}`);
  } catch (e) {
    lastRun = null;
    const where = e instanceof KeelError && e.path ? ` (${e.path}${e.line ? ` line ${e.line}, column ${e.column}` : ""})` : "";
    status(`${e instanceof KeelError ? e.kind : "input"}: ${e.message}${where}`, true);
  } finally {
    set.close();
  }
}

let timer;
function later() {
  clearTimeout(timer);
  timer = setTimeout(run, 250);
}

// ---- copy as test case ------------------------------------------------------------------------

const q = (s) => JSON.stringify(String(s));

function testCase({ event, decision, now }) {
  const ev = { ...event };
  delete ev.raw;
  const lines = [
    `  - name: ${q(`${ev.id} decides ${decision.action}`)}`,
    `    now: ${now}`,
    `    event: ${JSON.stringify(ev)}`,
    "    expect:",
    `      action: ${decision.action}`,
    `      policy: ${decision.policy == null ? "null" : q(decision.policy)}`,
    `      escalations: [${(decision.escalations ?? []).filter((e) => !e.repeat).map((e) => `{ policy: ${q(e.policy)} }`).join(", ")}]`,
  ];
  if ((decision.errors ?? []).length > 0) lines.push(`      errors: [${decision.errors.map((e) => q(e.policy)).join(", ")}]`);
  return lines.join("\n") + "\n";
}

async function copyTest() {
  if (!lastRun) {
    status("nothing decided to copy", true);
    return;
  }
  const text = testCase(lastRun);
  $("test-case").hidden = false;
  $("test-case").textContent = text;
  try {
    await navigator.clipboard.writeText(text);
    status("test case copied: paste it under `cases:` in a *.test.yaml");
  } catch {
    status("test case below (the clipboard is not available here)");
  }
}

// ---- input controls ---------------------------------------------------------------------------

function ownerOf(name) {
  return OWNERS.find(([prefix]) => name.startsWith(prefix))?.[1];
}

function fillExamples() {
  const source = $("source").value;
  const select = $("example");
  select.replaceChildren();
  option(select, "", "(paste your own)");
  for (const f of fixtures.filter((f) => ownerOf(f.name) === source)) option(select, f.name);
}

function inputKindChanged() {
  const payload = inputKind() === "payload";
  $("payload-options").hidden = !payload;
  $("payload-extra").hidden = !payload;
  if (!payload && !$("payload").value.trim().startsWith("{")) {
    $("payload").value = JSON.stringify(SAMPLE_EVENT, null, 2);
  }
  later();
}

async function main() {
  try {
    const [library, instance] = await Promise.all([
      fetch("library.json").then((r) => {
        if (!r.ok) throw new Error(`library.json: HTTP ${r.status}`);
        return r.json();
      }),
      Keel.instantiate(),
    ]);
    keel = instance;
    for (const p of library.policies) files.set(p.name, { yaml: p.yaml, original: p.yaml });
    fixtures = library.fixtures;
  } catch (e) {
    status(`cannot start: ${e.message}`, true);
    return;
  }
  files.set(SCRATCH, { yaml: SCRATCH_TEXT, original: SCRATCH_TEXT });
  for (const name of files.keys()) option($("policy-file"), name);
  for (const n of keel.normalizers()) option($("source"), n.name, n.name).title = n.reads;
  $("source").value = "azure.arm";
  fillExamples();
  selectFile(files.has("standard/azure/vm-agent.yaml") ? "standard/azure/vm-agent.yaml" : SCRATCH);
  $("payload").value = JSON.stringify(SAMPLE_EVENT, null, 2);

  $("policy-file").addEventListener("change", () => selectFile($("policy-file").value));
  $("editor").addEventListener("input", () => {
    files.get(current).yaml = $("editor").value;
    renderEditor();
    later();
  });
  $("editor").addEventListener("scroll", syncScroll);
  $("editor").addEventListener("keydown", (e) => {
    if (e.key === "Tab") {
      e.preventDefault();
      const t = e.target;
      const at = t.selectionStart;
      t.setRangeText("  ", at, t.selectionEnd, "end");
      t.dispatchEvent(new Event("input"));
    }
  });
  $("new-file").addEventListener("click", () => {
    let i = 1;
    while (files.has(`my-policies-${i}.yaml`)) i += 1;
    const name = `my-policies-${i}.yaml`;
    files.set(name, { yaml: "policies: []\n", original: "policies: []\n" });
    option($("policy-file"), name);
    selectFile(name);
    later();
  });
  $("reset-file").addEventListener("click", () => {
    const f = files.get(current);
    f.yaml = f.original;
    selectFile(current);
    later();
  });
  $("use-library").addEventListener("change", later);
  for (const r of document.querySelectorAll('input[name="input-kind"]')) r.addEventListener("change", inputKindChanged);
  $("source").addEventListener("change", () => {
    fillExamples();
    later();
  });
  $("example").addEventListener("change", () => {
    const f = fixtures.find((x) => x.name === $("example").value);
    if (f) $("payload").value = f.text;
    later();
  });
  for (const id of ["payload", "now", "operation", "observed-at", "with"]) {
    $(id).addEventListener("input", later);
    $(id).addEventListener("change", later);
  }
  $("copy-test").addEventListener("click", copyTest);
  run();
}

main();
