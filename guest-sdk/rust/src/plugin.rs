//! The author-facing trait and the runtime behind [`export!`](crate::export).

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{Config, Event, HandlerError, Output};

/// An event handler.
///
/// One value lives per WebAssembly instance, created by [`Plugin::init`] and
/// then handed every event for that instance's life. The host may run several
/// instances of the same plugin in parallel and replaces an instance after a
/// trap, so state kept in `self` is per-instance and lost on a crash: use it
/// for caches and parsed configuration, not for anything that must survive.
pub trait Plugin: Sized + 'static {
    /// Validates the pipeline's `plugin.config` table and builds the handler.
    ///
    /// Return `Err` with a message for the operator to refuse the
    /// configuration; the host then refuses to load the plugin (or the new
    /// version, on hot reload) instead of failing on the first event.
    fn init(config: Config) -> Result<Self, String>;

    /// Handles one event: zero outputs filter it out, one maps it, several
    /// fan it out.
    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError>;

    /// The event types and versions this plugin handles, as selectors:
    /// `order-created@2` (that version), `order-created@*` (any version of
    /// the type) or `*` (everything, including events with no type header).
    /// The host asks once per loaded version, after [`Plugin::init`] (so the
    /// list may come from the configuration), and dead-letters every event
    /// the list does not cover (reason `unsupported`) without calling
    /// [`Plugin::handle`]. An invalid selector refuses the load.
    ///
    /// The event type and version are read from the headers the pipeline
    /// names (`event-type` and `event-version` by default). Default: `*`.
    fn accepts(&self) -> Vec<String> {
        vec!["*".to_owned()]
    }
}

/// Per-instance storage for the plugin value. Wasm instances are
/// single-threaded, so a thread-local is simply a global that is not `Sync`.
pub type Slot<T> = RefCell<Option<T>>;

/// Builds the plugin and stores it, replacing any earlier value so a second
/// `init` starts from a clean state.
pub fn init<T: Plugin>(
    slot: &'static LocalKey<Slot<T>>,
    config: Vec<(String, String)>,
) -> Result<(), String> {
    // Drop the old value first: a refused configuration must not leave the
    // instance serving the previous one, and the two never coexist in memory.
    slot.with(|cell| cell.borrow_mut().take());
    let plugin = T::init(Config::from(config))?;
    slot.with(|cell| *cell.borrow_mut() = Some(plugin));
    Ok(())
}

/// Runs one event through the stored plugin.
pub fn handle<T: Plugin>(
    slot: &'static LocalKey<Slot<T>>,
    event: Event,
) -> Result<Vec<Output>, HandlerError> {
    slot.with(|cell| match cell.borrow_mut().as_mut() {
        Some(plugin) => plugin.handle(event),
        // Retryable: a fresh instance that gets `init` first will succeed.
        None => Err(HandlerError::retryable("plugin not initialised")),
    })
}

/// What the stored plugin accepts; nothing before a successful `init` (the
/// host only asks after one).
pub fn accepts<T: Plugin>(slot: &'static LocalKey<Slot<T>>) -> Vec<String> {
    slot.with(|cell| cell.borrow().as_ref().map(Plugin::accepts).unwrap_or_default())
}

/// `handle-batch` is defined as `handle` on each event in order, so it is
/// implemented exactly that way rather than letting plugins diverge.
pub fn handle_batch<T: Plugin>(
    slot: &'static LocalKey<Slot<T>>,
    events: Vec<Event>,
) -> Vec<Result<Vec<Output>, HandlerError>> {
    events
        .into_iter()
        .map(|event| handle(slot, event))
        .collect()
}

/// `handle-packed`: `handle-batch` with the batch and its answers each in
/// one buffer (see `packed-handler` in the WIT). A batch the host packed in
/// a layout this SDK does not know traps, on purpose: the host then runs
/// the events through `handle` one by one.
pub fn handle_packed<T: Plugin>(slot: &'static LocalKey<Slot<T>>, batch: Vec<u8>) -> Vec<u8> {
    let events = match crate::packed::decode_events(&batch) {
        Ok(events) => events,
        Err(e) => panic!("sluice: cannot read the host's packed batch: {e}"),
    };
    let answers = handle_batch(slot, events);
    // One output per event of about the event's size is the common case.
    let mut packed = Vec::with_capacity(batch.len());
    drop(batch);
    if let Err(e) = crate::packed::encode_answers(&answers, &mut packed) {
        panic!("sluice: cannot pack the answers: {e}");
    }
    packed
}

/// Exports a [`Plugin`] type as the component's `handler`, `manifest` and
/// `packed-handler` interfaces (world `plugin-packed`).
///
/// Invoke it once, at the top level of the plugin crate:
///
/// ```ignore
/// sluice_plugin::export!(MyPlugin);
/// ```
///
/// It keeps one `MyPlugin` per instance (built by `init`, replaced by a second
/// `init`), answers `handle` before `init` with a retryable
/// "plugin not initialised" error, and implements `handle-batch` (and
/// `handle-packed`) as `handle` over each event in order.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            $crate::__private::thread_local! {
                static SLUICE_PLUGIN: $crate::__private::Slot<$plugin> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct SluiceGuest;

            impl $crate::bindings::exports::sluice::plugin::handler::Guest for SluiceGuest {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&SLUICE_PLUGIN, config)
                }

                fn handle(
                    event: $crate::Event,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Output>, $crate::HandlerError>
                {
                    $crate::__private::handle(&SLUICE_PLUGIN, event)
                }

                fn handle_batch(
                    events: ::std::vec::Vec<$crate::Event>,
                ) -> ::std::vec::Vec<
                    ::core::result::Result<::std::vec::Vec<$crate::Output>, $crate::HandlerError>,
                > {
                    $crate::__private::handle_batch(&SLUICE_PLUGIN, events)
                }
            }

            impl $crate::bindings::exports::sluice::plugin::packed_handler::Guest for SluiceGuest {
                fn handle_packed(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::__private::handle_packed(&SLUICE_PLUGIN, batch)
                }
            }

            impl $crate::bindings::exports::sluice::plugin::manifest::Guest for SluiceGuest {
                fn accepts() -> ::std::vec::Vec<::std::string::String> {
                    $crate::__private::accepts(&SLUICE_PLUGIN)
                }
            }

            // Only a wasm build has the component's export symbols; a native
            // build (`cargo test`, `cargo build` by mistake) links without them.
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::export!(SluiceGuest with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disposition;

    /// Counts events and echoes the count; `start` sets the first value.
    struct Counter {
        seen: u32,
    }

    impl Plugin for Counter {
        fn init(config: Config) -> Result<Self, String> {
            config.deny_unknown(&["start"])?;
            let seen = config
                .get("start")
                .map_or(Ok(0), str::parse)
                .map_err(|e| format!("bad start: {e}"))?;
            Ok(Counter { seen })
        }

        fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
            if event.payload == b"bad" {
                return Err(HandlerError::reject("bad"));
            }
            self.seen += 1;
            Ok(vec![Output::new(self.seen.to_string())])
        }
    }

    thread_local! {
        static SLOT: Slot<Counter> = const { RefCell::new(None) };
    }

    fn ev(payload: &str) -> Event {
        crate::event::tests::event(payload.as_bytes(), &[])
    }

    fn payloads(result: Result<Vec<Output>, HandlerError>) -> Vec<String> {
        result
            .unwrap()
            .into_iter()
            .map(|o| String::from_utf8(o.payload).unwrap())
            .collect()
    }

    #[test]
    fn accepts_defaults_to_everything_and_is_empty_before_init() {
        thread_local! { static ACC: Slot<Counter> = const { RefCell::new(None) }; }
        assert!(accepts(&ACC).is_empty());
        init(&ACC, vec![]).unwrap();
        assert_eq!(accepts(&ACC), ["*"]);
    }

    #[test]
    fn handle_before_init_is_retryable() {
        thread_local! { static EMPTY: Slot<Counter> = const { RefCell::new(None) }; }
        let err = handle(&EMPTY, ev("x")).unwrap_err();
        assert_eq!(err, HandlerError::retryable("plugin not initialised"));
    }

    #[test]
    fn a_second_init_replaces_state_and_a_failed_one_clears_it() {
        assert_eq!(
            init(&SLOT, vec![("x".into(), "1".into())]).unwrap_err(),
            "unknown config key `x` (expected one of: start)"
        );
        init(&SLOT, vec![]).unwrap();
        assert_eq!(payloads(handle(&SLOT, ev("a"))), ["1"]);
        assert_eq!(payloads(handle(&SLOT, ev("a"))), ["2"]);
        init(&SLOT, vec![("start".into(), "10".into())]).unwrap();
        assert_eq!(payloads(handle(&SLOT, ev("a"))), ["11"]);
        assert!(init(&SLOT, vec![("start".into(), "x".into())]).is_err());
        assert_eq!(
            handle(&SLOT, ev("a")).unwrap_err(),
            HandlerError::retryable("plugin not initialised")
        );
    }

    #[test]
    fn batch_is_handle_in_order() {
        thread_local! { static BATCH: Slot<Counter> = const { RefCell::new(None) }; }
        init(&BATCH, vec![]).unwrap();
        let results = handle_batch(&BATCH, vec![ev("a"), ev("bad"), ev("b")]);
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[1].as_ref().unwrap_err().disposition,
            Disposition::Reject
        );
        let ok: Vec<_> = [&results[0], &results[2]]
            .iter()
            .map(|r| payloads((*r).clone()))
            .collect();
        assert_eq!(ok, [["1"], ["2"]]);
    }
}
