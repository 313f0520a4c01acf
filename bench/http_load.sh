#!/usr/bin/env bash
# HTTP ingest load test on loopback, bounded in requests and time.
#
#   bench/http_load.sh [REQUESTS] [BATCH_REQUESTS]
#
# Starts sluice (release build) with an HTTP source -> count per country ->
# table, then runs bench's `loadgen`:
#   1. single-event requests (REQUESTS, default 200000, 64 connections),
#   2. NDJSON batches of 1000 events (BATCH_REQUESTS, default 2000),
# with fsync on, then again with fsync off. After each run it reads the
# counts back over HTTP and checks that sluice counted exactly the events it
# accepted (202). Prints one table; exits non-zero on a count mismatch.
#   env: BENCH_BIN_DIR   take sluice and loadgen from this directory instead
#                        of `cargo build --release`
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
[[ -x $BIN/sluice && -x $BIN/loadgen ]] || { echo "no sluice and loadgen in $BIN"; exit 2; }
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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
    python3 - "$label" "$fsync" "$result" "$counted" <<'PY'
import json, sys
label, fsync, r, counted = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
ok = "exact" if counted == r["accepted_events"] else f"MISMATCH ({counted} counted)"
print(f"| {label} | fsync={fsync} | {r['requests']} | {r['requests_per_s']:,.0f} | {r['events_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['accepted_events']} | {r['rejected_requests']}/{r['errors']} | {ok} |")
PY
    [ "$counted" = "$accepted" ]
}

echo "command: bench/http_load.sh $REQUESTS $BATCH_REQUESTS; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); loadgen and sluice on the same machine"
echo
echo "| case | durability | requests | requests/s | events/s | p50 ms | p99 ms | accepted events | rejected/errors | count check |"
echo "|---|---|---|---|---|---|---|---|---|---|"
status=0
for fsync in true false; do
    run_case $fsync "single events" "${CONNECTIONS:-256}" "$REQUESTS" 1 || status=1
    run_case $fsync "NDJSON x1000" 16 "$BATCH_REQUESTS" 1000 || status=1
done
exit $status
