#!/usr/bin/env bash
# W1a over RabbitMQ: sluice (AMQP source -> count per country -> file,
# exactly once, acks after checkpoints) vs the hand-written consumer that
# counts and acks message by message (bench/src/bin/amqp_baseline.rs).
#
# usage: bench/amqp.sh [N]          N messages (default 200000)
#   env: AMQP_URL                   broker (default amqp://guest:guest@127.0.0.1:5672/%2f)
#        AMQP_BENCH_PREFETCH        sluice's prefetch (default 60000)
#        AMQP_BENCH_CHECKPOINT      sluice's checkpoint interval (default 1s)
#        BASELINE_PREFETCH          the baseline consumer's prefetch (default 1000)
#        BENCH_BIN_DIR              take sluice and amqp_baseline from this
#                                   directory instead of `cargo build --release`
#
# Each engine consumes its own freshly published queue (persistent messages
# with message_id); the time measured is from the consumer's start until it
# has counted all N (sluice: the whole `sluice run --once` process, start-up
# and final checkpoint included). Both results are checked against the
# oracle (bench/w1/ref_counts.py). Queues are deleted afterwards.
set -euo pipefail

N=${1:-200000}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer" >&2; exit 2; }
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
SHARED="$ROOT/bench/w1"
DATA="bench/data/w1-$N.jsonl"
OUT="bench/out/amqp-$N"
mkdir -p bench/data "$OUT"

bash tests/rabbitmq.sh >/dev/null
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
else
    cargo build --release -q -p sluice -p sluice-bench --features sluice-bench/amqp
    BIN=target/release
fi
[[ -x $BIN/sluice && -x $BIN/amqp_baseline ]] || { echo "no sluice and amqp_baseline in $BIN" >&2; exit 2; }
[[ -f $DATA ]] || python3 "$SHARED/gen_weather.py" "$N" 42 "$DATA"
python3 "$SHARED/ref_counts.py" "$DATA" "$OUT/oracle" >/dev/null

BASE="$BIN/amqp_baseline"
SUFFIX="$$_$(date +%s)"
Q_BASE="sluice_bench_baseline_$SUFFIX"
Q_SLUICE="sluice_bench_sluice_$SUFFIX"
cleanup() {
    rabbitmqctl -q delete_queue "$Q_BASE" >/dev/null 2>&1 || true
    rabbitmqctl -q delete_queue "$Q_SLUICE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{$N / ($2 - $1):,.0f}')" ; }

echo "publishing $N messages twice..."
"$BASE" publish "$AMQP_URL" "$Q_BASE" "$DATA"
"$BASE" publish "$AMQP_URL" "$Q_SLUICE" "$DATA"

t0=$(now)
"$BASE" consume "$AMQP_URL" "$Q_BASE" "$N" "$OUT/baseline.csv" "${BASELINE_PREFETCH:-1000}" 2>"$OUT/baseline.log"
t1=$(now)
cmp -s "$OUT/baseline.csv" "$OUT/oracle/w1a.csv" || { echo "baseline output differs from the oracle" >&2; exit 1; }

rm -rf "$OUT/state" "$OUT/sluice.ndjson"
t2=$(now)
BENCH_STATE="$OUT/state" BENCH_QUEUE="$Q_SLUICE" BENCH_OUTPUT="$OUT/sluice.ndjson" \
    /usr/bin/time -f "%M" -o "$OUT/sluice.rss" \
    "$BIN/sluice" run --once bench/pipelines/w1a-amqp.toml 2>"$OUT/sluice.log"
t3=$(now)
python3 bench/compare.py "$OUT/sluice.ndjson" "$OUT/oracle/w1a.csv" w1a || { echo "sluice output differs from the oracle" >&2; exit 1; }
left=$(rabbitmqctl -q list_queues name messages | awk -v q="$Q_SLUICE" '$1 == q {print $2}')

echo
echo "| engine | messages/s | seconds | notes |"
echo "|---|---|---|---|"
echo "| hand-written consumer (ack per message, prefetch ${BASELINE_PREFETCH:-1000}) | $(rate "$t0" "$t1") | $(python3 -c "print(round($t1 - $t0, 2))") | no durable state, not crash-safe |"
echo "| sluice (prefetch ${AMQP_BENCH_PREFETCH:-60000}, checkpoint ${AMQP_BENCH_CHECKPOINT:-1s}) | $(rate "$t2" "$t3") | $(python3 -c "print(round($t3 - $t2, 2))") | exactly once; peak RSS $(( $(cat "$OUT/sluice.rss") / 1024 )) MiB; ${left:-?} left in queue |"
