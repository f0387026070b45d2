// Two NestJS ClientProxy instances on the Kafka transport (kafkajs) in one
// consumer group share the reply topic `get-user.reply`: the group splits
// its partitions between them, each reads only its own and asks for
// answers on the lowest of them (`kafka_replyPartition`). Both call
// `get-user` (send) on a sluice pipeline; an answer sent to the other
// client's partition would never arrive. Prints one JSON line on stdout
// (the last line): `partitions` (the reply partition each asked for) and
// `users` (what each got back).
//
//   node kafka-clients.mjs 127.0.0.1:9092 <consumer group>
//
// The reply topic must exist with at least two partitions.
import 'reflect-metadata';
import { ClientProxyFactory, Transport } from '@nestjs/microservices';
import { lastValueFrom, timeout } from 'rxjs';

const [brokers = '127.0.0.1:9092', groupId = 'nestjs-clients'] = process.argv.slice(2);
const client = (n) =>
    ClientProxyFactory.create({
        transport: Transport.KAFKA,
        options: {
            client: { clientId: `nestjs-client-${n}`, brokers: [brokers], logLevel: 1 },
            consumer: { groupId },
            producer: { allowAutoTopicCreation: false },
        },
    });
const clients = [client(0), client(1)];
for (const c of clients) c.subscribeToResponseOf('get-user');
const described = (err) =>
    Buffer.isBuffer(err) ? JSON.parse(err.toString()) : err instanceof Error ? { error: err.name, message: err.message } : err;
const asked = () => clients.map((c) => c.getConsumerAssignments()['get-user.reply']);

const results = {};
try {
    await Promise.all(clients.map((c) => c.connect()));
    // Until the group has split the reply topic between the two (the first
    // to join holds every partition until the second's join rebalances it),
    // both would ask for the same partition.
    const deadline = Date.now() + 60000;
    for (;;) {
        const [a, b] = asked();
        if (a !== undefined && b !== undefined && a !== b) break;
        if (Date.now() > deadline) throw new Error(`the reply topic was never split between the clients: ${JSON.stringify(asked())}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    results.partitions = asked();
    results.users = await Promise.all(
        clients.map((c) => lastValueFrom(c.send('get-user', { id: 42 }).pipe(timeout({ first: 30000 })))),
    );
} catch (err) {
    results.failed = described(err);
} finally {
    await Promise.all(clients.map((c) => c.close()));
}
process.stdout.write('\n' + JSON.stringify(results) + '\n');
