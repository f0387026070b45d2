//! The record-level codec, expanded by each side over its own types.

/// Defines, in the calling module, the functions of the layout over the
/// caller's types for the WIT records:
///
/// - `events_len(&[Event]) -> usize` (what `encode_events` will append)
/// - `encode_events(&[Event], &mut Vec<u8>) -> Result<(), Error>`
/// - `decode_events(&[u8]) -> Result<Vec<Event>, Error>`
/// - `encode_answers(&[Result<Vec<Output>, HandlerError>], &mut Vec<u8>) -> Result<(), Error>`
/// - `decode_answers(&[u8]) -> Result<Vec<Result<Vec<Output>, HandlerError>>, Error>`
///
/// The types must have the WIT's fields (`types.event`, `types.header`,
/// `types.output`, `types.handler-error` and the two-case `disposition`),
/// as both bindings generators give them. The encoders append to the
/// buffer (clear it to reuse it); the decoders check everything (see the
/// crate's documentation).
#[macro_export]
macro_rules! codec {
    (
        event: $Event:ty,
        header: $Header:ty,
        output: $Output:ty,
        error: $HandlerError:ty,
        disposition: $Disposition:ty $(,)?
    ) => {
        // Aliases, because a struct literal cannot name a macro's `ty`.
        type PackedEvent = $Event;
        type PackedHeader = $Header;
        type PackedOutput = $Output;
        type PackedError = $HandlerError;
        type PackedDisposition = $Disposition;

        #[allow(dead_code)]
        fn encode_headers(w: &mut $crate::Writer<'_>, headers: &[PackedHeader]) {
            w.count(headers.len());
            for header in headers {
                w.str(&header.key);
                w.bytes(&header.value);
            }
        }

        #[allow(dead_code)]
        fn decode_headers(r: &mut $crate::Reader<'_>) -> ::core::result::Result<::std::vec::Vec<PackedHeader>, $crate::Error> {
            let count = r.count($crate::MIN_HEADER)?;
            let mut headers = ::std::vec::Vec::with_capacity(count);
            for _ in 0..count {
                headers.push(PackedHeader { key: r.str()?.to_owned(), value: r.bytes()?.to_vec() });
            }
            Ok(headers)
        }

        /// The bytes [`encode_events`] appends for `events`, exactly: a
        /// caller reserves them once instead of letting the buffer grow
        /// (and copy itself) as it fills.
        #[allow(dead_code)]
        pub fn events_len(events: &[PackedEvent]) -> usize {
            let bytes = |len: usize| 4 + len;
            let optional = |len: Option<usize>| 1 + len.map_or(0, bytes);
            1 + 4
                + events
                    .iter()
                    .map(|event| {
                        bytes(event.id.len())
                            + bytes(event.source.len())
                            + optional(event.key.as_ref().map(|k| k.len()))
                            + bytes(event.payload.len())
                            + 4
                            + event.headers.iter().map(|h| bytes(h.key.len()) + bytes(h.value.len())).sum::<usize>()
                            + 8
                            + 4
                            + optional(event.reply_to.as_ref().map(|r| r.len()))
                    })
                    .sum::<usize>()
        }

        /// Appends `events` to `buf` as a packed batch.
        #[allow(dead_code)]
        pub fn encode_events(events: &[PackedEvent], buf: &mut ::std::vec::Vec<u8>) -> ::core::result::Result<(), $crate::Error> {
            let mut w = $crate::Writer::new(buf);
            w.u8($crate::FORMAT);
            w.count(events.len());
            for event in events {
                w.str(&event.id);
                w.str(&event.source);
                w.opt_bytes(event.key.as_deref());
                w.bytes(&event.payload);
                encode_headers(&mut w, &event.headers);
                w.u64(event.timestamp_ms);
                w.u32(event.attempt);
                w.opt_str(event.reply_to.as_deref());
            }
            w.finish()
        }

        /// The events of a packed batch, in order.
        #[allow(dead_code)]
        pub fn decode_events(batch: &[u8]) -> ::core::result::Result<::std::vec::Vec<PackedEvent>, $crate::Error> {
            let mut r = $crate::Reader::new(batch);
            r.format()?;
            let count = r.count($crate::MIN_EVENT)?;
            let mut events = ::std::vec::Vec::with_capacity(count);
            for _ in 0..count {
                events.push(PackedEvent {
                    id: r.str()?.to_owned(),
                    source: r.str()?.to_owned(),
                    key: r.opt_bytes()?.map(<[u8]>::to_vec),
                    payload: r.bytes()?.to_vec(),
                    headers: decode_headers(&mut r)?,
                    timestamp_ms: r.u64()?,
                    attempt: r.u32()?,
                    reply_to: r.opt_str()?.map(str::to_owned),
                });
            }
            r.finish()?;
            Ok(events)
        }

        /// Appends `answers` to `buf`, packed.
        #[allow(dead_code)]
        pub fn encode_answers(
            answers: &[::core::result::Result<::std::vec::Vec<PackedOutput>, PackedError>],
            buf: &mut ::std::vec::Vec<u8>,
        ) -> ::core::result::Result<(), $crate::Error> {
            let mut w = $crate::Writer::new(buf);
            w.u8($crate::FORMAT);
            w.count(answers.len());
            for answer in answers {
                match answer {
                    Ok(outputs) => {
                        w.u8(0);
                        w.count(outputs.len());
                        for output in outputs {
                            w.opt_str(output.destination.as_deref());
                            w.opt_bytes(output.key.as_deref());
                            w.bytes(&output.payload);
                            encode_headers(&mut w, &output.headers);
                            w.bool(output.reply);
                        }
                    }
                    Err(error) => {
                        w.u8(1);
                        w.u8(match error.disposition {
                            PackedDisposition::Retryable => 0,
                            PackedDisposition::Reject => 1,
                        });
                        w.str(&error.message);
                    }
                }
            }
            w.finish()
        }

        /// The answers in a packed buffer, in order.
        #[allow(dead_code)]
        pub fn decode_answers(
            bytes: &[u8],
        ) -> ::core::result::Result<::std::vec::Vec<::core::result::Result<::std::vec::Vec<PackedOutput>, PackedError>>, $crate::Error> {
            let mut r = $crate::Reader::new(bytes);
            r.format()?;
            let count = r.count($crate::MIN_ANSWER)?;
            let mut answers = ::std::vec::Vec::with_capacity(count);
            for _ in 0..count {
                answers.push(match r.tag()? {
                    0 => {
                        let count = r.count($crate::MIN_OUTPUT)?;
                        let mut outputs = ::std::vec::Vec::with_capacity(count);
                        for _ in 0..count {
                            outputs.push(PackedOutput {
                                destination: r.opt_str()?.map(str::to_owned),
                                key: r.opt_bytes()?.map(<[u8]>::to_vec),
                                payload: r.bytes()?.to_vec(),
                                headers: decode_headers(&mut r)?,
                                reply: r.bool()?,
                            });
                        }
                        Ok(outputs)
                    }
                    _ => {
                        let at = r.offset();
                        let disposition = match r.u8()? {
                            0 => PackedDisposition::Retryable,
                            1 => PackedDisposition::Reject,
                            _ => return Err($crate::Error { offset: at, what: "an unknown disposition" }),
                        };
                        Err(PackedError { disposition, message: r.str()?.to_owned() })
                    }
                });
            }
            r.finish()?;
            Ok(answers)
        }
    };
}

#[cfg(test)]
mod tests {
    //! The codec over stand-ins for the WIT records, against bytes written
    //! out by hand from the layout.

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Header {
        pub key: String,
        pub value: Vec<u8>,
    }
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Event {
        pub id: String,
        pub source: String,
        pub key: Option<Vec<u8>>,
        pub payload: Vec<u8>,
        pub headers: Vec<Header>,
        pub timestamp_ms: u64,
        pub attempt: u32,
        pub reply_to: Option<String>,
    }
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Output {
        pub destination: Option<String>,
        pub key: Option<Vec<u8>>,
        pub payload: Vec<u8>,
        pub headers: Vec<Header>,
        pub reply: bool,
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Disposition {
        Retryable,
        Reject,
    }
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HandlerError {
        pub disposition: Disposition,
        pub message: String,
    }

    crate::codec!(event: Event, header: Header, output: Output, error: HandlerError, disposition: Disposition);

    fn event() -> Event {
        Event {
            id: "t/0/7".into(),
            source: "t".into(),
            key: Some(b"k".to_vec()),
            payload: b"hi".to_vec(),
            headers: vec![Header { key: "a".into(), value: vec![0xff] }],
            timestamp_ms: 0x0102,
            attempt: 2,
            reply_to: None,
        }
    }

    #[rustfmt::skip]
    const EVENT_BYTES: &[u8] = &[
        1,                                   // format
        1, 0, 0, 0,                          // one event
        5, 0, 0, 0, b't', b'/', b'0', b'/', b'7', // id
        1, 0, 0, 0, b't',                    // source
        1, 1, 0, 0, 0, b'k',                 // key: some
        2, 0, 0, 0, b'h', b'i',              // payload
        1, 0, 0, 0, 1, 0, 0, 0, b'a', 1, 0, 0, 0, 0xff, // headers
        2, 1, 0, 0, 0, 0, 0, 0,              // timestamp-ms
        2, 0, 0, 0,                          // attempt
        0,                                   // reply-to: none
    ];

    #[test]
    fn an_event_is_written_as_the_layout_says_and_read_back() {
        let mut buf = Vec::new();
        encode_events(&[event()], &mut buf).unwrap();
        assert_eq!(buf, EVENT_BYTES);
        assert_eq!(events_len(&[event()]), EVENT_BYTES.len());
        assert_eq!(decode_events(&buf).unwrap(), [event()]);
    }

    #[test]
    fn events_len_is_what_encode_events_writes() {
        let full = Event { reply_to: Some("_INBOX.r".into()), key: Some(vec![0; 3]), ..event() };
        let bare = Event { key: None, headers: vec![], payload: vec![], ..event() };
        let many = Event { headers: vec![event().headers[0].clone(); 3], ..event() };
        for batch in [vec![], vec![bare.clone()], vec![full, bare, many]] {
            let mut buf = Vec::new();
            encode_events(&batch, &mut buf).unwrap();
            assert_eq!(events_len(&batch), buf.len(), "{batch:?}");
        }
    }

    #[rustfmt::skip]
    const ANSWER_BYTES: &[u8] = &[
        1,                                   // format
        2, 0, 0, 0,                          // two answers
        0, 1, 0, 0, 0,                       // ok, one output
        1, 1, 0, 0, 0, b'd',                 // destination: some
        0,                                   // key: none
        1, 0, 0, 0, b'p',                    // payload
        0, 0, 0, 0,                          // no headers
        1,                                   // reply
        1, 1, 2, 0, 0, 0, b'n', b'o',        // error: reject, "no"
    ];

    fn answers() -> Vec<Result<Vec<Output>, HandlerError>> {
        vec![
            Ok(vec![Output { destination: Some("d".into()), key: None, payload: b"p".to_vec(), headers: vec![], reply: true }]),
            Err(HandlerError { disposition: Disposition::Reject, message: "no".into() }),
        ]
    }

    #[test]
    fn answers_are_written_as_the_layout_says_and_read_back() {
        let mut buf = Vec::new();
        encode_answers(&answers(), &mut buf).unwrap();
        assert_eq!(buf, ANSWER_BYTES);
        assert_eq!(decode_answers(&buf).unwrap(), answers());
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused_or_read_safely() {
        for bytes in [EVENT_BYTES, ANSWER_BYTES] {
            for cut in 0..bytes.len() {
                assert!(decode_events(&bytes[..cut]).is_err() && decode_answers(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            // Any single byte changed either fails with an error or reads
            // as some other valid buffer: never a panic or a huge allocation.
            for at in 0..bytes.len() {
                for value in [0u8, 1, 2, 0x7f, 0xff] {
                    let mut changed = bytes.to_vec();
                    changed[at] = value;
                    let _ = decode_events(&changed);
                    let _ = decode_answers(&changed);
                }
            }
        }
    }

    #[test]
    fn an_unknown_disposition_is_refused() {
        let mut bytes = ANSWER_BYTES.to_vec();
        let at = bytes.len() - 7;
        assert_eq!(bytes[at], 1);
        bytes[at] = 2;
        assert_eq!(decode_answers(&bytes).unwrap_err(), crate::Error { offset: at, what: "an unknown disposition" });
    }
}
