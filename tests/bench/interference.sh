#!/usr/bin/env bash
# Interference benchmark: how much a normal server feels backfill neighbours, through the real
# coordinator and agent (real cgroups: run as root on a host with cgroup v1 or v2 controllers).
#
#   tests/bench/interference.sh [seconds=20] [bin_dir=target/release]
#
# On a host of N cores at M MHz, two normal servers run alone, then next to backfill servers
# that spin on every core they are given, then next to a memory-hungry backfill server:
#   - "work": a CPU-bound job on one core (cpu = M MHz, 1 vCPU): units of work per second;
#   - "tick": a latency-sensitive task (100 MHz): wakes every 10 ms for a short request (a sixteenth of a work unit); p50/p99
#     of lateness + work.
# The backfill servers share what the normal ones leave: (N x M - M - 100) MHz.
# Prints each phase's figures, the throughput ratio (with backfill / alone), the p99s, and the
# share of the cycles the normal servers left idle that backfill used (from the cgroups'
# cpuacct), both against an otherwise empty host (all cores less the normal servers') and
# against what the host really left (backfill's time plus the host's idle time in /proc/stat:
# the fair figure on a host that runs other things too). BIN_DIR may hold binaries of another commit, for a before/after comparison (build
# them with `cargo build --release -p backfill-coordinator -p backfill-agent -p backfill-tests`).
set -euo pipefail
SECONDS_PER_PHASE=${1:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${2:-$ROOT/target/release}
[ "$(id -u)" = 0 ] || { echo "run as root: the agent needs real cgroups" >&2; exit 1; }
[ "$BIN" = "$ROOT/target/release" ] &&
    (cd "$ROOT" && cargo build --release -q -p backfill-coordinator -p backfill-agent -p backfill-tests --bin bf-load)

. "$ROOT/tests/bench/lib.sh"


WORKER=$(new_server servers work "$MHZ" "[\"$WORK/bf-load\", \"work\", \"$SECONDS_PER_PHASE\"]")
TICKER=$(new_server servers tick 100 "[\"$WORK/bf-load\", \"tick\", \"$SECONDS_PER_PHASE\"]")
LEFT=$((CPUS * MHZ - MHZ - 100))
BURNERS=()
for i in $(seq "$CPUS"); do
    BURNERS+=("$(new_server bservers "burn$i" $((LEFT / CPUS)) "[\"$WORK/bf-load\", \"burn\", \"$CPUS\"]")")
done
HOG=$(new_server bservers hog $((LEFT / 2)) "[\"$WORK/bf-load\", \"hog\", \"200\"]")

phase() { # NAME BACKFILL_UUIDS...
    local name=$1; shift
    for b in "$@"; do start bservers "$b"; done
    local before=0 after=0
    api POST "servers/$WORKER/action/?do=start" '{}' >/dev/null
    api POST "servers/$TICKER/action/?do=start" '{}' >/dev/null
    wait_status servers "$WORKER" running
    # Backfill's CPU over the measured window: while "work" runs (it runs SECONDS exactly).
    local t0; t0=$(date +%s%N)
    for b in "$@"; do before=$((before + $(cpuacct "$b"))); done
    local idle0; idle0=$(host_idle_ns)
    sleep "$((SECONDS_PER_PHASE - 1))"
    local idle1; idle1=$(host_idle_ns)
    for b in "$@"; do after=$((after + $(cpuacct "$b"))); done
    local t1; t1=$(date +%s%N)
    wait_status servers "$WORKER" stopped
    wait_status servers "$TICKER" stopped
    for b in "$@"; do stop bservers "$b"; done
    echo "$name $(result "$WORKER") $(result "$TICKER") backfill_cpu_ns=$((after - before)) wall_ns=$((t1 - t0)) host_idle_ns=$((idle1 - idle0))"
}

host_idle_ns() { # the host's idle + iowait time so far, all CPUs (/proc/stat, USER_HZ = 100)
    awk '/^cpu / {printf "%.0f\n", ($5 + $6) * 10000000}' /proc/stat
}

echo "host: $CPUS cores at $MHZ MHz; $SECONDS_PER_PHASE s per phase; binaries: $BIN; load average $(cut -d' ' -f1-3 /proc/loadavg)"
ALONE=$(phase alone)
echo "$ALONE"
CPU=$(phase cpu "${BURNERS[@]}")
echo "$CPU"
MEM=$(phase memory "$HOG")
echo "$MEM"
python3 - "$CPUS" "$ALONE" "$CPU" "$MEM" <<'PY'
import json, re, sys
cpus = int(sys.argv[1])
def parse(line):
    docs = [json.loads(m) for m in re.findall(r'\{[^}]*\}', line)]
    work = next(d for d in docs if d["mode"] == "work")
    tick = next(d for d in docs if d["mode"] == "tick")
    kv = dict(re.findall(r'(\w+)=(\d+)', line))
    return work, tick, int(kv["backfill_cpu_ns"]), int(kv["wall_ns"]), int(kv["host_idle_ns"])
alone, cpu, mem = (parse(l) for l in sys.argv[2:5])
for name, (w, t, bf, wall, left) in (("cpu", cpu), ("memory", mem)):
    ratio = w["units_per_s"] / alone[0]["units_per_s"]
    # Cycles the normal servers leave idle: all cores less the one "work" keeps busy (its
    # throughput share of a core) and the ticker's small share.
    normal_cores = ratio * 1.0 + 0.01
    idle_ns = max((cpus - normal_cores) * wall, 1)
    print(f"{name}: normal throughput {ratio:.3f} of alone; tick p99 {t['p99_us']} us "
          f"(alone {alone[1]['p99_us']} us); backfill used {bf / idle_ns:.2f} of the idle cycles "
          f"({bf / wall:.2f} cores); of the cycles nothing else on the host wanted "
          f"(backfill's + the host's idle time) backfill used {bf / max(bf + left, 1):.2f}")
PY
