//! The optional `packed-handler` export: a batch in one buffer, its answers
//! in another (the layout is in `wit/sluice.wit` and `guest-sdk/packed`).
//!
//! Why: through the canonical ABI a 100-byte event costs seven guest
//! allocations, each a call from the host into the guest, and every field
//! of every output is lifted one scalar at a time; that was a third of a
//! Rust plugin's pipeline cost (docs/benchmarks.md). The Rust SDK exports
//! `handle-packed`; other plugins keep `handle-batch`, so this is looked
//! up by name like [`super::manifest`], never required.

use wasmtime::component::{Component, ComponentExportIndex, Func, Instance as Raw};
use wasmtime::Store;

use super::instance::{HandleResult, PluginState};
use super::world::Target;
use crate::event::{Disposition, Event, HandlerError, Header, Output};

sluice_packed::codec!(event: Event, header: Header, output: Output, error: HandlerError, disposition: Disposition);

/// The instance name of the export, without the package version.
pub const INTERFACE: &str = "sluice:plugin/packed-handler";

/// Batches whose events carry this many bytes or more on average (payload,
/// key and headers) go through `handle-batch` even when the plugin exports
/// `handle-packed`. Packing saves a fixed cost per field but copies every
/// byte twice more on each side (into the buffer, out of it); measured
/// with the Rust passthrough, one lane (docs/benchmarks.md): 100 B events
/// −21% CPU packed, 1 KiB and 3 KiB even, 10 KiB +55%.
pub const MAX_AVERAGE_BYTES: usize = 1024;

/// Whether `events` are small enough to be worth packing (see
/// [`MAX_AVERAGE_BYTES`]).
pub fn worth_packing(events: &[Event]) -> bool {
    let bytes: usize = events
        .iter()
        .map(|e| {
            e.payload.len() + e.key.as_ref().map_or(0, Vec::len) + e.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>()
        })
        .sum();
    bytes < MAX_AVERAGE_BYTES.saturating_mul(events.len())
}

/// Answers the host could not read: the plugin broke the contract.
#[derive(Debug, thiserror::Error)]
#[error("the plugin's packed answers are malformed: {0}")]
pub struct Malformed(#[from] sluice_packed::Error);

/// The index of `packed-handler.handle-packed` in `component`, if it
/// exports it (only 0.2.0 plugins can).
pub fn find(component: &Component, target: Target) -> Option<ComponentExportIndex> {
    if target != Target::V0_2 {
        return None;
    }
    let interface = component.get_export_index(None, target.interface("packed-handler"))?;
    component.get_export_index(Some(&interface), "handle-packed")
}

/// `handle-packed` of a new instance, its type checked once here.
pub fn resolve(store: &mut Store<PluginState>, instance: &Raw, index: &ComponentExportIndex) -> wasmtime::Result<Func> {
    let func = instance.get_func(&mut *store, index).ok_or_else(|| wasmtime::format_err!("`{INTERFACE}.handle-packed` is missing"))?;
    func.typed::<(&[u8],), (Vec<u8>,)>(&*store).map_err(|e| {
        wasmtime::format_err!("`{INTERFACE}.handle-packed` does not have the expected type (`func(batch: list<u8>) -> list<u8>`): {e:#}")
    })?;
    Ok(func)
}

/// The most an instance keeps of its packing buffer between calls: a batch
/// of 256 events of 100 B (an id, a key, a header) packs into ~47 KiB. A
/// larger one is given back after its call, so 64 lanes that once packed
/// large batches do not each hold one.
const SCRATCH_KEPT: usize = 64 * 1024;

/// Calls `handle-packed` with `events`; `scratch` is the instance's buffer,
/// kept between calls (up to [`SCRATCH_KEPT`]) so packing a batch does not
/// allocate.
pub async fn handle(
    store: &mut Store<PluginState>,
    func: Func,
    events: &[Event],
    scratch: &mut Vec<u8>,
) -> wasmtime::Result<Vec<HandleResult>> {
    pack(events, scratch)?;
    let typed = func.typed::<(&[u8],), (Vec<u8>,)>(&*store)?;
    let called = typed.call_async(&mut *store, (scratch.as_slice(),)).await;
    release_if_large(scratch);
    let (answers,) = called?;
    Ok(decode_answers(&answers).map_err(Malformed)?)
}

/// Packs `events` into `scratch`, in the allocation it already has when it
/// is large enough. Reserved exactly: grown by doubling, a 47 KiB batch left
/// the buffer at 70 KiB, over what is kept, so every call regrew it from
/// nothing (nine reallocations and copies per batch, measured).
fn pack(events: &[Event], scratch: &mut Vec<u8>) -> Result<(), Malformed> {
    scratch.clear();
    scratch.reserve_exact(events_len(events));
    encode_events(events, scratch).map_err(Malformed)
}

fn release_if_large(scratch: &mut Vec<u8>) {
    if scratch.capacity() > SCRATCH_KEPT {
        *scratch = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            source: "orders".into(),
            key: Some(b"k".to_vec()),
            payload: b"{}".to_vec(),
            headers: vec![Header { key: "traceparent".into(), value: b"00-1-2-01".to_vec() }],
            timestamp_ms: 17,
            attempt: 2,
            reply_to: Some("_INBOX.1".into()),
        }
    }

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn events_and_answers_survive_the_trip() -> Result {
        let events = vec![event("orders/0/1"), Event { key: None, reply_to: None, headers: vec![], ..event("orders/0/2") }];
        let mut batch = Vec::new();
        encode_events(&events, &mut batch)?;
        assert_eq!(decode_events(&batch)?, events);

        let answers: Vec<HandleResult> = vec![
            Ok(vec![Output { destination: Some("audit".into()), key: None, payload: b"x".to_vec(), headers: vec![], reply: true }]),
            Err(HandlerError { disposition: Disposition::Retryable, message: "later".into() }),
        ];
        let mut bytes = Vec::new();
        encode_answers(&answers, &mut bytes)?;
        assert_eq!(decode_answers(&bytes)?, answers);
        Ok(())
    }

    #[test]
    fn only_batches_of_small_events_are_packed() {
        let sized = |n: usize| Event { payload: vec![b'x'; n], key: None, headers: vec![], ..event("e") };
        assert!(worth_packing(&[sized(100), sized(100)]));
        assert!(worth_packing(&[sized(1500), sized(100)]), "the average decides, not the largest event");
        assert!(!worth_packing(&[sized(1024), sized(1024)]));
        assert!(!worth_packing(&[]), "an empty batch has nothing to save");
    }

    #[test]
    fn a_batch_of_256_small_events_packs_into_the_buffer_it_keeps() -> Result {
        let events: Vec<Event> = (0..256).map(|i| Event { payload: vec![b'x'; 100], ..event(&format!("bench:{i}")) }).collect();
        let mut scratch = Vec::new();
        pack(&events, &mut scratch)?;
        assert_eq!(scratch.len(), events_len(&events));
        release_if_large(&mut scratch);
        let (at, capacity) = (scratch.as_ptr(), scratch.capacity());
        assert!(capacity > 0 && capacity <= SCRATCH_KEPT, "kept: {capacity}");
        pack(&events, &mut scratch)?;
        assert_eq!((scratch.as_ptr(), scratch.capacity()), (at, capacity), "the next batch reuses it");
        Ok(())
    }

    #[test]
    fn a_large_packing_buffer_is_given_back() {
        let mut small = Vec::with_capacity(SCRATCH_KEPT);
        release_if_large(&mut small);
        assert_eq!(small.capacity(), SCRATCH_KEPT);
        let mut large = Vec::with_capacity(SCRATCH_KEPT + 1);
        release_if_large(&mut large);
        assert_eq!(large.capacity(), 0);
    }

    #[test]
    fn a_hostile_answer_is_refused_without_allocating_for_it() -> Result {
        // One answer claiming 2^32-1 outputs in a 10-byte buffer.
        let bytes = [sluice_packed::FORMAT, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let Err(err) = decode_answers(&bytes) else { return Err("a count past the end was read".into()) };
        assert_eq!(err.offset, 6);
        assert_eq!(Malformed(err).to_string(), "the plugin's packed answers are malformed: a count larger than the bytes left at byte 6");
        Ok(())
    }
}
