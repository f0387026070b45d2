//! Requests over Kafka, the way NestJS's Kafka transport makes them: a
//! record on the destination's topic carrying `kafka_correlationId`,
//! `kafka_replyTopic` and `kafka_replyPartition`; the service answers with
//! a record on the reply topic carrying the same correlation id (NestJS
//! marks an error answer with a `kafka_nest-err` header; Sluice's own
//! error replies carry `Nats-Service-Error` too).
//!
//! The host reads every partition of the reply topic from its end at open
//! (no consumer group: nothing to commit, nothing to rebalance) and hands
//! each answer to the request waiting for its id. Answers to requests
//! nobody waits for any more (timed out) are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header as KafkaHeader, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::{codec, nats, Destination, Outgoing};
use crate::config::ClientConfig;
use crate::event::{text_header, Header};
use crate::kafka::{Context, CORRELATION_HEADER, REPLY_PARTITION_HEADER};
use crate::runtime::bindings::current::client::{CallError, Reply, ServiceError};

pub const REPLY_TOPIC_HEADER: &str = "kafka_replyTopic";

/// How long opening the reply reader may take (metadata, watermarks).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>;

/// An answer as read from the reply topic.
struct Answer {
    payload: Vec<u8>,
    headers: Vec<Header>,
}

/// A destination's producer and the reader of its reply topic.
pub struct Requester {
    producer: FutureProducer<Context>,
    reply_topic: String,
    /// The partition answers are asked for (`kafka_replyPartition`): the
    /// lowest of those the reader was assigned, so always one it reads
    /// (it reads them all; a partition added later is not read, and not
    /// asked for).
    reply_partition: i32,
    pending: Pending,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Requester {
    pub async fn open(
        pipeline: &str,
        name: &str,
        config: &ClientConfig,
        producers: &crate::sink::kafka::Producers,
    ) -> Result<Self, String> {
        let brokers = config.brokers();
        let options = crate::kafka::connection_options(config.tls.as_ref(), config.sasl.as_ref(), &config.options);
        let producer = producers.get(&brokers, &options).await.map_err(|e| e.to_string())?;
        let reply_topic = config.reply_topic.clone().ok_or("no reply_topic")?;
        let mut properties = crate::kafka::client_config(&brokers, &options);
        properties
            .set("group.id", format!("sluice-client-{pipeline}-{name}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer = properties.create().map_err(|e| e.to_string())?;
        let consumer = Arc::new(consumer);
        // Positioned at the end of every partition before the first request
        // (explicit offsets: `Offset::End` resolves lazily and could skip
        // an answer that arrives first).
        let assigned = {
            let consumer = consumer.clone();
            let topic = reply_topic.clone();
            tokio::task::spawn_blocking(move || -> Result<i32, String> {
                let metadata = consumer.fetch_metadata(Some(&topic), OPEN_TIMEOUT).map_err(|e| e.to_string())?;
                let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
                if partitions.is_empty() {
                    return Err(format!("reply topic {topic:?} does not exist (or has no partitions)"));
                }
                let mut list = TopicPartitionList::new();
                for &partition in &partitions {
                    let (_, high) = consumer.fetch_watermarks(&topic, partition, OPEN_TIMEOUT).map_err(|e| e.to_string())?;
                    list.add_partition_offset(&topic, partition, Offset::Offset(high)).map_err(|e| e.to_string())?;
                }
                consumer.assign(&list).map_err(|e| e.to_string())?;
                // NestJS's ClientKafka asks for its lowest assigned one too.
                partitions.iter().min().copied().ok_or_else(|| format!("reply topic {topic:?} has no partitions"))
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let reply_partition = assigned.map_err(|e| format!("cannot read reply topic {reply_topic:?}: {e}"))?;
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_answers(consumer, pending.clone()));
        Ok(Self { producer, reply_topic, reply_partition, pending, reader })
    }

    pub async fn request(&self, destination: &Destination, outgoing: Outgoing) -> Result<Reply, CallError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (sender, answer) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id.clone(), sender);
        }
        let forget = Forget { pending: &self.pending, id: &id };
        let mut headers = outgoing.headers;
        headers.push(text_header(CORRELATION_HEADER, id.clone()));
        headers.push(text_header(REPLY_TOPIC_HEADER, self.reply_topic.clone()));
        headers.push(text_header(REPLY_PARTITION_HEADER, self.reply_partition.to_string()));
        let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len());
        for header in &headers {
            kafka_headers = kafka_headers.insert(KafkaHeader { key: &header.key, value: Some(&header.value) });
        }
        // NestJS's Kafka transport has no envelope: the value is the data.
        let record = FutureRecord::<(), _>::to(&destination.address).payload(&outgoing.payload).headers(kafka_headers);
        let timeout = outgoing.timeout;
        let exchange = async {
            self.producer
                .send(record, rdkafka::util::Timeout::After(timeout))
                .await
                .map_err(|(e, _)| CallError::Unavailable(format!("cannot send the request: {e}")))?;
            answer.await.map_err(|_| CallError::Unavailable("the reply reader stopped".into()))
        };
        let answer = tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(nats::millis(timeout)))??;
        drop(forget);
        decode(answer)
    }
}

/// Removes a request's entry however it ends (answered, timed out, or its
/// call dropped at the handler's deadline).
struct Forget<'a> {
    pending: &'a Pending,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(self.id);
        }
    }
}

/// An answer: no envelope with either codec (NestJS's Kafka transport
/// has none), errors marked by headers.
fn decode(answer: Answer) -> Result<Reply, CallError> {
    let header = |name: &str| crate::event::header(&answer.headers, name);
    if let Some(err) = header(crate::codec::nestjs::KAFKA_ERR_HEADER) {
        let value = serde_json::from_slice(err).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(err).into_owned()));
        return Err(CallError::Service(codec::service_error(&value)));
    }
    if let Some(error) = header(nats::SERVICE_ERROR_HEADER) {
        return Err(CallError::Service(ServiceError {
            code: header(nats::SERVICE_ERROR_CODE_HEADER).map(|c| String::from_utf8_lossy(c).into_owned()),
            message: String::from_utf8_lossy(error).into_owned(),
            payload: answer.payload,
        }));
    }
    Ok(Reply { payload: answer.payload, headers: answer.headers })
}

async fn read_answers(consumer: Arc<StreamConsumer>, pending: Pending) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("kafka reply reader: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let event = crate::kafka::message_event(&message);
        let Some(id) = crate::event::header(&event.headers, CORRELATION_HEADER).map(|id| String::from_utf8_lossy(id).into_owned()) else {
            continue;
        };
        let waiting = pending.lock().ok().and_then(|mut pending| pending.remove(&id));
        if let Some(waiting) = waiting {
            let _ = waiting.send(Answer { payload: message.payload().unwrap_or_default().to_vec(), headers: event.headers });
        }
    }
}
