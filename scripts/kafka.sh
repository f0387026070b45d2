#!/usr/bin/env bash
# A real Apache Kafka broker (single node, KRaft) for the tests, the
# benchmarks and the examples. Its jars come from Maven Central.
#
#   scripts/kafka.sh install          fetch the broker's jars into
#                                     .cache/kafka/VERSION/libs (once; fast after)
#   scripts/kafka.sh start [PORT]     start one on 127.0.0.1:PORT (default 9092),
#                                     its controller on PORT+1, log and data under
#                                     .cache/kafka/run/PORT; prints host:port
#   scripts/kafka.sh start-secured [PORT]
#                                     the same, plus a TLS listener requiring
#                                     client certificates on PORT+2 and a
#                                     SASL_SSL (SCRAM-SHA-512) one on PORT+3:
#                                     user `sluice`, password
#                                     $SLUICE_KAFKA_PASSWORD (default
#                                     sluice-secret); CA, client certificate
#                                     and key in .cache/kafka/run/PORT/certs
#   scripts/kafka.sh stop [PORT]      stop the one started on PORT
#   scripts/kafka.sh path             print the libs folder (java -cp 'DIR/*')
#   scripts/kafka.sh topic PORT NAME [PARTITIONS]
#                                     create a topic on the broker on PORT
#
# SLUICE_KAFKA_VERSION overrides the version (default below). The
# integration tests start their own brokers (on free ports, so they can kill
# and restart them); they only need `install`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION="${SLUICE_KAFKA_VERSION:-4.4.0}"
ROOT="$PWD"
LIBS="$ROOT/.cache/kafka/$VERSION/libs"
# A class-data-sharing archive of the broker's classes, made by `install`:
# halves the JVM's start-up. The JVM ignores it (with a warning) if the jars
# or the JVM changed since.
CDS="$ROOT/.cache/kafka/$VERSION/broker.jsa"
# Measured in docs/operations.md: the serial GC and C1 only (no C2) start
# faster, take less memory and, on two cores, even move messages faster.
# tests/tests/common/kafka.rs uses the same flags.
JVM_FLAGS=(-Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true)
cds_flags() {
    if [ -f "$CDS" ]; then
        echo "-XX:SharedArchiveFile=$CDS"
    fi
}
# Any id will do for a single-node cluster: a fresh store each time.
CLUSTER_ID="c2x1aWNlLXRlc3QtYnJva2Vy"

install() {
    if [ -f "$LIBS/.complete" ]; then
        return
    fi
    command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch the broker" >&2; exit 1; }
    echo "==> fetching Apache Kafka $VERSION (Maven)" >&2
    rm -rf "$LIBS"
    mkdir -p "$LIBS"
    # The default local repository (~/.m2) on purpose: it outlives a fresh
    # clone (CI's), so a second checkout only copies the jars.
    if ! mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies \
        -Dkafka.version="$VERSION" -DincludeScope=runtime -DoutputDirectory="$LIBS" \
        >"$LIBS/../mvn.log" 2>&1; then
        cat "$LIBS/../mvn.log" >&2
        exit 1
    fi
    cp scripts/kafka/log4j2.properties "$LIBS/../log4j2.properties"
    make_cds_archive || echo "kafka.sh: no class-data archive (the broker starts slower)" >&2
    touch "$LIBS/.complete"
}

# Starts a broker once with -XX:ArchiveClassesAtExit and stops it cleanly:
# the archive holds every class loaded up to "Kafka Server started".
make_cds_archive() {
    echo "==> recording the broker's classes (one start, ~10 s)" >&2
    rm -f "$CDS"
    local dir pid
    dir="$(mktemp -d)"
    # Ports the kernel picks are free now; 0 is not allowed in the config.
    local ports
    ports=($(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])' 2>/dev/null || echo "$((20000 + RANDOM % 20000)) $((40000 + RANDOM % 20000))"))
    configure "$dir" "${ports[0]}" "${ports[1]}"
    tool_java kafka.tools.StorageTool format --standalone -t "$CLUSTER_ID" -c "$dir/server.properties" >"$dir/format.log" 2>&1 || return 1
    java "${JVM_FLAGS[@]}" -XX:ArchiveClassesAtExit="$CDS" -Dkafka.logs.dir="$dir" \
        -Dlog4j2.configurationFile="$LIBS/../log4j2.properties" \
        -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # The archive is written as the JVM exits cleanly: give it 30 s.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    [ -f "$CDS" ]
}

# server.properties for run folder $1, broker port $2, controller port $3.
configure() {
    mkdir -p "$1"
    sed -e "s|@PORT@|$2|g" -e "s|@CONTROLLER_PORT@|$3|g" -e "s|@DATA_DIR@|$1/data|g" \
        scripts/kafka/server.properties >"$1/server.properties"
}

# The TLS and SASL listeners on top of configure: run folder $1, ports $2
# (plaintext), $3 (controller), $4 (SSL), $5 (SASL_SSL).
configure_secured() {
    configure "$1" "$2" "$3"
    [ -f "$1/certs/ca.pem" ] || bash scripts/kafka/certs.sh "$1/certs"
    sed -e "s|@PORT@|$2|g" -e "s|@CONTROLLER_PORT@|$3|g" -e "s|@SSL_PORT@|$4|g" \
        -e "s|@SASL_PORT@|$5|g" -e "s|@CERTS@|$1/certs|g" \
        scripts/kafka/secured.properties >>"$1/server.properties"
}

# The tools (storage, topics) log to stderr only at WARN.
tool_java() {
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 $(cds_flags) -Xlog:cds=off \
        -Dlog4j2.level=WARN -cp "$LIBS/*" "$@"
}

case "${1:-}" in
    install)
        install
        ;;
    path)
        echo "$LIBS"
        ;;
    start | start-secured)
        install
        port="${2:-9092}"
        cport="${3:-$((port + 1))}"
        dir="$ROOT/.cache/kafka/run/$port"
        if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "kafka.sh: a broker already runs on port $port (pid $(cat "$dir/pid"))" >&2
            exit 1
        fi
        scram=()
        if [ "$1" = start-secured ]; then
            configure_secured "$dir" "$port" "$cport" "$((port + 2))" "$((port + 3))"
            scram=(--add-scram "SCRAM-SHA-512=[name=sluice,password=${SLUICE_KAFKA_PASSWORD:-sluice-secret}]")
        else
            configure "$dir" "$port" "$cport"
        fi
        if [ ! -f "$dir/data/meta.properties" ]; then
            tool_java kafka.tools.StorageTool format --standalone -t "$CLUSTER_ID" "${scram[@]}" \
                -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
                cat "$dir/format.log" >&2
                exit 1
            }
        fi
        : >"$dir/server.log"
        nohup "$ROOT/scripts/kafka.sh" __run "$dir" >"$dir/stdout.log" 2>&1 &
        echo $! >"$dir/pid"
        for _ in $(seq 1 600); do
            if grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null \
                && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                echo "127.0.0.1:$port"
                exit 0
            fi
            if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
                echo "kafka.sh: the broker exited; see $dir/server.log and $dir/stdout.log" >&2
                tail -20 "$dir/stdout.log" >&2
                exit 1
            fi
            sleep 0.1
        done
        echo "kafka.sh: the broker did not start on port $port within 60 s; see $dir/server.log" >&2
        exit 1
        ;;
    __run)
        # exec so that the pid recorded by `start` is java's own.
        dir="$2"
        exec java "${JVM_FLAGS[@]}" $(cds_flags) -Dkafka.logs.dir="$dir" \
            -Dlog4j2.configurationFile="$LIBS/../log4j2.properties" \
            -cp "$LIBS/*" kafka.Kafka "$dir/server.properties"
        ;;
    stop)
        port="${2:-9092}"
        pidfile="$ROOT/.cache/kafka/run/$port/pid"
        if [ -f "$pidfile" ]; then
            pid="$(cat "$pidfile")"
            if kill -TERM "$pid" 2>/dev/null; then
                for _ in $(seq 1 150); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
                kill -KILL "$pid" 2>/dev/null || true
            fi
            rm -f "$pidfile"
        fi
        ;;
    topic)
        install
        port="${2:?port}"
        name="${3:?topic name}"
        partitions="${4:-1}"
        tool_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
            --create --topic "$name" --partitions "$partitions" --replication-factor 1
        ;;
    *)
        sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
