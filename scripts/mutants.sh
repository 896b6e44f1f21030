#!/usr/bin/env bash
# cargo-mutants on the engine (see TESTING.md).
#
#   scripts/mutants.sh diff [BASE] [-- extra cargo-mutants args]
#       Mutates only the lines of engine/src that this branch changes since its merge base
#       with BASE (default: main; KEEL_MUTANTS_BASE overrides), and runs keel-engine's tests
#       on each mutant (all features: the plugin host is engine code too). Fails (exit 2)
#       when a mutant survives: a changed line nothing checks.
#   scripts/mutants.sh ci
#       What test.sh runs: `diff` against the commit's first parent (HEAD^: for a merge, the
#       whole merged branch; otherwise the commit itself), in place, with the baseline skipped
#       (test.sh has just run the same tests). Installs cargo-mutants first if it is missing.
#   scripts/mutants.sh full [-- extra cargo-mutants args]
#       The full run over the engine's core files (normalizers, history, policy loading, the
#       decide path): slow (hours on 2 cores); its scores go into TESTING.md.
#
# Needs cargo-mutants (`cargo install cargo-mutants --locked`). Mutants are tested in a copy of
# the tree (without target/, so the first build is cold); pass `-- --in-place` to mutate the
# working tree instead (faster; do not edit or build in it meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
MUTANTS_VERSION=27.1.0

mode="${1:-}"
[ $# -gt 0 ] && shift

if [ "$mode" = ci ] && ! cargo mutants --version >/dev/null 2>&1; then
  echo "installing cargo-mutants $MUTANTS_VERSION (once; a few minutes)"
  cargo install cargo-mutants --locked --version "$MUTANTS_VERSION"
fi
if ! cargo mutants --version >/dev/null 2>&1; then
  echo "cargo-mutants is not installed: cargo install cargo-mutants --locked --version $MUTANTS_VERSION" >&2
  exit 1
fi
out="${KEEL_MUTANTS_OUT:-target/mutants}"
mkdir -p "$out"
common=(--package keel-engine --all-features --timeout "${KEEL_MUTANTS_TIMEOUT:-300}" --output "$out")

case "$mode" in
  ci)
    if ! git rev-parse -q --verify HEAD^ >/dev/null; then
      echo "no parent commit: nothing to compare with"; exit 0
    fi
    KEEL_MUTANTS_BASE=HEAD^ KEEL_MUTANTS_TIMEOUT=120 exec bash "$0" diff -- --in-place --baseline skip --no-shuffle
    ;;
  diff)
    base="${KEEL_MUTANTS_BASE:-main}"
    if [ $# -gt 0 ] && [ "$1" != "--" ]; then base="$1"; shift; fi
    [ "${1:-}" = "--" ] && shift
    merge_base="$(git merge-base HEAD "$base")"
    diff_file="$out/in-diff.patch"
    # Committed and uncommitted changes to the engine's sources since the merge base.
    git diff "$merge_base" -- engine/src > "$diff_file"
    if [ ! -s "$diff_file" ]; then
      echo "no change to engine/src since $base ($merge_base): nothing to mutate"
      exit 0
    fi
    echo "mutating the lines engine/src changes since $base ($merge_base)"
    exec cargo mutants "${common[@]}" --in-diff "$diff_file" "$@"
    ;;
  full)
    [ "${1:-}" = "--" ] && shift
    exec cargo mutants "${common[@]}" \
      -f 'engine/src/normalize/*.rs' -f engine/src/history.rs \
      -f 'engine/src/compile/*.rs' -f engine/src/policy.rs -f engine/src/decide.rs -f engine/src/build.rs \
      -f engine/src/engine.rs "$@"
    ;;
  *)
    echo "usage: scripts/mutants.sh diff [BASE] [-- cargo-mutants args] | ci | full [-- cargo-mutants args]" >&2
    exit 2
    ;;
esac
