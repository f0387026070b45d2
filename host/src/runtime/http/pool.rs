//! The connections a plugin version's HTTP requests go out on: one pool
//! per loaded version (and so per pipeline), shared by its lanes.
//!
//! wasmtime's default sender opens a TCP connection, and for HTTPS a TLS
//! handshake, for every request and closes it after: against a real API
//! that is a round trip or three per event before the request is even
//! sent. Here connections stay open between requests to the same
//! destination (HTTP/1.1 keep-alive), up to `max_concurrent` idle ones per
//! destination, each closed after [`IDLE`] unused. hyper-util's pooled
//! client does the pooling, hyper-rustls the TLS (rustls with the bundled
//! webpki roots, as before: not the system store).
//!
//! A connection is driven by a task on the thread that opened it. Lanes
//! run on plugin threads (`runtime::executor`), so each plugin thread gets
//! its own pool ([`Pools`]): a lane's request then goes out on a
//! connection its own thread drives, with no hand-off to another thread
//! per request, and no wait behind a busy guest on another thread.
//! Requests made off the plugin threads share one pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_rustls::rustls;
use wasmtime_wasi_http::{Error, WasiBody};

/// How long an unused connection stays open.
pub const IDLE: Duration = Duration::from_secs(30);

pub type Pool = Client<HttpsConnector<HttpConnector>, WasiBody>;

/// The pools of one plugin version: one per plugin thread, and one for
/// every other thread.
pub struct Pools {
    connector: HttpsConnector<HttpConnector>,
    max_idle: usize,
    shared: Pool,
    per_thread: Mutex<HashMap<ThreadId, Pool>>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").field("max_idle", &self.max_idle).finish_non_exhaustive()
    }
}

impl Pools {
    /// Pools whose connections take at most `connect_timeout` to open, and
    /// that keep at most `max_idle` idle connections per destination.
    pub fn new(connect_timeout: Duration, max_idle: usize) -> Result<Self, rustls::Error> {
        let connector = connector(connect_timeout)?;
        let shared = pool(connector.clone(), max_idle);
        Ok(Self { connector, max_idle, shared, per_thread: Mutex::new(HashMap::new()) })
    }

    /// The pool for requests made on the calling thread. A plugin thread's
    /// pool is made on its first request (one lock per request: tens of
    /// nanoseconds beside a request's tens of microseconds).
    pub fn current(&self) -> Pool {
        if !crate::runtime::executor::on_plugin_thread() {
            return self.shared.clone();
        }
        let mut pools = self.per_thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools.entry(std::thread::current().id()).or_insert_with(|| pool(self.connector.clone(), self.max_idle)).clone()
    }
}

fn pool(connector: HttpsConnector<HttpConnector>, max_idle: usize) -> Pool {
    Client::builder(TokioExecutor::new()).pool_idle_timeout(IDLE).pool_max_idle_per_host(max_idle).build(connector)
}

/// A connector whose connections take at most `connect_timeout` to open.
fn connector(connect_timeout: Duration) -> Result<HttpsConnector<HttpConnector>, rustls::Error> {
    let mut tcp = HttpConnector::new();
    // The scheme is the allow list's business (checked before a request
    // gets here): this connector serves both.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(tcp))
}

/// The `wasi:http` error code for a failed request, as wasmtime's own
/// sender would give it: a refused or timed-out connection, a DNS or TLS
/// failure, or what hyper said.
pub fn error_code(error: hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper_error(hyper);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return match tls {
                    rustls::Error::InvalidCertificate(_) => Error::TlsCertificateError,
                    rustls::Error::AlertReceived(alert) => {
                        Error::TlsAlertReceived { alert_id: Some(u8::from(*alert)), alert_message: Some(format!("{alert:?}")) }
                    }
                    _ => Error::TlsProtocolError,
                };
            }
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe => {
                    Error::ConnectionTerminated
                }
                _ if error.is_connect() && io.to_string().contains("lookup") => Error::DnsError { rcode: None, info_code: None },
                _ => Error::Connect(std::io::Error::new(io.kind(), io.to_string())),
            };
        }
        source = cause.source();
    }
    // hyper-util hands its connect timeout over as an io::Error of kind
    // `TimedOut`, so the loop above has already named it.
    if error.is_connect() {
        return Error::Connect(std::io::Error::other(error.to_string()));
    }
    Error::HttpProtocolError
}

/// What hyper's error (which cannot be moved out of the pool's error)
/// means for the guest, by its kind.
fn hyper_error(error: &hyper::Error) -> Error {
    if error.is_timeout() {
        Error::HttpResponseTimeout
    } else if error.is_incomplete_message() {
        Error::HttpResponseIncomplete
    } else if error.is_parse_too_large() {
        Error::HttpResponseHeaderSectionSize(None)
    } else if error.is_closed() || error.is_canceled() {
        Error::ConnectionTerminated
    } else {
        Error::HttpProtocolError
    }
}
