#!/usr/bin/env bash
# Static checks of the deployment and observability artefacts
# (deploy/, dashboards/). Runs offline on Debian bookworm; installs what it
# needs when missing (yamllint, prometheus for promtool, docker-compose from
# apt; kubernetes-validate and PyYAML from PyPI). Exits non-zero if any
# check fails, after running all of them, and prints which failed.
#
#   deploy/validate.sh
#
# Environment:
#   SLUICE_METRICS_URL  also check the dashboards and alerts against a live
#                       /metrics, e.g. http://127.0.0.1:9898/metrics
#   SLUICE_METRICS_TOKEN  bearer token for that /metrics, when the admin server
#                       has `auth_token_env` (the shipped Kubernetes pipeline)
#   SLUICE_BIN          sluice binary for `sluice validate` of the pipelines
#                       (default: target/release/sluice, target/debug/sluice,
#                       or sluice on PATH)
#   K8S_VERSIONS        Kubernetes versions to validate the manifests against
#                       (default "1.27.0 1.37.0": oldest supported, newest)
#   VALIDATE_NO_INSTALL=1  never install anything; missing tools fail
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The checking scripts import each other: leave no __pycache__ behind.
export PYTHONDONTWRITEBYTECODE=1

K8S_VERSIONS="${K8S_VERSIONS:-1.27.0 1.37.0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

PASSED=()
FAILED=()
SKIPPED=()

# step NAME COMMAND...: run one check, record PASS/FAIL.
step() {
    local name="$1"
    shift
    echo
    echo "==> $name"
    if "$@"; then
        echo "PASS  $name"
        PASSED+=("$name")
    else
        echo "FAIL  $name"
        FAILED+=("$name")
    fi
}

skip() {
    echo
    echo "==> $1"
    echo "SKIP  $1: $2"
    SKIPPED+=("$1 ($2)")
}

# --------------------------------------------------------------------------
# Tools

APT_UPDATED=0
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}
apt_install() {
    [ "${VALIDATE_NO_INSTALL:-0}" = 1 ] && return 1
    command -v apt-get >/dev/null || return 1
    if [ "$APT_UPDATED" = 0 ]; then
        as_root apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    # Debian does not start services from here; nothing is left running.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
pip_install() {
    [ "${VALIDATE_NO_INSTALL:-0}" = 1 ] && return 1
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip || return 1
    python3 -m pip install -q "$@" 2>/dev/null ||
        # Debian's system Python is "externally managed" (PEP 668).
        python3 -m pip install -q --user --break-system-packages "$@"
}
need_command() {  # need_command COMMAND APT_PACKAGE
    command -v "$1" >/dev/null && return 0
    echo "installing $2 (for $1)"
    apt_install "$2" && command -v "$1" >/dev/null
}
need_python_module() {  # need_python_module MODULE PIP_PACKAGE
    python3 -c "import $1" 2>/dev/null && return 0
    echo "installing $2 (python module $1)"
    pip_install "$2" && python3 -c "import $1" 2>/dev/null
}

tools() {
    local ok=0
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        { echo "python3 >= 3.11 is required (tomllib)"; ok=1; }
    need_python_module yaml pyyaml || { echo "missing: PyYAML"; ok=1; }
    need_python_module kubernetes_validate kubernetes-validate || { echo "missing: kubernetes-validate"; ok=1; }
    need_command yamllint yamllint || { echo "missing: yamllint"; ok=1; }
    need_command promtool prometheus || { echo "missing: promtool"; ok=1; }
    if ! docker compose version >/dev/null 2>&1; then
        need_command docker-compose docker-compose || { echo "missing: docker compose / docker-compose"; ok=1; }
    fi
    echo "python3 $(python3 -c 'import platform; print(platform.python_version())'), $(yamllint --version 2>/dev/null)," \
        "$(promtool --version 2>/dev/null | head -n 1)"
    return $ok
}

# --------------------------------------------------------------------------
# Checks

render_overlays() {
    local overlay name ok=0
    for overlay in deploy/k8s/overlays/*/; do
        name="$(basename "$overlay")"
        python3 deploy/k8s/render.py "$overlay" --out-dir "$WORK/rendered/$name" || ok=1
        echo "$overlay: $(ls "$WORK/rendered/$name" 2>/dev/null | wc -l) objects"
    done
    return $ok
}

compare_with_kubectl() {
    local overlay ok=0
    for overlay in deploy/k8s/base deploy/k8s/overlays/*/; do
        python3 deploy/k8s/render.py "$overlay" --compare-kubectl >/dev/null || ok=1
        [ $ok = 0 ] && echo "$overlay: render.py == kubectl kustomize"
    done
    return $ok
}

# replicas_are_workers FILE...: in every rendered StatefulSet `sluice`,
# SLUICE_WORKERS equals spec.replicas (one value, copied by the kustomize
# `replacements` entry); fails on the first manifest set without one.
replicas_are_workers() {
    python3 - "$@" <<'EOF'
import sys, yaml
docs = []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        docs += [d for d in yaml.safe_load_all(f) if d]
found = 0
for d in docs:
    if d.get("kind") != "StatefulSet" or d["metadata"]["name"] != "sluice":
        continue
    found += 1
    replicas = d["spec"].get("replicas", 1)
    env = {e["name"]: e.get("value") for c in d["spec"]["template"]["spec"]["containers"]
           for e in c.get("env") or []}
    if env.get("SLUICE_WORKERS") != str(replicas):
        sys.exit(f"replicas {replicas} but SLUICE_WORKERS {env.get('SLUICE_WORKERS')!r}")
    print(f"replicas {replicas} == SLUICE_WORKERS {env['SLUICE_WORKERS']!r}", end="")
sys.exit(0 if found == 1 else f"{found} StatefulSets named sluice")
EOF
}

workers_match_replicas() {
    local overlay name ok=0
    for overlay in deploy/k8s/overlays/*/; do
        name="$(basename "$overlay")"
        if replicas_are_workers "$WORK"/rendered/"$name"/*.yaml; then echo " ($overlay, render.py)"; else ok=1; fi
        if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
            kubectl kustomize "$overlay" >"$WORK/kubectl-$name.yaml" || { ok=1; continue; }
            if replicas_are_workers "$WORK/kubectl-$name.yaml"; then echo " ($overlay, kubectl kustomize)"; else ok=1; fi
        fi
    done
    return $ok
}

kubernetes_schemas() {
    local files=() f version ok=0
    for f in "$WORK"/rendered/*/*.yaml deploy/k8s/overlays/*/*.example.yaml; do
        # CRDs have no bundled schema: the ServiceMonitor is checked by
        # yamllint and check_consistency.py instead.
        if grep -q '^kind: ServiceMonitor$' "$f"; then
            echo "not schema-checked (CRD): $f"
            continue
        fi
        files+=("$f")
    done
    for version in $K8S_VERSIONS; do
        echo "Kubernetes $version: ${#files[@]} manifests"
        python3 -m kubernetes_validate --strict --quiet -k "$version" "${files[@]}" || ok=1
    done
    return $ok
}

dashboard_promql() {
    python3 dashboards/check_dashboards.py --rules-out "$WORK/dashboard-rules.yml" &&
        promtool check rules "$WORK/dashboard-rules.yml"
}

compose_config() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -f deploy/compose/docker-compose.yml config -q
    else
        docker-compose -f deploy/compose/docker-compose.yml config -q
    fi && echo "deploy/compose/docker-compose.yml: valid"
}

live_metrics() {
    local exposition="$WORK/live.prom"
    python3 - "$SLUICE_METRICS_URL" "$exposition" <<'EOF' || return 1
import os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("SLUICE_METRICS_TOKEN"):
    request.add_header("Authorization", "Bearer " + os.environ["SLUICE_METRICS_TOKEN"])
with urllib.request.urlopen(request, timeout=10) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
EOF
    promtool check metrics <"$exposition" &&
        python3 dashboards/check_metrics.py --exposition "$exposition" --unused
}

find_sluice() {
    local candidate
    for candidate in "${SLUICE_BIN:-}" target/release/sluice target/debug/sluice "$(command -v sluice || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Only trust a binary that has a `validate` subcommand and rejects an
# obviously broken pipeline; a stub main accepts anything and its verdict on
# the real files would mean nothing.
sluice_validates() {
    printf '[pipeline]\nname = "probe"\n[sources.x]\ntype = "no_such_source_type"\nnot_a_field = 1\n' >"$WORK/broken.toml"
    "$1" validate --help >/dev/null 2>&1 && ! "$1" validate "$WORK/broken.toml" >/dev/null 2>&1
}

sluice_validate_pipelines() {
    local bin="$1" f ok=0
    # The variables the pipelines interpolate, with throw-away values: only
    # the shape of the files is checked, nothing connects anywhere.
    export REDIS_URL=redis://127.0.0.1:6379/0 VALKEY_URL=redis://127.0.0.1:6380/0 \
        KAFKA_BROKERS=127.0.0.1:9092 AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
        POSTGRES_URL=postgres://sluice:sluice@127.0.0.1:5432/sluice \
        MONGODB_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0'
    for f in deploy/k8s/base/pipeline.toml examples/*.toml; do
        [ -e "$f" ] || continue
        if "$bin" validate "$f"; then echo "valid: $f"; else ok=1; fi
    done
    # The shipped pipeline as one of several workers (its [cluster]).
    f=deploy/k8s/base/pipeline.toml
    if "$bin" validate --workers 3 --worker 1 "$f"; then echo "valid as worker 1 of 3: $f"; else ok=1; fi
    return $ok
}

# --------------------------------------------------------------------------

echo "sluice deployment checks in $ROOT"

if ! step "tools available" tools; then
    echo
    echo "FAILED: required tools are missing (see above); nothing else was checked."
    exit 1
fi

step "yamllint (deploy/.yamllint) on deploy/ and dashboards/" \
    yamllint --strict -c deploy/.yamllint deploy dashboards
step "render kustomize overlays (deploy/k8s/render.py)" render_overlays
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    step "render.py agrees with kubectl kustomize" compare_with_kubectl
else
    skip "render.py agrees with kubectl kustomize" "kubectl not installed"
fi
step "replicas == SLUICE_WORKERS in every overlay" workers_match_replicas
step "kubernetes-validate --strict (Kubernetes $K8S_VERSIONS)" kubernetes_schemas
step "consistency of Dockerfile, manifests, pipeline, compose, Prometheus, Grafana" \
    python3 deploy/check_consistency.py
step "promtool check config dashboards/prometheus/prometheus.yml" \
    promtool check config dashboards/prometheus/prometheus.yml
step "promtool check rules dashboards/prometheus/alerts.yml" \
    promtool check rules dashboards/prometheus/alerts.yml
step "promtool test rules dashboards/prometheus/alerts.test.yml" \
    promtool test rules dashboards/prometheus/alerts.test.yml
step "dashboards lint + every PromQL expression through promtool" dashboard_promql
step "promtool check metrics on the metric contract (dashboards/testdata/contract.prom)" \
    sh -c 'promtool check metrics < dashboards/testdata/contract.prom'
step "dashboards and alerts use only contract metrics (check_metrics.py)" \
    python3 dashboards/check_metrics.py --exposition dashboards/testdata/contract.prom --unused
if [ -n "${SLUICE_METRICS_URL:-}" ]; then
    step "dashboards and alerts use only metrics of $SLUICE_METRICS_URL" live_metrics
else
    skip "dashboards and alerts against a live /metrics" "SLUICE_METRICS_URL not set"
fi
step "docker compose config" compose_config
if command -v hadolint >/dev/null; then
    step "hadolint deploy/docker/Dockerfile" hadolint deploy/docker/Dockerfile
else
    skip "hadolint deploy/docker/Dockerfile" "hadolint not installed (the Dockerfile's contract is in the consistency check)"
fi
if SLUICE="$(find_sluice)"; then
    if sluice_validates "$SLUICE"; then
        step "sluice validate on the pipelines ($SLUICE)" sluice_validate_pipelines "$SLUICE"
    else
        skip "sluice validate on the pipelines" "$SLUICE has no working validate subcommand yet"
    fi
else
    skip "sluice validate on the pipelines" "no sluice binary (build it or set SLUICE_BIN)"
fi

echo
echo "==================== summary ===================="
for s in "${PASSED[@]}"; do echo "PASS  $s"; done
for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do echo "SKIP  $s"; done
for s in "${FAILED[@]+"${FAILED[@]}"}"; do echo "FAIL  $s"; done
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${#FAILED[@]} check(s)"
    exit 1
fi
echo "OK: ${#PASSED[@]} checks passed, ${#SKIPPED[@]} skipped"
