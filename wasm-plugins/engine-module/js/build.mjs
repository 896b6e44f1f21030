// Builds the engine module (cargo, wasm32-unknown-unknown, release) and copies it beside
// keel.js, where the package loads it from. KEEL_ENGINE_MODULE=path copies that file instead.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..", "..");
let wasm = process.env.KEEL_ENGINE_MODULE;
if (!wasm) {
  const cargo = process.env.CARGO ?? "cargo";
  execFileSync(cargo, ["build", "-p", "keel-engine-module", "--target", "wasm32-unknown-unknown", "--release"], {
    cwd: root,
    stdio: "inherit",
  });
  const target = process.env.CARGO_TARGET_DIR ?? join(root, "target");
  wasm = join(target, "wasm32-unknown-unknown", "release", "keel_engine_module.wasm");
}
if (!existsSync(wasm)) {
  console.error(`no engine module at ${wasm}`);
  process.exit(1);
}
const dest = join(here, "keel_engine_module.wasm");
if (resolve(wasm) !== dest) copyFileSync(wasm, dest);
console.log(`keel_engine_module.wasm (${(statSync(dest).size / 1048576).toFixed(1)} MiB) from ${wasm}`);
