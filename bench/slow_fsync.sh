#!/usr/bin/env bash
# Does a slow disk slow sluice's throughput, or only its commits? (issue 15)
#
# usage: bench/slow_fsync.sh [N] [DELAY_MS] [ROUNDS]
#   N         W1 events (default 5000000; the data file of bench/run.sh)
#   DELAY_MS  added before every fsync, fdatasync and sync_file_range
#             (default 100)
#   ROUNDS    rounds, each one run without and one with the delay (default 3)
#   env: BENCH_BIN_DIR   take sluice from here instead of target/release
#
# Runs W1b (bench/pipelines/w1b.toml) with an LD_PRELOAD shim
# (bench/slow_fsync.c, built with cc) that makes every fsync, fdatasync and
# sync_file_range of sluice wait DELAY_MS first: sled's checkpoint writes,
# the state marker, the file sink's epochs. For each run it prints, from
# the start of the process: when the source had read its whole input (its
# `source finished` log line; bounded channels pace the reading by
# processing), how long the final commit took after that, and the whole
# run. If checkpoints and sink writes overlap processing, the delay adds to
# start-up (opening the state, a few syncs) and to the final commit, not to
# the reading. Every output is checked
# against the oracle (bench/compare.py). Exit status: 0 all runs correct,
# 1 a run failed or an output differed, 2 usage or setup.
set -euo pipefail
N=${1:-5000000}
DELAY_MS=${2:-100}
ROUNDS=${3:-3}
die() { echo "slow_fsync.sh: $*" >&2; exit 2; }
[[ $N =~ ^[1-9][0-9]*$ && $N -le 20000000 ]] || die "N must be 1..20000000"
[[ $DELAY_MS =~ ^[0-9]+$ && $DELAY_MS -le 2000 ]] || die "DELAY_MS must be 0..2000"
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 10 ]] || die "ROUNDS must be 1..10"
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
else
    cargo build --release -q -p sluice
    BIN=$ROOT/target/release
fi
[[ -x $BIN/sluice ]] || die "no sluice in $BIN"
command -v cc >/dev/null || die "needs a C compiler (cc) for the LD_PRELOAD shim"
DATA=bench/data/w1-$N.jsonl
ORACLE=bench/out/$N/oracle
mkdir -p bench/data "$ORACLE"
[[ -f $DATA ]] || python3 bench/w1/gen_weather.py "$N" 42 "$DATA"
[[ -f $ORACLE/w1b.csv ]] || python3 bench/w1/ref_counts.py "$DATA" "$ORACLE"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cc -O2 -shared -fPIC -o "$WORK/slow_fsync.so" bench/slow_fsync.c -ldl

status=0
run() { # delay_ms -> writes "read_s commit_s total_s" to $WORK/result
    local state="$WORK/state" out="$WORK/out.ndjson" log="$WORK/log" t0 t1
    rm -rf "$state" "$out"
    echo "failed failed failed" >"$WORK/result"
    t0=$(date +%s.%N)
    if ! BENCH_STATE=$state BENCH_INPUT=$DATA BENCH_OUTPUT=$out SLOW_FSYNC_MS=$1 \
        LD_PRELOAD="$WORK/slow_fsync.so" timeout 300 "$BIN/sluice" run bench/pipelines/w1b.toml 2>"$log"; then
        echo "slow_fsync.sh: sluice failed (delay $1 ms); log:" >&2; tail -5 "$log" >&2; status=1; return
    fi
    t1=$(date +%s.%N)
    python3 bench/compare.py "$out" "$ORACLE/w1b.csv" w1b >/dev/null 2>"$WORK/compare" ||
        { echo "slow_fsync.sh: output differs from the oracle (delay $1 ms)" >&2; cat "$WORK/compare" >&2; status=1; }
    {
    python3 - "$t0" "$t1" "$log" <<'PY'
import datetime, re, sys
t0, t1, log = float(sys.argv[1]), float(sys.argv[2]), open(sys.argv[3]).read()
def at(pattern):
    m = re.search(r"^(\S+Z) .*" + pattern, log, re.M)
    if not m:
        return float("nan")
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
read = at("source finished")
print(f"{read - t0:.2f} {t1 - read:.2f} {t1 - t0:.2f}")
PY
    } >"$WORK/result"
}

echo "command: bench/slow_fsync.sh $N $DELAY_MS $ROUNDS; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); git $(git rev-parse --short HEAD)"
echo
echo "| fsync delay | round | input read after (s) | final commit (s) | whole run (s) |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    for delay in 0 "$DELAY_MS"; do
        run "$delay"
        read -r read_s commit_s total_s <"$WORK/result"
        echo "| ${delay} ms | $round | $read_s | $commit_s | $total_s |"
    done
done
exit $status
