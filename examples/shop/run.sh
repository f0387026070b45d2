#!/usr/bin/env bash
# The shop, on real brokers, in one command:
#
#   examples/shop/run.sh            build, start NATS + Kafka + a webhook, run sluice
#   examples/shop/run.sh --orders N also send N orders from the NestJS client, then stop
#
# Builds the three plugins (TypeScript, Python, Go: guest-sdk/*/build.sh)
# into plugins/target/components/shop_*.wasm and the host (SLUICE_BIN: use
# that binary instead), starts
# nats-server (scripts/nats-server.sh, port 4222) and Kafka
# (scripts/kafka.sh, port 9092) if they are not running, creates the
# topics, starts a webhook that prints what it receives (port 8099), and
# runs sluice on examples/shop/sluice.toml in the foreground (Ctrl-C stops
# everything it started). Dead letters go to examples/shop/out/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
components="$root/plugins/target/components"
orders=0
[[ "${1:-}" == "--orders" ]] && orders="${2:?--orders N}"
mkdir -p "$components" "$here/out"

# The three plugins, rebuilt only when their sources or SDK changed.
bash "$root/scripts/build-lang-plugins.sh" shop >/dev/null
if [[ -z "${SLUICE_BIN:-}" ]]; then
    (cd "$root" && cargo build --release -p sluice >&2)
    SLUICE_BIN="$root/target/release/sluice"
fi

started=()
cleanup() {
    local i what
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do # the host first, the brokers last
        what="${started[$i]}"
        case "$what" in
            nats) bash "$root/scripts/nats-server.sh" stop 4222 || true ;;
            kafka) bash "$root/scripts/kafka.sh" stop 9092 || true ;;
            *) kill "$what" 2>/dev/null || true ;;
        esac
    done
}
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! listening 4222; then
    bash "$root/scripts/nats-server.sh" install
    bash "$root/scripts/nats-server.sh" start 4222 >/dev/null
    started+=(nats)
fi
if ! listening 9092; then
    bash "$root/scripts/kafka.sh" install
    bash "$root/scripts/kafka.sh" start 9092 >/dev/null
    started+=(kafka)
fi
for topic in order-created order-notified order-created.dead-letter; do
    bash "$root/scripts/kafka.sh" topic 9092 "$topic" 1 >/dev/null 2>&1 || true # exists already
done

# The webhook: prints each order it is sent, with its Idempotency-Key.
python3 - <<'PY' &
import http.server
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"webhook: Idempotency-Key {self.headers.get('Idempotency-Key')}: {body.decode()}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8099), Hook).serve_forever()
PY
started+=($!)

export NATS_URL=nats://127.0.0.1:4222 KAFKA_BROKERS=127.0.0.1:9092
export WEBHOOK_URL=http://127.0.0.1:8099/orders WEBHOOK_ALLOW=http://127.0.0.1:8099
export SHOP_OUT="$here/out" SHOP_CACHE="$here/out/cache"
cd "$here"
if [[ "$orders" == 0 ]]; then
    echo "==> the shop is up: send orders with NestJS ClientProxy.send('create-order', {id, customer, items: [{sku, qty}]}) to $NATS_URL" >&2
    exec "$SLUICE_BIN" run sluice.toml
fi

"$SLUICE_BIN" run sluice.toml &
started+=($!)
bash "$root/scripts/nestjs-client.sh" install
client="$(bash "$root/scripts/nestjs-client.sh" path)"
for ((i = 0; i < orders; i++)); do
    printf '{"id":"order-%s-%d","customer":"c%d","items":[{"sku":"sku-%d","qty":1}]}\n' "$$" "$i" "$((i % 7))" "$((i % 5 + 1))"
done >"$here/out/orders.jsonl"
rm -f "$here/out/results.jsonl"
until curl -sf 127.0.0.1:9090/readyz >/dev/null; do sleep 0.2; done # every pipeline started
(cd "$client" && node shop-client.mjs "$NATS_URL" "$here/out/orders.jsonl" "$here/out/results.jsonl" | tail -1)
echo "==> stock left: $(curl -s 'http://127.0.0.1:9090/pipelines/reserve/state?prefix=stock:')" >&2
