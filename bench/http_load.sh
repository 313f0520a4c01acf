#!/usr/bin/env bash
# HTTP ingest load test on loopback, bounded in requests and time.
#
#   bench/http_load.sh [REQUESTS] [BATCH_REQUESTS]
#
# First measures the HTTP stack's own limit: bench's `http_null` (an axum
# server on sluice's axum/hyper/tokio, default worker threads, answering 202
# to POST /ingest and doing nothing else) under the same `loadgen` runs as
# sluice below. Then starts sluice (release build) with an HTTP source ->
# count per country -> table, and runs `loadgen`:
#   1. single-event requests (REQUESTS, default 200000, CONNECTIONS
#      connections, default 256),
#   2. NDJSON batches of 1000 events (BATCH_REQUESTS, default 2000, 16
#      connections),
# with fsync on, then again with fsync off. After each run it reads the
# counts back over HTTP and checks that sluice counted exactly the events it
# accepted (202); the trivial server must have accepted every request.
# Prints one table: each sluice row also gives its requests/s, events/s and
# p99 as ratios of the trivial server's in the same case (same connections,
# requests and batch size). Exits non-zero on a count mismatch or when the
# trivial server did not accept everything.
#   env: BENCH_BIN_DIR   take sluice, loadgen and http_null from this
#                        directory instead of `cargo build --release`
set -euo pipefail
REQUESTS=${1:-200000}
BATCH_REQUESTS=${2:-2000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
((REQUESTS <= 2000000 && BATCH_REQUESTS <= 20000)) || { echo "bounded: REQUESTS <= 2M, BATCH_REQUESTS <= 20k"; exit 2; }
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
else
    cargo build --release -q -p sluice -p sluice-bench
    BIN=target/release
fi
[[ -x $BIN/sluice && -x $BIN/loadgen && -x $BIN/http_null ]] || { echo "no sluice, loadgen and http_null in $BIN"; exit 2; }
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SINGLE_CONNECTIONS=${CONNECTIONS:-256}

# The trivial server under one loadgen run: prints its row, keeps loadgen's
# JSON in NULL[label] for the ratios; status 1 unless every request got 202.
run_null() { # label connections requests batch
    local label=$1 conns=$2 reqs=$3 batch=$4 at pid result
    at=$(port)
    "$BIN/http_null" --address "127.0.0.1:$at" --path /ingest 2>"$WORK/null.log" &
    pid=$!
    for _ in $(seq 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -XPOST --data '{}' "127.0.0.1:$at/ingest") == 202 ]] && break
        sleep 0.1
    done
    result=$("$BIN/loadgen" --url "http://127.0.0.1:$at/ingest" --connections "$conns" --requests "$reqs" --batch "$batch" --seconds 120 | tail -1)
    kill -TERM $pid; wait $pid || true
    NULL[$label]=$result
    python3 - "$label" "$result" "$reqs" "$batch" <<'PY'
import json, sys
label, r, reqs, batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok = "all accepted" if r["accepted_events"] == reqs * batch else f"NOT ALL ACCEPTED ({r['accepted_events']} of {reqs * batch})"
print(f"| {label} | trivial axum server | - | {r['requests']} | {r['requests_per_s']:,.0f} | {r['events_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['accepted_events']} | {r['rejected_requests']}/{r['errors']} | {ok} | 1.00 | 1.00 | 1.00 |")
sys.exit(0 if ok == "all accepted" else 1)
PY
}

run_case() { # fsync label connections requests batch
    local fsync=$1 label=$2 conns=$3 reqs=$4 batch=$5
    local dir="$WORK/$label-$fsync" ingest admin
    ingest=$(port); admin=$(port)
    mkdir -p "$dir"
    cat >"$dir/p.toml" <<TOML
[pipeline]
name = "http-load"
[state]
dir = "$dir/state"
[checkpoint]
interval = "1s"
[admin]
address = "127.0.0.1:$admin"
[sources.ingest]
type = "http"
address = "127.0.0.1:$ingest"
fsync = $fsync
max_backlog_events = 5000000
[transforms.by_country]
type = "aggregate"
inputs = ["ingest"]
group_by = ["country"]
aggregates = { n = "count" }
[sinks.counts]
type = "table"
inputs = ["by_country"]
TOML
    "$BIN/sluice" run "$dir/p.toml" 2>"$dir/log" &
    local pid=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
    local result
    result=$("$BIN/loadgen" --url "http://127.0.0.1:$ingest/ingest" --connections "$conns" --requests "$reqs" --batch "$batch" --seconds 120 | tail -1)
    local accepted counted=0
    accepted=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["accepted_events"])' "$result")
    for _ in $(seq 100); do
        counted=$(curl -sf "127.0.0.1:$admin/tables/counts?limit=100" | python3 -c 'import json,sys; print(sum(r["value"]["n"] for r in json.load(sys.stdin)["rows"]))' || echo 0)
        [ "$counted" = "$accepted" ] && break
        sleep 0.2
    done
    kill -TERM $pid; wait $pid || true
    python3 - "$label" "$fsync" "$result" "$counted" "${NULL[$label]:-}" <<'PY'
import json, sys
label, fsync, r, counted = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
null = json.loads(sys.argv[5]) if sys.argv[5] else None
ok = "exact" if counted == r["accepted_events"] else f"MISMATCH ({counted} counted)"
def vs(key):
    return f"{r[key] / null[key]:.2f}" if null and null[key] else "-"
print(f"| {label} | sluice | fsync={fsync} | {r['requests']} | {r['requests_per_s']:,.0f} | {r['events_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['accepted_events']} | {r['rejected_requests']}/{r['errors']} | {ok} | {vs('requests_per_s')} | {vs('events_per_s')} | {vs('p99_ms')} |")
PY
    [ "$counted" = "$accepted" ]
}

echo "command: bench/http_load.sh $REQUESTS $BATCH_REQUESTS; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); loadgen and sluice on the same machine"
echo
echo "| case | server | durability | requests | requests/s | events/s | p50 ms | p99 ms | accepted events | rejected/errors | count check | requests/s vs trivial | events/s vs trivial | p99 vs trivial |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
status=0
declare -A NULL
run_null "single events" "$SINGLE_CONNECTIONS" "$REQUESTS" 1 || status=1
run_null "NDJSON x1000" 16 "$BATCH_REQUESTS" 1000 || status=1
for fsync in true false; do
    run_case $fsync "single events" "$SINGLE_CONNECTIONS" "$REQUESTS" 1 || status=1
    run_case $fsync "NDJSON x1000" 16 "$BATCH_REQUESTS" 1000 || status=1
done
exit $status
