"""The shop's inventory service (Python): answers NestJS `send('reserve',
{"order_id", "items": [{"sku", "qty"}]})` over NATS.

Stock is plugin state: `stock:<sku>` holds what is left (decimal text),
starting from the config's `stock.<sku>` the first time a SKU is reserved.
A reservation is idempotent by order id: `order:<id>` holds the answer given
to the first reservation of the order, and a repeat (the caller retried an
order whose answer it lost) gets that answer again without touching stock.

An order asking for more than is left is rejected (a NestJS error reply
`out of stock: <sku>`); nothing is written for it, and since stock only goes
down, the same order asked again is rejected again. An unknown SKU is
rejected too.

State writes belong to the event: they become visible and durable with the
reply (the host commits them before the reply leaves), and lanes running
in parallel are checked for conflicting reads (a conflict reruns the event
on the newer stock).

Config: `stock.<sku> = "<units>"`, one per SKU sold.
"""

from typing import Dict, List

from sluice_plugin import Config, Event, HandlerError, Output, Plugin, dumps, export, state


class Inventory(Plugin):
    def __init__(self, initial: Dict[str, int]):
        self.initial = initial

    @classmethod
    def init(cls, config: Config) -> "Inventory":
        config.deny_unknown(["stock.*"])
        initial = {}
        for sku, units in config.with_prefix("stock."):
            if not units.isdigit():
                raise ValueError(f"stock.{sku}: not a number of units: {units}")
            initial[sku] = int(units)
        return cls(initial)

    def handle(self, event: Event) -> List:
        request = event.json()
        order_id = request.get("order_id") if isinstance(request, dict) else None
        items = request.get("items") if isinstance(request, dict) else None
        if not isinstance(order_id, str) or not order_id or not isinstance(items, list) or not items:
            raise HandlerError.reject("a reservation needs an order_id and items")
        previous = state.get(f"order:{order_id}")
        if previous is not None:
            # A repeat of a reservation already made: the first answer.
            return [Output.reply(previous)]
        left = {}
        for item in items:
            sku, qty = item.get("sku"), item.get("qty")
            if sku not in self.initial:
                raise HandlerError.reject(f"unknown sku: {sku}")
            if not isinstance(qty, int) or qty < 1:
                raise HandlerError.reject(f"bad quantity for {sku}: {qty}")
            stored = state.get_str(f"stock:{sku}")
            have = left.get(sku, int(stored) if stored is not None else self.initial[sku])
            if have < qty:
                raise HandlerError.reject(f"out of stock: {sku}")
            left[sku] = have - qty
        for sku, units in left.items():
            state.set(f"stock:{sku}", str(units))
        answer = dumps({"order_id": order_id, "reserved": items})
        state.set(f"order:{order_id}", answer)
        return [Output.reply(answer)]


Handler = export(Inventory)
