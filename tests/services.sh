#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, user
# `postgres`, trust auth from loopback, database `test`) run, for the sink
# tests (connectors' unit tests, tests/recovery_fenced_sinks.rs).
# Idempotent: installs the Debian packages only if missing, starts only what
# does not answer, and prints the environment the tests read.
#
#   bash tests/services.sh            # then: eval "$(bash tests/services.sh --env)"
#   bash tests/services.sh --env      # only print the export lines
#   SLUICE_REDIS_PORT=6390 bash tests/services.sh   # Redis on another port
#
# To stop them: Redis with `redis-cli -p 6379 shutdown`, PostgreSQL with
# `pg_ctlcluster <version> main stop` (the cluster Debian's package made).
#
# The outage tests start their own private redis-server / PostgreSQL
# cluster on a free port (tests/support/services.rs), so they never stop
# these shared ones.
set -euo pipefail

HOST=127.0.0.1
REDIS_PORT="${SLUICE_REDIS_PORT:-6379}"
PG_PORT=5432
REDIS_URL="redis://$HOST:$REDIS_PORT"
POSTGRES_URL="postgres://postgres@$HOST:$PG_PORT/test"

print_env() {
    echo "export REDIS_URL=$REDIS_URL"
    echo "export POSTGRES_URL=$POSTGRES_URL"
}
if [[ "${1:-}" == "--env" ]]; then
    print_env
    exit 0
fi

SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"

# 1. Debian packages (redis-server brings redis-cli; postgresql brings psql).
pkgs=()
command -v redis-server >/dev/null || pkgs+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || pkgs+=(postgresql)
command -v psql >/dev/null || pkgs+=(postgresql-client)
if ((${#pkgs[@]})); then
    echo "==> installing ${pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

wait_for() { # what, command...
    local what=$1
    shift
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "$what did not come up within 20 s" >&2
    exit 1
}

# 2. Redis (no persistence: the tests use unique key prefixes).
if redis-cli -h "$HOST" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "redis already answers on $HOST:$REDIS_PORT"
else
    echo "starting redis-server on $HOST:$REDIS_PORT"
    redis-server --bind "$HOST" --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
        --logfile /tmp/sluice-redis.log
    wait_for redis redis-cli -h "$HOST" -p "$REDIS_PORT" ping
fi

# 3. PostgreSQL: the newest installed cluster `main`.
pg_ready() { pg_isready -h "$HOST" -p "$PG_PORT" -q; }
if pg_ready; then
    echo "postgresql already answers on $HOST:$PG_PORT"
else
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    if [[ -z "$version" ]]; then
        echo "no PostgreSQL cluster in /etc/postgresql (the postgresql package creates one)" >&2
        exit 1
    fi
    echo "starting postgresql $version/main on $HOST:$PG_PORT"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
        $SUDO pg_ctlcluster "$version" main start
    wait_for postgresql pg_ready
fi

# Trust auth from loopback for user postgres (test machines only).
psql_ok() { psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; }
if ! psql_ok; then
    version=$(ls /etc/postgresql | sort -V | tail -1)
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    echo "allowing trust auth from $HOST in $hba"
    $SUDO sed -i "1i host all postgres $HOST/32 trust" "$hba"
    $SUDO pg_ctlcluster "$version" main reload
    wait_for "postgresql with trust auth" psql_ok
fi
if [[ "$(psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atc "select 1 from pg_database where datname = 'test'")" != 1 ]]; then
    echo "creating database test"
    psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -qc 'create database test'
fi

echo "services ready; the tests read:"
print_env
