//! The dispatcher's view of a plugin: something that makes handlers, and a
//! handler that takes a batch. The wasm runtime implements it; dispatcher
//! tests use scripted handlers, and hot reload swaps the factory
//! (see [`super::slot`]).

use std::sync::Arc;

use crate::config::InstancePolicy;
use crate::event::Event;
use crate::runtime::instance::HandleResult;
use crate::runtime::state::StateAccess;
use crate::runtime::{CallError, Instance, LoadedPlugin};
use crate::schema::Accepts;

/// A live handler, used by one lane. Dropped after any [`CallError`].
///
/// Its calls are futures polled by the lane's task: a handler that waits
/// (a guest in a host call) holds no thread, and dropping the future (a
/// deadline, a shutdown) cancels the call.
#[async_trait::async_trait]
pub trait Handler: Send + 'static {
    /// One result per event, in order, or a failure of the whole call.
    /// A wasm handler enforces the per-event timeout itself; the lane's
    /// watchdog is for handlers that don't.
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError>;
    /// Linear memory the instance holds, in bytes (for the memory gauge).
    fn memory_bytes(&self) -> u64 {
        0
    }
    /// Lends the next call an event's state (the `state` import reads and
    /// writes it). Handlers without state ignore it.
    fn attach_state(&mut self, _state: Box<dyn StateAccess>) {}
    /// Takes the state back after the call, with the event's writes.
    fn detach_state(&mut self) -> Option<Box<dyn StateAccess>> {
        None
    }
}

/// Makes handlers: one per lane, and a fresh one after a failure.
#[async_trait::async_trait]
pub trait HandlerFactory: Send + Sync + 'static {
    async fn create(&self) -> Result<Box<dyn Handler>, String>;
    /// Plugin name, for logs and dead-letter records.
    fn name(&self) -> &str;
    /// Plugin version (the component's sha256), for dead-letter records.
    fn digest(&self) -> &str;
    /// The same, shared: every output carries it in a header.
    fn digest_arc(&self) -> Arc<str> {
        Arc::from(self.digest())
    }
    /// The event versions this version declared it accepts (its `manifest`
    /// export); `None`: it did not declare, and gets every event.
    fn accepts(&self) -> Option<&Accepts> {
        None
    }
}

#[async_trait::async_trait]
impl Handler for Instance {
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        Instance::handle(self, events).await
    }
    fn memory_bytes(&self) -> u64 {
        Instance::memory_bytes(self)
    }
    fn attach_state(&mut self, state: Box<dyn StateAccess>) {
        Instance::attach_state(self, state);
    }
    fn detach_state(&mut self) -> Option<Box<dyn StateAccess>> {
        Instance::detach_state(self)
    }
}

/// `instance = "fresh"`: a new instance, `init` included, for every event,
/// dropped after it. Nothing one event leaves in the guest's memory reaches
/// the next.
struct FreshPerEvent {
    plugin: LoadedPlugin,
    /// The state lent to the next call, handed to its fresh instance.
    state: Option<Box<dyn StateAccess>>,
}

#[async_trait::async_trait]
impl Handler for FreshPerEvent {
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            let mut instance = self.plugin.instantiate().await.map_err(|e| CallError::Start(e.to_string()))?;
            if let Some(state) = self.state.take() {
                instance.attach_state(state);
            }
            let handled = instance.handle(std::slice::from_ref(event)).await;
            self.state = instance.detach_state();
            results.append(&mut handled?);
        }
        Ok(results)
    }
    fn attach_state(&mut self, state: Box<dyn StateAccess>) {
        self.state = Some(state);
    }
    fn detach_state(&mut self) -> Option<Box<dyn StateAccess>> {
        self.state.take()
    }
}

#[async_trait::async_trait]
impl HandlerFactory for LoadedPlugin {
    async fn create(&self) -> Result<Box<dyn Handler>, String> {
        match self.spec().instance {
            InstancePolicy::Reuse => self
                .instantiate()
                .await
                .map(|i| Box::new(i) as Box<dyn Handler>)
                .map_err(|e| e.to_string()),
            InstancePolicy::Fresh => Ok(Box::new(FreshPerEvent { plugin: self.clone(), state: None })),
        }
    }
    fn name(&self) -> &str {
        LoadedPlugin::name(self)
    }
    fn digest(&self) -> &str {
        LoadedPlugin::digest(self)
    }
    fn digest_arc(&self) -> Arc<str> {
        LoadedPlugin::digest_arc(self)
    }
    fn accepts(&self) -> Option<&Accepts> {
        LoadedPlugin::accepts(self)
    }
}
