#!/usr/bin/env bash
# API load benchmark (issue 16, "Measured"): durable bserver creates/s and `?limit=20` list
# reads/s over mutual TLS, through the real coordinator (no agent: nothing is placed, so a create
# is the API's and the store's work), as the store grows.
#
#   tests/bench/api-load.sh [bin_dir=target/release] [sqlite|postgres]
#
# Environment: SECONDS_PER_PHASE (10), PREFILL_TOTAL (100000), PREFILL_MAX_S (300: the prefill
# stops there and says how far it got), CLIENTS (64: the concurrency of the big phases),
# SEGMENTS ("create small big reads": which segments run, below), READERS (32), WRITERS (32),
# WRITE_RATE (1000: creates/s of the paced writers in segments `reads` and `paced`), READ_RATE
# (3000: reads/s of the paced readers in segment `paced`, which is not in the default SEGMENTS).
#
# Segments, each on a fresh coordinator and an empty store (a new SQLite file or a new PostgreSQL
# database), so that each phase starts from the store size it names:
#   create at 1, 16 and 64 clients (from 0 servers);
#   list at 64 clients with 100 servers;
#   prefill to PREFILL_TOTAL (batches of 100, 4 in flight), then list at 64, create at 64 and
#   mixed at 64 (32 list readers beside 32 creators: compare its read p99 with list alone).
#   reads (on the big store, after `big` if it ran): reads alone and beside writes with the same
#   readers, back to back: list at READERS alone, list at READERS beside WRITERS creators going
#   flat out, list at READERS beside WRITERS creators paced to WRITE_RATE/s in all (a write load
#   that waits on IO rather than taking the CPU), list alone again; then the same with `show`
#   (GET of one server) alone and beside the paced writers.
#   paced (on the big store): the same readers paced to READ_RATE reads/s in all, below what the
#   CPU serves, alone and beside the paced writers (list, then show): with neither load
#   saturating the 2 cores, a read's p99 shows what it waits for.
# Each phase prints bf-apiload's JSON line; a table follows. BIN_DIR may hold binaries of another
# commit (backfill-coordinator and bf-apiload), for a before/after comparison; the default
# builds them (`cargo build --release -p backfill-coordinator -p backfill-tests --bin
# backfill-coordinator --bin bf-apiload`: --bin filters every package named, so both are named).
# With `postgres`, a throwaway PostgreSQL (Debian's postgresql package) runs on a loopback port
# with its defaults (fsync on: creates are durable on both backends; SQLite runs WAL with
# synchronous = FULL).
#
# Baseline: main at b6845a6, 2026-11-30, 2 cores shared with other builds (load average 8-13
# throughout: the figures are low and noisy), binaries kept in /work/bench-baseline:
#   PREFILL_MAX_S=120 tests/bench/api-load.sh /work/bench-baseline sqlite   (then ... postgres)
#   phase (servers at start)   SQLite: per_s  p50 ms  p99 ms   PostgreSQL: per_s  p50 ms  p99 ms
#   create 1 client (0)              521.6    1.0     15.1                360.5    1.5     10.9
#   create 16 (0)                    639.6   15.8    112.7                271.9   48.1    168.3
#   create 64 (0)                    299.9   79.2   1202.5                303.5  188.1    540.3
#   list 64, limit 20 (100)         1906.6   23.5    131.8               2184.9   28.5     60.1
#   prefill to 100,000 (batches)    3076/s, 32.5 s                       1951/s, 51.3 s
#   list 64 (100,000)                  1.2  33632   54300                   1.7  24224   39535
#   create 64 (100,000)               33.8   1523    3119                  47.5   1416    1596
#   mixed 64: reads (100,420)          1.4  18551   25045                   2.7  11074   12604
#             creates                  0.9  p99 34930                       1.5  p99 21639
#
# PostgreSQL creates flat as the store grows (branch pgperf, 2026-11-30, same noisy machine, load
# average 6-11): a create no longer walks every server for drive mounts, and new servers are
# written with multi-row INSERTs. SECONDS_PER_PHASE=10 PREFILL_MAX_S=120, per_s (p99 ms):
#   phase (servers at start)   baseline (above) PG   before (main + INSERTs) PG   after PG      after SQLite
#   create 1 client (0)              77.7 (92)          279.9 (21)                   94.7 (48)     390.2 (20)
#   create 16 (0)                    66.5 (491)         956.1 (71)                  592.0 (168)   1132.7 (59)
#   create 64 (0)                    81.1 (1558)       1268.5 (195)                1170.0 (560)    856.1 (1647)
#   list 64, limit 20 (100)         578.8 (220)        2032.0 (126)                2609.9 (79)    1966.1 (69)
#   prefill to 100,000             1105/s, 90.5 s      445/s, 55,500 in 125 s      4466/s, 22.4 s 7161/s, 14.0 s
#   list 64 (100,000)                 0.6 (104473)     1167.9 (192) at 55,500      1731.3 (114)   1847.6 (126)
#   create 64 (100,000)               4.9 (21480)        50.1 (1851) at 55,500     1201.5 (163)   1527.4 (144)
#   mixed 64: reads                   1.5 (25809)        99.4 (776)                 871.7 (153)   1118.2 (157)
#             creates                 0.9               59.3                        275.5          346.5
#
# On a quiet host (2026-11-30 08:01-08:06 UTC, load average 1.5-3.1 from
# the benchmark itself; SECONDS_PER_PHASE=10 PREFILL_MAX_S=120), per_s (p99 ms), baseline b6845a6
# and this main run back to back:
#   phase (servers at start)   baseline SQLite     main SQLite       main PostgreSQL
#   create 1 client (0)           1148.3 (1.5)     1208.7 (1.6)        877.7 (1.9)
#   create 16 (0)                 1179.2 (21.8)    5915.2 (7.2)       3633.7 (7.9)
#   create 64 (0)                 1250.9 (94.4)    7090.7 (18.2)      6000.7 (18.3)
#   list 64, limit 20 (100)       6330.4 (15.6)    7948.2 (12.2)      6857.6 (16.9)
#   prefill to 100,000            8830/s, 11.3 s   24591/s, 4.1 s    28587/s, 3.5 s
#   list 64 (100,000)                3.6 (18173)   7655.1 (17.5)      5939.2 (20.7)
#   create 64 (100,000)            111.1 (752)     6400.0 (22.8)      5303.4 (24.8)
#   mixed 64: reads                  3.2 (10739)   4799.2 (19.7)      4145.1 (21.1)
#             creates                1.6           1950.9 (39.5)      1218.0 (52.3)
#
# Reads alone and beside writes, the same readers (segment `reads`, branch `reads`, 2026-11-30;
# the host busy with two other helpers' builds, load average 4.7-7.1, so the coordinator had about
# one core: compare within a pair, not with the quiet-host figures above).
#   SEGMENTS=reads SECONDS_PER_PHASE=10 PREFILL_MAX_S=120 tests/bench/api-load.sh DIR sqlite
# DIR: main c567b54's coordinator or the branch's (account cache), each with the branch's
# bf-apiload; two pairs, each run back to back. per_s (p99 ms); "wait": the mean time a read
# waited for the model's lock and the share that waited over 1 ms (metric
# model_read_wait_seconds, branch only):
#                                  pair 1 (09:13, load 4.8-6.7)     pair 2 (09:25, load 5.4-7.1)
#   phase (servers at start)       main           branch           main           branch          branch wait
#   list 32 (100,000)              5565.4 (17.4)  6595.9 (20.0)    5847.5 (17.2)  5647.6 (19.0)    649 us, 13.7%
#   list 32 + 32 creators          3406.2 (35.2)  4266.2 (52.0)    4332.6 (22.7)  3781.1 (39.2)   1787 us, 33.2%
#     creates/s                    1037.3          946.8           1450.4         1139.1
#   list 32 + creators at 1000/s   3632.8 (33.8)  3302.3 (113.3)   4373.4 (29.0)  3439.0 (49.4)   1960 us, 24.6%
#     creates/s                     800.5          628.6            934.0          783.7
#   list 32 again (~118,000)       4105.7 (31.3)  4652.5 (38.4)    5270.6 (21.0)  4486.9 (31.2)   1101 us, 16.1%
#   show 32                        6530.3 (21.3)  7515.9 (38.1)    6925.8 (15.9)  9643.9 (17.7)    266 us,  2.4%
#   show 32 + creators at 1000/s   5240.6 (25.6)  8238.7 (34.5)    7418.6 (21.9) 11832.7 (14.5)    264 us,  5.1%
# The account cache: shows +15% and +39% alone, +57% and +59% beside writes (a show is cheap, so
# the store lookup it saved was a large part of it); lists within the noise. Reads beside writes:
# lists lose 25-40% of their rate beside 32 creators whether these run flat out or at 1000/s (on
# this loaded host 1000/s is most of what they can do: the write load is CPU, not IO), and wait
# about 1.2 ms more for the model's lock (the lock is not held across IO: writers hold it while
# they change the model; readers also queue behind each other, 0.65 ms alone). A profile (perf,
# mixed phase) puts 35% of the coordinator's CPU in the list handler's JSON (each summary made a
# serde_json::Value, then the Vec of them converted again), 6% in page_servers under the lock,
# 6% in SQLite commits, 1-2% in creates' work under the lock.
#
# The same segment after merging main 9a6a0fd (group commit everywhere, typed API views) into
# this branch, 10:09-10:11 UTC, load average 3.4-4.5, against c567b54 back to back:
#   phase (servers at start)       c567b54         branch + main    branch wait
#   list 32 (100,000)               6510.5 (11.6)  12024.5 (6.3)    2037 us, 87.6%
#   list 32 + 32 creators           4742.6 (14.7)   7674.3 (11.4)   2664 us, 82.9%
#     creates/s                     1972.9          2740.3
#   list 32 + creators at 1000/s    4618.0 (20.0)   9633.9 (10.0)   2351 us, 85.1%
#     creates/s                      977.8           999.7
#   list 32 again (~130,000)        7657.4 (11.6)  12330.4 (5.3)    2128 us, 96.6%
#   show 32                        11668.0 (6.4)   34649.9 (2.2)     151 us,  2.5%
#   show 32 + creators at 1000/s    9037.9 (9.6)   29257.4 (3.4)     220 us,  5.3%
# Lists are now bound by the model's lock: 32 readers queue behind each other (2.0 ms of a
# 2.6 ms median), and writers add 0.3-0.6 ms to that wait; paced writers (1000/s, IO-bound here)
# cost lists 20% of their rate and p99 6.3 -> 10.0 ms. The next step for "reads never slower
# under writes" is readers that do not exclude each other (an RwLock, or a snapshot of the
# server index and records that lists read without the model's lock).
#
# The model as an RwLock (reads share it; main ff3d0f1 "after" vs 9f3e387 "before", release
# builds, 10:26-10:38 UTC, load average 2.8-5.4 with a helper's build running), back to back.
# SEGMENTS=reads (readers flat out), before, after, after, before; reads/s (p99 ms), mean wait
# for the model's lock:
#   phase                          before                 after                  after                  before
#   list 32 (100,000)              8591 (11.3) 1183 us    9372 (11.1)  102 us    9199 (10.6)   99 us    9374 (9.3)  288 us
#   list 32 + 32 creators          6250 (18.1)  811 us    6660 (17.5)  524 us    6957 (15.1)  486 us    7336 (16.0) 649 us
#   list 32 + creators at 1000/s   6425 (19.2)  802 us    7063 (16.0)  390 us   10689 (10.1)  482 us    7881 (13.6) 429 us
#   show 32                       16936 (8.0)   177 us   17324 (4.6)    70 us   18731 (6.2)    66 us   18233 (6.2)   73 us
#   show 32 + creators at 1000/s  13596 (10.3)  143 us   15800 (9.1)   119 us   17065 (8.0)   109 us   16789 (9.0)  108 us
# Readers no longer queue behind each other (list alone: 1183/288 -> 102/99 us of lock wait),
# but flat-out readers saturate the 2 cores (list alone ~9,300/s either way), so beside writes
# they lose the CPU the writes take. SEGMENTS=paced (32 readers paced to 3000 reads/s in all,
# below what the CPU serves, beside creators paced to 1000/s), after, before, after:
#   phase                          after                  before                 after
#   list 32 at 3000/s              2963 (16.4)  87 us     2984 (11.9) 287 us     2968 (14.5)  53 us
#   + creators at 1000/s           2966 (14.4) 179 us     2964 (14.1) 186 us     2983 (11.8) 207 us
#   list 32 at 3000/s again        2961 (14.3)  96 us     2962 (12.3) 417 us     2964 (14.4)  78 us
#   show 32 at 3000/s              2967 (9.6)   77 us     2959 (9.6)  105 us     2973 (7.0)   36 us
#   + creators at 1000/s           2960 (16.0) 128 us     2963 (10.6)  82 us     2962 (14.8) 174 us
# With the CPU not saturated, list reads beside writes have the p99 they have alone (14.4 and
# 11.8 vs 14.3-16.4 ms); shows (1.2 ms at p50) see their p99 rise to 15-16 ms beside writes in
# the "after" runs while their mean lock wait stays 0.1-0.2 ms: what remains is the 2 cores the
# creators' TLS, JSON and SQLite work share with them, not a wait on the writes' IO.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$ROOT/target/release}
BACKEND=${2:-sqlite}
SECS=${SECONDS_PER_PHASE:-10}
TOTAL=${PREFILL_TOTAL:-100000}
PREFILL_MAX_S=${PREFILL_MAX_S:-300}
CLIENTS=${CLIENTS:-64}
SEGMENTS=${SEGMENTS:-create small big reads}
READERS=${READERS:-32}
WRITERS=${WRITERS:-32}
WRITE_RATE=${WRITE_RATE:-1000}
READ_RATE=${READ_RATE:-3000}
runs() { [[ " $SEGMENTS " == *" $1 "* ]]; }
case "$BACKEND" in sqlite | postgres) ;; *)
    echo "usage: $0 [bin_dir] [sqlite|postgres]" >&2
    exit 64
    ;;
esac
[ "$BIN" = "$ROOT/target/release" ] &&
    (cd "$ROOT" && cargo build --release -q -p backfill-coordinator -p backfill-tests \
        --bin backfill-coordinator --bin bf-apiload)
BIN=$(cd "$BIN" && pwd)

WORK=$(mktemp -d /tmp/backfill-apiload.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
PG_BIN=
as_pg=()
cleanup() {
    [ -n "${COORD_PID:-}" ] && kill "$COORD_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "$PG_BIN" ] && "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

P="$WORK/pki"
"$BIN/backfill-coordinator" pki init --dir "$P" >/dev/null 2>&1
"$BIN/backfill-coordinator" pki issue --dir "$P" --role coordinator --name coordinator --san localhost --san 127.0.0.1 >/dev/null 2>&1
"$BIN/backfill-coordinator" pki issue --dir "$P" --role account --name bench >/dev/null 2>&1

if [ "$BACKEND" = postgres ]; then
    # As .ci/run: initdb in a temp dir as an unprivileged user (PostgreSQL will not run as
    # root), trust auth, listening on a loopback port only.
    PG_BIN=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1)
    [ -n "$PG_BIN" ] || { echo "no PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
    mkdir "$WORK/pg"
    if [ "$(id -u)" = 0 ]; then
        chown nobody "$WORK/pg"
        as_pg=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups)
    fi
    PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${as_pg[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
        -o "-k $WORK/pg -c listen_addresses=127.0.0.1 -p $PG_PORT" start >/dev/null
fi

SEGMENT=0
log_value() { # FILE NEEDLE KEY
    for _ in $(seq 300); do
        v=$({ grep "$2" "$1" 2>/dev/null || true; } | sed -n "s/.*$3=\([^ ]*\).*/\1/p" | head -1)
        [ -n "$v" ] && { echo "$v"; return; }
        sleep 0.1
    done
    echo "no $2 in $1" >&2
    cat "$1" >&2
    exit 1
}
# A coordinator on an empty store.
fresh() {
    stop_coordinator
    SEGMENT=$((SEGMENT + 1))
    local db="$WORK/db$SEGMENT.sqlite"
    if [ "$BACKEND" = postgres ]; then
        "${as_pg[@]}" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "bench$SEGMENT"
        db="postgres://postgres@127.0.0.1:$PG_PORT/bench$SEGMENT"
    fi
    cat >"$WORK/coordinator.toml" <<CONF
api_addr = "127.0.0.1:0"
link_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
database = "$db"
backfill_accounts = ["bench"]
drain_timeout_s = 1
# A server without a workload is an exec one; the default lets nobody run exec.
[drivers]
exec = "everyone"
[tls]
ca = "$P/ca.pem"
cert = "$P/coordinator.pem"
key = "$P/coordinator.key"
CONF
    local log="$WORK/coordinator$SEGMENT.log"
    NO_COLOR=1 RUST_LOG=info "$BIN/backfill-coordinator" run --config "$WORK/coordinator.toml" >"$log" 2>&1 &
    COORD_PID=$!
    API=$(log_value "$log" "API listening" api_addr)
    ADMIN=$(log_value "$log" "admin listening" admin_addr)
}
# How long reads waited for the model's lock so far (the coordinator's histogram
# model_read_wait_seconds): "SUM COUNT COUNT_OVER_1MS", or "" from a coordinator without it.
read_wait() {
    curl -sf "http://$ADMIN/metrics" 2>/dev/null | awk '
        /^backfill_coordinator_model_read_wait_seconds_sum/ { s = $2 }
        /^backfill_coordinator_model_read_wait_seconds_count/ { c = $2 }
        /^backfill_coordinator_model_read_wait_seconds_bucket\{le="0\.00102/ { b = $2 }
        END { if (c != "") print s, c, c - b }' || true
}
stop_coordinator() {
    if [ -n "${COORD_PID:-}" ]; then
        kill "$COORD_PID" 2>/dev/null || true
        wait "$COORD_PID" 2>/dev/null || true
        COORD_PID=
    fi
}
phase() { # LABEL PHASE ARGS...
    local label=$1
    shift
    local line before after
    before=$(read_wait)
    line=$("$BIN/bf-apiload" --api "https://$API" --ca "$P/ca.pem" --cert "$P/bench.pem" \
        --key "$P/bench.key" "$@")
    after=$(read_wait)
    echo "$label $line"
    printf '{"label": "%s", "load": "%s", "wait": "%s/%s", "result": %s}\n' "$label" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "$before" "$after" "$line" >>"$RESULTS"
}

echo "api-load: $BACKEND; $SECS s per phase; prefill to $TOTAL (at most $PREFILL_MAX_S s);" \
    "binaries: $BIN; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if runs create; then
    for n in 1 16 "$CLIENTS"; do
        fresh
        phase "create-$n" create --clients "$n" --seconds "$SECS"
    done
fi
if runs small; then
    fresh
    phase "prefill-100" prefill --total 100
    phase "list-$CLIENTS@100" list --clients "$CLIENTS" --seconds "$SECS" --limit 20
fi
if runs big || runs reads || runs paced; then
    fresh
    phase "prefill-$TOTAL" prefill --total "$TOTAL" --max-seconds "$PREFILL_MAX_S"
fi
if runs big; then
    phase "list-$CLIENTS@big" list --clients "$CLIENTS" --seconds "$SECS" --limit 20
    phase "create-$CLIENTS@big" create --clients "$CLIENTS" --seconds "$SECS"
    phase "mixed-$CLIENTS@big" mixed --clients "$CLIENTS" --seconds "$SECS" --limit 20
fi
if runs reads; then
    R=$READERS
    W=$WRITERS
    phase "list-$R" list --clients "$R" --seconds "$SECS" --limit 20
    phase "list-$R+create-$W" mixed --readers "$R" --writers "$W" --seconds "$SECS" --limit 20
    phase "list-$R+create@$WRITE_RATE" mixed --readers "$R" --writers "$W" \
        --write-rate "$WRITE_RATE" --seconds "$SECS" --limit 20
    phase "list-$R-again" list --clients "$R" --seconds "$SECS" --limit 20
    phase "show-$R" list --read show --clients "$R" --seconds "$SECS"
    phase "show-$R+create@$WRITE_RATE" mixed --read show --readers "$R" --writers "$W" \
        --write-rate "$WRITE_RATE" --seconds "$SECS"
fi
if runs paced; then
    # Reads paced below what the CPU serves (READ_RATE), alone and beside paced creators: a
    # read's p99 then shows what it waits for, not a CPU both loads saturate.
    R=$READERS
    W=$WRITERS
    phase "list-$R@$READ_RATE" list --clients "$R" --read-rate "$READ_RATE" --seconds "$SECS" --limit 20
    phase "list-$R@$READ_RATE+create@$WRITE_RATE" mixed --readers "$R" --writers "$W" \
        --read-rate "$READ_RATE" --write-rate "$WRITE_RATE" --seconds "$SECS" --limit 20
    phase "list-$R@$READ_RATE-again" list --clients "$R" --read-rate "$READ_RATE" --seconds "$SECS" --limit 20
    phase "show-$R@$READ_RATE" list --read show --clients "$R" --read-rate "$READ_RATE" --seconds "$SECS"
    phase "show-$R@$READ_RATE+create@$WRITE_RATE" mixed --read show --readers "$R" --writers "$W" \
        --read-rate "$READ_RATE" --write-rate "$WRITE_RATE" --seconds "$SECS"
fi
stop_coordinator

python3 - "$RESULTS" "$BACKEND" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nsummary ({sys.argv[2]}):")
head = ("phase", "servers", "clients", "per_s", "p50_ms", "p99_ms", "errors", "note", "load")
fmt = "{:<22} {:>8} {:>7} {:>9} {:>8} {:>9} {:>6}  {:<70} {}"
print(fmt.format(*head))
for row in rows:
    r = row["result"]
    p = r["phase"]
    note = ""
    if p == "create":
        per_s, p50, p99 = r["creates_per_s"], r["p50_ms"], r["p99_ms"]
    elif p == "list":
        per_s, p50, p99 = r["reads_per_s"], r["p50_ms"], r["p99_ms"]
    elif p == "mixed":
        per_s, p50, p99 = r["reads_per_s"], r["read_p50_ms"], r["read_p99_ms"]
        note = (f"reads; creates {r['creates_per_s']}/s "
                f"p99 {r['create_p99_ms']} ms")
    else:
        per_s, p50, p99 = r["creates_per_s"], "", ""
        note = (f"{r['created']} in {r['seconds']} s, now {r['after']}"
                + ("" if r["reached"] else " (target not reached)"))
    # The model lock waits of the phase's reads: mean, and the share over 1 ms.
    before, _, after = row.get("wait", "/").partition("/")
    if before and after and p in ("list", "mixed"):
        (s0, c0, o0), (s1, c1, o1) = ([float(x) for x in w.split()] for w in (before, after))
        n = max(c1 - c0, 1)
        note = (note + "; " if note else "") + (
            f"lock wait mean {(s1 - s0) / n * 1e6:.0f} us, {(o1 - o0) / n * 100:.1f}% > 1 ms")
    servers = r.get("servers_at_start", r.get("before", ""))
    print(fmt.format(row["label"], servers, r["clients"], per_s, p50, p99, r["errors"], note,
                     row["load"]))
PY
