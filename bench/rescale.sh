#!/usr/bin/env bash
# Rescale and recovery times through the remote copy (issue 13's benchmark).
# Bounded: K distinct keys (default 1000000, at most 2000000), one pass of
# each step.
#
# usage: bench/rescale.sh [K]
#   env: BENCH_BIN_DIR   take sluice from this directory instead of
#                        `cargo build --release`
#        RESCALE_REMOTE  the remote copy's URL (default file://<work>/remote;
#                        e.g. s3://bucket/prefix with AWS_* set for moto)
#
# One pipeline file for every step: a file source (follow = true) reading
# part-<worker>.ndjson -> count per key `k` -> null sink; 128 key groups,
# 1 s checkpoints, `[state] remote`. Worker 0's file holds K events, one per
# key; the other workers' files are empty. Steps, each timed from "every
# worker of the previous step exited after SIGTERM" to "every worker of the
# new step answers /ready 200":
#   load    1 worker reads all K events from a fresh state (the naive
#           alternative to a rescale: replaying the whole input), timed
#           until a checkpoint holding all K keys is durable and uploaded
#   1->3, 3->2, 2->1   rescales
#   restart-local      worker 0 of 1 restarted on its state directory
#   restart-remote     the same after deleting its state directory (a lost
#                      volume: restored from the remote copy only)
# Beside it: the time until the state taken from the remote copy is also
# written into the workers' directories (sluice_remote_import_entries back
# to 0; this happens after ready, before the first checkpoint), and the
# time the previous step's workers took to stop (SIGTERM to exit: final
# checkpoint, upload, release, restart snapshot).
# After each step the keys held across workers (sluice_state_keys) must be
# exactly K, each key at one worker; bytes read from the remote copy
# (sluice_remote_restore_bytes_total) are reported per step.
# Prints a markdown table and one machine-readable line
#   RESCALE_BENCH {"keys": K, "steps": {...}, "git": ..., "loadavg": ...}
# Exit status 0 when every step held exactly K keys; 1 otherwise.
set -euo pipefail

K=${1:-1000000}
die() { echo "rescale.sh: $*" >&2; exit 1; }
[[ $K =~ ^[1-9][0-9]*$ ]] && ((K <= 2000000)) || die "K must be 1..2000000, got '$K'"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -n "${BENCH_BIN_DIR:-}" ]]; then
    BIN="$BENCH_BIN_DIR/sluice"
else
    cargo build --release --quiet
    BIN="$ROOT/target/release/sluice"
fi
[[ -x $BIN ]] || die "no sluice binary at $BIN"

WORK="$ROOT/bench/out/rescale-$K"
rm -rf "$WORK"
mkdir -p "$WORK"
REMOTE=${RESCALE_REMOTE:-file://$WORK/remote}
python3 - "$K" "$WORK/part-0.ndjson" <<'EOF'
import sys
k, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(k):
        f.write('{"k":"key-%08d"}\n' % i)
EOF
: > "$WORK/part-1.ndjson"
: > "$WORK/part-2.ndjson"

# Free ports: admin 19500+i, exchange 19600+i (loopback only).
cat > "$WORK/pipeline.toml" <<EOF
[pipeline]
name = "rescale-bench"

[state]
dir = "$WORK/state-\${SLUICE_WORKER_ID}"
remote = "$REMOTE"

[checkpoint]
interval = "1s"

[admin]
address = "127.0.0.1:1950\${SLUICE_WORKER_ID}"

[cluster]
listen = "127.0.0.1:1960\${SLUICE_WORKER_ID}"
peers = "127.0.0.1:1960{worker}"

[sources.events]
type = "file"
path = "$WORK/part-\${SLUICE_WORKER_ID}.ndjson"
follow = true

[transforms.per_key]
type = "aggregate"
inputs = ["events"]
group_by = ["k"]
aggregates = { n = "count" }

[sinks.out]
type = "null"
inputs = ["per_key"]
EOF

PIDS=()
start() { # N: start N workers
    local n=$1
    PIDS=()
    for ((i = 0; i < n; i++)); do
        "$BIN" run --workers "$n" --worker "$i" "$WORK/pipeline.toml" >>"$WORK/worker-$i.log" 2>&1 &
        PIDS+=($!)
    done
}
wait_ready() { # N, timeout s
    local n=$1 deadline=$((SECONDS + $2))
    for ((i = 0; i < n; i++)); do
        until curl -sf -o /dev/null "http://127.0.0.1:1950$i/ready"; do
            ((SECONDS < deadline)) || die "worker $i of $n not ready in $2 s (log: $WORK/worker-$i.log)"
            kill -0 "${PIDS[$i]}" 2>/dev/null || die "worker $i of $n exited (log: $WORK/worker-$i.log)"
            sleep 0.02
        done
    done
}
metric() { # worker, name: the value (summed over series)
    curl -sf "http://127.0.0.1:1950$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $2} END {printf "%.0f", s}'
}
# Keys held across the N workers once every checkpoint is in: exactly K.
check_keys() { # N
    local n=$1 total=0 tries=0
    while :; do
        total=0
        for ((i = 0; i < n; i++)); do
            total=$((total + $(metric "$i" sluice_state_keys)))
        done
        ((total == K)) && return 0
        ((tries++ < 100)) || { echo "keys held: $total, expected $K" >&2; return 1; }
        sleep 0.1
    done
}
restored_bytes() { # N
    local n=$1 total=0
    for ((i = 0; i < n; i++)); do
        total=$((total + $(metric "$i" sluice_remote_restore_bytes_total)))
    done
    echo "$total"
}
LAST_STOP=-
stop_all() { # SIGTERM to every worker; LAST_STOP: seconds until all exited
    local t0
    t0=$(now)
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    for p in "${PIDS[@]}"; do wait "$p" || true; done
    LAST_STOP=$(python3 -c "print(f'{$(now) - $t0:.3f}')")
}
now() { date +%s.%N; }

declare -A SECS BYTES STOPS WRITTEN
status=0
step() { # name, N, timeout[, "keys": time until the keys are held, not until ready]
    local name=$1 n=$2 t0 t1
    t0=$(now)
    start "$n"
    wait_ready "$n" "$3"
    t1=$(now)
    # The state is checkpointed within the interval: wait for the keys.
    if ! check_keys "$n"; then status=1; fi
    if [[ ${4:-} == keys ]]; then
        # The gauge is set when a checkpoint's snapshot is taken; the one
        # that holds every key is durable (and uploaded) once the durable
        # epoch passes the one seen now (one checkpoint is written at a time).
        local e0 deadline=$((SECONDS + 600))
        e0=$(metric 0 sluice_checkpoint_epoch)
        until (($(metric 0 sluice_checkpoint_epoch) > e0)); do
            ((SECONDS < deadline)) || die "no checkpoint after epoch $e0 in 600 s"
            sleep 0.05
        done
        t1=$(now)
    fi
    SECS[$name]=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    STOPS[$name]=$LAST_STOP
    # The state taken from the remote copy is written into the workers'
    # directories after they are ready (before their first checkpoint).
    local deadline=$((SECONDS + 120)) left
    while :; do
        left=0
        for ((i = 0; i < n; i++)); do
            left=$((left + $(metric "$i" sluice_remote_import_entries)))
        done
        ((left == 0)) && break
        ((SECONDS < deadline)) || die "state still being written after 120 s"
        sleep 0.05
    done
    WRITTEN[$name]=$(python3 -c "print(f'{$(now) - $t0:.3f}')")
    BYTES[$name]=$(restored_bytes "$n")
    echo "step $name: ${SECS[$name]} s to ready, ${BYTES[$name]} bytes from the remote copy" >&2
}

LOAD="$(cut -d' ' -f1 /proc/loadavg)"
step load 1 600 keys
sleep 1.5 # one more checkpoint, so the release covers it
stop_all
step "1->3" 3 120
stop_all
step "3->2" 2 120
stop_all
step "2->1" 1 120
stop_all
step restart-local 1 120
stop_all
rm -rf "$WORK/state-0"
step restart-remote 1 120
stop_all

GIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo
echo "| step | seconds to ready | seconds until the taken state is also in the local directories | seconds the previous workers took to stop (SIGTERM to exit) | bytes read from the remote copy |"
echo "|---|---|---|---|---|"
for s in load "1->3" "3->2" "2->1" restart-local restart-remote; do
    echo "| $s | ${SECS[$s]} | ${WRITTEN[$s]} | ${STOPS[$s]} | ${BYTES[$s]} |"
done
python3 - "$K" "$GIT" "$LOAD" "$REMOTE" "${SECS[load]}" "${SECS[1->3]}" "${SECS[3->2]}" "${SECS[2->1]}" "${SECS[restart-local]}" "${SECS[restart-remote]}" "${BYTES[1->3]}" "${BYTES[3->2]}" "${BYTES[2->1]}" "${BYTES[restart-remote]}" "${STOPS[1->3]}" "${STOPS[3->2]}" "${STOPS[2->1]}" "${STOPS[restart-local]}" "${STOPS[restart-remote]}" "${WRITTEN[1->3]}" "${WRITTEN[3->2]}" "${WRITTEN[2->1]}" "${WRITTEN[restart-local]}" "${WRITTEN[restart-remote]}" <<'EOF'
import json, sys
a = sys.argv[1:]
names = ["load", "1->3", "3->2", "2->1", "restart-local", "restart-remote"]
print("RESCALE_BENCH " + json.dumps({
    "keys": int(a[0]), "git": a[1], "loadavg_start": float(a[2]), "remote": a[3].split("://")[0],
    "seconds": dict(zip(names, map(float, a[4:10]))),
    "restore_bytes": dict(zip(["1->3", "3->2", "2->1", "restart-remote"], map(int, a[10:14]))),
    "stop_seconds": dict(zip(names[1:], map(float, a[14:19]))),
    "written_seconds": dict(zip(names[1:], map(float, a[19:24]))),
}))
EOF
exit $status
