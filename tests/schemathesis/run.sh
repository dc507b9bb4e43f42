#!/usr/bin/env bash
# Property-based API testing from the OpenAPI document (docs/openapi.json) with Schemathesis,
# against `backfill-coordinator dev` on free loopback ports. Fails on any 5xx and on any
# response that does not match the document.
#
# CI runs a bounded number of cases (ST_MAX_EXAMPLES per operation and identity; a few
# minutes). The longer run, for the figures in a closing note:
#
#   ST_MAX_EXAMPLES=100 tests/schemathesis/run.sh
#
# Environment:
#   ST_MAX_EXAMPLES  test cases per operation, per identity (default 15)
#   ST_SEED          Hypothesis seed (default: random; printed, so a failure can be replayed)
#   ST_WORKERS       concurrent workers (default 1: Hypothesis on Python 3.11 can trip over
#                    its own AST cache when several threads draw at once)
#   ST_VENV          where the Schemathesis virtualenv is kept between runs
#                    (default ~/.cache/backfill/schemathesis-venv)
#   ST_REPORT_DIR    where the JUnit reports go (default: a temporary directory)
#   BACKFILL_COORDINATOR  the binary to test (default: target/debug/backfill-coordinator,
#                    brought up to date with cargo build)
# Arguments are passed on to `st run` (for example --include-path-regex '^/usage/').
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

SCHEMATHESIS_VERSION=4.32.5
max_examples=${ST_MAX_EXAMPLES:-15}
seed=${ST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
workers=${ST_WORKERS:-1}
venv=${ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/backfill/schemathesis-venv}
bin=${BACKFILL_COORDINATOR:-}
# The dev agent reads BACKFILL_COORDINATOR as its coordinator's address: not this binary.
unset BACKFILL_COORDINATOR

echo "== schemathesis $SCHEMATHESIS_VERSION (virtualenv $venv)"
if ! "$venv/bin/st" --version 2>/dev/null | grep -qx "st, version $SCHEMATHESIS_VERSION"; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

if [ -z "$bin" ]; then
    # A no-op when the tests have just built it; never a stale binary.
    cargo build -p backfill-coordinator --bin backfill-coordinator
    bin=$root/target/debug/backfill-coordinator
fi

work=$(mktemp -d)
reports=${ST_REPORT_DIR:-$work/reports}
dev_pid=
cleanup() {
    if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== dev on free loopback ports ($work)"
"$bin" dev --data-dir "$work/dev" --api-addr 127.0.0.1:0 --link-addr 127.0.0.1:0 \
    --management-addr 127.0.0.1:0 >"$work/dev.log" 2>&1 &
dev_pid=$!
# dev prints `ready` once its agent has registered, after writing dev.env.
for _ in $(seq 1 600); do
    if grep -q '^ready:' "$work/dev.log" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        cat "$work/dev.log" >&2
        echo "dev exited before it was ready" >&2
        exit 1
    fi
    sleep 0.1
done
if ! grep -q '^ready:' "$work/dev.log"; then
    cat "$work/dev.log" >&2
    echo "dev was not ready within 60 s" >&2
    exit 1
fi
# shellcheck disable=SC1091
. "$work/dev/dev.env"
base=${BACKFILL_API%/}

# One pass per identity: the tenant (servers, bservers, webhooks, usage...) and the operator
# (accounts, every account's servers and usage). A tenant's 403s on operator paths and the
# operator's on tenant-only paths are answers too: they must be well-formed and never 5xx.
status=0
extra=("$@")
run() {
    local who=$1 cert=$2 key=$3
    echo "== $who: at most $max_examples cases per operation, seed $seed"
    # From the scratch directory: Schemathesis keeps its example database in ./.schemathesis.
    (cd "$work" && "$venv/bin/st" run "$root/docs/openapi.json" \
        --url "$base" \
        --tls-verify "$BACKFILL_CA" \
        --request-cert "$cert" --request-cert-key "$key" \
        --checks not_a_server_error,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "$max_examples" \
        --seed "$seed" \
        --workers "$workers" \
        --suppress-health-check all \
        --request-timeout 30 \
        --report junit,vcr --report-junit-path "$reports/$who.xml" \
        --report-vcr-path "$reports/$who.yaml" \
        "${extra[@]}") || status=1
}
mkdir -p "$reports"
reports=$(cd "$reports" && pwd)
run tenant "$BACKFILL_CERT" "$BACKFILL_KEY"
run operator "$BACKFILL_ADMIN_CERT" "$BACKFILL_ADMIN_KEY"

if grep -q -E 'panicked|store failed' "$work/dev.log"; then
    grep -E 'panicked|store failed' "$work/dev.log" >&2
    echo "the coordinator logged a panic or a store failure" >&2
    status=1
fi
if [ "$status" != 0 ]; then
    echo "schemathesis found failures (seed $seed; rerun with ST_SEED=$seed)" >&2
fi
exit "$status"
