// The handler shared by the `rollout_*` test plugins. Each output is the
// event itself (key, payload, headers) with one header of its own, `n`,
// the number at the end of the payload. The variants differ in `MODE`:
//
// - `base`: the current version of the rollout tests;
// - `same`: the same behaviour (a different build, so another digest);
// - `drift`: the `n` header is `drifted` for events whose number is a
//   multiple of 10 (10% of them), the rest as `base`;
// - `flaky`: a retryable failure for events whose number is odd (50%).

use sluice_plugin::{Config, Event, HandlerError, Output, Plugin};

struct Rollout;

impl Plugin for Rollout {
    fn init(_config: Config) -> Result<Self, String> {
        // Names the variant in the host's log. It also keeps `MODE` in the
        // component: `base` and `same` must be different builds (another
        // digest), and with LTO their code is otherwise identical.
        sluice_plugin::log::debug(&format!("rollout test plugin: the {MODE} build"));
        Ok(Rollout)
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let text = String::from_utf8_lossy(&event.payload).into_owned();
        let digits: String = text.chars().rev().take_while(char::is_ascii_digit).collect::<Vec<_>>().into_iter().rev().collect();
        let n: u64 = digits.parse().unwrap_or(0);
        if MODE == "flaky" && n % 2 == 1 {
            return Err(HandlerError::retryable(format!("{MODE}: cannot handle {n} today")));
        }
        let header = if MODE == "drift" && n % 10 == 0 { "drifted".to_owned() } else { n.to_string() };
        Ok(vec![Output::from(event).with_header("n", header)])
    }
}

sluice_plugin::export!(Rollout);
