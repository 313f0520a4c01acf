#!/usr/bin/env bash
# RabbitMQ into PostgreSQL: sluice's PostgreSQL sink, upsert and append,
# against its file sink on the same data (is the database sink the
# bottleneck?) and against the hand-written consumer the use-case teams
# wrote (`amqp_baseline consume-postgres`: per message parse the JSON, one
# statement in its own transaction, ack that one message).
#
# usage: bench/postgres.sh [N]      N messages (default 200000, at most 2000000)
#   env: AMQP_URL                   broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
#        POSTGRES_URL               database (default postgres://postgres@127.0.0.1:5432/test)
#        AMQP_BENCH_PREFETCH        sluice's prefetch (default 60000)
#        AMQP_BENCH_CHECKPOINT      sluice's checkpoint interval (default 1s)
#        BASELINE_PREFETCH          the baseline consumer's prefetch (default 1000)
#        BENCH_BIN_DIR              take sluice and amqp_baseline (built with
#                                   --features sluice-bench/postgres) from this
#                                   directory instead of `cargo build --release`
#
# Same data for every run (bench/data/w1-N.jsonl, gen_weather.py seed 42),
# each run on its own freshly published queue (persistent messages with
# message_id), one after the other:
#   1. sluice, W1a upsert: AMQP -> count per country -> PostgreSQL upsert
#      (bench/pipelines/w1a-amqp-postgres.toml, table created by the sink);
#   2. sluice, append: AMQP -> PostgreSQL append, one row per message
#      (bench/pipelines/amqp-postgres-append.toml);
#   3. sluice, W1a into its file sink (bench/pipelines/w1a-amqp.toml): the
#      reference rate of the same source and aggregation without a database;
#   4. the hand-written consumer, upsert: `INSERT ... (country, count)
#      VALUES ($1, 1) ON CONFLICT (country) DO UPDATE SET count = count + 1`;
#   5. the hand-written consumer, append: `INSERT` of the row.
# Events/s is N over the wall time of the consumer process until all N are
# written (sluice: the whole `sluice run --once`, start-up and final
# checkpoint included). Every result is checked against the oracle
# (bench/w1/ref_counts.py): upsert tables must hold exactly the W1a counts,
# append tables N rows, every event id once, whose per-country counts are
# W1a's; sluice's file output with bench/compare.py. Clean runs only (the
# kill -9 comparison is bench/redis.sh's).
# Tables are bench_pg_<run>_<pid>_<time> in POSTGRES_URL's database, dropped
# on exit with the queues and state directories.
#
# Prints one table with each rate, sink / file sink (sluice's rows) and
# sluice / hand-written (same mode).
# Exit status: 0 sluice exact in every run; 1 sluice not exact or failed;
# 2 the harness or the baseline consumer failed.
set -euo pipefail

N=${1:-200000}
MAX_N=2000000
die() { echo "postgres.sh: $*" >&2; exit 2; }
[[ $# -le 1 ]] || die "usage: bench/postgres.sh [N]"
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
((N <= MAX_N)) || die "N=$N is above the $MAX_N limit"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
BASELINE_PREFETCH=${BASELINE_PREFETCH:-1000}
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
SHARED="$ROOT/bench/w1"
DATA="bench/data/w1-$N.jsonl"
OUT="bench/out/postgres-$N"
ORACLE="$OUT/oracle"
# Time limits (seconds): one consumer run (the baseline commits every
# statement: ~350-450/s seen on a busy 2-core machine), one publish.
RUN_LIMIT=$((120 + N / 200))
PUBLISH_LIMIT=$((60 + N / 2000))
COMMAND="bench/postgres.sh $N"
EXIT=0
mkdir -p bench/data "$OUT"

sluice_wrong() { EXIT=1; }
harness_failed() { [[ $EXIT -eq 1 ]] || EXIT=2; }

echo "== services"
timeout 300 bash tests/rabbitmq.sh >/dev/null || die "RabbitMQ did not start (tests/rabbitmq.sh)"
timeout 300 bash tests/services.sh >/dev/null || die "PostgreSQL did not start (tests/services.sh)"
pq() { timeout 120 psql "$POSTGRES_URL" -v ON_ERROR_STOP=1 -qAtX "$@"; }
[[ $(pq -c 'select 1') == 1 ]] || die "PostgreSQL at $POSTGRES_URL does not answer"

if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
    echo "== using the binaries in $BIN (BENCH_BIN_DIR; nothing is built)"
else
    echo "== build (release; may wait for the cargo lock)"
    timeout 1800 cargo build --release -q -p sluice -p sluice-bench --features sluice-bench/postgres ||
        die "build failed"
    BIN=target/release
fi
BASE=$BIN/amqp_baseline
SLUICE=$BIN/sluice
[[ -x $BASE && -x $SLUICE ]] || die "no sluice and amqp_baseline in $BIN"

echo "== data and oracle"
if [[ -f $DATA ]]; then
    echo "using existing $DATA"
else
    timeout $((60 + N / 20000)) python3 "$SHARED/gen_weather.py" "$N" 42 "$DATA.tmp.$$" || die "gen_weather.py failed"
    mv "$DATA.tmp.$$" "$DATA"
fi
timeout 300 python3 "$SHARED/ref_counts.py" "$DATA" "$ORACLE" >/dev/null || die "ref_counts.py failed"

SUFFIX="$$_$(date +%s)"
QUEUES=()
STATES=()
TABLES=()
cleanup() {
    for q in "${QUEUES[@]}"; do timeout 30 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
    for s in "${STATES[@]}"; do rm -rf -- "$s"; done
    for t in "${TABLES[@]}"; do pq -c "DROP TABLE IF EXISTS $t" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# A fresh queue holding the N messages, named in $Q.
fresh_queue() { # tag
    Q="sluice_bench_pg_$1_$SUFFIX"
    QUEUES+=("$Q")
    timeout "$PUBLISH_LIMIT" "$BASE" publish "$AMQP_URL" "$Q" "$DATA" 2>>"$OUT/publish.log" ||
        die "publishing to $Q failed (log: $OUT/publish.log)"
}
# A table name for this run, named in $T (dropped on exit).
new_table() { # tag
    T="bench_pg_${1//-/_}_$SUFFIX"
    TABLES+=("$T")
}
new_state() { # fresh empty state directory, named in $S
    S=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-pg.XXXXXX")
    STATES+=("$S")
}
source "$ROOT/bench/amqp_file_ref.sh"

# Compares table $2 (mode $1) with the oracle; prints "exact" or the
# difference; status 0 when exact.
check() { # upsert|append table
    local sql
    if [[ $1 == upsert ]]; then
        sql="SELECT country, count FROM $2"
    else
        sql="SELECT country, count(*) FROM $2 GROUP BY country"
    fi
    if ! { pq -F, -c "$sql" && echo "--" &&
        if [[ $1 == append ]]; then
            pq -F, -c "SELECT count(*), count(DISTINCT event_id), count(DISTINCT id) FROM $2"
        fi; } >"$OUT/check-$2.txt" 2>&1; then
        echo "cannot read table $2 ($(tail -n 1 "$OUT/check-$2.txt"))"
        return 1
    fi
    python3 - "$ORACLE/w1a.csv" "$N" "$1" "$OUT/check-$2.txt" <<'PY'
import sys
oracle_csv, n, mode, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
oracle = {}
for line in open(oracle_csv):
    c, k = line.strip().split(",")
    oracle[c] = int(k)
counts, tail = open(path).read().split("--\n")
got = {}
for line in counts.splitlines():
    c, k = line.rsplit(",", 1)
    got[c] = got.get(c, 0) + int(k)
diff = {c: got.get(c, 0) - oracle.get(c, 0) for c in set(got) | set(oracle)}
diff = {c: d for c, d in diff.items() if d}
problems = []
if diff:
    extra = sum(d for d in diff.values() if d > 0)
    missing = -sum(d for d in diff.values() if d < 0)
    problems.append(f"counts +{extra:,} / -{missing:,} over {len(diff)} countries")
if sum(got.values()) != n:
    problems.append(f"{sum(got.values()):,} events counted vs {n:,}")
if mode == "append":
    rows, ids, events = (int(x) for x in tail.strip().split(","))
    if (rows, ids, events) != (n, n, n):
        problems.append(f"{rows:,} rows, {ids:,} distinct event ids, {events:,} distinct events (want {n:,} each)")
if problems:
    print("; ".join(problems))
    sys.exit(1)
print("exact")
PY
}

declare -A SECS EXACT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
rate() { if [[ -n $1 ]]; then python3 -c "print(f'{$N / $1:,.0f}')"; else echo failed; fi; }

run_sluice() { # key pipeline table-mode
    local key=$1 pipeline=$2 mode=$3 t0 t1 d
    fresh_queue "$key"
    new_table "$key"
    new_state
    : >"$OUT/$key.log"
    t0=$(now)
    if BENCH_STATE=$S BENCH_QUEUE=$Q BENCH_TABLE=$T \
        timeout -k 5 "$RUN_LIMIT" "$SLUICE" run --once "$pipeline" 2>>"$OUT/$key.log"; then
        t1=$(now)
        SECS[$key]=$(secs "$t0" "$t1")
        if d=$(check "$mode" "$T"); then EXACT[$key]=yes; else EXACT[$key]="NO: $d"; sluice_wrong; fi
    else
        EXACT[$key]="run failed (log: $OUT/$key.log)"
        sluice_wrong
    fi
    echo "  $key: $(rate "${SECS[$key]:-}") events/s, ${EXACT[$key]}"
}

run_baseline() { # key mode
    local key=$1 mode=$2 t0 t1 d
    fresh_queue "$key"
    new_table "$key"
    if [[ $mode == upsert ]]; then
        pq -c "CREATE TABLE $T (country text PRIMARY KEY, count bigint NOT NULL)" || die "cannot create table $T"
    else
        pq -c "CREATE TABLE $T (event_id text PRIMARY KEY, id bigint, ts bigint, country text, weather text)" ||
            die "cannot create table $T"
    fi
    t0=$(now)
    if timeout -k 5 "$RUN_LIMIT" "$BASE" consume-postgres "$AMQP_URL" "$Q" "$N" "$POSTGRES_URL" "$T" "$mode" \
        "$BASELINE_PREFETCH" 2>"$OUT/$key.log"; then
        t1=$(now)
        SECS[$key]=$(secs "$t0" "$t1")
        if d=$(check "$mode" "$T"); then EXACT[$key]=yes; else EXACT[$key]="NO: $d"; fi
    else
        EXACT[$key]="run failed (log: $OUT/$key.log)"
        harness_failed
    fi
    echo "  $key: $(rate "${SECS[$key]:-}") events/s, ${EXACT[$key]}"
}

echo "== runs (each on a freshly published queue of $N messages)"
run_sluice sluice-upsert bench/pipelines/w1a-amqp-postgres.toml upsert
run_sluice sluice-append bench/pipelines/amqp-postgres-append.toml append
fresh_queue sluice-file
if file_reference "$Q"; then SECS[sluice-file]=$FILE_SECS; else sluice_wrong; fi
EXACT[sluice-file]=$FILE_EXACT
echo "  sluice-file: $(rate "${SECS[sluice-file]:-}") events/s, ${EXACT[sluice-file]}"
run_baseline baseline-upsert upsert
run_baseline baseline-append append

echo
echo "## RabbitMQ into PostgreSQL"
echo
echo "command: $COMMAND; machine: nproc=$(nproc), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//');" \
    "load at end: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "N=$N messages; baseline prefetch $BASELINE_PREFETCH; sluice prefetch ${AMQP_BENCH_PREFETCH:-60000}, checkpoint ${AMQP_BENCH_CHECKPOINT:-1s}"
echo
echo "| workload | engine | events/s | seconds | exact | vs file sink | vs hand-written |"
echo "|---|---|---|---|---|---|---|"
F=${SECS[sluice-file]:-}
row() { # workload engine key vs-file vs-hand-written
    echo "| $1 | $2 | $(rate "${SECS[$3]:-}") | ${SECS[$3]:--} | ${EXACT[$3]:-not run} | $4 | $5 |"
}
row "W1a RabbitMQ -> PostgreSQL upsert" "sluice (amqp -> aggregate -> postgres upsert)" sluice-upsert \
    "$(ratio "${SECS[sluice-upsert]:-}" "$F")" "$(ratio "${SECS[sluice-upsert]:-}" "${SECS[baseline-upsert]:-}")"
row "W1a RabbitMQ -> PostgreSQL upsert" "hand-written consumer (UPSERT count+1 + ack per message)" baseline-upsert - -
row "RabbitMQ -> PostgreSQL append" "sluice (amqp -> postgres append)" sluice-append \
    "$(ratio "${SECS[sluice-append]:-}" "$F")" "$(ratio "${SECS[sluice-append]:-}" "${SECS[baseline-append]:-}")"
row "RabbitMQ -> PostgreSQL append" "hand-written consumer (INSERT + ack per message)" baseline-append - -
row "W1a RabbitMQ -> file" "sluice (amqp -> aggregate -> file; reference)" sluice-file 1.00 -
echo
echo "vs file sink: sluice's rate over its file sink's rate on the same queue size in this run (target >= 0.8);"
echo "vs hand-written: sluice's rate over the hand-written consumer's in the same mode (target >= 10)."
echo "logs: $OUT/"
case $EXIT in
0) echo "sluice exact in every run" ;;
1) echo "FAILED: sluice was not exact or did not run (see above)" >&2 ;;
2) echo "FAILED: the harness or the baseline consumer failed (see above)" >&2 ;;
esac
exit $EXIT
