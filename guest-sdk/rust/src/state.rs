//! The pipeline's state: string keys to byte values, remembered between
//! events (stock per SKU, a running total per account, the last status of
//! an order).
//!
//! The pipeline must grant it with a `[pipelines.<name>.state]` table; a
//! plugin that uses this module in a pipeline without one is refused at
//! load. What an event writes is seen by its own later reads at once, and
//! by other events only once the event concludes with its outputs accepted:
//! a failed attempt, a retry or a dead letter leaves no trace, and a crash
//! never applies an event's writes twice (see the plugin guide's "State").
//!
//! ```no_run
//! use sluice_plugin::{state, Event, HandlerError, Output};
//!
//! fn handle(event: Event) -> Result<Vec<Output>, HandlerError> {
//!     let sku = event.payload_str()?;
//!     // A state error converts into a HandlerError: `unavailable` (a broker
//!     // outage) is retryable, a broken limit rejects the event.
//!     let seen = state::increment(&format!("seen:{sku}"), 1)?;
//!     Ok(vec![Output::new(seen.to_string())])
//! }
//! ```
//!
//! Outside a component (native unit tests of a plugin) the state is an
//! in-memory map of the test's thread, emptied with [`clear`], so stateful
//! handlers can be tested natively as they are.

pub use crate::bindings::sluice::plugin::state::{Page, StateError};
use crate::HandlerError;

/// The value of `key`, if it has one.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
    imp::get(key)
}

/// The value of `key` as UTF-8 text (`None` when it has no value; a value
/// that is not UTF-8 is `None` too).
pub fn get_string(key: &str) -> Result<Option<String>, StateError> {
    Ok(get(key)?.and_then(|bytes| String::from_utf8(bytes).ok()))
}

/// Sets `key` to `value`.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), StateError> {
    imp::set(key, value.as_ref())
}

/// Removes `key` (no error if it has no value).
pub fn delete(key: &str) -> Result<(), StateError> {
    imp::delete(key)
}

/// Adds `delta` to the counter at `key` (a missing key counts as 0) and
/// returns the new value. Counters are ASCII decimal text: [`get_string`]
/// reads one as `"42"`.
pub fn increment(key: &str, delta: i64) -> Result<i64, StateError> {
    imp::increment(key, delta)
}

/// One page of keys starting with `prefix`, in order, after `after`
/// (exclusive), at most `limit` (the host caps it too). [`entries`] pages
/// for you.
pub fn scan(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page, StateError> {
    imp::scan(prefix, after, limit)
}

/// Every entry under `prefix`, in key order, fetched a page at a time.
pub fn entries(prefix: &str) -> impl Iterator<Item = Result<(String, Vec<u8>), StateError>> + '_ {
    let mut after: Option<String> = None;
    let mut page: std::vec::IntoIter<(String, Vec<u8>)> = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || loop {
        if let Some(entry) = page.next() {
            return Some(Ok(entry));
        }
        if done {
            return None;
        }
        match scan(prefix, after.as_deref(), 256) {
            Ok(next) => {
                done = next.next.is_none();
                after = next.next;
                page = next.entries.into_iter();
            }
            Err(err) => {
                done = true;
                return Some(Err(err));
            }
        }
    })
}

/// The value of `key` decoded from JSON.
#[cfg(feature = "json")]
pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, HandlerError> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HandlerError::reject(format!("state key {key:?} does not hold the expected JSON: {e}"))),
    }
}

/// Sets `key` to `value` encoded as JSON.
#[cfg(feature = "json")]
pub fn set_json<T: serde::Serialize>(key: &str, value: &T) -> Result<(), HandlerError> {
    let bytes = serde_json::to_vec(value).map_err(|e| HandlerError::reject(format!("cannot encode state key {key:?} as JSON: {e}")))?;
    Ok(set(key, bytes)?)
}

/// Empties the native test state of this thread (no effect in a component).
pub fn clear() {
    #[cfg(not(target_arch = "wasm32"))]
    imp::clear();
}

/// A plain sentence for a state error (dead-letter messages, logs).
pub fn describe(err: &StateError) -> String {
    match err {
        StateError::KeyTooLong(max) => format!("state key longer than the limit of {max} bytes"),
        StateError::ValueTooLarge(max) => format!("state value larger than the limit of {max} bytes"),
        StateError::TooManyWrites(max) => format!("an event may write at most {max} state keys"),
        StateError::TooManyReads(max) => format!("an event may read at most {max} state keys and scans"),
        StateError::NotACounter => "state value is not a counter (ASCII decimal text)".into(),
        StateError::Overflow => "state counter would overflow a signed 64-bit integer".into(),
        StateError::Unavailable(why) => format!("state unavailable: {why}"),
    }
}

/// `unavailable` (the backend cannot be reached) is worth retrying; every
/// other state error will fail the same way again, so the event is rejected.
impl From<StateError> for HandlerError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Unavailable(_) => HandlerError::retryable(describe(&err)),
            _ => HandlerError::reject(describe(&err)),
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Page, StateError};
    use crate::bindings::sluice::plugin::state as host;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        host::get(key)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        host::set(key, value)
    }
    pub fn delete(key: &str) -> Result<(), StateError> {
        host::delete(key)
    }
    pub fn increment(key: &str, delta: i64) -> Result<i64, StateError> {
        host::increment(key, delta)
    }
    pub fn scan(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page, StateError> {
        host::scan(prefix, after, limit)
    }
}

/// The native stand-in: one map per test thread, with the host's counter
/// rules.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Page, StateError};

    thread_local! {
        static MAP: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(MAP.with(|m| m.borrow().get(key).cloned()))
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
        MAP.with(|m| m.borrow_mut().insert(key.to_owned(), value.to_vec()));
        Ok(())
    }
    pub fn delete(key: &str) -> Result<(), StateError> {
        MAP.with(|m| m.borrow_mut().remove(key));
        Ok(())
    }
    pub fn increment(key: &str, delta: i64) -> Result<i64, StateError> {
        let current = match get(key)? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes).ok().and_then(|t| t.parse::<i64>().ok()).ok_or(StateError::NotACounter)?,
        };
        let next = current.checked_add(delta).ok_or(StateError::Overflow)?;
        set(key, next.to_string().as_bytes())?;
        Ok(next)
    }
    pub fn scan(prefix: &str, after: Option<&str>, limit: u32) -> Result<Page, StateError> {
        MAP.with(|m| {
            let map = m.borrow();
            let mut entries: Vec<(String, Vec<u8>)> = map
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
                .take(limit.max(1) as usize + 1)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let more = entries.len() > limit.max(1) as usize;
            entries.truncate(limit.max(1) as usize);
            let next = if more { entries.last().map(|(k, _)| k.clone()) } else { None };
            Ok(Page { entries, next })
        })
    }
    pub fn clear() {
        MAP.with(|m| m.borrow_mut().clear());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text_and_refuse_other_values() -> Result<(), StateError> {
        clear();
        assert_eq!(increment("n", 2)?, 2);
        assert_eq!(increment("n", -5)?, -3);
        assert_eq!(get_string("n")?.as_deref(), Some("-3"));
        set("t", "text")?;
        assert_eq!(increment("t", 1), Err(StateError::NotACounter));
        set("max", i64::MAX.to_string())?;
        assert_eq!(increment("max", 1), Err(StateError::Overflow));
        Ok(())
    }

    #[test]
    fn entries_pages_through_a_prefix_in_order() -> Result<(), StateError> {
        clear();
        for i in 0..600 {
            set(&format!("sku:{i:04}"), i.to_string())?;
        }
        set("other", "x")?;
        let keys: Vec<String> = entries("sku:").map(|e| e.map(|(k, _)| k)).collect::<Result<_, _>>()?;
        assert_eq!(keys.len(), 600);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        delete("sku:0000")?;
        assert_eq!(get("sku:0000")?, None);
        Ok(())
    }

    #[test]
    fn unavailable_is_retryable_and_limits_reject() {
        let retry: HandlerError = StateError::Unavailable("down".into()).into();
        assert_eq!(retry.disposition, crate::Disposition::Retryable);
        let reject: HandlerError = StateError::ValueTooLarge(10).into();
        assert_eq!(reject.disposition, crate::Disposition::Reject);
    }
}
