# Shared by the benchmarks in this directory (sourced, not run): a throwaway CA, a coordinator
# and an agent on loopback with real cgroups under a parent of their own, and helpers to make,
# start and stop servers through the API. Expects ROOT and BIN; AGENT_TOP and AGENT_TABLES are
# added to the agent's configuration (top-level keys, then tables). BENCH_OLD_CONFIG=1 leaves
# out the keys binaries from before the drivers' settings refuse (agent `exec_driver`,
# coordinator `[drivers]`: they ran exec workloads without being asked), for comparisons.
WORK=$(mktemp -d)
chmod 755 "$WORK"
install -m 755 "$BIN/bf-load" "$WORK/bf-load"
PARENT="backfill-bench-$$"
cleanup() {
    for p in ${AGENT_PID:-} ${COORD_PID:-}; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

COORD_DRIVERS=$'[drivers]\nexec = "everyone"'
AGENT_EXEC='exec_driver = true'
if [ -n "${BENCH_OLD_CONFIG:-}" ]; then COORD_DRIVERS=''; AGENT_EXEC=''; fi

P="$WORK/pki"
"$BIN/backfill-coordinator" pki init --dir "$P" >/dev/null 2>&1
"$BIN/backfill-coordinator" pki issue --dir "$P" --role coordinator --name coordinator --san localhost --san 127.0.0.1 >/dev/null 2>&1
"$BIN/backfill-coordinator" pki issue --dir "$P" --role agent --name bench-host >/dev/null 2>&1
"$BIN/backfill-coordinator" pki issue --dir "$P" --role account --name bench >/dev/null 2>&1

cat >"$WORK/coordinator.toml" <<CONF
api_addr = "127.0.0.1:0"
link_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
database = "$WORK/db.sqlite"
backfill_accounts = ["bench"]
${COORD_DRIVERS}
[tls]
ca = "$P/ca.pem"
cert = "$P/coordinator.pem"
key = "$P/coordinator.key"
CONF
NO_COLOR=1 RUST_LOG=info "$BIN/backfill-coordinator" run --config "$WORK/coordinator.toml" >"$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
log_value() { # FILE NEEDLE KEY
    for _ in $(seq 300); do
        v=$({ grep "$2" "$1" 2>/dev/null || true; } | sed -n "s/.*$3=\([^ ]*\).*/\1/p" | head -1)
        [ -n "$v" ] && { echo "$v"; return; }
        sleep 0.1
    done
    echo "no $2 in $1" >&2; cat "$1" >&2; exit 1
}
API=$(log_value "$WORK/coordinator.log" "API listening" api_addr)
LINK=$(log_value "$WORK/coordinator.log" "agent link listening" link_addr)

cat >"$WORK/agent.toml" <<CONF
coordinator = "$LINK"
coordinator_name = "localhost"
state_dir = "$WORK/agent"
cgroup_parent = "$PARENT"
run_as = "nobody"
default_command = ["sleep", "600"]
stop_workloads_on_exit = true
report_interval_secs = 1
${AGENT_EXEC}
${AGENT_TOP:-}
[tls]
ca = "$P/ca.pem"
cert = "$P/bench-host.pem"
key = "$P/bench-host.key"
[metadata]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
${AGENT_TABLES:-}
CONF
NO_COLOR=1 RUST_LOG=info "$BIN/backfill-agent" --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
log_value "$WORK/agent.log" "connected to the coordinator" protocol_version >/dev/null
CPUS=$(log_value "$WORK/agent.log" "discovered" cpus)
MHZ=$(log_value "$WORK/agent.log" "discovered" mhz)

api() { # METHOD PATH [BODY]
    curl -sS --fail-with-body --cacert "$P/ca.pem" --cert "$P/bench.pem" --key "$P/bench.key" \
        -X "$1" "https://$API/api/2.0/$2" -H 'content-type: application/json' ${3:+-d "$3"}
}
new_server() { # FAMILY NAME MHZ COMMAND_JSON
    api POST "$1/" "{\"objects\": [{\"name\": \"$2\", \"cpu\": $3, \"mem\": 268435456, \"smp\": 1,
        \"vnc_password\": \"x\", \"workload\": {\"command\": $4}}]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["objects"][0]["uuid"])'
}
status() { api GET "$1/$2/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'; }
wait_status() { # FAMILY UUID STATUS
    for _ in $(seq 600); do [ "$(status "$1" "$2")" = "$3" ] && return; sleep 0.2; done
    echo "$2 never got to $3" >&2; exit 1
}
start() { api POST "$1/$2/action/?do=start" '{}' >/dev/null; wait_status "$1" "$2" running; }
stop() { api POST "$1/$2/action/?do=stop" '{}' >/dev/null; wait_status "$1" "$2" stopped; }
cpuacct() { # UUID: CPU ns used so far (v1 cpuacct or v2 cpu.stat), in its class parent
    local d
    for d in "$PARENT/idle/$1" "$PARENT/normal/$1" "$PARENT/$1"; do
        if [ -f "/sys/fs/cgroup/cpuacct/$d/cpuacct.usage" ]; then
            cat "/sys/fs/cgroup/cpuacct/$d/cpuacct.usage"; return; fi
        if [ -f "/sys/fs/cgroup/$d/cpu.stat" ]; then
            awk '/usage_usec/ {print $2 * 1000}' "/sys/fs/cgroup/$d/cpu.stat"; return; fi
    done
    echo 0
}
result() { tail -1 "$WORK/agent/logs/$1.log"; }
