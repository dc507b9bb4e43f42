#!/usr/bin/env bash
# Squeeze latency: how long after a normal server starts to stall the agent squeezes backfill,
# through the real coordinator and agent (real cgroups: run as root).
#
#   tests/bench/squeeze-latency.sh [runs=5] [poll_ms=10] [bin_dir=target/release]
#
# A backfill server spins on every core. Then, RUNS times, a normal server starts that wants
# three times the host's cores (no quota: normal_cpu_quota = false), so it stalls at once; the
# agent's stall poller (every POLL_MS) or, with POLL_MS = 0, the kernel's PSI trigger alone
# (2 s windows without CAP_SYS_RESOURCE) sees it, and the agent squeezes the backfill server to
# its floor (POLL_MS "-": an agent from before the poller, without the setting). The figure is the time between the agent's "workload started" line for the normal
# server and its "backfill squeezed" line (both the agent's own clock), and, from the cgroup,
# the backfill quota in force afterwards. The normal server is stopped between runs, which
# lifts the squeeze.
set -euo pipefail
RUNS=${1:-5}
POLL_MS=${2:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${3:-$ROOT/target/release}
[ "$(id -u)" = 0 ] || { echo "run as root: the agent needs real cgroups" >&2; exit 1; }
[ "$BIN" = "$ROOT/target/release" ] &&
    (cd "$ROOT" && cargo build --release -q -p backfill-coordinator -p backfill-agent -p backfill-tests --bin bf-load)
AGENT_TOP="normal_cpu_quota = false"
# POLL_MS "-" leaves poll_ms out (an agent from before the poller).
AGENT_TABLES="[pressure]
$([ "$POLL_MS" = - ] || echo "poll_ms = $POLL_MS")
release_secs = 1"
. "$ROOT/tests/bench/lib.sh"

LEFT=$((CPUS * MHZ - MHZ))
BURNER=$(new_server bservers burn "$LEFT" "[\"$WORK/bf-load\", \"burn\", \"$((CPUS * 2))\"]")
CROWD=$(new_server servers crowd "$MHZ" "[\"$WORK/bf-load\", \"burn\", \"$((CPUS * 3))\"]")
start bservers "$BURNER"
quota() {
    local d
    for d in "$PARENT/idle/$1" "$PARENT/$1"; do
        [ -f "/sys/fs/cgroup/cpu/$d/cpu.cfs_quota_us" ] && { cat "/sys/fs/cgroup/cpu/$d/cpu.cfs_quota_us"; return; }
        [ -f "/sys/fs/cgroup/$d/cpu.max" ] && { cut -d' ' -f1 "/sys/fs/cgroup/$d/cpu.max"; return; }
    done
}
echo "host: $CPUS cores at $MHZ MHz; poll_ms=$POLL_MS; binaries: $BIN; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "backfill quota before: $(quota "$BURNER") us per 100 ms"
for run in $(seq "$RUNS"); do
    lines_before=$(wc -l <"$WORK/agent.log")
    start servers "$CROWD"
    squeezed=""
    for _ in $(seq 100); do
        if tail -n +"$((lines_before + 1))" "$WORK/agent.log" | grep -q "backfill squeezed"; then squeezed=1; break; fi
        sleep 0.1
    done
    q=$(quota "$BURNER")
    stop servers "$CROWD"
    if [ -z "$squeezed" ]; then echo "run $run: no squeeze within 10 s (quota $q)"; continue; fi
    tail -n +"$((lines_before + 1))" "$WORK/agent.log" | python3 -c '
import re, sys, datetime
crowd, run, quota = sys.argv[1], sys.argv[2], sys.argv[3]
def at(line):
    m = re.match(r"(\S+Z)", line)
    return datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")) if m else None
started = squeezed = None
for line in sys.stdin:
    if started is None and "workload started" in line and crowd in line:
        started = at(line)
    elif started is not None and squeezed is None and "backfill squeezed" in line:
        squeezed = at(line)
ms = (squeezed - started).total_seconds() * 1000
print(f"run {run}: squeezed {ms:.1f} ms after the normal server started; backfill quota {quota} us")
' "$CROWD" "$run" "$q"
    # The squeeze lifts once the normal server is gone.
    for _ in $(seq 100); do [ "$(quota "$BURNER")" != "$q" ] && break; sleep 0.1; done
done
