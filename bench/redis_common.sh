# Shared by bench/redis.sh and bench/kafka.sh (sourced, not run): timing
# helpers, and the exactness check of a W1a count in Redis against the
# oracle. Uses N, ORACLE, REDIS_URL and rcli from the sourcing script.
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
rate() { python3 -c "print(f'{$N / ($2 - $1):,.0f}')"; }
reset_keys() { # prefix
    rcli DEL "${1}country:counts" "${1}country:counts:__epoch" "${1}messages:total" >/dev/null
}
# Compares <prefix>country:counts and <prefix>messages:total with the oracle.
# Prints "exact" or the difference; status 0 when exact.
check() { # prefix
    python3 - "$ORACLE/w1a.csv" "$N" "$1" "$REDIS_URL" <<'PY'
import subprocess, sys
oracle_csv, n, prefix, url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def cli(*args):
    return subprocess.run(["redis-cli", "-u", url, "--raw", *args], check=True, timeout=30,
                          capture_output=True, text=True).stdout.splitlines()
oracle = {}
for line in open(oracle_csv):
    c, k = line.strip().split(",")
    oracle[c] = int(k)
flat = cli("HGETALL", prefix + "country:counts")
got = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
total = cli("GET", prefix + "messages:total")
total = int(total[0]) if total and total[0] else 0
diff = {c: got.get(c, 0) - oracle.get(c, 0) for c in set(got) | set(oracle)}
diff = {c: d for c, d in diff.items() if d}
if not diff and total == n:
    print("exact")
    sys.exit(0)
extra = sum(d for d in diff.values() if d > 0)
missing = -sum(d for d in diff.values() if d < 0)
print(f"messages:total {total - n:+,} ({total:,} vs {n:,}); country:counts +{extra:,} / -{missing:,} over {len(diff)} countries")
sys.exit(1)
PY
}
# Waits for a background process at most $2 s (SIGKILL after); its status.
wait_bounded() { # pid secs
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -9 "$1" 2>/dev/null || true
            wait "$1" 2>/dev/null || true
            echo "timed out after $2 s" >&2
            return 124
        fi
        sleep 0.05
    done
    local st=0
    wait "$1" || st=$?
    return $st
}
