#!/usr/bin/env bash
# Three coordinators, a PostgreSQL and one agent on this machine (docs/ha.md): the HA
# counterpart of `backfill-coordinator dev`. Everything lives in DIR (default ./backfill-ha-dev);
# Ctrl-C stops it all. Needs PostgreSQL's server binaries (apt-get install postgresql) and the
# binaries built (cargo build). As root, PostgreSQL runs as nobody.
#
#   scripts/ha-dev.sh [DIR]
#   backfillctl --config DIR/backfillctl.toml status          # coordinators and the leader
#   curl -s http://127.0.0.1:9511/ready                          # c1's role and the epoch
#   kill -9 <pid of the leader>                                  # watch another take over
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-./backfill-ha-dev}")
bin=${BACKFILL_BIN:-$PWD/target/debug}
pg_bin=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1)
[ -x "$pg_bin/initdb" ] || { echo "no PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
mkdir -p "$dir"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$dir/pg" && chown nobody "$dir/pg"
    as_pg=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups)
fi
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg/data" -m fast stop >/dev/null 2>&1 || true
}
trap stop EXIT INT TERM

if [ ! -d "$dir/pg/data" ]; then
    "${as_pg[@]}" "$pg_bin/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
fi
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w \
    -o "-k $dir/pg -c listen_addresses= -c max_connections=100" start >/dev/null
"$pg_bin/createdb" -h "$dir/pg" -U postgres backfill 2>/dev/null || true
db="postgres://postgres@localhost/backfill?host=$dir/pg&port=5432"

pki=$dir/pki
if [ ! -f "$pki/ca.pem" ]; then
    "$bin/backfill-coordinator" pki init --dir "$pki"
    "$bin/backfill-coordinator" pki issue --dir "$pki" --role coordinator --name coordinator \
        --san localhost --san 127.0.0.1
    "$bin/backfill-coordinator" pki issue --dir "$pki" --role agent --name ha-dev-host
    "$bin/backfill-coordinator" pki issue --dir "$pki" --role admin --name ops
    "$bin/backfill-coordinator" pki issue --dir "$pki" --role account --name tenant
fi

links=()
for i in 1 2 3; do
    cat >"$dir/c$i.toml" <<TOML
api_addr = "127.0.0.1:95${i}0"
link_addr = "127.0.0.1:95${i}1"
admin_addr = "127.0.0.1:95${i}2"
database = "$db"
backfill_accounts = ["tenant"]
[tls]
ca = "$pki/ca.pem"
cert = "$pki/coordinator.pem"
key = "$pki/coordinator.key"
[drivers]
exec = "everyone"
[ha]
name = "c$i"
TOML
    links+=("\"127.0.0.1:95${i}1\"")
    RUST_LOG=${RUST_LOG:-info} "$bin/backfill-coordinator" run --config "$dir/c$i.toml" \
        >"$dir/c$i.log" 2>&1 &
    pids+=($!)
    echo "c$i: API https://127.0.0.1:95${i}0, /ready http://127.0.0.1:95${i}2/ready, pid $!, log $dir/c$i.log"
done

# Workloads never run as root: as root they run as nobody (no cgroups here either way).
run_as=""
[ "$(id -u)" = 0 ] && run_as="nobody"
cat >"$dir/agent.toml" <<TOML
coordinators = [$(IFS=,; echo "${links[*]}")]
coordinator_name = "localhost"
state_dir = "$dir/agent"
cgroups = "none"
run_as = "$run_as"
default_command = ["sleep", "infinity"]
exec_driver = true
stop_workloads_on_exit = true
[tls]
ca = "$pki/ca.pem"
cert = "$pki/ha-dev-host.pem"
key = "$pki/ha-dev-host.key"
[metadata]
bind = "127.0.0.1:9580"
[admin]
bind = "127.0.0.1:9581"
TOML
RUST_LOG=${RUST_LOG:-info} "$bin/backfill-agent" --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
pids+=($!)
echo "agent: pid $!, log $dir/agent.log"

cat >"$dir/backfillctl.toml" <<TOML
api = "https://127.0.0.1:9520/api/2.0/"
ca = "$pki/ca.pem"
cert = "$pki/ops.pem"
key = "$pki/ops.key"
TOML
echo "backfillctl --config $dir/backfillctl.toml status   (any coordinator's URL works)"
echo "Ctrl-C stops everything."
wait
