#!/usr/bin/env bash
# W1a (count per country) delivered through Kafka into Redis. Sluice (Kafka
# source -> count by country -> Redis hash + totals, exactly once,
# bench/pipelines/w1a-kafka-redis.toml) vs the hand-written consumer the
# use-case teams wrote (`kafka_baseline consume-redis`: a consumer group
# without auto-commit; per message parse the JSON, HINCRBY country:counts
# <country> 1, INCR messages:total, commit that message's offset; one Redis
# round trip per command).
#
# usage: bench/kafka.sh [N]         N messages (default 100000, at most 1000000)
#   env: KAFKA_BROKERS              broker (default 127.0.0.1:19092, tansu from tests/kafka.sh)
#        REDIS_URL                  Redis (default redis://127.0.0.1:6379)
#        KAFKA_BENCH_PARTITIONS     partitions of the topic (default 3)
#        KAFKA_BENCH_CHECKPOINT     sluice's checkpoint interval (default 1s)
#        KAFKA_BENCH_KILL_CHECKPOINT   the same in the kill run (default 200ms)
#        KAFKA_BENCH_SLUICE_MODE    once (default): sluice's time is the whole
#                                   `sluice run --once` process (start-up and
#                                   final checkpoint included); total: `sluice
#                                   run` until <prefix>messages:total = N, then
#                                   SIGTERM (for brokers where --once does not
#                                   stop at the end)
#        KAFKA_BENCH_INSTANCE_ID    sluice's group_instance_id in the clean run
#                                   (default "": a dynamic member like the
#                                   baseline; tansu admits a static member
#                                   only after ~6 s). The kill runs use static
#                                   members for both consumers (see below).
#        KAFKA_BENCH_SESSION_TIMEOUT_MS   session.timeout.ms of both consumers
#                                   (default 10000): how long a consumer
#                                   restarted after SIGKILL waits for the dead one
#        BENCH_BIN_DIR              take sluice and kafka_baseline (built with
#                                   --features sluice-bench/kafka) from this
#                                   directory instead of `cargo build --release`
#
# The data (bench/data/w1-N.jsonl, gen_weather.py seed 42) is produced ONCE
# into one fresh topic (one record per batch: tansu mishandles multi-record
# batches, see docs/connectors/kafka.md), and every run reads that same
# topic with its own consumer group: same data, same broker, same run.
#  (a) clean runs: from the consumer process's start until all N are
#      counted in Redis (the baseline: until <prefix>messages:total = N,
#      polled every 50 ms; its process ends later, once its backlog of
#      per-message commits is sent; sluice: see KAFKA_BENCH_SLUICE_MODE)
#      -> events/s; group join included for both; final Redis hash and
#      total vs the oracle.
#  (b) kill runs: the consumer is killed with SIGKILL once about half of the
#      messages are counted in Redis, then restarted on the same group to
#      finish (the baseline with N = what the group has not committed, once
#      the committed offsets have stopped moving; sluice with the same state
#      directory). Both consumers are static group members there (a
#      group.instance.id per engine), because on tansu a dynamic member
#      restarted after SIGKILL was given no partitions.
#      Final Redis values vs the oracle, and by how much they differ.
# Keys: bench:kafka:baseline:, bench:kafka:sluice: (clean) and
# bench:kafka:baseline:kill:, bench:kafka:sluice:kill: (kill runs), deleted
# before each run and left for inspection afterwards. The topic and the
# state directories are deleted on exit.
#
# Exit status: 0 sluice exact in every run (the baseline's inexactness is
# reported, not a failure); 1 sluice not exact or failed; 2 the harness or
# the baseline consumer failed.
set -euo pipefail

N=${1:-100000}
MAX_N=1000000
die() { echo "kafka.sh: $*" >&2; exit 2; }
[[ $# -le 1 ]] || die "usage: bench/kafka.sh [N]"
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
((N <= MAX_N)) || die "N=$N is above the $MAX_N limit"
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:19092}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export KAFKA_BENCH_INSTANCE_ID=${KAFKA_BENCH_INSTANCE_ID:-}
export KAFKA_BENCH_SESSION_TIMEOUT_MS=${KAFKA_BENCH_SESSION_TIMEOUT_MS:-10000}
export BASELINE_SESSION_TIMEOUT_MS=$KAFKA_BENCH_SESSION_TIMEOUT_MS
PARTITIONS=${KAFKA_BENCH_PARTITIONS:-3}
MODE=${KAFKA_BENCH_SLUICE_MODE:-once}
CLEAN_CHECKPOINT=${KAFKA_BENCH_CHECKPOINT:-1s}
KILL_CHECKPOINT=${KAFKA_BENCH_KILL_CHECKPOINT:-200ms}
[[ $PARTITIONS =~ ^[1-9][0-9]?$ ]] || die "KAFKA_BENCH_PARTITIONS must be 1..99"
[[ $MODE == once || $MODE == total ]] || die "KAFKA_BENCH_SLUICE_MODE must be once or total"
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
SHARED="$ROOT/bench/w1"
[[ -f $SHARED/gen_weather.py && -f $SHARED/ref_counts.py ]] || die "cannot find $SHARED/{gen_weather,ref_counts}.py"
DATA="bench/data/w1-$N.jsonl"
OUT="bench/out/kafka-$N"
ORACLE="$OUT/oracle"
PIPELINE=bench/pipelines/w1a-kafka-redis.toml
# Time limits (seconds): one consumer run (the baseline does a few k/s on
# tansu; a restart waits up to a session timeout for the group), one
# produce (tansu takes ~1-3 k single-record batches/s per producer).
RUN_LIMIT=$((120 + N / 500))
PRODUCE_LIMIT=$((120 + N / 200))
GONE_LIMIT=120
COMMAND="bench/kafka.sh $N"
EXIT=0
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p bench/data "$OUT"

sluice_wrong() { EXIT=1; }
harness_failed() { [[ $EXIT -eq 1 ]] || EXIT=2; }

echo "== services"
broker_up() {
    local host=${KAFKA_BROKERS%%,*}
    (exec 3<>"/dev/tcp/${host%:*}/${host##*:}") 2>/dev/null
}
if ! broker_up; then
    [[ $KAFKA_BROKERS == 127.0.0.1:19092 ]] || die "no broker answers at $KAFKA_BROKERS"
    # tests/kafka.sh builds tansu first when it is missing (~20 min): not
    # within this benchmark's limits, and not twice at the same time.
    [[ -x ${SLUICE_TOOLS:-/root/.cache/sluice-tools}/bin/tansu ]] ||
        die "tansu is not installed: run 'bash tests/kafka.sh' once first (~20 min build)"
    timeout 120 bash tests/kafka.sh >/dev/null || die "tansu did not start (tests/kafka.sh)"
fi
broker_up || die "no broker answers at $KAFKA_BROKERS"
timeout 300 bash tests/services.sh >/dev/null || die "Redis did not start (tests/services.sh)"
rcli() { timeout 10 redis-cli -u "$REDIS_URL" "$@"; }
[[ $(rcli ping) == PONG ]] || die "Redis at $REDIS_URL does not answer"

if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
    echo "== using the binaries in $BIN (BENCH_BIN_DIR; nothing is built)"
else
    echo "== build (release; may wait for the cargo lock)"
    timeout 1800 cargo build --release -q -p sluice -p sluice-bench --features sluice-bench/kafka ||
        die "build failed"
    BIN=target/release
fi
BASE=$BIN/kafka_baseline
SLUICE=$BIN/sluice
[[ -x $BASE && -x $SLUICE ]] || die "no sluice and kafka_baseline in $BIN"

echo "== data and oracle"
if [[ -f $DATA ]]; then
    echo "using existing $DATA"
else
    timeout $((60 + N / 20000)) python3 "$SHARED/gen_weather.py" "$N" 42 "$DATA.tmp.$$" || die "gen_weather.py failed"
    mv "$DATA.tmp.$$" "$DATA"
fi
timeout 300 python3 "$SHARED/ref_counts.py" "$DATA" "$ORACLE" >/dev/null || die "ref_counts.py failed"

SUFFIX="$$-$(date +%s)"
TOPIC="sluice-bench-kafka-$SUFFIX"
TOPIC_MADE=
STATES=()
cleanup() {
    [[ -z $TOPIC_MADE ]] || timeout 30 "$BASE" delete "$KAFKA_BROKERS" "$TOPIC" 2>/dev/null || true
    for s in "${STATES[@]}"; do rm -rf -- "$s"; done
}
trap cleanup EXIT

source "$ROOT/bench/redis_common.sh"

echo "== produce $N records once into $TOPIC ($PARTITIONS partitions)"
TOPIC_MADE=yes
timeout "$PRODUCE_LIMIT" "$BASE" produce "$KAFKA_BROKERS" "$TOPIC" "$PARTITIONS" "$DATA" 2>"$OUT/produce.log" ||
    die "producing to $TOPIC failed (log: $OUT/produce.log)"
PRODUCED=$(tail -n1 "$OUT/produce.log")
echo "  $PRODUCED"

# SIGKILLs $1 once <prefix>messages:total reaches N/2 or, if given, $3
# seconds have passed and the total is above 0 (sluice writes Redis only at
# checkpoints: its kill run checkpoints every $KILL_CHECKPOINT so that the
# total moves in small steps). Sets AT to describe the
# moment of the kill; status 1 if the process ended (or the limit passed) first.
kill_at_half() { # pid prefix [seconds]
    local deadline=$((SECONDS + RUN_LIMIT)) t start limit_us
    start=$(now)
    limit_us=$(python3 -c "print(int(float('${3:-1e9}') * 1e6))")
    local start_us=${EPOCHREALTIME/./}
    AT=
    while kill -0 "$1" 2>/dev/null && ((SECONDS < deadline)); do
        t=$(rcli GET "${2}messages:total")
        if [[ -n $t ]] && { ((t >= N / 2)) || { ((t > 0)) && ((${EPOCHREALTIME/./} - start_us >= limit_us)); }; }; then
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
# Waits (bounded) until <prefix>messages:total = N; status 1 if $1 ended or
# the limit passed first.
wait_total() { # pid prefix
    local deadline=$((SECONDS + RUN_LIMIT)) t
    while kill -0 "$1" 2>/dev/null && ((SECONDS < deadline)); do
        t=$(rcli GET "${2}messages:total")
        if [[ -n $t ]] && ((t >= N)); then return 0; fi
        sleep 0.05
    done
    return 1
}
# What group $1 has not committed, once the commits the killed consumer had
# sent have all been applied: the broker works through a backlog of
# per-message OffsetCommit requests after the process is gone (tansu lagged
# ~20k commits behind at 14k messages/s), so wait until the value has not
# changed for 3 s. Fails after $GONE_LIMIT s.
settled_remaining() { # group
    local deadline=$((SECONDS + GONE_LIMIT)) last= same=0 r
    while ((SECONDS < deadline)); do
        r=$(timeout 30 "$BASE" remaining "$KAFKA_BROKERS" "$TOPIC" "$1" 2>/dev/null) || r=
        if [[ -n $r && $r == "$last" ]]; then
            same=$((same + 1))
            if ((same >= 3)); then
                echo "$r"
                return 0
            fi
        else
            same=0
        fi
        last=$r
        sleep 1
    done
    return 1
}
new_state() { # fresh empty state directory, named in $S
    S=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-kafka.XXXXXX")
    STATES+=("$S")
}
# The sluice command line for a state, group and key prefix, in CMD (run
# through env, so that $! of a background run is sluice itself).
sluice_cmd() { # state group prefix [group_instance_id]
    CMD=(env "BENCH_STATE=$1" "BENCH_TOPIC=$TOPIC" "BENCH_GROUP=$2" "BENCH_KEY_PREFIX=$3"
        "KAFKA_BENCH_INSTANCE_ID=${4:-$KAFKA_BENCH_INSTANCE_ID}" "$SLUICE" run)
}
# Runs sluice to the end, bounded; in mode `total` sets T_DONE to the moment
# messages:total reached N (before the SIGTERM and the graceful stop).
run_sluice() { # state group prefix log [group_instance_id]
    T_DONE=
    sluice_cmd "$1" "$2" "$3" "${5:-}"
    if [[ $MODE == once ]]; then
        timeout -k 5 "$RUN_LIMIT" "${CMD[@]}" --once "$PIPELINE" 2>>"$4"
    else
        "${CMD[@]}" "$PIPELINE" 2>>"$4" &
        local pid=$!
        if wait_total "$pid" "$3"; then
            T_DONE=$(now)
            kill -TERM "$pid"
            wait_bounded "$pid" 60
        else
            kill -9 "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 1
        fi
    fi
}

declare -A RATE EXACT_CLEAN EXACT_KILL DIFF_KILL NOTE

echo "== (a) clean runs"
P=bench:kafka:baseline:
reset_keys "$P"
t0=$(now)
"$BASE" consume-redis "$KAFKA_BROKERS" "$TOPIC" "bench-baseline-$SUFFIX" "$REDIS_URL" "$P" "$N" >/dev/null 2>"$OUT/baseline.log" &
pid=$!
st=0
# Its time ends when all N are counted in Redis; the process itself ends
# later, when librdkafka has sent the backlog of per-message commits.
if wait_total "$pid" "$P"; then t1=$(now); else st=1; fi
wait_bounded "$pid" "$RUN_LIMIT" || st=$?
if ((st == 0)); then
    RATE[baseline]=$(rate "$t0" "$t1")
    NOTE[baseline]="clean run: all N counted in Redis after $(secs "$t0" "$t1") s, process ended after $(secs "$t0" "$(now)") s ($(grep -o 'first message after [0-9.]* s' "$OUT/baseline.log" || true))"
    if d=$(check "$P"); then EXACT_CLEAN[baseline]=yes; else EXACT_CLEAN[baseline]="NO: $d"; fi
else
    RATE[baseline]=failed
    EXACT_CLEAN[baseline]="run failed (log: $OUT/baseline.log)"
    harness_failed
fi
echo "  baseline: ${RATE[baseline]} events/s, ${EXACT_CLEAN[baseline]}"

P=bench:kafka:sluice:
reset_keys "$P"
new_state
: >"$OUT/sluice.log"
t0=$(now)
if run_sluice "$S" "bench-sluice-$SUFFIX" "$P" "$OUT/sluice.log"; then
    t1=${T_DONE:-$(now)}
    RATE[sluice]=$(rate "$t0" "$t1")
    if [[ $MODE == once ]]; then
        NOTE[sluice]="clean run $(secs "$t0" "$t1") s (whole \`run --once\` process)"
    else
        NOTE[sluice]="clean run $(secs "$t0" "$t1") s (\`run\` until messages:total = N, then SIGTERM)"
    fi
    if d=$(check "$P"); then EXACT_CLEAN[sluice]=yes; else EXACT_CLEAN[sluice]="NO: $d"; sluice_wrong; fi
else
    RATE[sluice]=failed
    EXACT_CLEAN[sluice]="run failed (log: $OUT/sluice.log)"
    sluice_wrong
fi
echo "  sluice: ${RATE[sluice]} events/s, ${EXACT_CLEAN[sluice]}"

echo "== (b) kill -9 runs"
P=bench:kafka:baseline:kill:
G="bench-baseline-kill-$SUFFIX"
reset_keys "$P"
: >"$OUT/baseline-kill.log"
# Static members in the kill runs: on tansu a dynamic member that comes back
# after a SIGKILL gets an empty assignment (the dead member keeps its
# partitions); a static member (same group.instance.id) takes them back.
export BASELINE_GROUP_INSTANCE_ID="bench-baseline-kill-$SUFFIX"
"$BASE" consume-redis "$KAFKA_BROKERS" "$TOPIC" "$G" "$REDIS_URL" "$P" "$N" >/dev/null 2>>"$OUT/baseline-kill.log" &
if kill_at_half $! "$P"; then
    if rest=$(settled_remaining "$G"); then
        st=0
        if ((rest > 0)); then
            echo "--- restart after kill -9 for $rest messages ---" >>"$OUT/baseline-kill.log"
            "$BASE" consume-redis "$KAFKA_BROKERS" "$TOPIC" "$G" "$REDIS_URL" "$P" "$rest" >/dev/null 2>>"$OUT/baseline-kill.log" &
            wait_bounded $! "$RUN_LIMIT" || st=$?
        fi
        if ((st == 0)); then
            NOTE[baseline]+="; killed at $AT, restarted for the $rest messages the group had not committed"
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
        EXACT_KILL[baseline]="the group's committed offsets did not settle within $GONE_LIMIT s"
        harness_failed
    fi
else
    EXACT_KILL[baseline]="not killed: it ended or stalled before half (log: $OUT/baseline-kill.log)"
    harness_failed
fi
echo "  baseline: ${EXACT_KILL[baseline]} ${DIFF_KILL[baseline]:-}"

P=bench:kafka:sluice:kill:
G="bench-sluice-kill-$SUFFIX"
reset_keys "$P"
new_state
: >"$OUT/sluice-kill.log"
ID="bench-sluice-kill-$SUFFIX"
# Checkpoints every 200 ms in the kill run, so that messages:total moves in
# small steps and the kill lands mid-stream (with 1 s, the first checkpoint
# after the ~6 s static join held all 100k at once).
export KAFKA_BENCH_CHECKPOINT=$KILL_CHECKPOINT
sluice_cmd "$S" "$G" "$P" "$ID"
if [[ $MODE == once ]]; then
    "${CMD[@]}" --once "$PIPELINE" 2>>"$OUT/sluice-kill.log" &
else
    "${CMD[@]}" "$PIPELINE" 2>>"$OUT/sluice-kill.log" &
fi
if kill_at_half $! "$P"; then
    echo "--- restart after kill -9 ---" >>"$OUT/sluice-kill.log"
    t0=$(now)
    if run_sluice "$S" "$G" "$P" "$OUT/sluice-kill.log" "$ID"; then
        NOTE[sluice]+="; killed at $AT, restarted with the same state and group (restart took $(secs "$t0" "$(now)") s)"
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

RATIO=$(python3 -c "
a, b = '${RATE[sluice]}'.replace(',', ''), '${RATE[baseline]}'.replace(',', '')
print(f'{float(a) / float(b):.1f}x' if a.isdigit() and b.isdigit() else '-')")
echo
echo "## W1a through Kafka into Redis"
echo
echo "command: $COMMAND; machine: nproc=$(nproc), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//');" \
    "load at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "N=$N messages in 1 topic, $PARTITIONS partitions, one record per batch ($PRODUCED);" \
    "broker $KAFKA_BROKERS; sluice checkpoint $CLEAN_CHECKPOINT (kill run $KILL_CHECKPOINT), mode $MODE;" \
    "clean runs: group_instance_id '${KAFKA_BENCH_INSTANCE_ID}', kill runs: static members; session.timeout.ms $KAFKA_BENCH_SESSION_TIMEOUT_MS"
echo
echo "| engine | events/s (clean) | ratio | exact after clean run | exact after kill -9 | difference after kill |"
echo "|---|---|---|---|---|---|"
echo "| hand-written consumer (HINCRBY + INCR + commit per message) | ${RATE[baseline]} | 1.0x | ${EXACT_CLEAN[baseline]} | ${EXACT_KILL[baseline]} | ${DIFF_KILL[baseline]:--} |"
echo "| sluice (kafka -> aggregate -> redis hash + totals) | ${RATE[sluice]} | $RATIO | ${EXACT_CLEAN[sluice]} | ${EXACT_KILL[sluice]} | ${DIFF_KILL[sluice]:--} |"
echo
echo "- baseline: ${NOTE[baseline]:-}"
echo "- sluice: ${NOTE[sluice]:-}"
echo "logs: $OUT/; Redis keys bench:kafka:{baseline,sluice}:[kill:]{country:counts,messages:total}"
case $EXIT in
0) echo "sluice exact in every run" ;;
1) echo "FAILED: sluice was not exact or did not run (see above)" >&2 ;;
2) echo "FAILED: the harness or the baseline consumer failed (see above)" >&2 ;;
esac
exit $EXIT
