// The shop's order service (TypeScript): answers NestJS
// `ClientProxy.send('create-order', order)` over NATS. The host has already
// checked the order against schemas/order.json (pipeline `create-order`,
// `schemas` keyed by the `nestjs-pattern` header), so `handle` sees valid
// orders only.
//
// For each order:
// 1. asks the inventory service to reserve its items (`client.request` to the
//    `inventory` destination: NestJS `send('reserve', …)` over NATS);
// 2. an out-of-stock answer (a NestJS error from the inventory) rejects the
//    order: the caller's `send` rejects with the inventory's message;
// 3. otherwise emits `order-created` (the `events` destination: Kafka) and
//    replies with the created order.
//
// Retries: the caller retries a call that timed out with the same order id,
// and the inventory answers a repeated reservation as it did the first time,
// so a retried order gets the same answer; its `order-created` may then be
// emitted twice (the notification service's webhook sees the same
// Idempotency-Key twice). See examples/shop/README.md.
//
// Config: `inventory` (default `inventory`) and `events` (default `events`):
// the client destinations.
import { plugin, client, CallError, HandlerError, Output, type Config, type Event } from 'sluice';

interface Settings {
  inventory: string;
  events: string;
}

/** An order as schemas/order.json lets it through (the host checked it). */
interface Order {
  id: string;
  customer: string;
  items: Array<{ sku: string; qty: number }>;
}

function init(config: Config): Settings {
  config.denyUnknown(['inventory', 'events']);
  return { inventory: config.get('inventory') ?? 'inventory', events: config.get('events') ?? 'events' };
}

function handle(self: Settings, event: Event): Output[] {
  const order = event.json<Order>();
  let reservation: unknown;
  try {
    reservation = client.requestJson(self.inventory, { order_id: order.id, items: order.items });
  } catch (e) {
    // The inventory said no (out of stock): the order is refused, and the
    // same order asked again gets the same answer. Anything else (a timeout,
    // nobody listening yet) is retried by the host.
    if (e instanceof CallError && e.kind === 'service') throw HandlerError.reject(e.service?.message ?? e.message);
    throw e;
  }
  const created = { id: order.id, customer: order.customer, items: order.items, status: 'created', reservation };
  client.emitJson(self.events, created);
  return [Output.reply(JSON.stringify(created))];
}

export const handler = plugin({ init, handle });
