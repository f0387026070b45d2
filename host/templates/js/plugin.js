// `{{name}}`: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected.
import { plugin, HandlerError, Output } from 'sluice';

export const handler = plugin({
  init(config) {
    config.denyUnknown(['tag']);
    return { tag: config.get('tag') ?? '{{name}}' };
  },
  handle(state, event) {
    if (event.payload.length === 0) throw HandlerError.reject('empty payload');
    const headers = [...event.headers, { key: 'x-tag', value: state.tag }];
    return [Output.of(event.payload, { key: event.key, headers })];
  },
});
