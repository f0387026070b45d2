// A NestJS client app, unchanged from what a NestJS service would run: a
// ClientProxy on the NATS transport calls `get-user` (send) and emits
// `user-created`, then prints what came back as one JSON object on stdout.
// tests/tests/nestjs.rs runs it against a sluice pipeline (codec = "nestjs")
// whose handler is the `users` WASM plugin.
//
//   node client.mjs nats://127.0.0.1:4222
//
// It runs from the folder where `scripts/nestjs-client.sh install` put its
// node_modules (the script copies this file there).
import 'reflect-metadata';
import { ClientProxyFactory, Transport } from '@nestjs/microservices';
import { firstValueFrom, lastValueFrom, timeout } from 'rxjs';

const url = process.argv[2] ?? 'nats://127.0.0.1:4222';
const client = ClientProxyFactory.create({ transport: Transport.NATS, options: { servers: [url] } });
const within = (observable) => observable.pipe(timeout({ first: 15000 }));

// A rejection as JSON: an RpcException-shaped object, or an Error.
const described = (err) => (err instanceof Error ? { error: err.name, message: err.message } : err);

const results = {};
try {
    await client.connect();
    results.user = await firstValueFrom(within(client.send('get-user', { id: 42 })));
    results.objectPattern = await firstValueFrom(within(client.send({ cmd: 'get-user' }, { id: 7 })));
    try {
        results.missing = { resolved: await firstValueFrom(within(client.send('get-user', { id: 99 }))) };
    } catch (err) {
        results.missing = { rejected: described(err) };
    }
    // emit() completes without a value once the event is published.
    await lastValueFrom(client.emit('user-created', { id: 43, name: 'Alan Turing' }), { defaultValue: null });
    results.emitted = true;
} catch (err) {
    results.failed = described(err);
} finally {
    await client.close();
}
process.stdout.write(JSON.stringify(results) + '\n');
