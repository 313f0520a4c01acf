#!/usr/bin/env bash
# Every benchmark in one command (issue 15): runs the existing benchmark
# scripts one after the other, adds a DuckDB reference for W1a and W1b, and
# records the results.
#
# usage: bench/all.sh [--quick] [--only NAME,...] [--no-docs]
#   --quick      small counts (a smoke check, ~3 minutes): every benchmark
#                runs and checks its results, the figures mean nothing
#   --only       run only these steps: w1 duckdb http redis postgres amqp kafka cluster rescale
#   --no-docs    do not rewrite the generated section of docs/BENCHMARKS.md
#   env: BENCH_BIN_DIR   take every binary from this directory (sluice,
#                        baseline, loadgen, http_null; amqp_baseline and
#                        kafka_baseline for the broker steps, which are
#                        skipped without them). Without it, one `cargo build
#                        --release -p sluice -p sluice-bench --features
#                        sluice-bench/redis,sluice-bench/postgres,sluice-bench/kafka`
#                        first.
#        DUCKDB_VERSION  pip install duckdb==DUCKDB_VERSION (default: latest)
#
# Steps and sizes (default = the sizes of issue 15; --quick in brackets):
#   w1       BENCH_RUNS=5 bench/run.sh 5000000   [BENCH_RUNS=3, 200000]
#   duckdb   W1a and W1b as GROUP BY queries in DuckDB, 2 threads, 5 runs,
#            on the same file, result checked against the oracle
#            (bench/duckdb_w1.py, in the virtualenv bench/out/venv)
#   http     bench/http_load.sh 200000 2000      [20000 200]
#   redis    bench/redis.sh 100000               [20000]
#   postgres bench/postgres.sh 100000            [20000]
#   amqp     bench/amqp.sh 200000                [20000]
#   kafka    bench/kafka.sh 100000               [20000, kill-run checkpoint 50ms]
#   cluster  CLUSTER_BENCH_RUNS=3 bench/cluster.sh 2000000  [1 run, 200000]
#   rescale  bench/rescale.sh 1000000            [20000]
# A step whose script, binary or service (RabbitMQ 127.0.0.1:5672, Redis
# 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432, Kafka 127.0.0.1:19092) is missing gives one row
# "skipped: <why>"; this script starts no service. Each step runs under
# `timeout` (default 3600 s, --quick 300 s) on top of its script's own limits.
#
# Writes bench/out/all/results.json (one row per figure: workload, engine,
# command, value, unit, ratio and what it is relative to, git revision, load
# average at the step's start and end, date), each step's log next to it,
# and the markdown table between <!-- bench/all.sh:begin --> and
# <!-- bench/all.sh:end --> in docs/BENCHMARKS.md (nothing else there is
# touched). Prints the table.
#
# Exit status: 0 every step that ran was correct (skipped steps allowed);
# 1 a step failed or a result did not match its oracle; 2 usage or setup.
set -euo pipefail

QUICK=0
ONLY="w1,duckdb,http,redis,postgres,amqp,kafka,cluster,rescale"
DOCS=1
usage() { sed -n '6,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) QUICK=1 ;;
    --only) [[ $# -ge 2 ]] || usage; ONLY=$2; shift ;;
    --no-docs) DOCS=0 ;;
    *) usage ;;
    esac
    shift
done

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
OUT=bench/out/all
ROWS=$OUT/rows.jsonl
mkdir -p "$OUT"
: >"$ROWS"
START=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
GIT=$(git rev-parse --short HEAD)
if git status --porcelain --untracked-files=no | grep -q .; then GIT+=+dirty; fi
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMAND=bench/all.sh
((!QUICK)) || COMMAND+=" --quick"
[[ $ONLY == w1,duckdb,http,redis,postgres,amqp,kafka,cluster,rescale ]] || COMMAND+=" --only $ONLY"

if ((QUICK)); then
    # Kafka: 20000 with 50 ms checkpoints in the kill run, so that the kill
    # lands mid-stream (with fewer, one checkpoint held them all).
    W1_N=200000 W1_RUNS=3 HTTP_ARGS="20000 200" REDIS_N=20000 POSTGRES_N=20000 AMQP_N=20000
    KAFKA="KAFKA_BENCH_KILL_CHECKPOINT=50ms bash bench/kafka.sh 20000"
    CLUSTER_N=200000 CLUSTER_RUNS=1 RESCALE_K=20000 LIMIT=300
else
    W1_N=5000000 W1_RUNS=5 HTTP_ARGS="200000 2000" REDIS_N=100000 POSTGRES_N=100000 AMQP_N=200000
    KAFKA="bash bench/kafka.sh 100000"
    CLUSTER_N=2000000 CLUSTER_RUNS=3 RESCALE_K=1000000 LIMIT=3600
fi
VENV=bench/out/venv
ORACLE="bench/out/$W1_N/oracle" # written by run.sh
# The command of each step, as it is run (in $ROOT) and recorded.
declare -A CMD=(
    [w1]="BENCH_RUNS=$W1_RUNS bash bench/run.sh $W1_N"
    [duckdb]="$VENV/bin/python bench/duckdb_w1.py bench/data/w1-$W1_N.jsonl $ORACLE 5 2 $OUT/duckdb"
    [http]="bash bench/http_load.sh $HTTP_ARGS"
    [redis]="bash bench/redis.sh $REDIS_N"
    [postgres]="bash bench/postgres.sh $POSTGRES_N"
    [amqp]="bash bench/amqp.sh $AMQP_N"
    [kafka]=$KAFKA
    [cluster]="CLUSTER_BENCH_RUNS=$CLUSTER_RUNS bash bench/cluster.sh $CLUSTER_N"
    [rescale]="bash bench/rescale.sh $RESCALE_K"
)

if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
else
    echo "== build: cargo build --release -p sluice -p sluice-bench --features sluice-bench/redis,sluice-bench/postgres,sluice-bench/kafka"
    cargo build --release -p sluice -p sluice-bench --features sluice-bench/redis,sluice-bench/postgres,sluice-bench/kafka \
        >"$OUT/build.log" 2>&1 || { tail -n 20 "$OUT/build.log" >&2; echo "all.sh: build failed" >&2; exit 2; }
    BIN="$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release"
fi
[[ -x $BIN/sluice ]] || { echo "all.sh: no sluice binary in $BIN" >&2; exit 2; }
export BENCH_BIN_DIR=$BIN
echo "== $COMMAND: binaries in $BIN, git $GIT, load average $LOAD_START"

wanted() { [[ ,$ONLY, == *,$1,* ]]; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
# amqp_baseline built with feature `redis` takes `consume-redis` (without
# it, that subcommand is the usage error).
has_consume_redis() {
    [[ -x $BIN/amqp_baseline ]] && ! "$BIN/amqp_baseline" consume-redis x x x x x 2>&1 | grep -q '^amqp_baseline: usage'
}
# Likewise `consume-postgres` with feature `postgres`.
has_consume_postgres() {
    [[ -x $BIN/amqp_baseline ]] && ! "$BIN/amqp_baseline" consume-postgres x x x x x x 2>&1 | grep -q '^amqp_baseline: usage'
}
skip() { # step why
    local load
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "-- $1: skipped: $2"
    python3 bench/all_report.py skip "$1" "$ROWS" name="$1" why="$2" command="${CMD[$1]}" git="$GIT" \
        date="$(date -u '+%Y-%m-%d %H:%M UTC')" load_start="$load" load_end="$load"
}
# Runs one benchmark script, bounded by $LIMIT seconds, and collects its rows.
step() { # name [extra key=value for all_report.py...]: runs ${CMD[name]}
    local name=$1 display=${CMD[$1]} words load0 t0 rc=0
    shift
    read -ra words <<<"$display"
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    t0=$SECONDS
    echo "-- $name: $display (log $OUT/$name.log)"
    timeout -k 10 "$LIMIT" env "${words[@]}" >"$OUT/$name.log" 2>&1 || rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s"
    python3 bench/all_report.py add "$name" "$OUT/$name.log" "$ROWS" name="$name" command="$display" \
        exit="$rc" load_start="$load0" load_end="$(cut -d' ' -f1-3 /proc/loadavg)" seconds=$((SECONDS - t0)) \
        git="$GIT" date="$(date -u '+%Y-%m-%d %H:%M UTC')" log="$OUT/$name.log" "$@"
}
# `env` runs the scripts: an interpreter in front, since not all are executable.
script() { [[ -f bench/$1 ]]; }

if wanted w1; then
    if [[ -x $BIN/baseline ]]; then
        step w1 n="$W1_N" w1_results="bench/out/$W1_N/results.jsonl"
    else
        skip w1 "no baseline binary in $BIN"
    fi
fi

if wanted duckdb; then
    DATA="$ROOT/bench/data/w1-$W1_N.jsonl"
    if [[ ! -f $DATA ]]; then
        skip duckdb "no $DATA (the w1 step generates it)"
    elif ! { [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" >"$OUT/venv.log" 2>&1; } ||
        ! { "$VENV/bin/python" -c 'import duckdb' 2>/dev/null ||
            timeout 600 "$VENV/bin/pip" install -q "duckdb${DUCKDB_VERSION:+==$DUCKDB_VERSION}" >>"$OUT/venv.log" 2>&1; }; then
        skip duckdb "could not create $VENV with duckdb (log $OUT/venv.log)"
    else
        if [[ ! -f $ORACLE/w1b.csv || $ORACLE/w1b.csv -ot $DATA ]]; then
            # No oracle of this data from run.sh: compute one.
            python3 bench/w1/ref_counts.py "$DATA" "$OUT/oracle-$W1_N" >/dev/null
            CMD[duckdb]=${CMD[duckdb]/ $ORACLE / $OUT/oracle-$W1_N }
        fi
        step duckdb
    fi
fi

if wanted http; then
    if [[ -x $BIN/loadgen && -x $BIN/http_null ]]; then
        step http
    else
        skip http "no loadgen and http_null binaries in $BIN"
    fi
fi

AMQP_UP=0 REDIS_UP=0 POSTGRES_UP=0 KAFKA_UP=0
port_open 127.0.0.1 5672 && AMQP_UP=1
port_open 127.0.0.1 6379 && REDIS_UP=1
port_open 127.0.0.1 5432 && POSTGRES_UP=1
port_open 127.0.0.1 19092 && KAFKA_UP=1

if wanted redis; then
    if ! script redis.sh; then skip redis "bench/redis.sh not present"
    elif ! has_consume_redis; then skip redis "no amqp_baseline with feature redis in $BIN (cargo build --release -p sluice-bench --features sluice-bench/redis)"
    elif ((!AMQP_UP)); then skip redis "RabbitMQ does not answer on 127.0.0.1:5672 (bash tests/rabbitmq.sh)"
    elif ((!REDIS_UP)); then skip redis "Redis does not answer on 127.0.0.1:6379 (bash tests/services.sh)"
    else step redis
    fi
fi

if wanted postgres; then
    if ! script postgres.sh; then skip postgres "bench/postgres.sh not present"
    elif ! has_consume_postgres; then skip postgres "no amqp_baseline with feature postgres in $BIN (cargo build --release -p sluice-bench --features sluice-bench/postgres)"
    elif ((!AMQP_UP)); then skip postgres "RabbitMQ does not answer on 127.0.0.1:5672 (bash tests/rabbitmq.sh)"
    elif ((!POSTGRES_UP)); then skip postgres "PostgreSQL does not answer on 127.0.0.1:5432 (bash tests/services.sh)"
    else step postgres
    fi
fi

if wanted amqp; then
    if ! script amqp.sh; then skip amqp "bench/amqp.sh not present"
    elif [[ ! -x $BIN/amqp_baseline ]]; then skip amqp "no amqp_baseline in $BIN (cargo build --release -p sluice-bench --features sluice-bench/amqp)"
    elif ((!AMQP_UP)); then skip amqp "RabbitMQ does not answer on 127.0.0.1:5672 (bash tests/rabbitmq.sh)"
    else step amqp
    fi
fi

if wanted kafka; then
    if ! script kafka.sh; then skip kafka "bench/kafka.sh not present"
    elif [[ ! -x $BIN/kafka_baseline ]]; then skip kafka "no kafka_baseline in $BIN (cargo build --release -p sluice-bench --features sluice-bench/kafka)"
    elif ((!KAFKA_UP)); then skip kafka "no Kafka broker on 127.0.0.1:19092 (bash tests/kafka.sh)"
    elif ((!REDIS_UP)); then skip kafka "Redis does not answer on 127.0.0.1:6379 (bash tests/services.sh)"
    else step kafka
    fi
fi

if wanted cluster; then
    if [[ -x $BIN/loadgen ]]; then
        step cluster
    else
        skip cluster "no loadgen binary in $BIN"
    fi
fi

if wanted rescale; then
    # rescale.sh listens on fixed ports: admin 19500+i, exchange 19600+i.
    busy=
    for p in 19500 19501 19502 19600 19601 19602; do port_open 127.0.0.1 $p && busy+=" $p"; done
    if [[ -n $busy ]]; then
        skip rescale "ports$busy in use (is another bench/rescale.sh running?)"
    else
        step rescale
    fi
fi

echo
DOC=docs/BENCHMARKS.md
((DOCS)) || DOC=-
EXIT=0
python3 bench/all_report.py finish "$ROWS" "$OUT/results.json" "$DOC" command="$COMMAND" \
    mode="$( ((QUICK)) && echo quick || echo full)" git="$GIT" date="$DATE" bin_dir="$BIN" \
    bin_built="$(date -u -r "$BIN/sluice" '+%Y-%m-%d %H:%M UTC')" \
    machine="nproc=$(nproc), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
    load_start="$LOAD_START" load_end="$(cut -d' ' -f1-3 /proc/loadavg)" seconds=$((SECONDS - START)) || EXIT=$?
echo "results: $OUT/results.json; logs: $OUT/"
exit $EXIT
