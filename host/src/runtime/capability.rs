//! Capabilities: host imports a pipeline must grant before its plugin may
//! use them. Plain imports (`log`, WASI's clocks and random) are always
//! there; a capability reaches outside the plugin (its state, the network,
//! other services), so a plugin that imports one into a
//! pipeline that does not grant it is refused at load, by name, rather
//! than failing on its first event.

use wasmtime::component::Component;
use wasmtime::Engine;

/// A capability, as configured and as imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `sluice:plugin/state`: the pipeline's key/value state, granted by a
    /// `[pipelines.<name>.state]` table.
    State,
    /// `wasi:http/outgoing-handler`: outbound HTTP to the hosts a
    /// `[pipelines.<name>.plugin.http]` table allows.
    Http,
    /// `sluice:plugin/client`: requests and emits to the destinations of
    /// `[pipelines.<name>.clients.<dest>]` tables.
    Client,
}

impl Capability {
    /// Every capability, in the order messages list them.
    pub const ALL: [Capability; 3] = [Capability::State, Capability::Http, Capability::Client];

    /// The name used in config and messages.
    pub fn name(self) -> &'static str {
        match self {
            Capability::State => "state",
            Capability::Http => "http",
            Capability::Client => "client",
        }
    }

    /// The import's instance name without its version.
    fn interface(self) -> &'static str {
        match self {
            Capability::State => "sluice:plugin/state",
            Capability::Http => "wasi:http/outgoing-handler",
            Capability::Client => "sluice:plugin/client",
        }
    }

    /// What grants it, for the refusal message.
    pub fn how_to_grant(self) -> &'static str {
        match self {
            Capability::State => "add a `[pipelines.<name>.state]` table (see docs/configuration.md#state)",
            Capability::Http => {
                "add a `[pipelines.<name>.plugin.http]` table with the hosts it may call (see docs/configuration.md#outbound-http)"
            }
            Capability::Client => {
                "add a `[pipelines.<name>.clients.<destination>]` table per service it calls (see docs/configuration.md#service-calls)"
            }
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The capabilities `component` imports, in a stable order.
pub fn imported(component: &Component, engine: &Engine) -> Vec<Capability> {
    let imports: Vec<String> = component.component_type().imports(engine).map(|(name, _)| name.to_owned()).collect();
    Capability::ALL
        .into_iter()
        .filter(|capability| {
            let prefix = format!("{}@", capability.interface());
            imports.iter().any(|name| name.starts_with(&prefix))
        })
        .collect()
}
