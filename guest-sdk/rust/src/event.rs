//! Helpers on the incoming [`Event`].

use crate::{Event, HandlerError};

impl Event {
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
