//! The guest's half of `sluice:plugin/packed-handler`: the host's packed
//! batch read into [`Event`]s, the answers written back packed. The codec
//! is `sluice-packed`'s, expanded over this crate's types (the host expands
//! the same one over its own).

use crate::{Disposition, Event, HandlerError, Header, Output};

sluice_packed::codec!(event: Event, header: Header, output: Output, error: HandlerError, disposition: Disposition);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_an_event_and_an_answer_survives_the_trip() {
        let full = Event::new(vec![0, 159, 146, 150])
            .with_id("orders/3/17")
            .with_key("k")
            .with_header("a", "1")
            .with_header("a", vec![0xff])
            .with_attempt(3)
            .with_reply_to("_INBOX.x");
        let full = Event { timestamp_ms: 1_700_000_000_123, source: "orders".into(), ..full };
        let events = vec![full, Event::new("")];
        let mut batch = Vec::new();
        encode_events(&events, &mut batch).unwrap();
        assert_eq!(decode_events(&batch).unwrap(), events);

        let answers = vec![
            Ok(vec![Output::new("p").with_key("k").with_header("h", "v"), Output::reply("r")]),
            Err(HandlerError::retryable("later")),
            Ok(vec![]),
        ];
        let mut bytes = Vec::new();
        encode_answers(&answers, &mut bytes).unwrap();
        assert_eq!(decode_answers(&bytes).unwrap(), answers);
    }
}
