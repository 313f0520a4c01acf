#!/usr/bin/env bash
# W1 ("weather count") benchmark: sluice vs the hand-written baseline loop.
#
# usage: bench/run.sh [N]        N events, default 5000000, at most 20000000
#   env: BENCH_RUNS              runs per workload and engine (default 3)
#        BENCH_BIN_DIR           measure the sluice and baseline binaries in this
#                                directory instead of building (before/after runs)
#
# Generates bench/data/w1-N.jsonl once (bench/w1/gen_weather.py, seed 42),
# computes the oracle with bench/w1/ref_counts.py, builds sluice and the
# baseline in release mode, then times W1a and W1b for both engines with the
# input hot in the page cache. Every output is checked against the oracle.
# Prints a markdown table; see bench/README.md for how to read it.
#
# Exit status: 0 when every run was measured and correct (targets missed are
# reported, not fatal); 1 when an output did not match the oracle or the
# harness itself failed; 2 when sluice could not be built or run (the baseline
# rows are still printed).
set -euo pipefail

N=${1:-5000000}
RUNS=${BENCH_RUNS:-3}
MAX_N=20000000
STARTUP_RUNS=10
SEED=42

die() { echo "run.sh: $*" >&2; exit 1; }
[[ $# -le 1 ]] || die "usage: bench/run.sh [N]"
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
((N <= MAX_N)) || die "N=$N is above the $MAX_N limit (the data file would be $((N / 8000000)) GB+)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer, got '$RUNS'"
((RUNS <= 20)) || die "BENCH_RUNS=$RUNS is above 20"

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
SHARED="$ROOT/bench/w1"
[[ -f $SHARED/gen_weather.py && -f $SHARED/ref_counts.py ]] || die "cannot find $SHARED/{gen_weather,ref_counts}.py"
BENCH="$ROOT/bench"
DATA="$BENCH/data/w1-$N.jsonl"
OUT="$BENCH/out/$N"
ORACLE="$OUT/oracle"
RESULTS="$OUT/results.jsonl"
# Generous per-run limit so that a hung engine cannot hang the benchmark.
TIMEOUT=$((60 + N / 20000))
COMMAND="BENCH_RUNS=$RUNS bench/run.sh $N"
EXIT=0

mkdir -p "$BENCH/data" "$OUT"
: >"$RESULTS"

machine_info() {
    echo "command: $COMMAND"
    echo "machine: nproc=$(nproc), CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
        "RAM: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)," \
        "kernel $(uname -r), $(rustc --version 2>/dev/null || echo 'rustc ?')"
    echo "load average at start: $LOAD_AT_START; git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit')" \
        "$(git status --porcelain 2>/dev/null | grep -q . && echo '(uncommitted changes)'); $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "N=$N events ($(($(stat -c %s "$DATA") / 1000000)) MB), $RUNS runs per cell, input hot in the page cache"
}

# One status record ("failed", "mismatch", "unavailable") for the report.
note() { # workload engine status detail
    python3 -c 'import json, sys; print(json.dumps(dict(zip(["workload", "engine", "status", "detail"], sys.argv[1:]))))' \
        "$@" >>"$RESULTS"
}

# Exit status: a wrong result (1) outranks "sluice not measured" (2).
wrong() { EXIT=1; }
unmeasured() { [[ $EXIT -eq 1 ]] || EXIT=2; }

loud() {
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! $*" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
if python3 -c 'import os, sys; sys.exit(os.getloadavg()[0] <= 0.5 * os.cpu_count())'; then
    echo "WARNING: load average $LOAD_AT_START on $(nproc) CPUs: other work is running, numbers will be noisy" >&2
fi

# measure.py takes peak RSS from GNU time (see measure.py for why).
if [[ ! -x /usr/bin/time ]]; then
    echo "installing GNU time (apt-get install time)"
    apt-get install -y -q time >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q time >/dev/null 2>&1) ||
        echo "WARNING: could not install GNU time; peak RSS will include ~15 MiB inherited from Python" >&2
fi

echo "== data"
if [[ -f $DATA ]]; then
    echo "using existing $DATA"
else
    echo "generating $DATA (python3 gen_weather.py $N $SEED; ~10 s per million events)"
    python3 "$SHARED/gen_weather.py" "$N" "$SEED" "$DATA.tmp.$$"
    mv "$DATA.tmp.$$" "$DATA"
fi

echo "== oracle (ref_counts.py)"
python3 "$SHARED/ref_counts.py" "$DATA" "$ORACLE"

SLUICE_OK=1
SLUICE_VALID=0
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    # Measures binaries built elsewhere (e.g. an earlier revision, for a
    # before/after comparison in one session): sluice and baseline from there.
    BIN=$(cd "$BENCH_BIN_DIR" && pwd)
    [[ -x $BIN/sluice && -x $BIN/baseline ]] || die "BENCH_BIN_DIR=$BENCH_BIN_DIR has no sluice and baseline binaries"
    echo "== using the binaries in $BIN (BENCH_BIN_DIR; nothing is built)"
else
echo "== build (cargo build --release -p sluice -p sluice-bench; may wait for the cargo lock)"
TARGET_DIR=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/release"
if ! cargo build --release -p sluice -p sluice-bench >"$OUT/build.log" 2>&1; then
    SLUICE_OK=0
    echo "sluice did not build (log: $OUT/build.log); building the baseline alone"
    # A stale target/release/sluice from an older build must not be measured.
    note w1a sluice unavailable "sluice binary not built yet: cargo build failed; tail of $OUT/build.log:
$(grep -v '^ *\(Compiling\|Blocking\|Checking\)' "$OUT/build.log" | tail -n 15)"
    cargo build --release -p sluice-bench >>"$OUT/build.log" 2>&1 ||
        { tail -n 30 "$OUT/build.log" >&2; die "the baseline does not build either"; }
fi
fi

echo "== warming the page cache"
cat "$DATA" >/dev/null

measure() { # workload engine run output -- cmd...
    local w=$1 e=$2 r=$3 out=$4
    shift 5
    python3 "$BENCH/measure.py" --tag "workload=$w" --tag "engine=$e" --tag "run=$r" \
        --watch "$out" --stderr "$OUT/$e-$w.err" --timeout "$TIMEOUT" -- "$@"
}

# Runs the sluice pipeline for workload $1 with a fresh, empty state directory;
# prints measure.py's JSON, returns non-zero if sluice failed.
run_sluice() { # workload run output input
    local state status=0
    state=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-state.XXXXXX")
    # A fresh state with an earlier run's output beside it is refused
    # (docs/operations.md, "Damaged or lost state"): each run starts clean.
    rm -f -- "$3"
    BENCH_STATE=$state BENCH_INPUT=$4 BENCH_OUTPUT=$3 \
        measure "$1" sluice "$2" "$3" -- "$BIN/sluice" run "bench/pipelines/$1.toml" || status=$?
    rm -rf -- "$state"
    return $status
}

sluice_failed() { # workload json — record a failed sluice run
    note "$1" sluice failed "run failed: ${2:-measure.py could not start $BIN/sluice}
stderr tail ($OUT/sluice-$1.err):
$(tail -n 15 "$OUT/sluice-$1.err" 2>/dev/null | grep . || echo '(empty)')"
    echo "  $1 sluice: run failed (stderr: $OUT/sluice-$1.err)"
    unmeasured
}

for W in w1a w1b; do
    echo "== ${W^^}"
    SLUICE_SKIP=$((1 - SLUICE_OK))
    if [[ $SLUICE_OK -eq 0 ]]; then
        [[ $W == w1a ]] || note "$W" sluice unavailable "sluice binary not built yet (see W1A)"
        unmeasured
    fi
    for ((r = 1; r <= RUNS; r++)); do
        out="$OUT/baseline-$W.csv"
        if json=$(measure "$W" baseline "$r" "$out" -- "$BIN/baseline" "$W" "$DATA" "$out"); then
            echo "$json" >>"$RESULTS"
            python3 "$BENCH/report.py" line "$N" "$json"
            if ! cmp -s "$out" "$ORACLE/$W.csv"; then
                loud "BASELINE $W OUTPUT DIFFERS FROM THE ORACLE ($out vs $ORACLE/$W.csv)"
                diff "$ORACLE/$W.csv" "$out" | head -n 10 >&2 || true
                note "$W" baseline mismatch "$out differs from $ORACLE/$W.csv"
                wrong
            fi
        else
            note "$W" baseline failed "$json
$(tail -n 15 "$OUT/baseline-$W.err")"
            loud "BASELINE $W FAILED: $(tail -n 3 "$OUT/baseline-$W.err")"
            wrong
        fi

        ((SLUICE_SKIP == 0)) || continue
        out="$OUT/sluice-$W.ndjson"
        status=0
        json=$(run_sluice "$W" "$r" "$out" "$DATA") || status=$?
        if ((status != 0)); then
            sluice_failed "$W" "$json"
            SLUICE_SKIP=1
        elif [[ ! -e $out ]]; then
            sluice_failed "$W" "exited 0 but wrote no $out (is \`sluice run\` implemented yet?) $json"
            SLUICE_SKIP=1
        else
            echo "$json" >>"$RESULTS"
            python3 "$BENCH/report.py" line "$N" "$json"
            if ! python3 "$BENCH/compare.py" "$out" "$ORACLE/$W.csv" "$W" 2>"$OUT/compare-$W.txt"; then
                loud "SLUICE $W OUTPUT DOES NOT MATCH THE ORACLE"
                cat "$OUT/compare-$W.txt" >&2
                note "$W" sluice mismatch "$(cat "$OUT/compare-$W.txt")"
                wrong
                SLUICE_SKIP=1
            else
                SLUICE_VALID=1
            fi
        fi
    done
done

echo "== start-up (sluice run on an empty input, fresh state, $STARTUP_RUNS runs)"
if [[ $SLUICE_VALID -eq 0 ]]; then
    # A stub that exits at once would "start up" in 2 ms: only time a sluice
    # that has shown it really runs the workload.
    echo "  skipped: sluice produced no valid W1 result"
    note startup sluice unavailable "not measured: sluice produced no valid W1 result in this run"
    unmeasured
else
    : >"$OUT/empty.jsonl"
    for ((r = 1; r <= STARTUP_RUNS; r++)); do
        state=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-state.XXXXXX")
        status=0
        rm -f -- "$OUT/startup-out.ndjson"
        json=$(BENCH_STATE=$state BENCH_INPUT=$OUT/empty.jsonl BENCH_OUTPUT=$OUT/startup-out.ndjson \
            python3 "$BENCH/measure.py" --tag workload=startup --tag engine=sluice --tag "run=$r" \
            --stderr "$OUT/sluice-startup.err" --timeout 10 -- "$BIN/sluice" run bench/pipelines/w1a.toml) || status=$?
        rm -rf -- "$state"
        if ((status != 0)); then
            note startup sluice failed "run failed: $json
$(tail -n 15 "$OUT/sluice-startup.err")"
            echo "  start-up run failed (stderr: $OUT/sluice-startup.err)"
            unmeasured
            break
        fi
        echo "$json" >>"$RESULTS"
    done
fi

echo
echo "## W1 results"
echo
machine_info
echo
python3 "$BENCH/report.py" table "$RESULTS" "$N"
echo
echo "raw results: $RESULTS; outputs and stderr logs: $OUT/"
case $EXIT in
0) echo "all outputs match the oracle" ;;
1) loud "BENCHMARK FAILED: an output did not match the oracle or a run failed (see above)" ;;
2) echo "sluice was not measured (see problems above); baseline rows are valid" ;;
esac
exit $EXIT
