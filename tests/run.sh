#!/usr/bin/env bash
# The whole test suite, as the README says: installs what is missing,
# starts the real services the tests talk to (on 127.0.0.1 only), then runs
# every Rust test (unit, property, golden pipelines, crash, connector
# integration tests) and the deployment/dashboard checks.
#
#   bash tests/run.sh
#   bash tests/run.sh --tools-only   # only install the build tools
#
# Env: SLUICE_TEST_SEED replays the random kill points of the crash tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. System packages (Debian bookworm). Nothing is installed when present.
pkgs=()
command -v cc >/dev/null || pkgs+=(build-essential)
command -v cmake >/dev/null || pkgs+=(cmake)
command -v pkg-config >/dev/null || pkgs+=(pkg-config)
command -v python3 >/dev/null || pkgs+=(python3)
command -v curl >/dev/null || pkgs+=(curl)
command -v prometheus >/dev/null || pkgs+=(prometheus)   # the observability test runs a real one
command -v chromium >/dev/null || pkgs+=(chromium)       # the status page test renders it in headless Chromium
command -v npm >/dev/null || pkgs+=(npm)                 # tests/azurite.sh installs Azurite with it
python3 -c 'import yaml' 2>/dev/null || pkgs+=(python3-yaml)
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)  # tests/s3.sh installs moto in one
dpkg -s libssl-dev >/dev/null 2>&1 || pkgs+=(libssl-dev)
dpkg -s libsasl2-dev >/dev/null 2>&1 || pkgs+=(libsasl2-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || pkgs+=(zlib1g-dev)
dpkg -s libzstd-dev >/dev/null 2>&1 || pkgs+=(libzstd-dev)
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "==> installing ${pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

[ "${1:-}" = "--tools-only" ] && exit 0

# 2. Services the integration tests use (each script is idempotent).
for svc in tests/services.sh tests/rabbitmq.sh tests/s3.sh tests/azurite.sh; do
    echo "==> $svc"
    bash "$svc"
done
# tansu keeps topics in memory: each run of the suite gets an empty broker.
echo "==> tests/kafka.sh fresh"
bash tests/kafka.sh fresh

# 3. Rust tests: unit, property, golden, crash and integration tests.
echo "==> cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast

# 4. The README's first run, as pasted (builds the release binary).
echo "==> tests/readme.sh"
bash tests/readme.sh

# 5. Deployment manifests, dashboards and alert rules.
echo "==> deploy/validate.sh"
bash deploy/validate.sh

# 6. Benchmark scripts: syntax (and shellcheck on bench/all.sh when
# installed), and bench/all.sh's report on canned output. The benchmarks
# themselves are not run here (`bench/all.sh --quick` takes minutes), but
# for the slow-disk check at a small size.
echo "==> bench scripts"
for f in bench/*.sh; do bash -n "$f"; done
python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' bench/*.py
if command -v shellcheck >/dev/null; then shellcheck bench/all.sh; fi
python3 tests/bench_all_report.py
# The slow-disk check at its small size, as bench/README.md shows it (the
# release binary is built by step 4): W1b with 50 ms added to every fsync,
# outputs checked against the oracle.
bash bench/slow_fsync.sh 200000 50 1
