//! Outbound HTTP for plugins: the standard `wasi:http/outgoing-handler`
//! (WASI 0.2), wasmtime's implementation, with Sluice's rules around it.
//!
//! - [`Outbound`]: what a pipeline's `[plugin.http]` grants (allow list,
//!   timeout, response cap, a semaphore shared by its lanes), per loaded
//!   plugin version.
//! - The `outgoing-handler.handle` import is ours: it takes the next
//!   idempotency key and the trace context from the event's scope, then
//!   hands the request to wasmtime's implementation, which calls [`send`]'s
//!   hook to put it on the wire, on a keep-alive connection of [`pool`].
//! - [`metrics`]: per destination requests, errors and durations.
//! - [`stub`]: answers from a file instead of the network, for `sluice
//!   plugin test --http-replies`.
//!
//! Everything a guest can get wrong is an ordinary `error-code` for it
//! (denied, timed out, too large, transport failure), never a trap: the
//! plugin decides whether that makes the event retryable or rejected.

mod body;
pub mod metrics;
mod pool;
mod send;
pub mod stub;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, RequestOptions};
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{WasiHttp, WasiHttpCtx, WasiHttpView};

use super::effects::CallLog;
use super::instance::PluginState;
use crate::config::HttpConfig;

pub use send::Hooks;

/// What a pipeline grants its plugin's outbound HTTP, shared by every
/// instance of one plugin version (and so by the pipeline's lanes).
#[derive(Debug)]
pub struct Outbound {
    pub(crate) config: HttpConfig,
    /// `config.timeout`, capped by the handler's deadline.
    pub(crate) timeout: Duration,
    /// `max_concurrent` slots for the whole pipeline.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) metrics: Arc<metrics::HttpMetrics>,
    pub(crate) pipeline: String,
    /// Answers from a file instead of the network (`sluice plugin test
    /// --http-replies`): the allow list and the limits do not apply.
    pub(crate) stubs: Option<Arc<stub::HttpStubs>>,
    /// Keep-alive connections, shared by the version's lanes on each
    /// plugin thread.
    pub(crate) pool: pool::Pools,
}

impl Outbound {
    /// The grant of pipeline `pipeline` whose handler deadline is
    /// `handler_timeout`.
    pub fn new(pipeline: &str, config: HttpConfig, handler_timeout: Duration) -> Result<Self, String> {
        let timeout = config.timeout.min(handler_timeout);
        let pool =
            pool::Pools::new(timeout, config.max_concurrent.max(1)).map_err(|e| format!("cannot set up TLS for outbound HTTP: {e}"))?;
        Ok(Self {
            timeout,
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            metrics: metrics::for_pipeline(pipeline),
            pipeline: pipeline.to_owned(),
            config,
            stubs: None,
            pool,
        })
    }

    /// This grant with every request answered by `stubs`.
    pub fn stubbed(self, stubs: Option<Arc<stub::HttpStubs>>) -> Self {
        Self { stubs, ..self }
    }
}

/// The per-instance wasi:http state in [`PluginState`].
pub struct HttpState {
    pub(crate) ctx: WasiHttpCtx,
    pub(crate) hooks: Hooks,
}

impl HttpState {
    /// `outbound` is `None` when the pipeline grants no HTTP: every request
    /// is then denied (a plugin importing `outgoing-handler` is refused at
    /// load, so this only covers one using `wasi:http/types` alone).
    pub fn new(outbound: Option<Arc<Outbound>>) -> Self {
        Self { ctx: WasiHttpCtx::new(), hooks: Hooks::new(outbound) }
    }
}

/// What the request being handed over belongs to, taken from the event's
/// scope by `handle` and consumed by the send hook.
pub(crate) struct CallContext {
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub attempt: u32,
    pub calls: Option<CallLog>,
    pub event: Option<String>,
    /// The call's span, with an exporter; `traceparent` names it.
    pub span: Option<crate::telemetry::CallSpan>,
    /// Made by a shadowed candidate: refused, never sent.
    pub shadow: bool,
}

/// The version of `wasi:http` the host implements (wasmtime 48); guests
/// built against any 0.2.x link to it (the linker matches semver).
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// Adds `wasi:http/types` (wasmtime's) and `wasi:http/outgoing-handler`
/// to the linker. `handle` is ours: it takes the request's context from the
/// event's scope, then calls wasmtime's implementation (which calls the
/// send hook). Linking wasmtime's `handle` directly would leave the hook
/// blind to the event: the hooks cannot reach the scope.
pub(super) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings::{http::types, LinkOptions};
    types::add_to_linker::<PluginState, WasiHttp>(linker, &LinkOptions::default().into(), PluginState::http)?;
    linker.instance(OUTGOING_HANDLER)?.func_wrap(
        "handle",
        |mut store: StoreContextMut<'_, PluginState>,
         (request, options): (Resource<HostOutgoingRequest>, Option<Resource<RequestOptions>>)| {
            handle(store.data_mut(), request, options).map(|result| (result,))
        },
    )
}

/// `outgoing-handler.handle`: an error the guest can handle is `Ok(Err)`;
/// `Err` traps (a broken resource table).
fn handle(
    state: &mut PluginState,
    request: Resource<HostOutgoingRequest>,
    options: Option<Resource<RequestOptions>>,
) -> wasmtime::Result<Result<Resource<HostFutureIncomingResponse>, ErrorCode>> {
    // Outside an event (`init`) there is no event to derive a key from:
    // the request goes without one and is in no call log.
    let context = match state.scope.as_mut() {
        Some(scope) => {
            if scope.shadow {
                scope.refused += 1;
            }
            let (span, traceparent) = scope.call_trace(super::effects::CallKind::Http);
            CallContext {
                idempotency_key: Some(scope.next_idempotency_key()),
                traceparent,
                attempt: scope.attempt,
                calls: Some(scope.calls.clone()),
                event: Some(scope.event_id.clone()),
                span,
                shadow: scope.shadow,
            }
        }
        None => CallContext { idempotency_key: None, traceparent: None, attempt: 0, calls: None, event: None, span: None, shadow: false },
    };
    state.http.hooks.next = Some(context);
    let mut view = state.http();
    let handed = outgoing_handler::Host::handle(&mut view, request, options);
    let result = match handed {
        Ok(future) => Ok(Ok(future)),
        Err(err) => wasmtime_wasi_http::p2::bindings::http::types::Host::convert_error_code(&mut view, err).map(Err),
    };
    // A request refused before it reached the hook (a bad method or URI)
    // must not lend its context to the next one.
    state.http.hooks.next = None;
    result
}
