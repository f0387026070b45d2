// The shop's customers: a NestJS app whose ClientProxy (NATS transport)
// sends every order of a JSON-lines file with `send('create-order', order)`,
// a few at a time, as a NestJS storefront would. A call that times out (the
// host was killed, or is starting) is sent again with the same order, so
// the same order id, until it is answered; so is one NestJS reports nobody
// listens to (the host is starting), 100 ms later. Each order's final answer is
// appended to the results file as soon as it arrives, one JSON line:
//   {"id", "outcome": "created" | "rejected", "attempts", "reply" | "error"}
// then a summary line goes to stdout.
//
//   node shop-client.mjs nats://127.0.0.1:4222 orders.jsonl results.jsonl [in-flight] [timeout-ms]
//
// tests/tests/shop.rs runs it against examples/shop (with the host killed
// now and then); examples/shop/run.sh can too. It runs from the folder where
// `scripts/nestjs-client.sh install` put its node_modules.
import 'reflect-metadata';
import { appendFileSync, readFileSync } from 'node:fs';
import { ClientProxyFactory, Transport } from '@nestjs/microservices';
import { firstValueFrom, timeout, TimeoutError } from 'rxjs';

const [url = 'nats://127.0.0.1:4222', ordersFile = 'orders.jsonl', resultsFile = 'results.jsonl', inFlight = '16', timeoutMs = '3000'] =
    process.argv.slice(2);
const orders = readFileSync(ordersFile, 'utf8').split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line));
const client = ClientProxyFactory.create({ transport: Transport.NATS, options: { servers: [url], maxReconnectAttempts: -1 } });

// A rejection as JSON: an RpcException-shaped object, or an Error.
const described = (err) => (err instanceof Error ? { error: err.name, message: err.message } : err);

let timeouts = 0;
let unavailable = 0;
async function place(order) {
    for (let attempts = 1; ; attempts++) {
        try {
            const reply = await firstValueFrom(client.send('create-order', order).pipe(timeout({ first: Number(timeoutMs) })));
            return { id: order.id, outcome: 'created', attempts, reply };
        } catch (err) {
            if (err instanceof TimeoutError) {
                // No answer: the service may have died with the order in
                // flight. Ask again with the same order id.
                timeouts++;
                continue;
            }
            if (err instanceof Error && err.message.includes('no subscribers listening')) {
                // Nobody serves create-order right now (the host is
                // starting): ask again shortly, with the same order id.
                unavailable++;
                await new Promise((resolve) => setTimeout(resolve, 100));
                continue;
            }
            return { id: order.id, outcome: 'rejected', attempts, error: described(err) };
        }
    }
}

await client.connect();
let next = 0;
const counts = { created: 0, rejected: 0 };
async function worker() {
    while (next < orders.length) {
        const order = orders[next++];
        const result = await place(order);
        counts[result.outcome]++;
        appendFileSync(resultsFile, JSON.stringify(result) + '\n');
    }
}
await Promise.all(Array.from({ length: Number(inFlight) }, worker));
await client.close();
process.stdout.write(JSON.stringify({ orders: orders.length, ...counts, timeouts, unavailable }) + '\n');
