//! Helpers on the incoming [`Event`].

use crate::{Event, HandlerError};

impl Event {
    /// An event with this payload and neutral everything else (id `test:1`,
    /// source `test`, attempt 1): for unit tests of a plugin's `handle`.
    /// Adjust it with the `with_*` methods.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Event {
            id: "test:1".into(),
            source: "test".into(),
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: 0,
            attempt: 1,
            reply_to: None,
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(crate::Header { key: key.into(), value: value.into() });
        self
    }

    /// Sets the delivery attempt (1 = first), to test retry logic.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets `reply-to`, as for a request.
    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// The value of the first header called `name`.
    ///
    /// Names compare exactly: Kafka header keys are case-sensitive and the
    /// host passes them through untouched.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.as_slice())
    }

    /// [`Event::header`] as text; `None` when it is absent or not UTF-8,
    /// since brokers allow arbitrary bytes in header values.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every value of header `name`, in broker order: keys may repeat.
    pub fn headers_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.key == name)
            .map(|h| h.value.as_slice())
    }

    /// The payload as text. Invalid UTF-8 is a rejection: retrying the same
    /// bytes cannot fix them, so the event goes straight to the dead letter.
    pub fn payload_str(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| HandlerError::reject(format!("payload is not valid UTF-8: {e}")))
    }

    /// Decodes the payload as JSON. A payload that does not decode is a
    /// rejection, with serde's message (and position) for the dead letter.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| HandlerError::reject(format!("payload is not valid JSON: {e}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::{Disposition, Event, Header};

    pub(crate) fn event(payload: &[u8], headers: &[(&str, &[u8])]) -> Event {
        Event {
            id: "test:1".into(),
            source: "test".into(),
            key: Some(b"k".to_vec()),
            payload: payload.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| Header {
                    key: (*k).into(),
                    value: v.to_vec(),
                })
                .collect(),
            timestamp_ms: 0,
            attempt: 1,
            reply_to: None,
        }
    }

    #[test]
    fn headers_first_and_all() {
        let e = event(b"", &[("a", b"1"), ("b", b"\xff"), ("a", b"2")]);
        assert_eq!(e.header("a"), Some(&b"1"[..]));
        assert_eq!(e.header("A"), None);
        assert_eq!(e.header_str("a"), Some("1"));
        assert_eq!(e.header_str("b"), None);
        assert_eq!(e.headers_all("a").collect::<Vec<_>>(), [b"1", b"2"]);
    }

    #[test]
    fn builder_makes_test_events() {
        let e = Event::new("hi").with_id("x:2").with_key("k").with_header("a", "1").with_attempt(3).with_reply_to("inbox");
        assert_eq!((e.id.as_str(), e.attempt, e.reply_to.as_deref()), ("x:2", 3, Some("inbox")));
        assert_eq!((e.key.as_deref(), e.header_str("a"), e.payload.as_slice()), (Some(&b"k"[..]), Some("1"), &b"hi"[..]));
    }

    #[test]
    fn payload_str_rejects_invalid_utf8() {
        assert_eq!(event(b"hi", &[]).payload_str().ok(), Some("hi"));
        let err = event(b"\xff", &[]).payload_str().unwrap_err();
        assert_eq!(err.disposition, Disposition::Reject);
        assert!(
            err.message.starts_with("payload is not valid UTF-8"),
            "{}",
            err.message
        );
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_decodes_or_rejects() {
        let n: Vec<u32> = event(b"[1,2]", &[]).json().unwrap();
        assert_eq!(n, [1, 2]);
        let err = event(b"{", &[]).json::<serde_json::Value>().unwrap_err();
        assert_eq!(err.disposition, Disposition::Reject);
        assert!(
            err.message.starts_with("payload is not valid JSON: EOF"),
            "{}",
            err.message
        );
    }
}
