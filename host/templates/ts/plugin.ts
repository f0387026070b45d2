// `{{name}}`: forwards every event with a header `x-tag` (config `tag`,
// default `{{name}}`); an empty payload is rejected. `bash build.sh`
// type-checks this file (tsc, strict) against the SDK's declarations.
import { plugin, HandlerError, Output, type Config, type Event } from 'sluice';

interface State {
  tag: string;
}

export const handler = plugin({
  init(config: Config): State {
    config.denyUnknown(['tag']);
    return { tag: config.get('tag') ?? '{{name}}' };
  },
  handle(state: State, event: Event) {
    if (event.payload.length === 0) throw HandlerError.reject('empty payload');
    const headers = [...event.headers, { key: 'x-tag', value: state.tag }];
    return [Output.of(event.payload, { key: event.key, headers })];
  },
});
