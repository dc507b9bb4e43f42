#!/usr/bin/env bash
# Fuzzes the agent link's frame decoder (link_frames), the metadata service's request path
# (metadata_request) and the API's server JSON parsing (api_server_json) with cargo-fuzz
# (libFuzzer), on stable Rust: `-s none` builds without a sanitizer, which needs no nightly
# (the code under test is safe Rust; libFuzzer still catches panics, aborts, timeouts and
# memory blow-ups).
#
#   fuzz/run.sh                   CI: each target for FUZZ_SECONDS (default 30) seconds
#   FUZZ_RUNS=10000000 fuzz/run.sh  each target for that many executions (the long run)
#   fuzz/run.sh metadata_request  one target only
#   FUZZ_DEV=1 fuzz/run.sh        unoptimized build: compiles in a fraction of the time,
#                                 runs several times slower (what CI uses for its short run)
#
# Inputs that found something are kept in fuzz/artifacts/<target>/ and the run fails;
# replay one with `cargo fuzz run -s none <target> <file>` in fuzz/. New interesting inputs
# go to fuzz/corpus/<target>/ (not committed); the committed seeds are in fuzz/seeds/ (regenerate
# them with `cargo fuzz run -s none seeds` in fuzz/).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(link_frames metadata_request api_server_json)
seconds=${FUZZ_SECONDS:-30}
if [ -n "${FUZZ_RUNS:-}" ]; then
    limit=(-runs="$FUZZ_RUNS")
    label="$FUZZ_RUNS runs"
else
    limit=(-max_total_time="$seconds")
    label="$seconds s"
fi

build=(-s none)
[ -z "${FUZZ_DEV:-}" ] || build+=(--dev)
for t in "${targets[@]}"; do
    cargo fuzz build "${build[@]}" "$t"
done
for t in "${targets[@]}"; do
    echo "== fuzz $t ($label)"
    mkdir -p "corpus/$t"
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a memory blow-up.
    log="target/fuzz-$t.log"
    mkdir -p target
    if ! cargo fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/ (log: fuzz/$log)" >&2
        exit 1
    fi
    grep -aE '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|INFO: seed corpus)' "$log" || true
done
