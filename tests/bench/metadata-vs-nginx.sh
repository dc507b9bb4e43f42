#!/usr/bin/env bash
# Load benchmark for the metadata listener: wrk against the agent's listener serving
# /openstack/latest/meta_data.json, and against nginx serving the same bytes as a static file,
# on this machine, in one run. Prints requests/s and p99 of each and the ratio.
#
#   tests/bench/metadata-vs-nginx.sh [connections=64] [duration=10s] [threads=2]
#
# Installs Debian's nginx-light and wrk if they are missing (needs root and apt).
set -euo pipefail
CONNS=${1:-64}
DURATION=${2:-10s}
THREADS=${3:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PORT_MD=8169
PORT_NGINX=8170
PATH_DOC=/openstack/latest/meta_data.json

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cd "$ROOT"
cargo build --release -q -p backfill-agent --example metadata_serve
WORK=$(mktemp -d)
cleanup() {
    [ -n "${MD_PID:-}" ] && kill "$MD_PID" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

target/release/examples/metadata_serve "127.0.0.1:$PORT_MD" >"$WORK/md.log" 2>&1 &
MD_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT_MD$PATH_DOC" -o "$WORK/doc.json" && break
    sleep 0.1
done
mkdir -p "$WORK/www/openstack/latest"
cp "$WORK/doc.json" "$WORK/www$PATH_DOC"

cat >"$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/tmp;
    proxy_temp_path $WORK/tmp;
    fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp;
    scgi_temp_path $WORK/tmp;
    server {
        listen 127.0.0.1:$PORT_NGINX;
        root $WORK/www;
    }
}
CONF
mkdir -p "$WORK/tmp"
chmod -R a+rX "$WORK" # nginx's workers drop to an unprivileged user
"$NGINX" -c "$WORK/nginx.conf"
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT_NGINX$PATH_DOC" -o /dev/null && break
    sleep 0.1
done
cmp -s <(curl -s "http://127.0.0.1:$PORT_NGINX$PATH_DOC") "$WORK/doc.json" || {
    echo "nginx does not serve the document:"; cat "$WORK/nginx-error.log"; exit 1
}

run() { wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$1"; }
rps() { awk '/^Requests\/sec:/ {print $2}'; }
p99() {
    awk '$1 == "99%" {
        v = $2; u = v; gsub(/[0-9.]/, "", u); gsub(/[a-z]/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000;
        printf "%.3f", v }'
}

echo "document: $(wc -c <"$WORK/doc.json") bytes; $CONNS connections, $THREADS wrk threads, $DURATION each"
run "http://127.0.0.1:$PORT_MD$PATH_DOC" >"$WORK/md.txt"
run "http://127.0.0.1:$PORT_NGINX$PATH_DOC" >"$WORK/nginx.txt"
MD_RPS=$(rps <"$WORK/md.txt"); NG_RPS=$(rps <"$WORK/nginx.txt")
MD_P99=$(p99 <"$WORK/md.txt"); NG_P99=$(p99 <"$WORK/nginx.txt")
grep -q "Non-2xx" "$WORK/md.txt" && { echo "the metadata listener answered errors:"; cat "$WORK/md.txt"; exit 1; }
printf '%-10s %12s %10s\n' server 'requests/s' 'p99 ms'
printf '%-10s %12s %10s\n' backfill "$MD_RPS" "$MD_P99"
printf '%-10s %12s %10s\n' nginx "$NG_RPS" "$NG_P99"
awk -v a="$MD_RPS" -v b="$NG_RPS" 'BEGIN { printf "ratio (backfill / nginx): %.2f\n", a / b }'
