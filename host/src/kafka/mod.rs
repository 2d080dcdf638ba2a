//! Kafka clients: client configuration with kwasm's defaults, the output
//! producer whose delivery reports drive the offset trackers, the trackers
//! themselves, and the librdkafka calls rust-rdkafka does not wrap (batch
//! fetch queues, topic regexes, describing a consumer group).

pub mod describe;
pub mod fetch_queue;
pub mod offsets;
mod producer;
pub mod regex;
pub mod reread;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::DefaultClientContext;

pub use offsets::OffsetTracker;
pub use producer::{DeliveryRoute, DeliveryToken, OutRecord, OutputProducer, ProduceError};

use crate::config::{GroupProtocol, KafkaConfig};

/// Consumer settings. Each default here is one a production pipeline needs;
/// any of them can be overridden through `kafka.properties` or
/// `kafka.consumer_properties`.
pub fn consumer_config(
    kafka: &KafkaConfig,
    group_id: &str,
    client_id: &str,
    instance_id: Option<&str>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group_id)
        .set("client.id", client_id)
        .set("group.protocol", kafka.group_protocol.as_librdkafka());
    if kafka.group_protocol == GroupProtocol::Classic {
        // KIP-429: only moved partitions stop during a rebalance. (Under
        // KIP-848 the broker assigns, incrementally, and librdkafka refuses
        // this property.)
        c.set("partition.assignment.strategy", "cooperative-sticky");
    }
    // kwasm commits itself, only offsets whose outputs are acknowledged.
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka's default 1000 ms stalls a busy partition for a second
        // whenever its local queue is full (measured: 5x throughput loss).
        .set("fetch.queue.backoff.ms", "10")
        // Never 0: some brokers answer an immediate empty fetch.
        .set("fetch.wait.max.ms", "10")
        // Prefetch per consumer is bounded; backpressure pauses partitions.
        .set("queued.max.messages.kbytes", "16384")
        // Per-partition high watermarks for the lag shown by the admin API.
        .set("statistics.interval.ms", "1000")
        // After a broker restart the coordinator gives each member one
        // session timeout to heartbeat again; librdkafka's default backoff
        // (up to 10 s between reconnects) let members miss it, lose their
        // assignment and leave work uncommitted for the next owner to redo
        // (measured in scripts/chaos). Reconnect within a second instead.
        .set("reconnect.backoff.max.ms", "1000");
    if let Some(id) = instance_id {
        c.set("group.instance.id", id);
    }
    apply_overrides(&mut c, &kafka.properties, &kafka.consumer_properties);
    c
}

/// How output records with a key choose their partition: murmur2 of the
/// key, as the Java client, Kafka Streams and most other Kafka tools do
/// (librdkafka's own default, CRC32, puts the same key elsewhere). So a
/// record keeps its key's partition across a kwasm pipeline and anything
/// else writing the same topic; records without a key are spread randomly.
pub const PARTITIONER: &str = "murmur2_random";

/// Producer settings: idempotent (in order per partition, no duplicates
/// from retries), and it never gives up on its own during a broker outage.
pub fn producer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", PARTITIONER)
        // 0 = no deadline: an outage pauses output instead of failing it.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000");
    apply_overrides(&mut c, &kafka.properties, &kafka.producer_properties);
    c
}

/// The producer of one exactly-once pipeline on one host: [`producer_config`]
/// plus its `transactional.id` (stable across the host's restarts, so a
/// restarted host fences its earlier self and aborts what that left open)
/// and `transaction.timeout.ms`. A record's delivery may not outlast its
/// transaction, so `message.timeout.ms` is that timeout, not "forever".
///
/// `retry.backoff.ms` is 20 unless set: after a commit returns, the
/// coordinator still writes the transaction's markers, and until it is
/// done the next transaction's AddOffsetsToTxn is refused with
/// CONCURRENT_TRANSACTIONS. librdkafka retries that with
/// `retry.backoff.ms` (100 ms by default, doubling), which held every
/// 100 ms transaction's boundary closed for a further 100 ms or more
/// (measured with `debug=eos`; the Java client retries its
/// AddPartitionsToTxn after 20 ms for the same reason, as librdkafka does
/// its own). Retries still back off exponentially to
/// `retry.backoff.max.ms`, so an outage is not hammered.
pub fn transactional_producer_config(
    kafka: &KafkaConfig,
    client_id: &str,
    transactional_id: &str,
    transaction_timeout_ms: u64,
) -> ClientConfig {
    let mut c = producer_config(kafka, client_id);
    c.set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", transaction_timeout_ms.to_string())
        .set("message.timeout.ms", transaction_timeout_ms.to_string());
    if !kafka.properties.contains_key(TXN_RETRY_BACKOFF)
        && !kafka.producer_properties.contains_key(TXN_RETRY_BACKOFF)
    {
        c.set(TXN_RETRY_BACKOFF, "20");
    }
    c
}

/// The property [`transactional_producer_config`] lowers.
const TXN_RETRY_BACKOFF: &str = "retry.backoff.ms";

/// `kafka.properties`, then the client kind's own (which win).
fn apply_overrides(
    c: &mut ClientConfig,
    shared: &BTreeMap<String, String>,
    own: &BTreeMap<String, String>,
) {
    for (k, v) in shared.iter().chain(own) {
        c.set(k, v);
    }
}

/// Creates `topics`; ones that already exist are fine (several hosts start
/// at once, and restarts find their topics). The error names the topic.
pub async fn create_topics(client: &ClientConfig, topics: &[NewTopic<'_>]) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| format!("cannot create an admin client: {e}"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(topics, &options)
        .await
        .map_err(|e| format!("cannot create topics: {e}"))?;
    for r in results {
        if let Err((topic, code)) = r
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(format!("cannot create topic `{topic}`: {code}"));
        }
    }
    let names: Vec<String> = topics.iter().map(|t| t.name.to_owned()).collect();
    let client = client.clone();
    tokio::task::spawn_blocking(move || wait_for_leaders(&client, &names, TOPIC_READY_TIMEOUT))
        .await
        .map_err(|e| format!("waiting for new topics failed: {e}"))?
}

/// How long [`create_topics`] waits for every partition of its topics to
/// have a leader.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the metadata shows every partition of each of `topics` with
/// a leader. Kafka answers CreateTopics once the controller has the topic,
/// before every broker knows it: a client that reads a fresh topic at once
/// (the registry's end offsets) can get `UNKNOWN_TOPIC_OR_PARTITION` or
/// `NOT_LEADER_OR_FOLLOWER` and fail its startup.
fn wait_for_leaders(
    client: &ClientConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<(), String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client
        .create()
        .map_err(|e| format!("cannot create a metadata client: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    for topic in topics {
        loop {
            let last = match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                    Some(t)
                        if t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0) =>
                    {
                        break;
                    }
                    Some(t) => format!(
                        "topic error {:?}, {} partitions",
                        t.error(),
                        t.partitions().len()
                    ),
                    None => "not in the metadata".to_owned(),
                },
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "topic `{topic}` has no leader for every partition after {} s: {last}",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transactional_producer_retries_sooner_unless_told_otherwise() {
        let mut kafka = KafkaConfig::default();
        let c = transactional_producer_config(&kafka, "h", "t", 60_000);
        assert_eq!(c.get("retry.backoff.ms"), Some("20"));
        assert_eq!(c.get("transactional.id"), Some("t"));
        assert_eq!(c.get("message.timeout.ms"), Some("60000"));
        // The plain producer keeps librdkafka's default.
        assert_eq!(producer_config(&kafka, "h").get("retry.backoff.ms"), None);

        kafka
            .producer_properties
            .insert("retry.backoff.ms".into(), "250".into());
        let c = transactional_producer_config(&kafka, "h", "t", 60_000);
        assert_eq!(c.get("retry.backoff.ms"), Some("250"));
        kafka.producer_properties.clear();
        kafka
            .properties
            .insert("retry.backoff.ms".into(), "5".into());
        let c = transactional_producer_config(&kafka, "h", "t", 60_000);
        assert_eq!(c.get("retry.backoff.ms"), Some("5"));
    }
}
