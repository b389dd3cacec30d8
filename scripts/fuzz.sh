#!/usr/bin/env bash
# Runs every cargo-fuzz target of every crate (crates/*/fuzz) for SECONDS each, one after the
# other, and prints a table of executions (total and per second), coverage and findings.
#
#   scripts/fuzz.sh SECONDS [FILTER]
#
# FILTER, if given, keeps the targets whose "crate/target" name contains it. Each target
# starts from its committed corpus (crates/<crate>/fuzz/corpus/<target>, read only) and
# writes the inputs it finds new to $FUZZ_WORK/<crate>/<target> (default /tmp/vfmig-fuzz), so
# a later run goes on from there; crashes land in crates/<crate>/fuzz/artifacts/<target>/.
# Extra libFuzzer flags can be passed in $FUZZ_ARGS (e.g. "-malloc_limit_mb=256 -jobs=2").
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`). Exits non-zero if any
# target failed.
set -uo pipefail

secs=${1:?usage: scripts/fuzz.sh SECONDS [FILTER]}
filter=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
work=${FUZZ_WORK:-/tmp/vfmig-fuzz}
rows=()
failed=0

for dir in "$root"/crates/*/fuzz; do
    crate=$(basename "$(dirname "$dir")")
    targets=$(cd "$dir" && cargo +nightly fuzz list) || { echo "cargo fuzz list failed in $dir" >&2; exit 2; }
    for target in $targets; do
        name="$crate/$target"
        [[ -z $filter || $name == *"$filter"* ]] || continue
        out="$work/$crate/$target"
        log="$work/$crate/$target.log"
        mkdir -p "$out"
        echo "== $name for ${secs}s (log: $log)"
        # -a: overflow checks and debug assertions on, so an overflow is a finding.
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
        (cd "$dir" && cargo +nightly fuzz run -a "$target" "$out" "corpus/$target" -- \
            -max_total_time="$secs" -print_final_stats=1 ${FUZZ_ARGS:-}) >"$log" 2>&1
        status=$?
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
        rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
        # Each crash, leak, timeout or OOM input libFuzzer kept.
        found=$(grep -c 'Test unit written to' "$log")
        cov=$(grep -Eo '(DONE|pulse|NEW|REDUCE).* cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | grep -Eo 'cov: [0-9]+ ft: [0-9]+')
        if [[ $status -eq 0 ]]; then
            result=ok
        else
            result="FAILED (exit $status, see $log)"
            failed=1
        fi
        rows+=("$(printf '%-36s %12s %8s  %-22s %8s  %s' "$name" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$found" "$result")")
    done
done

printf '\n%-36s %12s %8s  %-22s %8s  %s\n' target execs exec/s coverage findings result
for row in "${rows[@]}"; do
    echo "$row"
done
exit $failed
