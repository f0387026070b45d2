//! Calls to other services: ask one and wait for its answer
//! ([`request`]), or tell one something with the event's outputs
//! ([`emit`]).
//!
//! Each destination is a `[pipelines.<name>.clients.<destination>]` table
//! of the pipeline (NATS or Kafka, plain or NestJS); a plugin that uses
//! this module in a pipeline without one is refused at load. The host adds
//! the event's correlation id, its trace context and an `Idempotency-Key`
//! of `<event id>:<n>` to every request, the same on every retry of the
//! event, so a service can tell a repeat. A request happens when it is
//! made, even if the event fails later (it is listed in the event's dead
//! letter); an emit is published only if the event succeeds.
//!
//! ```no_run
//! use sluice_plugin::{client, Event, HandlerError, Output};
//! use std::time::Duration;
//!
//! fn handle(event: Event) -> Result<Vec<Output>, HandlerError> {
//!     let reply = match client::request("inventory", &event.payload)
//!         .header("x-tenant", "acme")
//!         .timeout(Duration::from_millis(500))
//!         .send()
//!     {
//!         Ok(reply) => reply,
//!         // The service said no: nothing a retry would change.
//!         Err(client::CallError::Service(e)) => return Err(HandlerError::reject(e.message)),
//!         // Timeouts, no responders, an unreachable broker: retry later.
//!         Err(other) => return Err(other.into()),
//!     };
//!     client::emit("audit", b"reserved")?; // published only if this event succeeds
//!     Ok(vec![Output::new(reply.payload)])
//! }
//! ```
//!
//! Outside a component (native unit tests of a plugin) requests go to the
//! function given to [`respond_with`], and emits are collected for
//! [`take_emitted`].

pub use crate::bindings::sluice::plugin::client::{CallError, Reply, ServiceError};
use crate::{HandlerError, Header};
use std::time::Duration;

/// A request being built: [`request`], then headers and a timeout, then
/// [`Request::send`].
#[must_use = "a request does nothing until it is sent"]
pub struct Request<'a> {
    destination: &'a str,
    payload: &'a [u8],
    headers: Vec<Header>,
    timeout: Option<Duration>,
}

/// Starts a request of `payload` to `destination`.
pub fn request<'a>(destination: &'a str, payload: &'a (impl AsRef<[u8]> + ?Sized)) -> Request<'a> {
    Request { destination, payload: payload.as_ref(), headers: Vec::new(), timeout: None }
}

impl Request<'_> {
    /// Adds a header (the host adds correlation, trace context and
    /// `Idempotency-Key` itself).
    pub fn header(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(Header { key: key.to_owned(), value: value.as_ref().to_vec() });
        self
    }

    /// Waits at most `timeout` for the answer (default: the destination's
    /// `timeout`; the host never waits past the handler's deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and waits for the answer.
    pub fn send(self) -> Result<Reply, CallError> {
        let timeout = self.timeout.map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        imp::request(self.destination, self.payload, &self.headers, timeout)
    }

    /// Sends the request and decodes the answer's JSON.
    #[cfg(feature = "json")]
    pub fn send_json<T: serde::de::DeserializeOwned>(self) -> Result<T, HandlerError> {
        let destination = self.destination;
        let reply = self.send()?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| HandlerError::reject(format!("the answer of `{destination}` is not the expected JSON: {e}")))
    }
}

/// Publishes `payload` to `destination` with the event's outputs: only if
/// the event succeeds, and once however many attempts it takes.
pub fn emit(destination: &str, payload: impl AsRef<[u8]>) -> Result<(), CallError> {
    imp::emit(destination, payload.as_ref(), &[])
}

/// Like [`emit`], with headers.
pub fn emit_with_headers(destination: &str, payload: impl AsRef<[u8]>, headers: &[Header]) -> Result<(), CallError> {
    imp::emit(destination, payload.as_ref(), headers)
}

/// A plain sentence for a call error.
pub fn describe(err: &CallError) -> String {
    match err {
        CallError::UnknownDestination(name) => format!("no client destination named `{name}` in the pipeline"),
        CallError::NotAllowed(why) => format!("call not allowed: {why}"),
        CallError::Timeout(ms) => format!("no answer within {ms} ms"),
        CallError::NoResponders => "nobody listens on the destination".into(),
        CallError::Service(e) => match &e.code {
            Some(code) => format!("the service answered with error {code}: {}", e.message),
            None => format!("the service answered with an error: {}", e.message),
        },
        CallError::TooManyCalls(max) => format!("an event may make at most {max} calls to this destination"),
        CallError::TooLarge(max) => format!("payload larger than the destination's limit of {max} bytes"),
        CallError::Unavailable(why) => format!("service unavailable: {why}"),
    }
}

/// Transient failures (timeout, no responders, unavailable) are worth
/// retrying; everything else will fail the same way again, so the event is
/// rejected. Match on [`CallError::Service`] first to decide otherwise.
impl From<CallError> for HandlerError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Timeout(_) | CallError::NoResponders | CallError::Unavailable(_) => HandlerError::retryable(describe(&err)),
            _ => HandlerError::reject(describe(&err)),
        }
    }
}

/// For native tests: answers every request with `respond(destination,
/// payload)` on this thread.
pub fn respond_with(respond: impl Fn(&str, &[u8]) -> Result<Reply, CallError> + 'static) {
    #[cfg(not(target_arch = "wasm32"))]
    imp::RESPOND.with(|r| *r.borrow_mut() = Some(Box::new(respond)));
    #[cfg(target_arch = "wasm32")]
    drop(respond);
}

/// For native tests: the `(destination, payload)` emitted on this thread
/// so far, leaving none (always empty in a component).
pub fn take_emitted() -> Vec<(String, Vec<u8>)> {
    #[cfg(not(target_arch = "wasm32"))]
    return imp::EMITTED.with(|e| std::mem::take(&mut *e.borrow_mut()));
    #[cfg(target_arch = "wasm32")]
    Vec::new()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{CallError, Reply};
    use crate::bindings::sluice::plugin::client as host;
    use crate::Header;

    pub fn request(destination: &str, payload: &[u8], headers: &[Header], timeout: Option<u32>) -> Result<Reply, CallError> {
        host::request(destination, payload, headers, timeout)
    }
    pub fn emit(destination: &str, payload: &[u8], headers: &[Header]) -> Result<(), CallError> {
        host::emit(destination, payload, headers)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;

    use super::{CallError, Reply};
    use crate::Header;

    type Responder = Box<dyn Fn(&str, &[u8]) -> Result<Reply, CallError>>;

    thread_local! {
        pub static RESPOND: RefCell<Option<Responder>> = const { RefCell::new(None) };
        pub static EMITTED: RefCell<Vec<(String, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn request(destination: &str, payload: &[u8], _headers: &[Header], _timeout: Option<u32>) -> Result<Reply, CallError> {
        RESPOND.with(|r| match r.borrow().as_ref() {
            Some(respond) => respond(destination, payload),
            None => Err(CallError::Unavailable("no responder: call client::respond_with in the test".into())),
        })
    }
    pub fn emit(destination: &str, payload: &[u8], _headers: &[Header]) -> Result<(), CallError> {
        EMITTED.with(|e| e.borrow_mut().push((destination.to_owned(), payload.to_vec())));
        Ok(())
    }
}
