#!/usr/bin/env bash
# Every test Keel has: formatting, lints, unit/integration/property tests, doc tests, the
# engine's wasm32 builds, the published crates (cargo package), the Wasm plugins (built, then
# their tests and keel test cases), the JavaScript package (Node) and the playground (headless
# Chromium), and the shipped policies
# validated by `keel check`. Needs node and npm (Node 18 or later); installs PostgreSQL and
# Chromium from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")"
# Each stage's title with the seconds since the start: where a slow CI run spent its time.
stage() { echo "== $* [${SECONDS} s]"; }

# What the tests need beyond cargo, installed when missing (a fresh machine has none of it;
# each check is quick when it is there): the wasm32 targets (the engine builds for both, the
# plugins for wasm32-unknown-unknown); systemd-analyze (the deployment tests verify the
# systemd unit), Python's venv (hadolint, dockerfile-parse and kubernetes-validate, pinned,
# go into one under target/ through host/deploy/validate.py); promtool (Debian's
# `prometheus`, which parses /metrics in host/tests/metrics.rs); Node 18+ and npm (the
# JavaScript package and the playground). PostgreSQL and Chromium are installed below, where
# they are first needed.
stage "prerequisites"
if command -v rustup >/dev/null; then
  rustup target add wasm32-unknown-unknown wasm32-wasip1
fi
# Debian's packages `$@`, as root (through sudo when not root); elsewhere, says what is
# missing and stops.
apt_install() {
  local as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  if ! command -v apt-get >/dev/null || { [ "${#as_root[@]}" -gt 0 ] && ! command -v sudo >/dev/null; }; then
    echo "test.sh: install $* (Debian's package names) and run it again" >&2
    exit 1
  fi
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v systemd-analyze >/dev/null || apt_install systemd
python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
python3 host/deploy/validate.py target/tmp/deploy-tools --install-only
command -v promtool >/dev/null || apt_install prometheus
{ command -v node >/dev/null && command -v npm >/dev/null; } || apt_install nodejs npm
stage "cargo fmt";   cargo fmt --all -- --check
(cd wasm-plugins && cargo fmt --all -- --check)
# With the host's optional Kubernetes client (the `kubernetes` step): linted in the same pass.
stage "cargo clippy"; cargo clippy --workspace --all-targets --features keel-host/kubernetes --locked -- -D warnings
(cd wasm-plugins && cargo clippy --workspace --locked --target wasm32-unknown-unknown -- -D warnings)
stage "Wasm plugins: the SDK's examples and the hostile test plugin into wasm-plugins/dist/"
cargo run -q -p xtask --locked -- build-plugins
stage "PostgreSQL for the fleet tests (host/tests/fleet.rs starts its own servers)"
# Debian's `postgresql` package, installed when its server binaries are missing.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  apt_install postgresql
fi
stage "cargo test: every crate on its own, with default features and with all of them"
# One crate at a time, not --workspace: a workspace run unifies features (the host turns the
# engine's plugins on), which would hide a crate that fails alone.
stage "  cargo test -p keel-engine"
cargo test -p keel-engine --locked
stage "  cargo test -p keel-engine --all-features"
cargo test -p keel-engine --all-features --locked
stage "  cargo test -p keel-host"
cargo test -p keel-host --locked
# The CLI on the shipped policies and plugin examples, run with the binary the host's tests
# above ran (default features; `cargo run` would link another, its dependencies' features
# unified without the dev-dependencies, and the all-features build below replaces this one).
KEEL=target/debug/keel
stage "keel check policies/"; "$KEEL" check policies/
stage "keel fmt --check (the shipped policies and plugin examples are formatted)"
"$KEEL" fmt --check policies/ wasm-plugins/examples/
stage "keel test policies/"; "$KEEL" test policies/
stage "keel test policies/ --mutate (no standard policy can be removed unnoticed)"
"$KEEL" test policies/ --mutate
stage "keel test wasm-plugins/examples/ (plugin policies through the same engine)"
"$KEEL" test wasm-plugins/examples/
"$KEEL" test wasm-plugins/examples/ --mutate
stage "keel demo (a Reboot through drain to StartRequests)"; "$KEEL" demo
# --all-features adds failpoints (the crash matrix: abort at every step boundary, restart,
# count effects), the native kubernetes step and the embedded playground. The tests whose
# outcome those change run again with them: the unit tests, the crash matrix, the
# kubernetes step, and the CLI and deployment tests that branch on the feature (the others
# ran above on the same code).
stage "  cargo test -p keel-host --all-features (the feature-dependent tests)"
cargo test -p keel-host --all-features --locked \
  --bin keel --test crash --test kubernetes --test cli_tools --test deploy
stage "  cargo test -p keel-engine-module"
cargo test -p keel-engine-module --locked
# The provisioning agent built on libazureinit, against its loopback IMDS/wireserver stub.
stage "  cargo test -p keel-example-azure-init-agent"
cargo test -p keel-example-azure-init-agent --locked
stage "  cargo test -p xtask"
cargo test -p xtask --locked
stage "wasm32 builds of keel-engine (no default features)"
for t in wasm32-unknown-unknown wasm32-wasip1; do
  cargo build -p keel-engine --no-default-features --target "$t" --locked
done
stage "the crates as published: cargo package of keel-engine and keel-plugin, built from the packages"
# --allow-dirty: a clean clone has nothing uncommitted; a working tree packages what it has.
# The engine is verified with its plugin host, which reads the WIT world from the package too.
# The verification build reads no profile from this workspace's Cargo.toml (the package is a
# workspace of its own): the same dev profile is given here, so it reuses the dependencies the
# tests built instead of building wasmtime and cranelift again with full debug info.
PROFILE=(--config 'profile.dev.debug="line-tables-only"' --config 'profile.dev.package."*".debug=false')
cargo package -p keel-engine --features plugins --locked --allow-dirty "${PROFILE[@]}"
(cd wasm-plugins && cargo package -p keel-plugin --locked --allow-dirty)
stage "the engine as a Wasm module (wasm32-unknown-unknown)"
cargo build -p keel-engine-module --target wasm32-unknown-unknown --release --locked
stage "the JavaScript package over the engine module (its .d.ts type-checked, Node's test runner, npm pack)"
# The parity corpora come from host/tests/engine_module.rs (cargo test -p keel-host above).
(cd wasm-plugins/engine-module/js \
  && KEEL_ENGINE_MODULE=../../../target/wasm32-unknown-unknown/release/keel_engine_module.wasm node build.mjs \
  && npm ci --no-audit --no-fund --loglevel=error && npx tsc -p test/tsconfig.json \
  && node --test test/*.test.mjs \
  && bash test/pack.sh)
stage "keel playground in headless Chromium (the engine module embedded by the playground feature)"
if ! command -v chromium >/dev/null; then
  apt_install chromium
fi
# The binary `cargo test -p keel-host --all-features` built (the playground is one of them).
cargo build -q -p keel-host --all-features --locked
(cd host/tests/playground && npm ci --no-audit --no-fund --loglevel=error \
  && KEEL_BIN=../../../target/debug/keel node --test playground.test.mjs)
echo "   screenshots: target/playground/"
stage "keel-engine has no tokio or wasmtime in its default dependency tree"
if cargo tree -p keel-engine -e normal --locked | grep -E "^.* (tokio|wasmtime) v"; then echo "tokio or wasmtime leaked into keel-engine"; exit 1; fi
stage "cargo-mutants on the lines of engine/src this commit changes (scripts/mutants.sh ci)"
bash scripts/mutants.sh ci
echo "all tests passed in ${SECONDS} s"
