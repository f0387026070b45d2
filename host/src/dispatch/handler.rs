//! The dispatcher's view of a plugin: something that makes handlers, and a
//! handler that takes a batch. The wasm runtime implements it; dispatcher
//! tests use scripted handlers, and hot reload swaps the factory
//! (see [`super::slot`]).

use std::sync::Arc;

use crate::config::InstancePolicy;
use crate::event::Event;
use crate::runtime::instance::HandleResult;
use crate::runtime::{CallError, Capability, EventScope, Instance, LoadError, LoadedPlugin};
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
    /// Lends the next call the event it handles (its state, its identity
    /// for outbound calls; see [`EventScope`]). Handlers that need neither
    /// ignore it.
    fn attach(&mut self, _scope: EventScope) {}
    /// Takes the scope back after the call, with what the call did.
    fn detach(&mut self) -> Option<EventScope> {
        None
    }
}

/// Makes handlers: one per lane, and a fresh one after a failure.
#[async_trait::async_trait]
pub trait HandlerFactory: Send + Sync + 'static {
    /// A new handler. A plugin's instance may fail to start like its
    /// first one at load (a trap or timeout in `init`, a refused config):
    /// the same [`LoadError`], which the lane reports as a start failure.
    async fn create(&self) -> Result<Box<dyn Handler>, LoadError>;
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
    /// Whether each call must handle one event, with its [`EventScope`]:
    /// the plugin imports something whose effects belong to an event
    /// (outbound HTTP, service calls). State asks the same of the pipeline.
    fn per_event(&self) -> bool {
        false
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
    fn attach(&mut self, scope: EventScope) {
        Instance::attach(self, scope);
    }
    fn detach(&mut self) -> Option<EventScope> {
        Instance::detach(self)
    }
}

/// `instance = "fresh"`: a new instance, `init` included, for every event,
/// dropped after it. Nothing one event leaves in the guest's memory reaches
/// the next.
struct FreshPerEvent {
    plugin: LoadedPlugin,
    /// The scope lent to the next call, handed to its fresh instance.
    scope: Option<EventScope>,
}

#[async_trait::async_trait]
impl Handler for FreshPerEvent {
    async fn handle(&mut self, events: &[Event]) -> Result<Vec<HandleResult>, CallError> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            let mut instance = self.plugin.instantiate().await.map_err(|e| CallError::Start(e.to_string()))?;
            if let Some(scope) = self.scope.take() {
                instance.attach(scope);
            }
            let handled = instance.handle(std::slice::from_ref(event)).await;
            self.scope = instance.detach();
            results.append(&mut handled?);
        }
        Ok(results)
    }
    fn attach(&mut self, scope: EventScope) {
        self.scope = Some(scope);
    }
    fn detach(&mut self) -> Option<EventScope> {
        self.scope.take()
    }
}

#[async_trait::async_trait]
impl HandlerFactory for LoadedPlugin {
    async fn create(&self) -> Result<Box<dyn Handler>, LoadError> {
        match self.spec().instance {
            InstancePolicy::Reuse => self.instantiate().await.map(|i| Box::new(i) as Box<dyn Handler>),
            InstancePolicy::Fresh => Ok(Box::new(FreshPerEvent { plugin: self.clone(), scope: None })),
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
    fn per_event(&self) -> bool {
        self.capabilities().iter().any(|c| matches!(c, Capability::Http | Capability::Client))
    }
}
