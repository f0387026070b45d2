// The Kafka half of the NestJS interoperability test: a NestJS ClientProxy
// on the Kafka transport (kafkajs) calls `get-user` (send) and emits
// `user-created` to a sluice pipeline reading those topics with
// `codec = "nestjs"`, then prints what came back as one JSON line on stdout
// (the last line: NestJS and kafkajs log there too).
//
//   node kafka-client.mjs 127.0.0.1:9092 <consumer group>
//
// The reply topic `get-user.reply` must exist (NestJS listens on it).
import 'reflect-metadata';
import { ClientProxyFactory, Transport } from '@nestjs/microservices';
import { firstValueFrom, lastValueFrom, timeout } from 'rxjs';

const [brokers = '127.0.0.1:9092', groupId = 'nestjs-client'] = process.argv.slice(2);
const client = ClientProxyFactory.create({
    transport: Transport.KAFKA,
    options: {
        client: { clientId: 'nestjs-client', brokers: [brokers], logLevel: 1 },
        consumer: { groupId },
        producer: { allowAutoTopicCreation: false },
    },
});
client.subscribeToResponseOf('get-user');
const within = (observable) => observable.pipe(timeout({ first: 30000 }));
// The Kafka transport rejects with the `kafka_nest-err` header's bytes: the
// error as JSON, as a NestJS server sends it.
const described = (err) =>
    Buffer.isBuffer(err) ? JSON.parse(err.toString()) : err instanceof Error ? { error: err.name, message: err.message } : err;

const results = {};
try {
    await client.connect();
    // connect() resolves before the consumer group has assigned the reply
    // topic (on a fresh broker the coordinator is still loading): until it
    // has, send() fails with "did not subscribe to the reply topic".
    const deadline = Date.now() + 60000;
    while (client.getConsumerAssignments()['get-user.reply'] === undefined) {
        if (Date.now() > deadline) throw new Error('the reply topic get-user.reply was never assigned');
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // lastValueFrom: completes only when the reply says it is the last one.
    results.user = await lastValueFrom(within(client.send('get-user', { id: 42 })));
    try {
        results.missing = { resolved: await firstValueFrom(within(client.send('get-user', { id: 99 }))) };
    } catch (err) {
        results.missing = { rejected: described(err) };
    }
    await lastValueFrom(client.emit('user-created', { id: 43, name: 'Alan Turing' }), { defaultValue: null });
    results.emitted = true;
} catch (err) {
    results.failed = described(err);
} finally {
    await client.close();
}
process.stdout.write('\n' + JSON.stringify(results) + '\n');
