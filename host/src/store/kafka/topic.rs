//! The store's topics: created compacted (one partition) when missing, and
//! refused when they exist without compaction, since a topic that deletes
//! old records would, after its retention, lose versions and pointers that
//! are still current.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::kafka::{Context, OPEN_TIMEOUT};
use crate::store::StoreError;

fn unavailable(what: String) -> StoreError {
    StoreError::Unavailable(what)
}

/// Makes sure `topic` exists and is compacted; returns its partition count.
pub async fn ensure(client: &ClientConfig, brokers: &str, topic: &str) -> Result<i32, StoreError> {
    let context = Context::new(format!("plugin store admin {topic}"));
    let last_error = context.last_error();
    let admin: AdminClient<Context> =
        client.create_with_context(context).map_err(|e| unavailable(format!("creating an admin client: {e}")))?;
    let admin = std::sync::Arc::new(admin);
    let partitions = match partitions(&admin, topic).await.map_err(|e| unavailable(last_error.unreachable(brokers, e)))? {
        Some(partitions) => partitions,
        None => {
            create(&admin, topic).await?;
            // The brokers list a new topic once its metadata has spread:
            // a moment, usually.
            let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
            loop {
                if let Some(partitions) = partitions(&admin, topic).await.map_err(unavailable)? {
                    break partitions;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(unavailable(format!("topic `{topic}` was created but the brokers do not list it after {OPEN_TIMEOUT:?}")));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let options = AdminOptions::new().request_timeout(Some(OPEN_TIMEOUT));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|e| unavailable(format!("reading the settings of topic `{topic}`: {e}")))?;
    for resource in described {
        let resource = resource.map_err(|code| unavailable(format!("reading the settings of topic `{topic}`: {code}")))?;
        let policy = resource.get("cleanup.policy").and_then(|e| e.value.clone()).unwrap_or_default();
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(unavailable(format!(
                "topic `{topic}` exists with `cleanup.policy={policy}`, not `compact`: the plugin store needs a compacted topic \
                 (retention would delete current versions). Set `cleanup.policy=compact` on it, or name another topic in \
                 `[plugins.store] kafka.topic`"
            )));
        }
    }
    Ok(partitions)
}

/// The partition count of `topic`, `None` when it does not exist.
async fn partitions(admin: &std::sync::Arc<AdminClient<Context>>, topic: &str) -> Result<Option<i32>, String> {
    let (admin, name) = (admin.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(Some(&name), OPEN_TIMEOUT).map_err(|e| e.to_string())?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    })
    .await
    .unwrap_or_else(|e| Err(format!("metadata request stopped: {e}")))
}

async fn create(admin: &AdminClient<Context>, topic: &str) -> Result<(), StoreError> {
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(OPEN_TIMEOUT)).request_timeout(Some(OPEN_TIMEOUT));
    let created = admin.create_topics([&new], &options).await.map_err(|e| unavailable(format!("creating topic `{topic}`: {e}")))?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(unavailable(format!("creating topic `{topic}`: {code}"))),
        }
    }
    tracing::info!(topic, "created the plugin store topic (compacted)");
    Ok(())
}
