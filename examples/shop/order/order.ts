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
import { plugin, client, CallError, HandlerError, Output, Json, type Config, type Event, type JsonValue } from 'sluice';

interface Settings {
  inventory: string;
  events: string;
}

function init(config: Config): Settings {
  config.denyUnknown(['inventory', 'events']);
  return { inventory: config.get('inventory') ?? 'inventory', events: config.get('events') ?? 'events' };
}

/** A field of a JSON object as parsed by `Json.parse` (objects are Maps). */
function field(value: JsonValue, name: string): JsonValue {
  return value instanceof Map ? (value.get(name) ?? null) : null;
}

function handle(self: Settings, event: Event): Output[] {
  const order = event.json();
  const id = field(order, 'id');
  let reservation: JsonValue;
  try {
    reservation = client.requestJson(self.inventory, new Map<string, JsonValue>([
      ['order_id', id],
      ['items', field(order, 'items')],
    ]));
  } catch (e) {
    // The inventory said no (out of stock): the order is refused, and the
    // same order asked again gets the same answer. Anything else (a timeout,
    // nobody listening yet) is retried by the host.
    if (e instanceof CallError && e.kind === 'service') throw HandlerError.reject(e.service?.message ?? e.message);
    throw e;
  }
  const created = new Map<string, JsonValue>([
    ['id', id],
    ['customer', field(order, 'customer')],
    ['items', field(order, 'items')],
    ['status', 'created'],
    ['reservation', reservation],
  ]);
  client.emitJson(self.events, created);
  return [Output.reply(Json.stringify(created))];
}

export const handler = plugin({ init, handle });
