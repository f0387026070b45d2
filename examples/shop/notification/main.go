// The shop's notification service (Go): consumes `order-created` from Kafka
// (an exactly-once source) and POSTs each order to a webhook, with
// `Idempotency-Key` set to the order id.
//
// The key is the order's, not the event's: the order service may emit one
// order twice (its caller retried after losing the answer), and the host may
// deliver one record twice (killed after the POST, before the Kafka commit).
// Either way the webhook sees a key it has seen before and can drop the
// repeat.
//
//   - 2xx: done (no outputs);
//   - 5xx, or no response (refused, timed out): retryable, with the
//     pipeline's backoff;
//   - any other status: rejected (dead-lettered with the call listed).
//
// Config: `url` (required): the webhook.
package main

import (
	"encoding/json"

	"sluice/plugin"
)

type notifier struct{ url string }

func init() {
	plugin.Register(func(c plugin.Config) (plugin.Handler, error) {
		if err := c.DenyUnknown("url"); err != nil {
			return nil, err
		}
		url, err := c.Require("url")
		if err != nil {
			return nil, err
		}
		return notifier{url}, nil
	})
}

func (n notifier) Handle(ev *plugin.Event) ([]plugin.Output, error) {
	var order struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(ev.Payload, &order); err != nil {
		return nil, plugin.Reject("order-created is not a JSON object")
	}
	if order.ID == "" {
		return nil, plugin.Reject("order-created has no order id")
	}
	response, err := plugin.HTTP.Do(plugin.HTTPRequest{
		Method: "POST",
		URL:    n.url,
		Headers: []plugin.Header{
			{Key: "Content-Type", Value: []byte("application/json")},
			{Key: "Idempotency-Key", Value: []byte(order.ID)},
		},
		Body: ev.Payload,
	})
	if err != nil {
		return nil, plugin.Retry("webhook unreachable for order %s: %v", order.ID, err)
	}
	switch {
	case response.Status >= 200 && response.Status < 300:
		return nil, nil
	case response.Status >= 500:
		return nil, plugin.Retry("webhook answered %d for order %s", response.Status, order.ID)
	default:
		return nil, plugin.Reject("webhook refused order %s with %d", order.ID, response.Status)
	}
}

func main() {}
