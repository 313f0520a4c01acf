#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker (tansu) listens on 127.0.0.1:19092 for
# the Kafka integration tests (tests/kafka_*.rs). Idempotent: does nothing
# when the port is already open.
#
#   tests/kafka.sh            # install tansu if needed, start it if needed
#   tests/kafka.sh stop       # stop the broker this script started
#   tests/kafka.sh fresh      # restart the broker this script started (empty)
#
# tansu is cached in $SLUICE_TOOLS (default /root/.cache/sluice-tools); a
# first install builds it from crates.io (~20 min on 2 cores). Its storage
# is in memory: a restart of the broker forgets every topic.
set -euo pipefail

TOOLS="${SLUICE_TOOLS:-/root/.cache/sluice-tools}"
TANSU="$TOOLS/bin/tansu"
HOST=127.0.0.1
PORT="${SLUICE_KAFKA_PORT:-19092}"
URL="tcp://$HOST:$PORT"
RUN_DIR="${TMPDIR:-/tmp}/sluice-tansu-$PORT"
PID_FILE="$RUN_DIR/tansu.pid"
LOG_FILE="$RUN_DIR/tansu.log"

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

if [[ "${1:-}" == "stop" ]]; then
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")"
        rm -f "$PID_FILE"
        echo "tansu stopped"
    else
        echo "no tansu started by this script is running"
    fi
    exit 0
fi

# A fresh broker for a whole test run (tests/run.sh): tansu keeps every
# topic in memory and was seen to slow down as a long-lived broker filled
# up (a 100k-record produce timing out after 120 s). Only a broker this
# script started is restarted; another one on the port is left alone.
if [[ "${1:-}" == "fresh" ]] && [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "restarting the tansu this script started (pid $(cat "$PID_FILE")) with empty storage"
    kill "$(cat "$PID_FILE")"
    for _ in $(seq 1 100); do
        kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$(cat "$PID_FILE")" 2>/dev/null || true
    rm -f "$PID_FILE"
    for _ in $(seq 1 100); do
        port_open || break
        sleep 0.1
    done
fi

if port_open; then
    echo "a broker already listens on $HOST:$PORT"
    exit 0
fi

if [[ ! -x "$TANSU" ]]; then
    echo "tansu is not installed in $TOOLS: building it from crates.io now"
    echo "(cargo install tansu --locked --features dynostore; ~20 minutes on 2 cores)"
    cargo install tansu --locked --features dynostore --root "$TOOLS"
fi

mkdir -p "$RUN_DIR"
echo "starting tansu on $URL (log: $LOG_FILE)"
# setsid: the broker outlives this script and the test process that ran it.
setsid "$TANSU" broker \
    --listener-url "$URL" \
    --advertised-listener-url "$URL" \
    --storage-engine memory://tansu/ \
    >"$LOG_FILE" 2>&1 </dev/null &
echo $! >"$PID_FILE"

for _ in $(seq 1 100); do
    if port_open; then
        echo "tansu is ready on $HOST:$PORT"
        exit 0
    fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "tansu exited at start; its log:" >&2
        cat "$LOG_FILE" >&2
        exit 1
    fi
    sleep 0.1
done
echo "tansu did not open $HOST:$PORT within 10 s; its log: $LOG_FILE" >&2
exit 1
