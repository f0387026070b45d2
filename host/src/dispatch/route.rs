//! Where each output goes: a reply to the request it answers, a named route,
//! or the default sink (with the destination as its topic/subject); and the
//! error reply a request gets when its handler fails or does not answer.
//! How a reply is encoded on the wire is the pipeline's [`ReplyCodec`]'s
//! ([`crate::codec::reply`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::{ErrorReply, Plain, ReplyCodec, Request};
use crate::event::{Header, Output};
use crate::sink::{Record, Sink};

/// Which sink each output goes to: the one its `route` names, else the
/// default; replies to their requester.
pub struct Router {
    default: Arc<dyn Sink>,
    routes: HashMap<String, Arc<dyn Sink>>,
    /// The source's own way back for replies (core NATS); otherwise replies
    /// go to the default sink.
    replies: Option<Arc<dyn Sink>>,
    /// How replies and error replies are encoded (the pipeline's `codec`
    /// on its transport), and what a request carries for its reply.
    codec: Arc<dyn ReplyCodec>,
}

impl Router {
    /// Outputs naming a route in `routes` go there, all others to
    /// `default`; replies are plain.
    pub fn new(default: Arc<dyn Sink>, routes: HashMap<String, Arc<dyn Sink>>) -> Self {
        Self { default, routes, replies: None, codec: Arc::new(Plain) }
    }

    /// Encodes replies and error replies with `codec` (see
    /// [`crate::codec::reply::for_pipeline`]).
    pub(crate) fn with_codec(mut self, codec: Arc<dyn ReplyCodec>) -> Self {
        self.codec = codec;
        self
    }

    /// The request an event is, if it expects a reply, as the reply codec
    /// reads it.
    pub(crate) fn request(&self, reply_to: Option<String>, headers: &[Header]) -> Option<Request> {
        self.codec.request(reply_to, headers)
    }

    /// Sends replies through `sink` instead of the default sink.
    pub(crate) fn with_replies(mut self, sink: Option<Arc<dyn Sink>>) -> Self {
        self.replies = sink;
        self
    }

    fn reply_sink(&self) -> &Arc<dyn Sink> {
        self.replies.as_ref().unwrap_or(&self.default)
    }

    /// The sink and destination of `output`; `None` for a reply nobody waits
    /// for (the event was not a request).
    fn target<'s, 'o>(&'s self, output: &'o Output, request: Option<&'o Request>) -> Option<(&'s Arc<dyn Sink>, Option<&'o str>)> {
        if output.reply {
            return request.map(|r| (self.reply_sink(), Some(r.reply_to.as_str())));
        }
        Some(match output.destination.as_deref() {
            Some(name) => match self.routes.get(name) {
                Some(route) => (route, None),
                None => (&self.default, Some(name)),
            },
            None => (&self.default, None),
        })
    }

    /// Whether every output can be sent where it is going; the first that
    /// cannot, with why.
    pub(crate) fn check(&self, outputs: &[Output], request: Option<&Request>) -> Result<(), String> {
        for (index, output) in outputs.iter().enumerate() {
            if let Some((sink, destination)) = self.target(output, request) {
                sink.check(destination, output).map_err(|why| format!("output {index} cannot go to {}: {why}", sink.describe()))?;
            }
        }
        Ok(())
    }

    /// The sink and record for `output`, or `None` for a reply nobody waits
    /// for. `id` makes the record's id (see [`Record::id`]) if its sink
    /// wants one.
    pub(crate) fn route(&self, output: Output, request: Option<&Request>, id: impl FnOnce() -> String) -> Option<(&Arc<dyn Sink>, Record)> {
        let (sink, destination) = self.target(&output, request)?;
        let destination = destination.map(str::to_owned);
        let Output { key, mut payload, mut headers, reply, .. } = output;
        if let (true, Some(request)) = (reply, request) {
            payload = self.codec.reply(request, payload, &mut headers);
            for header in &request.correlation {
                if !headers.iter().any(|h| h.key.eq_ignore_ascii_case(&header.key)) {
                    headers.push(header.clone());
                }
            }
        }
        let id = sink.wants_ids().then(id);
        let partition = if reply { request.map(|r| r.reply_partition.partition()) } else { None };
        Some((sink, Record { destination, key, payload, headers, id, partition, version: None }))
    }

    /// The error reply to `request`, and where it goes.
    pub(crate) fn error_reply(&self, request: &Request, error: &ErrorReply<'_>) -> (&Arc<dyn Sink>, Record) {
        let (payload, headers) = self.codec.error_reply(request, error);
        let record = Record {
            destination: Some(request.reply_to.clone()),
            key: None,
            payload,
            headers,
            id: None,
            partition: Some(request.reply_partition.partition()),
            version: None,
        };
        (self.reply_sink(), record)
    }
}
