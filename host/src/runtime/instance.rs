//! One live plugin instance: its store (memory cap, deadline, WASI) and the
//! calls into it.
//!
//! An instance is owned by one lane; its calls are futures polled by that
//! lane's task (no thread of its own, see `engine.rs`). After
//! any [`CallError`] it must be dropped: a trapped guest may have left its
//! memory in any state, so the next event always gets a fresh instance.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::effects::EventScope;
use super::host::GuestLog;
use super::metrics::PluginMetrics;
use super::world::Bindings;
use crate::event::{Event, HandlerError, Output};

/// The result of handling one event.
pub type HandleResult = Result<Vec<Output>, HandlerError>;

/// Why a call into the guest failed as a whole. Every variant is a failed
/// attempt for each event of the call (retryable), and the instance is spent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call ran past `policy.timeout` and was interrupted.
    #[error("handler timed out after {0:?}")]
    Timeout(Duration),
    /// The guest tried to grow its memory past `policy.memory`.
    #[error("plugin exceeded its memory cap of {limit} bytes")]
    MemoryLimit {
        /// The cap, bytes.
        limit: u64,
    },
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The guest returned something the interface rules out (a batch
    /// answer of the wrong length, say).
    #[error("plugin broke the contract: {0}")]
    Contract(String),
    /// A new instance could not be made (instantiation or its `init`), or
    /// the pipeline stopped before the call could finish.
    #[error("cannot start a plugin instance: {0}")]
    Start(String),
}

/// Per-instance state inside the wasmtime store.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    pub(crate) log: GuestLog,
    /// The event being handled, lent by the lane for the call (its state,
    /// its identity for outbound calls; see [`super::effects`]).
    pub(super) scope: Option<EventScope>,
    /// The pipeline's plugin metrics, which every instance records into.
    pub(super) metrics: PluginMetrics,
    /// Outbound HTTP (`wasi:http`): the pipeline's grant and wasmtime's
    /// context (see [`super::http`]).
    pub(super) http: super::http::HttpState,
}

impl wasmtime_wasi_http::WasiHttpView for PluginState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http.ctx, table: &mut self.table, hooks: &mut self.http.hooks }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory and remembers that it said no, so the trap that
/// usually follows (an allocator abort) is reported as what it is. Also
/// keeps the total of the instance's linear memories (a component may have
/// several), for benchmarks and diagnostics.
struct MemoryCap {
    limit: u64,
    hit: bool,
    total: u64,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired as u64 <= self.limit;
        self.hit |= !allowed;
        if allowed {
            self.total += desired.saturating_sub(current) as u64;
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far past any real
        // plugin and stops a guest from growing one without bound.
        Ok(desired <= 1_000_000)
    }
}

/// A live instance, ready to handle events.
pub struct Instance {
    store: Store<PluginState>,
    plugin: Bindings,
    timeout: Duration,
    memory_limit: u64,
    stderr: StderrTail,
    /// Where a batch is packed for `handle-packed`, kept between calls.
    packed: Vec<u8>,
}

impl Instance {
    /// A store with every limit in force before the first instruction: the
    /// memory cap (so instantiation's initial memory and a start function's
    /// growth are capped too). Deadlines are not the store's: every call is
    /// a future raced against a timer (see [`Instance::handle`]), and the
    /// store only makes the guest yield at every epoch tick, so a guest
    /// that never calls out still lets the timer (and every other task on
    /// its worker) run.
    pub(super) fn store(engine: &Engine, wasi: WasiCtx, log: GuestLog, metrics: PluginMetrics, memory_limit: u64) -> Store<PluginState> {
        let state = PluginState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap { limit: memory_limit, hit: false, total: 0 },
            log,
            scope: None,
            metrics,
            http: super::http::HttpState::new(None),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        // Yield at every tick through tokio's `yield_now` rather than
        // wasmtime's own yield: tokio defers the wake-up until the thread
        // has polled its timers and I/O, so on a plugin thread (a
        // current-thread runtime, see `executor`) a spinning guest lets the
        // deadline timers and the sockets of its neighbours run at every
        // tick, not only every 61st task poll.
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))));
        store
    }

    /// Wraps an instantiated store made by [`Instance::store`].
    pub(super) fn new(store: Store<PluginState>, plugin: Bindings, timeout: Duration, memory_limit: u64, stderr: StderrTail) -> Self {
        Self { store, plugin, timeout, memory_limit, stderr, packed: Vec::new() }
    }

    /// Calls the plugin's `init` with its configuration, within `budget`.
    /// `Ok(Err(msg))` is the plugin refusing its config.
    pub(super) async fn init(&mut self, config: &[(String, String)], budget: Duration) -> Result<Result<(), String>, CallError> {
        let call = self.plugin.init(&mut self.store, config);
        match tokio::time::timeout(budget, call).await {
            Ok(result) => result.map_err(|err| self.classify(err)),
            Err(_) => Err(CallError::Timeout(budget)),
        }
    }

    /// Handles a batch: one call to `handle` for a single event, one call to
    /// `handle-batch` for several. The deadline is the per-event timeout times
    /// the number of events. On a timeout the call's future is dropped, which
    /// stops the guest wherever it is (computing, or waiting in a host call)
    /// and frees what it held; the instance is then spent.
    pub async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        // A batch is one call: the guest's log lines can only be placed
        // within its range of events (the guest's own fields can say more).
        self.store.data_mut().log.current_event = match events {
            [] => None,
            [one] => Some(one.id.clone()),
            [first, .., last] => Some(format!("{}..{}", first.id, last.id)),
        };
        let budget = self.budget(events.len());
        let (plugin, store, scratch) = (&self.plugin, &mut self.store, &mut self.packed);
        let call = async move {
            match events {
                [event] => plugin.handle(store, event).await.map(|r| vec![r]),
                _ => plugin.handle_batch(store, events, scratch).await,
            }
        };
        let result = match tokio::time::timeout(budget, call).await {
            Ok(result) => result,
            Err(_) => return Err(CallError::Timeout(budget)),
        };
        let results = result.map_err(|err| self.classify(err))?;
        if results.len() != events.len() {
            return Err(CallError::Contract(format!("handle-batch returned {} results for {} events", results.len(), events.len())));
        }
        Ok(results)
    }

    /// Runs `f` on the store under a one-event deadline: for the exports
    /// the bindings do not cover (`manifest`).
    pub(super) async fn with_store<R, F>(&mut self, f: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a mut Store<PluginState>) -> futures::future::BoxFuture<'a, R>,
    {
        let budget = self.timeout;
        tokio::time::timeout(budget, f(&mut self.store)).await.map_err(|_| CallError::Timeout(budget))
    }

    /// Lends the next call the event it handles (its state, its identity
    /// for outbound calls).
    pub fn attach(&mut self, scope: EventScope) {
        self.store.data_mut().scope = Some(scope);
    }

    /// Takes the event's scope back after a call, with what the call did.
    pub fn detach(&mut self) -> Option<EventScope> {
        self.store.data_mut().scope.take()
    }

    /// Whether batches go through the plugin's `handle-packed` (see
    /// `wit/sluice.wit`, `packed-handler`) rather than `handle-batch`.
    pub fn packed(&self) -> bool {
        self.plugin.packed()
    }

    /// Sends batches through `handle-batch` even when the plugin exports
    /// `handle-packed`: for tests and benchmarks that compare the two.
    pub fn unpack(&mut self) {
        self.plugin.unpack();
    }

    /// Bytes of linear memory the instance holds (all its memories).
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.total
    }

    /// The deadline of a call covering `events` events.
    fn budget(&self, events: usize) -> Duration {
        self.timeout.saturating_mul(events.max(1) as u32)
    }

    fn classify(&mut self, err: wasmtime::Error) -> CallError {
        if let Some(malformed) = err.downcast_ref::<super::packed::Malformed>() {
            return CallError::Contract(malformed.to_string());
        }
        if self.store.data().limiter.hit {
            return CallError::MemoryLimit { limit: self.memory_limit };
        }
        let mut message = super::trap::describe(&err);
        let stderr = self.stderr.take();
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            message.push_str("; guest stderr: ");
            message.push_str(stderr);
        }
        CallError::Trap(message)
    }
}

/// The last few KiB a guest wrote to stderr, kept in memory (not shown)
/// when stderr is not granted, so a panic message can explain a trap.
#[derive(Clone, Default)]
pub(super) struct StderrTail(Arc<Mutex<VecDeque<u8>>>);

const STDERR_TAIL: usize = 2048;

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        if let Ok(mut tail) = self.0.lock() {
            tail.extend(bytes);
            let excess = tail.len().saturating_sub(STDERR_TAIL);
            tail.drain(..excess);
        }
    }

    fn take(&self) -> String {
        match self.0.lock() {
            Ok(mut tail) => {
                let bytes: Vec<u8> = tail.drain(..).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(_) => String::new(),
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for StderrTail {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for StderrTail {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}
