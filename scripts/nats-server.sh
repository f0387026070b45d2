#!/usr/bin/env bash
# Debian's nats-server for the tests, the benchmarks and the examples.
#
#   scripts/nats-server.sh install           install it if missing (apt)
#   scripts/nats-server.sh start [PORT] [ARGS…]
#                                            start one on 127.0.0.1:PORT (default 4222)
#                                            with JetStream on and its store under
#                                            .cache/nats/PORT; prints its URL. ARGS go
#                                            to nats-server: a login (--user U --pass P,
#                                            --auth TOKEN, -c FILE with NKeys) or TLS
#                                            (--tls --tlscert F --tlskey F --tlscacert F
#                                            --tlsverify)
#   scripts/nats-server.sh stop [PORT]       stop the one started on PORT
#
# The integration tests start their own servers (one per test, on free
# ports, so they can kill and restart them); they only need `install`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

install() {
    if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
        return
    fi
    echo "==> installing nats-server (Debian package)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get install -y nats-server >/dev/null 2>&1 || {
        $sudo apt-get update >/dev/null
        $sudo apt-get install -y nats-server >/dev/null
    }
}

binary() {
    command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server
}

case "${1:-}" in
    install)
        install
        ;;
    start)
        install
        port="${2:-4222}"
        shift $(( $# < 2 ? $# : 2 ))
        dir=".cache/nats/$port"
        mkdir -p "$dir"
        "$(binary)" -a 127.0.0.1 -p "$port" -js -sd "$dir/store" "$@" >"$dir/server.log" 2>&1 &
        echo $! >"$dir/pid"
        for _ in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                echo "nats://127.0.0.1:$port"
                exit 0
            fi
            sleep 0.05
        done
        echo "nats-server did not start on port $port; see $dir/server.log" >&2
        exit 1
        ;;
    stop)
        port="${2:-4222}"
        pidfile=".cache/nats/$port/pid"
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
