//! Where each output goes: a reply to the event's `reply-to`, a named route,
//! or the default sink (with the destination as its topic/subject).

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::Output;
use crate::sink::{Record, Sink};

pub struct Router {
    default: Arc<dyn Sink>,
    routes: HashMap<String, Arc<dyn Sink>>,
}

impl Router {
    pub fn new(default: Arc<dyn Sink>, routes: HashMap<String, Arc<dyn Sink>>) -> Self {
        Self { default, routes }
    }

    /// The sink and record for `output`, or `None` for a reply nobody waits
    /// for (the event had no `reply-to`).
    pub fn route(&self, output: Output, reply_to: Option<&str>) -> Option<(&Arc<dyn Sink>, Record)> {
        let Output {
            destination,
            key,
            payload,
            headers,
            reply,
        } = output;
        let (sink, destination) = if reply {
            (&self.default, Some(reply_to?.to_owned()))
        } else {
            match destination {
                Some(name) => match self.routes.get(&name) {
                    Some(route) => (route, None),
                    None => (&self.default, Some(name)),
                },
                None => (&self.default, None),
            }
        };
        Some((
            sink,
            Record {
                destination,
                key,
                payload,
                headers,
            },
        ))
    }
}
