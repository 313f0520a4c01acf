#!/usr/bin/env bash
# Runs the README's "Two commands" section as pasted: its first command (the
# embedded default job) in the background, then the curl block as from a
# second terminal, and checks every reply shown in the block's comments.
# Called by tests/run.sh after the Rust tests. It removes the job's own state
# directory (sluice-state/weather) first, so that the counts start at zero,
# and needs 127.0.0.1:8080 and :9898 free.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(mktemp -d)"
trap 'kill "$job" 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 - "$WORK" <<'PY'
import re, sys
text = open("README.md").read()
section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
assert len(blocks) >= 3, f"expected the job, the curl block and the test command, found {len(blocks)}"
open(f"{sys.argv[1]}/job.sh", "w").write(blocks[0])
open(f"{sys.argv[1]}/client.sh", "w").write(blocks[1])
PY
echo "==> the job: $(cat "$WORK/job.sh")"
rm -rf sluice-state/weather
setsid bash "$WORK/job.sh" >"$WORK/job.log" 2>&1 &
job=$!
# The first `cargo run --release` builds the release binary.
for _ in $(seq 1 1800); do
    (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
    kill -0 "$job" 2>/dev/null || { cat "$WORK/job.log"; echo "the job exited"; exit 1; }
    sleep 1
done
(exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null || { tail -20 "$WORK/job.log"; echo "nothing listens on 8080"; exit 1; }

echo "==> the client block"
bash "$WORK/client.sh" >"$WORK/client.out"
fail=0
while IFS= read -r want; do
    if grep -qF -- "$want" "$WORK/client.out"; then
        echo "ok: $want"
    else
        echo "MISSING in the replies: $want"
        fail=1
    fi
done < <(grep -o '# {.*' "$WORK/client.sh" | sed 's/^# //')
# Every JSON reply ends with a newline: no line holds two replies.
if grep -q '}{' "$WORK/client.out"; then
    echo "replies run together (a reply without its final newline):"
    grep '}{' "$WORK/client.out"
    fail=1
fi

# The README's way to put the built binary on the PATH.
path_line='export PATH="$PWD/target/release:$PATH"'
grep -qxF "$path_line" README.md || { echo "the README no longer shows: $path_line"; fail=1; }
if (eval "$path_line" && sluice --version >/dev/null); then
    echo "ok: $path_line, then sluice --version"
else
    echo "FAILED: $path_line, then sluice --version"
    fail=1
fi

# Ctrl-C stops the job gracefully.
kill -INT -- "-$job"
wait "$job" || { echo "the job did not exit 0 after Ctrl-C"; tail -20 "$WORK/job.log"; fail=1; }
if [ "$fail" -ne 0 ]; then
    echo "--- replies:"; cat "$WORK/client.out"
    exit 1
fi
echo "README: the two-terminal example works as pasted"
