// A NestJS microservice on the NATS transport, as a NestJS team would write
// it (decorators applied by hand: plain ESM has no decorator syntax). It
// answers `reserve` (send) and records `audit` events (emit) as JSON lines
// in a file. tests/tests/client.rs runs it as the service a sluice plugin
// calls through `sluice:plugin/client` with `codec = "nestjs"`.
//
//   node service.mjs nats://127.0.0.1:4222 events.jsonl
//
// It runs from the folder where `scripts/nestjs-client.sh install` put its
// node_modules (the script copies this file there).
import 'reflect-metadata';
import { appendFileSync } from 'node:fs';
import { Controller, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { EventPattern, MessagePattern, Payload, RpcException, Transport } from '@nestjs/microservices';

const url = process.argv[2] ?? 'nats://127.0.0.1:4222';
const events = process.argv[3] ?? 'events.jsonl';

class Inventory {
    reserve(data) {
        if (data?.sku === 'none') {
            throw new RpcException('out of stock');
        }
        return { reserved: data?.sku };
    }

    audit(data) {
        appendFileSync(events, JSON.stringify(data) + '\n');
    }
}
Payload()(Inventory.prototype, 'reserve', 0);
Payload()(Inventory.prototype, 'audit', 0);
MessagePattern('reserve')(Inventory.prototype, 'reserve', Object.getOwnPropertyDescriptor(Inventory.prototype, 'reserve'));
EventPattern('audit')(Inventory.prototype, 'audit', Object.getOwnPropertyDescriptor(Inventory.prototype, 'audit'));
Controller()(Inventory);

class App {}
Module({ controllers: [Inventory] })(App);

const app = await NestFactory.createMicroservice(App, { transport: Transport.NATS, options: { servers: [url] }, logger: ['error'] });
await app.listen();
process.on('SIGTERM', async () => {
    await app.close();
    process.exit(0);
});
