//! The `state` import (`sluice:plugin/state@0.2.0`): the guest's calls,
//! forwarded to the state of the event being handled.
//!
//! The runtime knows nothing of backends or commit rules ([`crate::state`]
//! does): before a call the lane lends the instance the event's scope with
//! its [`StateAccess`] (see [`super::effects`]), and takes it back after,
//! with the event's writes in it. A
//! call without one attached (`init`, or a pipeline without state, which
//! cannot happen past the capability check) gets `unavailable`.

use std::any::Any;

use super::bindings::current::state::{self, Page, StateError};
use super::instance::PluginState;

/// One event's view of the pipeline's state.
#[async_trait::async_trait]
pub trait StateAccess: Send + 'static {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, StateError>;
    /// Writes go to the attempt's overlay and never wait.
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError>;
    fn delete(&mut self, key: String) -> Result<(), StateError>;
    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, StateError>;
    async fn scan(&mut self, prefix: String, after: Option<String>, limit: u32) -> Result<Page, StateError>;
    /// Back to the concrete type, once the call is over.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

fn detached() -> StateError {
    StateError::Unavailable("state is only available while handling an event (not in `init`)".into())
}

impl state::Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, StateError> {
        match self.scope.as_mut().and_then(|scope| scope.state.as_mut()) {
            Some(state) => state.get(key).await,
            None => Err(detached()),
        }
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        match self.scope.as_mut().and_then(|scope| scope.state.as_mut()) {
            Some(state) => state.set(key, value),
            None => Err(detached()),
        }
    }
    fn delete(&mut self, key: String) -> Result<(), StateError> {
        match self.scope.as_mut().and_then(|scope| scope.state.as_mut()) {
            Some(state) => state.delete(key),
            None => Err(detached()),
        }
    }
    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, StateError> {
        match self.scope.as_mut().and_then(|scope| scope.state.as_mut()) {
            Some(state) => state.increment(key, delta).await,
            None => Err(detached()),
        }
    }
    async fn scan(&mut self, prefix: String, after: Option<String>, limit: u32) -> Result<Page, StateError> {
        match self.scope.as_mut().and_then(|scope| scope.state.as_mut()) {
            Some(state) => state.scan(prefix, after, limit).await,
            None => Err(detached()),
        }
    }
}
