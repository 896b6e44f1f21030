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
#       The full run over the engine's core files (normalizers, history, the decide path),
#       group by group, each with its own tests: slow (hours on 2 cores); its per-file scores
#       (`scripts/mutants.sh table`) go into TESTING.md.
#   scripts/mutants.sh again FILE [-- extra cargo-mutants args]
#       Runs again the mutants named in FILE (e.g. a full run's missed.txt), each in its group
#       with that group's tests: after writing tests for survivors.
#   scripts/mutants.sh table
#       The per-file table of the full runs recorded under target/mutants/full.
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

# The full run's groups: name|files|the tests each mutant of them runs.
nz="--test normalize_cross_source --test snapshots_fixtures"
groups=(
  "aws_imds|engine/src/normalize/aws_imds.rs|--lib --test normalize_aws_imds $nz"
  "azure_arm|engine/src/normalize/azure_arm/*.rs|--lib --test normalize_azure_arm $nz"
  "resource_health|engine/src/normalize/azure_resource_health/*.rs|--lib --test normalize_azure_resource_health $nz"
  "scheduled_events|engine/src/normalize/azure_scheduled_events.rs engine/src/normalize/azure_maintenance_v1.rs|--test normalize_azure_scheduled_events $nz"
  "gcp_metadata|engine/src/normalize/gcp_metadata.rs|--lib --test normalize_gcp_metadata $nz"
  "normalize_shared|engine/src/normalize/azure_id.rs engine/src/normalize/classify.rs engine/src/normalize/http.rs engine/src/normalize/json.rs engine/src/normalize/mod.rs engine/src/normalize/time.rs engine/src/normalize/transform.rs|--lib --test normalize_aws_imds --test normalize_azure_arm --test normalize_azure_resource_health --test normalize_azure_scheduled_events --test normalize_gcp_metadata --test transform --test fuzz $nz"
  "history|engine/src/history.rs engine/src/history/*.rs|--lib --test history --test history_save --test decide --test testing"
  "decide|engine/src/decide.rs engine/src/engine.rs engine/src/index.rs|--features=plugins --lib --test decide --test index --test parity --test guard --test limits --test load --test plugins"
)
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
    # One cargo-mutants run per group of files, each with the tests that exercise it (the
    # module's unit tests and its integration test files: every keel-engine test for every
    # mutant would be three times slower, and a file's own tests are what should catch it).
    # The scores are a lower bound: a mutant "missed" here may be caught by another file.
    # The decide path is built with the plugin host (`plugins`): its calls are decide code.
    # KEEL_MUTANTS_SHARD=k/n runs the k-th of n round-robin shards (one per worktree, so two
    # cores build two mutants at once); KEEL_MUTANTS_GROUPS="a b" runs only those groups.
    [ "${1:-}" = "--" ] && shift
    shard=()
    [ -n "${KEEL_MUTANTS_SHARD:-}" ] && shard=(--shard "$KEEL_MUTANTS_SHARD" --sharding round-robin)
    status=0
    mkdir -p "$out/full"
    for g in "${groups[@]}"; do
      IFS='|' read -r name files tests <<<"$g"
      if [ -n "${KEEL_MUTANTS_GROUPS:-}" ] && [[ " $KEEL_MUTANTS_GROUPS " != *" $name "* ]]; then
        continue
      fi
      fs=()
      for f in $files; do fs+=(-f "$f"); done
      # As cargo args (not after `--`), so the build of each mutant compiles only these
      # test targets too, not all of keel-engine's.
      ta=()
      for t in $tests; do ta+=("--cargo-arg=$t"); done
      if [ "$name" = decide ] && [ ! -f wasm-plugins/dist/hostile.wasm ]; then
        # The plugin tests load the built components.
        cargo run -q -p xtask --locked -- build-plugins
      fi
      echo "== $name"
      cargo mutants --package keel-engine --timeout "${KEEL_MUTANTS_TIMEOUT:-120}" \
        --build-timeout 600 --profile mutants --no-shuffle "${shard[@]}" \
        --output "$out/full/$name${KEEL_MUTANTS_SHARD:+-${KEEL_MUTANTS_SHARD/\//of}}" \
        "${fs[@]}" "${ta[@]}" "$@" || status=$?
    done
    bash "$0" table
    exit "$status"
    ;;
  again)
    # Runs again the mutants named in FILE (one per line, as cargo-mutants prints them, e.g. a
    # full run's missed.txt), each in its group with that group's tests: after writing tests
    # for survivors, to see them caught.
    list="${1:?usage: scripts/mutants.sh again FILE [-- extra cargo-mutants args]}"
    shift
    [ "${1:-}" = "--" ] && shift
    status=0
    for g in "${groups[@]}"; do
      IFS='|' read -r name files _ <<<"$g"
      res=()
      while IFS= read -r m; do
        [ -n "$m" ] || continue
        f="${m%%:*}"
        for pat in $files; do
          # shellcheck disable=SC2053 # the group's file patterns are globs
          if [[ $f == $pat ]]; then
            res+=(--re "^$(printf '%s' "$m" | sed -e 's/[][\\.+*?(){}|^$]/\\&/g')\$")
          fi
        done
      done <"$list"
      [ ${#res[@]} -eq 0 ] && continue
      KEEL_MUTANTS_GROUPS="$name" bash "$0" full -- "${res[@]}" "$@" || status=$?
    done
    exit "$status"
    ;;
  table)
    # The per-file table of every full run under $out/full (all shards summed).
    find "$out/full" -name outcomes.json -path '*mutants.out*' 2>/dev/null | sort | while read -r f; do
      dir="$(dirname "$f")"
      for kind in caught missed timeout unviable; do
        [ -f "$dir/$kind.txt" ] && sed "s/:.*//; s/^/$kind /" "$dir/$kind.txt"
      done
    done | awk '
      { n[$2 " " $1]++; files[$2] = 1 }
      END {
        print "| File | Caught | Missed | Timeouts | Unviable | Score |"
        print "|------|--------|--------|----------|----------|-------|"
        for (f in files) {
          c = n[f " caught"] + 0; m = n[f " missed"] + 0; t = n[f " timeout"] + 0; u = n[f " unviable"] + 0
          s = (c + m) ? sprintf("%.0f%%", 100 * c / (c + m)) : "-"
          printf "| `%s` | %d | %d | %d | %d | %s |\n", f, c, m, t, u, s
        }
      }' | { read -r h1; read -r h2; echo "$h1"; echo "$h2"; sort; }
    ;;
  *)
    echo "usage: scripts/mutants.sh diff [BASE] [-- cargo-mutants args] | ci | full [-- cargo-mutants args] | again FILE [-- args] | table" >&2
    exit 2
    ;;
esac
