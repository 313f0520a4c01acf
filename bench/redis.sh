#!/usr/bin/env bash
# Use case 1 end to end: W1a (count per country) delivered through RabbitMQ
# into Redis. Sluice (AMQP source -> count by country -> Redis hash + totals,
# exactly once, bench/pipelines/w1a-amqp-redis.toml) vs the hand-written
# consumer the use-case teams wrote (`amqp_baseline consume-redis`: per
# message parse the JSON, HINCRBY country:counts <country> 1, INCR
# messages:total, ack that one message; one Redis round trip per command).
#
# usage: bench/redis.sh [N]         N messages (default 200000, at most 2000000)
#   env: AMQP_URL                   broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
#        REDIS_URL                  Redis (default redis://127.0.0.1:6379)
#        AMQP_BENCH_PREFETCH        sluice's prefetch (default 60000)
#        AMQP_BENCH_CHECKPOINT      sluice's checkpoint interval (default 1s)
#        BASELINE_PREFETCH          the baseline consumer's prefetch (default 1000)
#        BENCH_BIN_DIR              take sluice and amqp_baseline (built with
#                                   --features sluice-bench/redis) from this
#                                   directory instead of `cargo build --release`
#
# Same data for both (bench/data/w1-N.jsonl, gen_weather.py seed 42), each
# run on its own freshly published queue (persistent messages, message_id).
#  (a) clean runs: wall time of the consumer process until all N are counted
#      (sluice: the whole `sluice run --once`, start-up and final checkpoint
#      included) -> events/s; final Redis hash and total vs the oracle.
#  (b) kill runs: the consumer is killed with SIGKILL once about half of the
#      messages are counted in Redis, then restarted to finish the queue
#      (the baseline with N = what the broker still holds once the killed
#      connection is gone; sluice with `run --once` on the same state).
#      Final Redis values vs the oracle, and by how much they differ.
#  (c) reference, run right after (a): sluice W1a from a fresh queue into
#      its file sink (bench/pipelines/w1a-amqp.toml, bench/amqp_file_ref.sh),
#      timed the same way and checked with compare.py; the Redis sink's
#      rate is reported as a ratio of it (is the Redis sink the bottleneck?).
# Keys: bench:baseline:, bench:sluice: (clean) and bench:baseline:kill:,
# bench:sluice:kill: (kill runs), deleted before each run and left for
# inspection afterwards. Queues are deleted on exit.
#
# Exit status: 0 sluice exact in every run (the baseline's inexactness is
# reported, not a failure); 1 sluice not exact or failed; 2 the harness or
# the baseline consumer failed.
set -euo pipefail

N=${1:-200000}
MAX_N=2000000
die() { echo "redis.sh: $*" >&2; exit 2; }
[[ $# -le 1 ]] || die "usage: bench/redis.sh [N]"
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
((N <= MAX_N)) || die "N=$N is above the $MAX_N limit"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
BASELINE_PREFETCH=${BASELINE_PREFETCH:-1000}
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
SHARED="$ROOT/bench/w1"
[[ -f $SHARED/gen_weather.py && -f $SHARED/ref_counts.py ]] || die "cannot find $SHARED/{gen_weather,ref_counts}.py"
DATA="bench/data/w1-$N.jsonl"
OUT="bench/out/redis-$N"
ORACLE="$OUT/oracle"
PIPELINE=bench/pipelines/w1a-amqp-redis.toml
# Time limits (seconds): one consumer run (the baseline does ~5-15 k/s),
# one publish, waiting for a killed consumer's connection to be closed.
RUN_LIMIT=$((120 + N / 1000))
PUBLISH_LIMIT=$((60 + N / 2000))
GONE_LIMIT=90
COMMAND="bench/redis.sh $N"
EXIT=0
mkdir -p bench/data "$OUT"

sluice_wrong() { EXIT=1; }
harness_failed() { [[ $EXIT -eq 1 ]] || EXIT=2; }

echo "== services"
timeout 300 bash tests/rabbitmq.sh >/dev/null || die "RabbitMQ did not start (tests/rabbitmq.sh)"
timeout 300 bash tests/services.sh >/dev/null || die "Redis did not start (tests/services.sh)"
rcli() { timeout 10 redis-cli -u "$REDIS_URL" "$@"; }
[[ $(rcli ping) == PONG ]] || die "Redis at $REDIS_URL does not answer"

if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
    echo "== using the binaries in $BIN (BENCH_BIN_DIR; nothing is built)"
else
    echo "== build (release; may wait for the cargo lock)"
    timeout 1800 cargo build --release -q -p sluice -p sluice-bench --features sluice-bench/redis ||
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
cleanup() {
    for q in "${QUEUES[@]}"; do timeout 30 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
    for s in "${STATES[@]}"; do rm -rf -- "$s"; done
}
trap cleanup EXIT

source "$ROOT/bench/redis_common.sh"
source "$ROOT/bench/amqp_file_ref.sh"

# A fresh queue holding the N messages, named in $Q.
fresh_queue() { # tag
    Q="sluice_bench_redis_$1_$SUFFIX"
    QUEUES+=("$Q")
    timeout "$PUBLISH_LIMIT" "$BASE" publish "$AMQP_URL" "$Q" "$DATA" 2>>"$OUT/publish.log" ||
        die "publishing to $Q failed (log: $OUT/publish.log)"
}
queue_stat() { # queue -> "messages consumers"
    timeout 30 rabbitmqctl -q list_queues name messages consumers 2>/dev/null | awk -v q="$1" '$1 == q {print $2, $3}'
}
# SIGKILLs $1 once <prefix>messages:total reaches N/2 or, if given, $3
# seconds have passed (sluice writes Redis only at checkpoints, so its total
# lags: it is killed at half its clean run's time). Sets AT to describe the
# moment of the kill; status 1 if the process ended (or the limit passed) first.
kill_at_half() { # pid prefix [seconds]
    local deadline=$((SECONDS + RUN_LIMIT)) t start limit_us
    start=$(now)
    limit_us=$(python3 -c "print(int(float('${3:-1e9}') * 1e6))")
    local start_us=${EPOCHREALTIME/./}
    AT=
    while kill -0 "$1" 2>/dev/null && ((SECONDS < deadline)); do
        t=$(rcli GET "${2}messages:total")
        if { [[ -n $t ]] && ((t >= N / 2)); } ||
            ((${EPOCHREALTIME/./} - start_us >= limit_us)); then
            kill -9 "$1"
            wait "$1" 2>/dev/null || true
            AT="messages:total=${t:-0} after $(secs "$start" "$(now)") s"
            return 0
        fi
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    return 1
}
# Waits until the killed consumer's connection is gone; prints the messages
# the queue still holds (ready + redelivered).
remaining_after_kill() { # queue
    local deadline=$((SECONDS + GONE_LIMIT)) stat
    while ((SECONDS < deadline)); do
        stat=$(queue_stat "$1")
        if [[ -n $stat && ${stat#* } == 0 ]]; then
            echo "${stat% *}"
            return 0
        fi
        sleep 0.5
    done
    return 1
}
new_state() { # fresh empty state directory, named in $S
    S=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-redis.XXXXXX")
    STATES+=("$S")
}
run_sluice() { # state queue prefix log -- runs sluice in the foreground, bounded
    BENCH_STATE=$1 BENCH_QUEUE=$2 BENCH_KEY_PREFIX=$3 \
        timeout -k 5 "$RUN_LIMIT" "$SLUICE" run --once "$PIPELINE" 2>>"$4"
}

declare -A RATE EXACT_CLEAN EXACT_KILL DIFF_KILL NOTE

echo "== (a) clean runs"
P=bench:baseline:
fresh_queue base
reset_keys "$P"
t0=$(now)
if timeout -k 5 "$RUN_LIMIT" "$BASE" consume-redis "$AMQP_URL" "$Q" "$N" "$REDIS_URL" "$P" "$BASELINE_PREFETCH" 2>"$OUT/baseline.log"; then
    t1=$(now)
    RATE[baseline]=$(rate "$t0" "$t1")
    NOTE[baseline]="clean run $(secs "$t0" "$t1") s"
    if d=$(check "$P"); then EXACT_CLEAN[baseline]=yes; else EXACT_CLEAN[baseline]="NO: $d"; fi
else
    RATE[baseline]=failed
    EXACT_CLEAN[baseline]="run failed (log: $OUT/baseline.log)"
    harness_failed
fi
echo "  baseline: ${RATE[baseline]} events/s, ${EXACT_CLEAN[baseline]}"

P=bench:sluice:
SLUICE_SECS=
fresh_queue sluice
reset_keys "$P"
new_state
: >"$OUT/sluice.log"
t0=$(now)
if run_sluice "$S" "$Q" "$P" "$OUT/sluice.log"; then
    t1=$(now)
    RATE[sluice]=$(rate "$t0" "$t1")
    SLUICE_SECS=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
    HALF_SLUICE=$(python3 -c "print(round(($t1 - $t0) / 2, 2))")
    NOTE[sluice]="clean run $(secs "$t0" "$t1") s"
    if d=$(check "$P"); then EXACT_CLEAN[sluice]=yes; else EXACT_CLEAN[sluice]="NO: $d"; sluice_wrong; fi
else
    RATE[sluice]=failed
    EXACT_CLEAN[sluice]="run failed (log: $OUT/sluice.log)"
    sluice_wrong
fi
echo "  sluice: ${RATE[sluice]} events/s, ${EXACT_CLEAN[sluice]}"

echo "== (c) reference: sluice into its file sink"
fresh_queue file
if ! file_reference "$Q"; then sluice_wrong; fi
FILE_RATE=$( [[ -n $FILE_SECS ]] && python3 -c "print(f'{$N / $FILE_SECS:,.0f}')" || echo failed)
echo "  sluice, file sink: $FILE_RATE events/s, $FILE_EXACT"

echo "== (b) kill -9 runs"
P=bench:baseline:kill:
fresh_queue basekill
reset_keys "$P"
: >"$OUT/baseline-kill.log"
"$BASE" consume-redis "$AMQP_URL" "$Q" "$N" "$REDIS_URL" "$P" "$BASELINE_PREFETCH" 2>>"$OUT/baseline-kill.log" &
if kill_at_half $! "$P"; then
    if rest=$(remaining_after_kill "$Q"); then
        st=0
        if ((rest > 0)); then
            "$BASE" consume-redis "$AMQP_URL" "$Q" "$rest" "$REDIS_URL" "$P" "$BASELINE_PREFETCH" 2>>"$OUT/baseline-kill.log" &
            wait_bounded $! "$RUN_LIMIT" || st=$?
        fi
        if ((st == 0)); then
            NOTE[baseline]+="; killed at $AT, restarted for the $rest messages left in the queue"
            if d=$(check "$P"); then
                EXACT_KILL[baseline]=yes
                DIFF_KILL[baseline]=0
            else
                EXACT_KILL[baseline]=no
                DIFF_KILL[baseline]=$d
            fi
        else
            EXACT_KILL[baseline]="restart failed (log: $OUT/baseline-kill.log)"
            harness_failed
        fi
    else
        EXACT_KILL[baseline]="the killed consumer's connection did not go away within $GONE_LIMIT s"
        harness_failed
    fi
else
    EXACT_KILL[baseline]="not killed: it ended or stalled before half (log: $OUT/baseline-kill.log)"
    harness_failed
fi
echo "  baseline: ${EXACT_KILL[baseline]} ${DIFF_KILL[baseline]:-}"

P=bench:sluice:kill:
fresh_queue sluicekill
reset_keys "$P"
new_state
: >"$OUT/sluice-kill.log"
BENCH_STATE=$S BENCH_QUEUE=$Q BENCH_KEY_PREFIX=$P "$SLUICE" run --once "$PIPELINE" 2>>"$OUT/sluice-kill.log" &
if kill_at_half $! "$P" "${HALF_SLUICE:-}"; then
    echo "--- restart after kill -9 ---" >>"$OUT/sluice-kill.log"
    if run_sluice "$S" "$Q" "$P" "$OUT/sluice-kill.log"; then
        left=$(queue_stat "$Q")
        NOTE[sluice]+="; killed at $AT, restarted with the same state; ${left% *} left in the queue"
        if d=$(check "$P"); then
            EXACT_KILL[sluice]=yes
            DIFF_KILL[sluice]=0
        else
            EXACT_KILL[sluice]=NO
            DIFF_KILL[sluice]=$d
            sluice_wrong
        fi
    else
        EXACT_KILL[sluice]="restart failed (log: $OUT/sluice-kill.log)"
        sluice_wrong
    fi
else
    EXACT_KILL[sluice]="not killed: it ended or stalled before half (log: $OUT/sluice-kill.log)"
    sluice_wrong
fi
echo "  sluice: ${EXACT_KILL[sluice]} ${DIFF_KILL[sluice]:-}"

echo
echo "## W1a through RabbitMQ into Redis"
echo
echo "command: $COMMAND; machine: nproc=$(nproc), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//');" \
    "load at end: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "N=$N messages; baseline prefetch $BASELINE_PREFETCH; sluice prefetch ${AMQP_BENCH_PREFETCH:-60000}, checkpoint ${AMQP_BENCH_CHECKPOINT:-1s}"
echo
echo "| engine | events/s (clean) | exact after clean run | exact after kill -9 | difference after kill |"
echo "|---|---|---|---|---|"
echo "| hand-written consumer (HINCRBY + INCR + ack per message) | ${RATE[baseline]} | ${EXACT_CLEAN[baseline]} | ${EXACT_KILL[baseline]} | ${DIFF_KILL[baseline]:--} |"
echo "| sluice (amqp -> aggregate -> redis hash + totals) | ${RATE[sluice]} | ${EXACT_CLEAN[sluice]} | ${EXACT_KILL[sluice]} | ${DIFF_KILL[sluice]:--} |"
echo
echo "| reference on the same queue size, same run | events/s | exact | Redis sink / file sink |"
echo "|---|---|---|---|"
echo "| sluice, RabbitMQ -> file (amqp -> aggregate -> file) | $FILE_RATE | $FILE_EXACT | $(ratio "$SLUICE_SECS" "$FILE_SECS") |"
echo
echo "- baseline: ${NOTE[baseline]:-}"
echo "- sluice: ${NOTE[sluice]:-}"
echo "logs: $OUT/; Redis keys bench:{baseline,sluice}:[kill:]{country:counts,messages:total}"
case $EXIT in
0) echo "sluice exact in every run" ;;
1) echo "FAILED: sluice was not exact or did not run (see above)" >&2 ;;
2) echo "FAILED: the harness or the baseline consumer failed (see above)" >&2 ;;
esac
exit $EXIT
