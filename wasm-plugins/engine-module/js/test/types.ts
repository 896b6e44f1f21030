// The declarations in keel.d.ts, used as a TypeScript program would: `npm run typecheck`
// (tsc --noEmit, strict) fails on a declaration that does not fit its use.
import { ABI_VERSION, History, Keel, KeelError, keel, load, normalize } from "../keel.js";
import type { Decision, Diagnostic, KeelEvent, Normalized, PolicySet } from "../keel.js";

async function main(): Promise<void> {
  const abi: 2 = ABI_VERSION;
  const k: Keel = await Keel.instantiate(new URL("../keel_engine_module.wasm", import.meta.url));
  const set: PolicySet = k.load([{ name: "p.yaml", yaml: "policies: []\n" }], { defaultAction: "none" });
  const n: Normalized = k.normalize("azure.arm", { error: { code: "X" } }, { operation: "create", observedAt: new Date() });
  const event: KeelEvent = n.events[0];
  const history = new History({ maxEntries: 100 });
  history.record(event);
  const d: Decision = set.decide(event, { now: "2021-10-13T14:05:03Z", mode: "full", history, record: false });
  history.recordDecision(event, d);
  const action: "none" | "acknowledge" | "defer" | "drain" | "retry" | "retry_without_agent" | "escalate" = d.action;
  const x = set.explain(event, { now: new Date() });
  const won: string | undefined = x.trace.find((t) => t.won)?.policy;
  const text: string = x.text;
  set.close();
  try {
    (await load({ "bad.yaml": "policies: [" })).close();
  } catch (e) {
    if (e instanceof KeelError) {
      const first: Diagnostic | undefined = e.diagnostics[0];
      const where: string = first ? `${first.file}:${first.line}:${first.column}` : String(e.line);
      console.log(e.kind, where, first?.help ?? "");
    }
  }
  const names: string[] = (await keel()).normalizers().map((x) => x.name);
  const again: Normalized = await normalize("gcp.metadata", "NONE", { state: n.state });
  console.log(abi, action, won, text, names, again.events.length, k.memoryBytes);
}

void main();
