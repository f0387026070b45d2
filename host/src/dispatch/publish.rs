//! The two stages after a lane: the publisher routes each concluded event's
//! outputs (or dead-letter record) to its sinks, and the completer waits for
//! the sinks' receipts, in order, before acknowledging the source.
//!
//! They run as tasks of their own so that sending batch N overlaps with the
//! plugin handling batch N+1, and waiting for durability overlaps with both.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::state::{Store, Ticket};
use tokio_util::sync::CancellationToken;

use super::dead_letter::Reason;
use super::trace::replace;
use super::{DispatchError, Dispatcher, LaneError, Stats};
use crate::codec::{ErrorReply, ReplyPartition, Request};
use crate::event::{Header, Output};

pub use crate::sink::VERSION_HEADER;
use crate::sink::{Receipt, Record, Sink, SinkError};
use crate::source::{Ack, Settlement};

/// Batches queued between stages. Bounds the work in flight per lane: when
/// the sinks lag, the publisher waits for room, then the lane waits here.
const QUEUED_BATCHES: usize = 32;

/// How the lane finished one event.
pub(super) enum Conclusion {
    /// Handled: publish these outputs (replies answer `request`).
    Outputs {
        outputs: Vec<Output>,
        event_id: String,
        request: Option<Request>,
        /// The plugin version that produced them.
        digest: std::sync::Arc<str>,
        ack: Ack,
        /// Correlation and trace headers, for an error reply.
        propagate: Vec<Header>,
        /// With plugin state: the event's place in the state commit order.
        /// Its ack waits for that commit (after its outputs are durable).
        ticket: Option<Ticket>,
        /// An event of a state batch (one plugin call, one overlay) but its
        /// last: the batch's one ticket rides on the last event, which the
        /// lane hands over in the same message, so this event's ack waits
        /// for that commit too; its replies are held like a ticket's.
        in_state_batch: bool,
    },
    /// Failed for good: publish this dead-letter record, and tell the caller
    /// if the event was a request.
    DeadLetter { record: Record, ack: Ack, failed_request: Option<Box<FailedRequest>> },
    /// A repeat of an event already handled (idempotency): nothing to send,
    /// except an error reply if it is a request; acknowledged in its turn.
    Repeat { ack: Ack, event_id: String, request: Option<Request>, propagate: Vec<Header> },
}

/// A request whose handler failed: it gets an error reply.
pub(super) struct FailedRequest {
    pub request: Request,
    pub reason: Reason,
    pub message: String,
    pub event_id: String,
    /// Correlation and trace headers for the error reply.
    pub propagate: Vec<Header>,
}

/// An event's receipts: inline up to one (most events have one output),
/// so the publish path allocates nothing for them.
type Receipts = smallvec::SmallVec<[Receipt; 1]>;

/// An event sent, waiting for its receipts.
struct Pending {
    ack: Ack,
    settlement: Settlement,
    receipts: Receipts,
    ticket: Option<Ticket>,
    /// See [`Conclusion::Outputs`]: its state commits with a later event's
    /// ticket.
    in_state_batch: bool,
    /// Replies held back until `receipts` are durable and the state is
    /// committed (see [`send_outputs`]).
    replies: Vec<Reply>,
}

/// A reply routed to its sink, not sent yet.
type Reply = (Arc<dyn Sink>, Record);

/// Starts the publisher and completer of one lane; returns the queue to feed
/// and a handle resolving to the first failure of either.
pub(super) fn start(
    d: Arc<Dispatcher>,
    failed: CancellationToken,
) -> (mpsc::Sender<Vec<Conclusion>>, tokio::task::JoinHandle<Result<(), DispatchError>>) {
    let (conclusions, rx) = mpsc::channel(QUEUED_BATCHES);
    let (pending, pending_rx) = mpsc::channel(QUEUED_BATCHES);
    let completer = tokio::spawn(complete(pending_rx, d.stats.clone(), d.state.clone(), failed.clone()));
    let handle = tokio::spawn(async move {
        let published = publish(rx, pending, &d, &failed).await;
        let completed = completer.await.unwrap_or_else(|e| Err(LaneError::joined("completer")(e).into()));
        published.and(completed)
    });
    (conclusions, handle)
}

async fn publish(
    mut rx: mpsc::Receiver<Vec<Conclusion>>,
    pending: mpsc::Sender<(Instant, Vec<Pending>)>,
    d: &Dispatcher,
    failed: &CancellationToken,
) -> Result<(), DispatchError> {
    let stats = &d.stats;
    while let Some(batch) = rx.recv().await {
        let started = Instant::now();
        let mut sent = Vec::with_capacity(batch.len());
        for conclusion in batch {
            let result = match conclusion {
                Conclusion::Outputs { outputs, event_id, request, digest, ack, propagate, ticket, in_state_batch } => {
                    if outputs.is_empty() {
                        Stats::add(&stats.filtered, 1);
                    }
                    let hold = ticket.is_some() || in_state_batch;
                    send_outputs(d, outputs, &event_id, request.as_ref(), &digest, &propagate, hold)
                        .await
                        .map(|(receipts, replies)| Pending { ack, settlement: Settlement::Done, receipts, ticket, in_state_batch, replies })
                }
                Conclusion::DeadLetter { record, ack, failed_request } => {
                    send_dead_letter(d, record, failed_request.as_deref()).await.map(|receipts| Pending {
                        ack,
                        settlement: Settlement::DeadLettered,
                        receipts,
                        ticket: None,
                        in_state_batch: false,
                        replies: Vec::new(),
                    })
                }
                Conclusion::Repeat { ack, event_id, request, propagate } => {
                    send_repeat_reply(d, &event_id, request.as_ref(), &propagate).await.map(|receipts| Pending {
                        ack,
                        settlement: Settlement::Done,
                        receipts,
                        ticket: None,
                        in_state_batch: false,
                        replies: Vec::new(),
                    })
                }
            };
            match result {
                Ok(p) => sent.push(p),
                Err(err) => {
                    // What was sent before may still become durable: let the
                    // completer settle it; everything else is handed back.
                    failed.cancel();
                    Stats::add(&stats.sink_failures, 1);
                    // A state batch whose last event (with the batch's
                    // ticket) was not sent cannot commit: its events sent
                    // so far must not be acked either (handed back).
                    let mut unfinished = 0;
                    while sent.last().is_some_and(|p| p.in_state_batch) {
                        sent.pop();
                        unfinished += 1;
                    }
                    Stats::add(&stats.abandoned, unfinished);
                    let _ = pending.send((started, sent)).await;
                    return Err(err.into());
                }
            }
        }
        if pending.send((started, sent)).await.is_err() {
            // The completer stopped on a failure; it reports it.
            return Ok(());
        }
    }
    Ok(())
}

/// Sends an event's outputs; a request that got no reply gets an error reply,
/// so its caller never waits for a timeout.
///
/// A reply is the caller's acknowledgement: it must not promise what a crash
/// could still undo. So when the event has other outputs (a `client.emit`
/// among them) or state to commit (`hold`), its replies are returned unsent,
/// for the completer to send once those outputs are durable and the state
/// committed. A crash in between loses the reply, never the effects of a
/// success: the caller times out and asks again.
async fn send_outputs(
    d: &Dispatcher,
    outputs: Vec<Output>,
    event_id: &str,
    request: Option<&Request>,
    digest: &Arc<str>,
    propagate: &[Header],
    hold: bool,
) -> Result<(Receipts, Vec<Reply>), SinkError> {
    let stats = &d.stats;
    let mut receipts = Receipts::with_capacity(outputs.len());
    let mut replies = Vec::new();
    let mut answered = false;
    for (index, mut output) in outputs.into_iter().enumerate() {
        let reply = output.reply;
        answered |= reply;
        if d.version_header && output.headers.iter().any(|h| h.key == VERSION_HEADER) {
            // An input that came from another pipeline carries that one's
            // digest: the output names only the version that made it.
            output.headers.retain(|h| h.key != VERSION_HEADER);
        }
        d.tap.output(event_id, &output, digest);
        let routed = d.router.route(output, request, || format!("{event_id}:{index}"));
        let routed = routed.map(|(sink, mut record)| {
            // The version goes with the record (one shared value), and is
            // sent as its last header (`Record::all_headers`).
            record.version = d.version_header.then(|| Arc::clone(digest));
            (sink, record)
        });
        match routed {
            Some((sink, mut record)) if reply => {
                if let Some(request) = request {
                    aim(d, request, sink, &mut record).await;
                }
                replies.push((sink.clone(), record));
            }
            Some((sink, record)) => receipts.push(sink.send(record).await?),
            None => Stats::add(&stats.replies_dropped, 1),
        }
    }
    Stats::add(&stats.outputs, (receipts.len() + replies.len()) as u64);
    if !hold && receipts.is_empty() {
        // Nothing to wait for: answer now.
        for (sink, record) in std::mem::take(&mut replies) {
            receipts.push(sink.send(record).await?);
        }
    }
    if let (Some(request), false) = (request, answered) {
        let error = ErrorReply { reason: "no-reply", message: "the handler returned no reply output for this request", event_id };
        let (sink, mut record) = d.router.error_reply(request, &error);
        replace(propagate, &mut record.headers);
        aim(d, request, sink, &mut record).await;
        receipts.push(sink.send(record).await?);
    }
    Ok((receipts, replies))
}

/// Sends the replies held back for an event whose other outputs are now
/// durable (and state committed), and waits until they are sent.
async fn send_replies(replies: Vec<Reply>) -> Result<(), SinkError> {
    for (sink, record) in replies {
        sink.send(record).await?.wait().await?;
    }
    Ok(())
}

/// Sends a dead-letter record, and the error reply if the event was a request.
async fn send_dead_letter(d: &Dispatcher, record: Record, failed: Option<&FailedRequest>) -> Result<Receipts, SinkError> {
    let mut receipts = smallvec::smallvec![d.dead_letter.send(record).await?];
    if let Some(failed) = failed {
        let error = ErrorReply { reason: failed.reason.as_str(), message: &failed.message, event_id: &failed.event_id };
        let (sink, mut record) = d.router.error_reply(&failed.request, &error);
        replace(&failed.propagate, &mut record.headers);
        aim(d, &failed.request, sink, &mut record).await;
        receipts.push(sink.send(record).await?);
    }
    Ok(receipts)
}

/// A repeated request gets an error reply: its first copy's reply went to
/// the first caller and is not kept.
async fn send_repeat_reply(d: &Dispatcher, event_id: &str, request: Option<&Request>, propagate: &[Header]) -> Result<Receipts, SinkError> {
    let Some(request) = request else { return Ok(Receipts::new()) };
    let error = ErrorReply {
        reason: "duplicate",
        message: "a repeat of a request already handled within the idempotency window; its reply is not kept",
        event_id,
    };
    let (sink, mut record) = d.router.error_reply(request, &error);
    replace(propagate, &mut record.headers);
    aim(d, request, sink, &mut record).await;
    Ok(smallvec::smallvec![sink.send(record).await?])
}

/// Sends a reply (or error reply) to partition 0 when the partition its
/// request named cannot be used (see [`ReplyPartition`] for why not dead
/// letter): a header that is not a partition number, or a partition the
/// reply topic does not have (writing there would fail the sink and stop
/// the pipeline, again on every redelivery). Logged and counted.
async fn aim(d: &Dispatcher, request: &Request, sink: &Arc<dyn Sink>, record: &mut Record) {
    let why = match &request.reply_partition {
        ReplyPartition::Unnamed => return,
        ReplyPartition::Unreadable(value) => ReplyPartition::unreadable(value),
        ReplyPartition::Named(partition) => match sink.has_partition(record.destination.as_deref(), *partition).await {
            Ok(()) => return,
            Err(why) => ReplyPartition::missing(&why),
        },
    };
    tracing::warn!(pipeline = %d.pipeline, reply_to = %request.reply_to, "replying on partition 0: {why}");
    Stats::add(&d.stats.reply_partition_fallbacks, 1);
    record.partition = Some(0);
}

/// Waits for each event's receipts in order, then acks it. Records how long
/// each batch took from its first send to its last record being durable.
///
/// With plugin state, an event's ack also waits for its state commit, which
/// happens once its outputs are durable: the batch's tickets are readied
/// together (one group commit for the batch), then the batch is acked.
async fn complete(
    mut rx: mpsc::Receiver<(Instant, Vec<Pending>)>,
    stats: Arc<Stats>,
    state: Option<Arc<Store>>,
    failed: CancellationToken,
) -> Result<(), DispatchError> {
    while let Some((started, batch)) = rx.recv().await {
        let batch = match &state {
            Some(store) if batch.iter().any(|p| p.ticket.is_some()) => match commit_state(store, batch, &stats, &failed, &mut rx).await? {
                Some(batch) => batch,
                None => return Ok(()),
            },
            _ => batch,
        };
        let mut acked = 0;
        let mut events = batch.into_iter();
        while let Some(Pending { ack, settlement, receipts, replies, .. }) = events.next() {
            for waited in settled(receipts, replies) {
                if let Err(err) = waited.await {
                    failed.cancel();
                    Stats::add(&stats.sink_failures, 1);
                    Stats::add(&stats.acked, acked);
                    // `ack`, the rest of this batch and the queue drop: handed back.
                    let mut queued = 1 + events.len();
                    while let Ok(batch) = rx.try_recv() {
                        queued += batch.1.len();
                    }
                    Stats::add(&stats.abandoned, queued as u64);
                    return Err(err.into());
                }
            }
            ack.settle(settlement);
            acked += 1;
        }
        stats.timings.publish.observe(started.elapsed().as_secs_f64());
        Stats::add(&stats.acked, acked);
        stats.progressed();
    }
    Ok(())
}

/// What an event waits for before its ack, in order: each receipt, then
/// the replies held back for it (sent once the receipts are durable).
fn settled(receipts: Receipts, replies: Vec<Reply>) -> impl Iterator<Item = impl std::future::Future<Output = Result<(), SinkError>>> {
    let replies = (!replies.is_empty()).then(|| futures::future::Either::Right(send_replies(replies)));
    receipts.into_iter().map(|receipt| futures::future::Either::Left(receipt.wait())).chain(replies)
}

/// Waits for every receipt of the batch, then commits the state of its
/// events (one group commit), and returns the batch with its receipts
/// spent, ready to ack. A failed receipt or commit stops the pipeline: the
/// batch and the queue are handed back (`Err`).
async fn commit_state(
    store: &Arc<Store>,
    batch: Vec<Pending>,
    stats: &Stats,
    failed: &CancellationToken,
    rx: &mut mpsc::Receiver<(Instant, Vec<Pending>)>,
) -> Result<Option<Vec<Pending>>, DispatchError> {
    let total = batch.len();
    let mut tickets = Vec::new();
    let mut ready = Vec::with_capacity(total);
    for mut pending in batch {
        for receipt in std::mem::take(&mut pending.receipts) {
            if let Err(err) = receipt.wait().await {
                failed.cancel();
                Stats::add(&stats.sink_failures, 1);
                hand_back_queue(stats, total - ready.len(), rx);
                return Err(err.into());
            }
        }
        tickets.extend(pending.ticket.take());
        ready.push(pending);
    }
    if let Err(err) = store.ready_all(tickets).await {
        failed.cancel();
        hand_back_queue(stats, total, rx);
        return Err(DispatchError::State(err));
    }
    Ok(Some(ready))
}

/// Counts the events of a failed batch (dropped: handed back) and of the
/// queue behind it.
fn hand_back_queue(stats: &Stats, unsettled: usize, rx: &mut mpsc::Receiver<(Instant, Vec<Pending>)>) {
    let mut queued = unsettled;
    while let Ok(batch) = rx.try_recv() {
        queued += batch.1.len();
    }
    Stats::add(&stats.abandoned, queued as u64);
}
