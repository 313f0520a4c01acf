#!/usr/bin/env bash
# Makes sure an S3 API server (moto's `moto_server`, from PyPI) answers on
# 127.0.0.1:5100 for the remote-state tests (tests/remote_state.rs), and
# checks that it honours conditional writes (`If-None-Match: *`: a second
# create of the same object is refused with 412), which sluice's write-once
# objects rely on. Idempotent: installs moto only if missing, starts it only
# if nothing answers, and prints the environment the tests read.
#
#   bash tests/s3.sh                 # then: eval "$(bash tests/s3.sh --env)"
#   bash tests/s3.sh --env           # only print the export lines
#   bash tests/s3.sh stop            # stop the server this script started
#   SLUICE_S3_PORT=5200 bash tests/s3.sh   # another port
#
# moto keeps buckets and objects in memory: a restart of the server loses
# them. The tests make a bucket of their own (unique name) on this shared
# server; the test that makes the store unavailable (SIGSTOP) starts a
# private moto_server on a free port (tests/support/s3.rs) instead.
set -euo pipefail

HOST=127.0.0.1
PORT="${SLUICE_S3_PORT:-5100}"
ENDPOINT="http://$HOST:$PORT"
# The version whose conditional PUT was checked (moto/s3/responses.py,
# put_object: `If-None-Match: *` on an existing key -> PreconditionFailed).
MOTO_VERSION=5.2.1
RUN_DIR="${TMPDIR:-/tmp}/sluice-moto-$PORT"
PID_FILE="$RUN_DIR/moto.pid"
TOOLS="${SLUICE_TOOLS:-/root/.cache/sluice-tools}"
# moto_server from PATH, else the one this script installed before.
MOTO=moto_server
command -v "$MOTO" >/dev/null || MOTO="$TOOLS/moto/bin/moto_server"
LOG_FILE="$RUN_DIR/moto.log"

print_env() {
    echo "export AWS_ENDPOINT_URL=$ENDPOINT"
    echo "export AWS_ACCESS_KEY_ID=test"
    echo "export AWS_SECRET_ACCESS_KEY=test"
    echo "export AWS_REGION=us-east-1"
    echo "export AWS_ALLOW_HTTP=true"
}

case "${1:-}" in
--env)
    print_env
    exit 0
    ;;
stop)
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")"
        rm -f "$PID_FILE"
        echo "moto_server stopped"
    else
        echo "no moto_server started by this script is running"
    fi
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0 [--env|stop]" >&2
    exit 2
    ;;
esac

# An S3 API answers: ListBuckets (moto accepts unsigned requests).
answers() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/")" == 200 ]]
}

if answers; then
    echo "an S3 API already answers on $ENDPOINT"
else
    if ! command -v "$MOTO" >/dev/null; then
        # Not on PATH: a virtual environment of its own under $SLUICE_TOOLS
        # (Debian's python3 refuses a system-wide pip install).
        echo "==> installing moto[server]==$MOTO_VERSION in $TOOLS/moto"
        python3 -m venv "$TOOLS/moto" || {
            echo "python3 -m venv failed: install python3-venv (tests/run.sh does)" >&2
            exit 1
        }
        "$TOOLS/moto/bin/pip" install -q "moto[server]==$MOTO_VERSION"
    fi
    mkdir -p "$RUN_DIR"
    echo "starting moto_server on $ENDPOINT (log $LOG_FILE)"
    # setsid: the server outlives this script and the shell that ran it.
    setsid "$MOTO" -H "$HOST" -p "$PORT" >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 100); do
        answers && break
        if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
            echo "moto_server exited; its log:" >&2
            tail -20 "$LOG_FILE" >&2
            exit 1
        fi
        sleep 0.2
    done
    answers || {
        echo "moto_server did not answer on $ENDPOINT within 20 s; see $LOG_FILE" >&2
        exit 1
    }
fi

# Self-check: a write-once object can be created once, not twice. The
# requests are signed as the tests' credentials sign them (moto refuses an
# anonymous PUT over an existing object with 403 before it looks at the
# condition), and carry a Content-Type: moto's web server would read
# curl's default form type as a form and store an empty object.
bucket="sluice-s3-check-$$-$RANDOM"
s3() { # method, path, extra curl args...
    local method=$1 path=$2
    shift 2
    curl -s --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user test:test \
        -X "$method" "$@" "$ENDPOINT/$bucket$path"
}
code() { s3 "$@" -o /dev/null -w '%{http_code}'; }
put_once() { code PUT /once -H 'If-None-Match: *' -H 'Content-Type: application/octet-stream' --data-binary "$1"; }
created=$(code PUT "")
first=$(put_once first)
second=$(put_once second)
body=$(s3 GET /once)
code DELETE /once >/dev/null
code DELETE "" >/dev/null
if [[ "$created" != 200 || "$first" != 200 || "$second" != 412 || "$body" != first ]]; then
    echo "the S3 API on $ENDPOINT does not honour If-None-Match: * (create bucket $created," \
        "first PUT $first, second PUT $second (want 412), object holds '$body', want 'first')" >&2
    exit 1
fi
echo "conditional PUT checked: the second If-None-Match: * create answered 412"

echo "S3 API ready; the tests read:"
print_env
