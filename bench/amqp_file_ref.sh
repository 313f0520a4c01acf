# shellcheck shell=bash disable=SC2034  # sourced: FILE_* are read by the sourcing script
# Shared by bench/redis.sh and bench/postgres.sh (sourced, not run): the
# reference rate of their sink comparisons. Sluice runs W1a from a RabbitMQ
# queue into its file sink (bench/pipelines/w1a-amqp.toml, the pipeline of
# bench/amqp.sh), `run --once` on a fresh state directory, timed like the
# other sluice runs (the whole process, start-up and final checkpoint
# included); its output is checked against the oracle with bench/compare.py.
# Uses N, OUT, ORACLE, SLUICE, RUN_LIMIT and new_state (which names a fresh
# state directory in $S) from the sourcing script.

# file_reference QUEUE: sets FILE_SECS (wall seconds, empty on failure) and
# FILE_EXACT (yes / NO: ... / run failed ...); status 1 when sluice failed
# or its output differs from the oracle.
file_reference() { # queue
    local t0 t1 out="$OUT/sluice-file.ndjson" log="$OUT/sluice-file.log"
    FILE_SECS='' FILE_EXACT=''
    new_state
    rm -f -- "$out"
    : >"$log"
    t0=$(date +%s.%N)
    if BENCH_STATE=$S BENCH_QUEUE=$1 BENCH_OUTPUT=$out \
        timeout -k 5 "$RUN_LIMIT" "$SLUICE" run --once bench/pipelines/w1a-amqp.toml 2>>"$log"; then
        t1=$(date +%s.%N)
        FILE_SECS=$(python3 -c "print(f'{$t1 - $t0:.3f}')")
        if python3 bench/compare.py "$out" "$ORACLE/w1a.csv" w1a >>"$log" 2>&1; then
            FILE_EXACT=yes
        else
            FILE_EXACT="NO: output differs from the oracle (log: $log)"
            return 1
        fi
    else
        FILE_EXACT="run failed (log: $log)"
        return 1
    fi
}
# ratio A_SECS B_SECS: how many times faster the run that took A seconds
# was than the one that took B (same N), as "0.85"; "-" when one is missing.
ratio() {
    if [[ -n $1 && -n $2 ]]; then python3 -c "print(f'{$2 / $1:.2f}')"; else echo -; fi
}
