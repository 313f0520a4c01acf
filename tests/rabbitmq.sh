#!/usr/bin/env bash
# Makes sure RabbitMQ runs on 127.0.0.1:5672 (guest/guest, loopback only)
# for the AMQP integration tests (tests/amqp_*.rs). Idempotent: does nothing
# when the broker already answers.
#
#   tests/rabbitmq.sh          # install (Debian package) if needed, start if needed
#   tests/rabbitmq.sh stop     # stop the node
#
# A node whose application was stopped (`rabbitmqctl stop_app`, as the
# broker-restart test does) is started again with `start_app`.
set -euo pipefail

HOST=127.0.0.1
PORT="${SLUICE_AMQP_PORT:-5672}"
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
export RABBITMQ_NODE_IP_ADDRESS="$HOST"
export RABBITMQ_NODE_PORT="$PORT"
export ERL_EPMD_ADDRESS="$HOST"
PID_FILE="${RABBITMQ_PID_FILE:-/var/lib/rabbitmq/mnesia/$RABBITMQ_NODENAME.pid}"
export RABBITMQ_PID_FILE="$PID_FILE"

port_open() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

# The Erlang node answers (its RabbitMQ application may be stopped).
node_up() {
    timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

if [[ "${1:-}" == "stop" ]]; then
    if node_up; then
        rabbitmqctl -q stop
        echo "rabbitmq stopped"
    else
        echo "rabbitmq is not running"
    fi
    exit 0
fi

if port_open; then
    echo "rabbitmq already listens on $HOST:$PORT"
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null; then
    echo "installing rabbitmq-server (Debian package)"
    if [[ "$(id -u)" != 0 ]]; then
        echo "rabbitmq-server is not installed and this is not root: install it first" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    # Debian may start it on install; if it did, it is ready soon.
fi

# Keep the node (and epmd) on loopback even when started outside systemd.
if [[ -d /etc/rabbitmq && -w /etc/rabbitmq && ! -s /etc/rabbitmq/rabbitmq.conf ]]; then
    echo "listeners.tcp.local = $HOST:$PORT" >/etc/rabbitmq/rabbitmq.conf
fi

if node_up; then
    echo "rabbitmq node is up with its application stopped: start_app"
    rabbitmqctl -q start_app
else
    echo "starting rabbitmq ($RABBITMQ_NODENAME on $HOST:$PORT)"
    # The Debian wrapper switches to the rabbitmq user and keeps this environment.
    rabbitmq-server -detached
    rabbitmqctl -q wait --timeout 60 "$PID_FILE"
fi

for _ in $(seq 1 120); do
    if port_open; then
        echo "rabbitmq ready on $HOST:$PORT"
        exit 0
    fi
    sleep 0.5
done
echo "rabbitmq did not open $HOST:$PORT within 60 s" >&2
exit 1
