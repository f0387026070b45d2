//! Building [`Output`]s and [`HandlerError`]s.

use crate::{Disposition, Event, HandlerError, Header, Output};

impl Output {
    /// An output to the pipeline's default route, with no key or headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Output {
            destination: None,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            reply: false,
        }
    }

    /// `value` serialised as compact JSON. Fails (as a rejection) only for
    /// values JSON cannot represent, such as maps with non-string keys.
    ///
    /// No `content-type` header is added: add one with
    /// [`Output::with_header`] if the consumers need it.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, HandlerError> {
        serde_json::to_vec(value)
            .map(Output::new)
            .map_err(|e| HandlerError::reject(format!("cannot encode output as JSON: {e}")))
    }

    /// The answer to a request/reply event: the host sends it to the event's
    /// `reply-to` (or drops and counts it when nobody is waiting).
    pub fn reply(payload: impl Into<Vec<u8>>) -> Self {
        Output {
            reply: true,
            ..Output::new(payload)
        }
    }

    /// A copy of `event`'s key, payload and headers to the default route.
    /// Use `Output::from(event)` instead when the event is no longer needed:
    /// it moves the buffers instead of copying them.
    pub fn forward(event: &Event) -> Self {
        Output {
            key: event.key.clone(),
            headers: event.headers.clone(),
            ..Output::new(event.payload.clone())
        }
    }

    /// Sends the output to `destination`: a route name from the pipeline's
    /// `routes`, else a topic or subject on the default sink.
    pub fn to(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// Sets the partitioning key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header. Existing headers with the same name are kept, as
    /// brokers allow repeated keys.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

/// Moves the event's key, payload and headers into an output to the default
/// route: the zero-copy form of [`Output::forward`].
impl From<Event> for Output {
    fn from(event: Event) -> Self {
        Output {
            key: event.key,
            headers: event.headers,
            ..Output::new(event.payload)
        }
    }
}

impl HandlerError {
    /// A transient failure: the host retries the event with backoff, up to
    /// the pipeline's `max-attempts`, then dead-letters it.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            disposition: Disposition::Retryable,
            message: message.into(),
        }
    }

    /// A permanent failure: the event goes to the dead letter at once.
    pub fn reject(message: impl Into<String>) -> Self {
        HandlerError {
            disposition: Disposition::Reject,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        let o = Output::new("p")
            .to("d")
            .with_key("k")
            .with_header("h", "1")
            .with_header("h", "2");
        assert_eq!(o.destination.as_deref(), Some("d"));
        assert_eq!(o.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(o.payload, b"p");
        assert_eq!(o.headers.len(), 2);
        assert!(!o.reply);
        assert!(Output::reply("r").reply);
    }

    #[test]
    fn forward_and_from_agree() {
        let e = crate::event::tests::event(b"body", &[("h", b"v")]);
        let copied = Output::forward(&e);
        assert_eq!(copied, Output::from(e));
        assert_eq!(copied.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(copied.destination, None);
    }

    #[test]
    fn errors_carry_disposition() {
        assert_eq!(
            HandlerError::retryable("x").disposition,
            Disposition::Retryable
        );
        assert_eq!(HandlerError::reject("y").disposition, Disposition::Reject);
        assert_eq!(HandlerError::reject("y").message, "y");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_output_is_compact() {
        let o = Output::json(&serde_json::json!({"a": [1, 2]})).unwrap();
        assert_eq!(o.payload, br#"{"a":[1,2]}"#);
    }
}
