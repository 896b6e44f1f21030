#!/usr/bin/env bash
# `npm pack` makes a package that installs and decides: packed, unpacked into a scratch
# project, imported by name from there, a failed VM create decided with a policy.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
KEEL_ENGINE_MODULE="${KEEL_ENGINE_MODULE:-keel_engine_module.wasm}" npm pack --silent --pack-destination "$scratch" >/dev/null
tarball="$(ls "$scratch"/keel-engine-*.tgz)"
tar tzf "$tarball" | sort > "$scratch/contents"
for f in package/keel.js package/keel.d.ts package/keel_engine_module.wasm package/package.json; do
  grep -qx "$f" "$scratch/contents" || { echo "npm pack: $f is missing from the package"; cat "$scratch/contents"; exit 1; }
done
mkdir -p "$scratch/app/node_modules/keel-engine"
tar xzf "$tarball" -C "$scratch/app/node_modules/keel-engine" --strip-components=1
cat > "$scratch/app/main.mjs" <<'JS'
import { load, normalize } from "keel-engine";
const policies = await load({ "agent.yaml": `policies:
  - name: agent.retry
    on: [operation_failure]
    when: event.failure.category == "vm_agent" && event.resource.os == "windows"
    action: retry_without_agent
    reason: no agent
` });
const { events } = await normalize("azure.arm", { error: { code: "ArtifactVersionNotFound", message: "No version found in the artifact repository that satisfies the requested version '' for VM extension with publisher 'Microsoft.WindowsAzure.GuestAgent' and type 'CRPProd'." } }, { operation: "create", observedAt: "2021-10-13T14:05:00Z" });
const event = { ...events[0], resource: { ...events[0].resource, os: "windows" } };
const d = policies.decide(event, { now: "2021-10-13T14:05:03Z" });
if (d.action !== "retry_without_agent" || d.policy !== "agent.retry") throw new Error(JSON.stringify(d));
console.log(`npm pack: the installed package decided ${d.action} (${d.policy})`);
JS
(cd "$scratch/app" && node main.mjs)
# The README's deployment-tool example, run from the repository's root against the installed
# package: it must decide the 2021-10-13 ARM error for a Windows VM as the README says.
root="$(cd ../../.. && pwd)"
awk '/^\/\/ deploy\.mjs, run from the repository/{on=1} on&&/^```$/{exit} on{print}' "$root/README.md" > "$scratch/app/deploy.mjs"
[ -s "$scratch/app/deploy.mjs" ] || { echo "README.md: the deploy.mjs example is missing"; exit 1; }
out="$(cd "$root" && node "$scratch/app/deploy.mjs")"
grep -q "creating web-1 again without the VM agent" <<<"$out" || { echo "README example: no retry without the agent:"; echo "$out"; exit 1; }
grep -q "azure.vm-agent-missing.retry-without-agent  <- wins" <<<"$out" || { echo "README example: unexpected explanation:"; echo "$out"; exit 1; }
echo "npm pack: the README's deploy.mjs example decided retry_without_agent"
