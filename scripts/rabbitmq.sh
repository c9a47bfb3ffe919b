#!/bin/sh
# A throwaway RabbitMQ node on loopback, for `.ci/run` and humans; tests/rabbitmq.py does the same in Python.
#   scripts/rabbitmq.sh start DIR PORT   start a node with its data in DIR, AMQP on 127.0.0.1:PORT; prints the URL
#   scripts/rabbitmq.sh stop DIR PORT    stop that node and the epmd it started
# Needs root (the Debian package's files) and rabbitmq-server installed; see /work/shared/notes/rabbitmq-here.md.
set -eu

usage() { echo "usage: $0 start|stop DIR PORT" >&2; exit 2; }
[ $# -eq 3 ] || usage
command=$1 dir=$(realpath -m "$2") port=$3
sbin=/usr/lib/rabbitmq/bin

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The ports other than AMQP are chosen at start and kept in DIR, so stop talks to the same node.
setup_env() {
    if [ ! -f "$dir/ports" ]; then
        printf 'dist_port=%s\nepmd_port=%s\n' "$(free_port)" "$(free_port)" > "$dir/ports"
    fi
    . "$dir/ports"
    printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$port" > "$dir/rabbitmq.conf"
    printf '[].\n' > "$dir/enabled_plugins"
    export HOME="$dir"  # the Erlang cookie, shared by the server and rabbitmqctl
    export RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist_port"
    export ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd_port"
    # Without this the distribution port listens on every interface.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/rabbit.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
}

case $command in
start)
    mkdir -p "$dir"
    setup_env
    # epmd in the foreground of a background job (not `-daemon`), so its PID is ours to end.
    epmd -port "$epmd_port" -address 127.0.0.1 >/dev/null 2>&1 &
    echo $! > "$dir/epmd.pid"
    "$sbin/rabbitmq-server" >> "$dir/server.out" 2>&1 &
    if ! "$sbin/rabbitmqctl" -q wait --timeout 120 "$RABBITMQ_PID_FILE" >&2; then
        echo "RabbitMQ did not start; see $dir/server.out and $dir/log" >&2
        exit 1
    fi
    echo "amqp://guest:guest@127.0.0.1:$port/"
    ;;
stop)
    [ -f "$dir/ports" ] || { echo "no node started in $dir" >&2; exit 1; }
    setup_env
    "$sbin/rabbitmqctl" -q stop "$RABBITMQ_PID_FILE" >&2 || true
    if [ -f "$dir/epmd.pid" ]; then
        kill "$(cat "$dir/epmd.pid")" 2>/dev/null || true
        rm -f "$dir/epmd.pid"
    fi
    ;;
*) usage ;;
esac
