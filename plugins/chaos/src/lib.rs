//! `chaos`: misbehaves on demand, so tests and demos can drive every failure
//! path of the host from the input data alone. The payload (a trailing
//! newline ignored) selects the behaviour; the first matching rule wins:
//!
//! | payload          | result                                                              |
//! |------------------|---------------------------------------------------------------------|
//! | `ok:<text>`      | one output, payload `<text>`                                        |
//! | `retry:<n>`      | retryable `transient failure (attempt <a> of <n>)` while attempt ≤ n, then one output `recovered after <attempt-1> failures` |
//! | `reject[:<msg>]` | rejected with `<msg>` (default `rejected by rule`)                  |
//! | `trap`           | panics, which traps the instance                                    |
//! | `loop`           | spins forever, until the host's timeout interrupts it               |
//! | `oom`            | allocates 1 MiB blocks until memory runs out, which traps           |
//! | `recurse`        | recurses without end until the guest's stack runs out, which traps  |
//! | `log:<text>`     | logs `<text>` at info with field `event=<id>`, outputs `<text>`     |
//! | `reply:<text>`   | one reply output, payload `<text>`                                  |
//! | `fanout:<n>`     | `n` outputs with payloads `0` … `n-1`                               |
//! | `sleep:<ms>`     | sleeps in the host (a blocking WASI call), then outputs `slept`     |
//! | `env:<NAME>`     | one output: the variable's value, or `unset` (sandbox tests)        |
//! | `read:<path>`    | one output: the file's contents, or `denied: <error>` (sandbox tests) |
//! | `calls`          | one output: how many events this instance has handled, this one included (instance-policy tests) |
//! | `describe`       | one output to `described`: payload the event's every field (`{:?}`), its key and headers, `reply` set when it has a `reply-to` |
//! | anything else    | the event unchanged (key, payload, headers)                         |
//!
//! A malformed count (`retry:x`, `fanout:-1`) is rejected.
//!
//! Config:
//! - `init_error` (optional): `init` fails with this message, to test how the
//!   host refuses a plugin.
//! - `init_sleep_ms` (optional): `init` sleeps this long in the host first
//!   (a guest waiting in a host call while it starts).
//! - `init_loop` (optional, any value): `init` spins forever.

use std::hint::black_box;

use sluice_plugin::{log, Config, Event, HandlerError, Output, Plugin};

struct Chaos {
    calls: u64,
}

impl Plugin for Chaos {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["init_error", "init_sleep_ms", "init_loop"])?;
        if let Some(ms) = config.get("init_sleep_ms") {
            let ms: u64 = ms.parse().map_err(|e| format!("init_sleep_ms: {e}"))?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if config.get("init_loop").is_some() {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        match config.get("init_error") {
            Some(message) => Err(message.to_owned()),
            None => Ok(Chaos { calls: 0 }),
        }
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        self.calls += 1;
        let text = std::str::from_utf8(&event.payload).unwrap_or_default();
        let rule = text
            .strip_suffix('\n')
            .map_or(text, |t| t.strip_suffix('\r').unwrap_or(t));

        if let Some(text) = rule.strip_prefix("ok:") {
            return Ok(vec![Output::new(text)]);
        }
        if let Some(n) = rule.strip_prefix("retry:") {
            let n: u32 = count(rule, n)?;
            if event.attempt <= n {
                return Err(HandlerError::retryable(format!(
                    "transient failure (attempt {} of {n})",
                    event.attempt
                )));
            }
            return Ok(vec![Output::new(format!(
                "recovered after {} failures",
                event.attempt - 1
            ))]);
        }
        if rule == "calls" {
            return Ok(vec![Output::new(self.calls.to_string())]);
        }
        if rule == "reject" {
            return Err(HandlerError::reject("rejected by rule"));
        }
        if let Some(message) = rule.strip_prefix("reject:") {
            return Err(HandlerError::reject(message));
        }
        match rule {
            "trap" => panic!("chaos: trap requested"),
            "loop" => spin(),
            "oom" => exhaust_memory(),
            "recurse" => {
                let depth = recurse(0);
                return Ok(vec![Output::new(depth.to_string())]);
            }
            _ => {}
        }
        if let Some(text) = rule.strip_prefix("log:") {
            log::with_fields(log::Level::Info, text, &[("event", &event.id)]);
            return Ok(vec![Output::new(text)]);
        }
        if rule == "describe" {
            // Every field of the event, as the plugin received it (to check
            // that a batch arrives the same whichever way it is passed).
            return Ok(vec![Output {
                destination: Some("described".into()),
                key: event.key.clone(),
                payload: format!("{event:?}").into_bytes(),
                headers: event.headers,
                reply: event.reply_to.is_some(),
            }]);
        }
        if let Some(text) = rule.strip_prefix("reply:") {
            return Ok(vec![Output::reply(text)]);
        }
        if let Some(n) = rule.strip_prefix("fanout:") {
            let n: u32 = count(rule, n)?;
            return Ok((0..n).map(|i| Output::new(i.to_string())).collect());
        }
        if let Some(ms) = rule.strip_prefix("sleep:") {
            let ms: u64 = count(rule, ms)?.into();
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return Ok(vec![Output::new("slept")]);
        }
        if let Some(name) = rule.strip_prefix("env:") {
            let value = std::env::var(name).unwrap_or_else(|_| "unset".into());
            return Ok(vec![Output::new(value)]);
        }
        if let Some(path) = rule.strip_prefix("read:") {
            let content = std::fs::read_to_string(path).unwrap_or_else(|e| format!("denied: {e}"));
            return Ok(vec![Output::new(content)]);
        }
        Ok(vec![Output::from(event)])
    }
}

fn count(rule: &str, n: &str) -> Result<u32, HandlerError> {
    n.parse()
        .map_err(|e| HandlerError::reject(format!("chaos: bad count in `{rule}`: {e}")))
}

/// Burns CPU forever; `black_box` keeps the optimiser from proving the loop
/// empty and removing it (an infinite loop without side effects is UB).
fn spin() -> ! {
    loop {
        black_box(());
    }
}

/// Keeps every block alive and written to, so the memory is really committed
/// and the allocator eventually fails, aborting the instance.
fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5; 1 << 20]);
        black_box(&mut hoard);
    }
}

/// Recurses forever, each frame holding a buffer on the stack, so the
/// guest's stack (in its linear memory) overflows. `black_box` keeps the
/// optimiser from turning the recursion into a loop.
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 256];
    frame[0] = depth as u8;
    black_box(&mut frame);
    recurse(depth + 1) + u64::from(frame[1])
}

sluice_plugin::export!(Chaos);
