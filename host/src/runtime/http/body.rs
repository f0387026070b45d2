//! A response body under the grant's limits: at most `max_response_bytes`,
//! counted as it streams (a `content-length` is not trusted, and a body
//! without one is capped too), and done by the request's deadline. It holds
//! the request's concurrency slot until it ends or the guest drops it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error, WasiBody};

use super::metrics::{HttpMetrics, Outcome};

pub(super) struct Capped {
    inner: WasiBody,
    limit: u64,
    seen: u64,
    deadline: Pin<Box<Sleep>>,
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<HttpMetrics>,
    target: String,
}

impl Capped {
    pub(super) fn new(
        inner: impl Body<Data = Bytes, Error = Error> + Send + 'static,
        limit: u64,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
        metrics: Arc<HttpMetrics>,
        target: String,
    ) -> Self {
        use http_body_util::BodyExt;
        Self {
            inner: inner.boxed_unsync(),
            limit,
            seen: 0,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            permit: Some(permit),
            metrics,
            target,
        }
    }

    /// Ends the body with `error`, counted, and frees the slot.
    fn fail(&mut self, outcome: Outcome, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.permit = None;
        self.metrics.count(&self.target, outcome, None);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.permit.is_none() {
            // Ended (or failed) already.
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        tracing::warn!(host = %this.target, limit = this.limit, "plugin HTTP response body over plugin.http.max_response_bytes: cut off");
                        return this.fail(Outcome::TooLarge, Error::HttpResponseBodySize(Some(this.limit)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.permit = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                this.permit = None;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => this.fail(Outcome::Timeout, Error::HttpResponseTimeout),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.permit.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
