//! The host the rollout tests run (`rollout.rs`: one host driven through
//! its admin API; `fleet_rollout.rs`: several hosts following one plugin
//! store): pipeline `orders` from the shared consumer `sluice` on the
//! JetStream stream IN, outputs on OUT, dead letters on DLQ, one attempt
//! per event, two lanes ordered by key.

use anyhow::Result;

use super::common::{plugin, runtime_table, toml_path, Running, Scratch, ANY_PORT};
use super::fixture::create_stream;

/// The streams `orders` uses (name, subject): input, outputs, dead letters.
const STREAMS: [(&str, &str); 3] = [("IN", "in.orders"), ("OUT", "out.orders"), ("DLQ", "dlq.orders")];

/// Creates IN, OUT and DLQ on `client`'s server.
pub async fn create_streams(client: &async_nats::Client) -> Result<()> {
    for (stream, subject) in STREAMS {
        create_stream(client, stream, &[subject]).await?;
    }
    Ok(())
}

/// One host's config: what differs between the rollout tests is the
/// current version, the `[pipelines.orders.rollout]` rules, and whether
/// the host has an admin token, an instance id of its own and the store.
pub struct OrdersHost<'a> {
    /// The NATS server's URL (streams and, with `store`, the store).
    pub url: &'a str,
    /// The test plugin that is the current version.
    pub current: &'a str,
    /// The lines of `[pipelines.orders.rollout]`.
    pub rollout: &'a str,
    /// `[admin] token`, for the routes that change things.
    pub token: Option<&'a str>,
    /// `[runtime] instance_id`: hosts of one fleet need distinct ones.
    pub instance_id: Option<&'a str>,
    /// A `[plugins.store]` on the same NATS server.
    pub store: bool,
}

impl OrdersHost<'_> {
    /// The host's TOML.
    pub fn config(&self) -> String {
        let url = self.url;
        let mut runtime = runtime_table();
        if let Some(id) = self.instance_id {
            runtime.push_str(&format!("instance_id = \"{id}\"\n"));
        }
        let token = self.token.map(|token| format!("token = \"{token}\"\n")).unwrap_or_default();
        let store = if self.store { format!("\n[plugins.store]\nnats = \"{url}\"\n") } else { String::new() };
        format!(
            r#"{runtime}
[admin]
listen = "{ANY_PORT}"
{token}
[pipelines.orders]
source = {{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice" }}
sink = {{ kind = "jetstream", url = "{url}", subject = "out.orders" }}
dead_letter = {{ kind = "jetstream", url = "{url}", subject = "dlq.orders" }}
plugin = {{ path = {plugin} }}

[pipelines.orders.policy]
# One attempt: an event a canary failed that were not handed to the
# current version would be dead-lettered at once.
max_attempts = 1
concurrency = 2
ordering = "key"

[pipelines.orders.rollout]
{rollout}
{store}"#,
            plugin = toml_path(&plugin(self.current)),
            rollout = self.rollout,
        )
    }

    /// Writes the config to `file` in `scratch`.
    pub fn write(&self, scratch: &Scratch, file: &str) -> Result<()> {
        scratch.write(file, self.config())?;
        Ok(())
    }
}

/// Starts `sluice run` on `file` in `scratch`; returns the host and its
/// admin API's port.
pub fn run(scratch: &Scratch, file: &str) -> Result<(Running, u16)> {
    let mut host = Running::spawn(scratch.sluice(&["run", file]))?;
    let port = host.admin_port()?;
    Ok((host, port))
}
