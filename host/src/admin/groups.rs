//! The members of a pipeline's consumer group, for
//! `GET /v1/pipelines/{name}/members`: read from the broker (DescribeGroups:
//! member id, client id, client host, assignment), and from the records
//! hosts publish to the registry only where the broker cannot tell.
//!
//! One long-lived admin client serves every call, and a description is
//! cached for [`CACHE_TTL`]: an API caller polling the endpoint (or many
//! callers at once) costs the broker at most one DescribeGroups per group
//! per TTL, never a new librdkafka client (threads, sockets, a metadata
//! round) per request. Describes run one at a time, off the async workers
//! (librdkafka's `list_groups` blocks).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use serde::Serialize;

use crate::registry::{MemberRecord, TopicPartition};

/// How long one description of a group is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a DescribeGroups may take before the published records are used.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One member of a group as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMember {
    /// The member id the coordinator gave it (`<client.id>-<uuid>`).
    pub member_id: String,
    /// Its `client.id` (kwasm: the host id); empty when the broker omits it.
    pub client_id: String,
    /// The address it connects from (`/127.0.0.1`).
    pub client_host: String,
    /// Its assignment, decoded; `None` when absent or not decodable (a
    /// rebalance in progress, a non-consumer protocol).
    pub partitions: Option<Vec<TopicPartition>>,
}

/// One member as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// The kwasm host id.
    pub host: String,
    /// Broker member id (`null` when the broker could not be asked).
    pub member_id: Option<String>,
    /// Broker client id.
    pub client_id: Option<String>,
    /// Address the member connects from.
    pub client_host: Option<String>,
    /// Partitions it holds, sorted.
    pub partitions: Vec<TopicPartition>,
    /// Where `partitions` come from: `broker` (its assignment) or
    /// `published` (the host's own record in the registry).
    pub source: &'static str,
}

/// Describes groups through one shared admin client, with a short cache.
/// Cheap to clone.
#[derive(Clone)]
pub struct GroupDescriber {
    inner: Arc<Inner>,
}

struct Inner {
    client: AdminClient<DefaultClientContext>,
    /// Offsets and dead letters for the dashboard, with the same settings.
    reader: super::progress::BrokerReader,
    /// Held across a describe, so concurrent callers wait for one answer.
    cache: tokio::sync::Mutex<DescriptionCache>,
}

/// Descriptions by group, each good for [`CACHE_TTL`] from when it was
/// taken; expired ones are dropped as they are looked past, so the map
/// holds only groups asked about in the last TTL.
#[derive(Default)]
struct DescriptionCache {
    entries: HashMap<String, (Instant, Description)>,
}

impl DescriptionCache {
    /// The description of `group` if one younger than the TTL is held.
    fn fresh(&mut self, group: &str, now: Instant) -> Option<Description> {
        self.entries
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < CACHE_TTL);
        self.entries.get(group).map(|(_, d)| d.clone())
    }

    fn store(&mut self, group: &str, taken: Instant, description: Description) {
        self.entries.insert(group.to_owned(), (taken, description));
    }
}

/// A group's members, or why the broker could not say.
type Description = Result<Vec<BrokerMember>, String>;

impl GroupDescriber {
    /// Creates the admin client (it connects lazily, on first use).
    pub fn new(config: &ClientConfig) -> Result<GroupDescriber, rdkafka::error::KafkaError> {
        Ok(GroupDescriber {
            inner: Arc::new(Inner {
                client: config.create()?,
                reader: super::progress::BrokerReader::new(config.clone()),
                cache: tokio::sync::Mutex::new(DescriptionCache::default()),
            }),
        })
    }

    /// An admin client with the settings the registry's clients use
    /// (`kafka.brokers`, `kafka.properties`, then `registry.properties`):
    /// describing groups is a control-plane read, done as the registry's
    /// principal.
    pub fn for_control_plane(
        kafka: &crate::config::KafkaConfig,
        registry: &crate::config::RegistryConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &kafka.brokers);
        for (key, value) in kafka.properties.iter().chain(&registry.properties) {
            config.set(key, value);
        }
        Self::new(&config)
    }

    /// Group-wide offsets and dead letters, read with this client's settings.
    pub fn reader(&self) -> &super::progress::BrokerReader {
        &self.inner.reader
    }

    /// The broker's members of `group`, at most [`CACHE_TTL`] old; an
    /// error when the broker cannot describe groups or did not answer.
    pub async fn describe(&self, group: &str) -> Description {
        let mut cache = self.inner.cache.lock().await;
        if let Some(description) = cache.fresh(group, Instant::now()) {
            return description;
        }
        let inner = self.inner.clone();
        let name = group.to_owned();
        let result = tokio::task::spawn_blocking(move || describe_now(&inner.client, &name))
            .await
            .unwrap_or_else(|e| Err(format!("describe task failed: {e}")));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics_names::ADMIN_GROUP_DESCRIBES, "result" => outcome)
            .increment(1);
        cache.store(group, Instant::now(), result.clone());
        result
    }
}

fn describe_now(client: &AdminClient<DefaultClientContext>, group: &str) -> Description {
    let list = client
        .inner()
        .fetch_group_list(Some(group), DESCRIBE_TIMEOUT)
        .map_err(|e| e.to_string())?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| BrokerMember {
            member_id: m.id().to_owned(),
            client_id: m.client_id().to_owned(),
            client_host: m.client_host().to_owned(),
            partitions: m.assignment().and_then(|a| decode_assignment(a).ok()),
        })
        .collect())
}

/// The members to show. The broker's list is the truth about who is in
/// the group (a killed host's stale record disappears once the broker
/// evicts it); a member's partitions come from its assignment, or from its
/// host's published record when the assignment cannot be read. When the
/// broker could not be asked (librdkafka's mock cluster cannot describe
/// groups), the published records are shown as they are, stale ones
/// included.
pub fn merge_members(
    published: Vec<MemberRecord>,
    broker: Result<Vec<BrokerMember>, String>,
) -> Vec<MemberView> {
    let Ok(broker) = broker else {
        let mut views: Vec<MemberView> = published
            .into_iter()
            .map(|r| MemberView {
                host: r.host,
                member_id: None,
                client_id: None,
                client_host: None,
                partitions: r.partitions,
                source: "published",
            })
            .collect();
        views.sort_by(|a, b| a.host.cmp(&b.host));
        return views;
    };
    let mut views: Vec<MemberView> = broker
        .into_iter()
        .map(|m| {
            let record = published
                .iter()
                .find(|r| is_member_of(&r.host, &m.member_id, &m.client_id));
            let host = match (record, m.client_id.is_empty()) {
                (Some(r), _) => r.host.clone(),
                (None, false) => m.client_id.clone(),
                (None, true) => m.member_id.clone(),
            };
            let (partitions, source) = match (m.partitions, record) {
                (Some(mut p), _) => {
                    p.sort();
                    (p, "broker")
                }
                (None, Some(r)) => (r.partitions.clone(), "published"),
                (None, None) => (Vec::new(), "broker"),
            };
            MemberView {
                host,
                member_id: Some(m.member_id),
                client_id: Some(m.client_id),
                client_host: Some(m.client_host),
                partitions,
                source,
            }
        })
        .collect();
    views.sort_by(|a, b| (&a.host, &a.member_id).cmp(&(&b.host, &b.member_id)));
    views
}

/// Whether a group member is host `host` (its `client.id`). Brokers that
/// report the client id are compared exactly; some (nisshi) report only the
/// member id, which Kafka forms as `<client.id>-<uuid>`: then the remainder
/// must be exactly a UUID, so host `a` never matches host `a-b`.
fn is_member_of(host: &str, member_id: &str, client_id: &str) -> bool {
    if !client_id.is_empty() {
        return client_id == host;
    }
    member_id
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|uuid| {
            uuid.len() == 36 && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        })
}

/// Why an assignment could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// The bytes end inside a field.
    #[error("the assignment ends inside {0}")]
    Truncated(&'static str),
    /// A length or count is negative where the protocol forbids it.
    #[error("negative {0} in the assignment")]
    Negative(&'static str),
    /// A topic name is not UTF-8.
    #[error("a topic name in the assignment is not UTF-8")]
    NotUtf8,
}

/// Decodes the partitions of a classic-protocol member assignment
/// (Kafka's `ConsumerProtocolAssignment`, every version so far: i16
/// version, then an i32-counted array of {i16-length topic, i32-counted
/// array of i32 partitions}; the user data that follows is not needed).
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<TopicPartition>, AssignmentError> {
    let mut r = Reader { bytes, at: 0 };
    r.take(2, "the version")?;
    let topics = r.count("the topic count")?;
    let mut out = Vec::new();
    for _ in 0..topics {
        let len = r.i16("a topic name length")?;
        let len = usize::try_from(len).map_err(|_| AssignmentError::Negative("topic length"))?;
        let topic = std::str::from_utf8(r.take(len, "a topic name")?)
            .map_err(|_| AssignmentError::NotUtf8)?
            .to_owned();
        for _ in 0..r.count("a partition count")? {
            let partition = r.i32("a partition")?;
            out.push(TopicPartition {
                topic: topic.clone(),
                partition,
            });
        }
    }
    out.sort();
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AssignmentError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(AssignmentError::Truncated(what))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, AssignmentError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, AssignmentError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array count; -1 (null array) counts as empty. A count larger
    /// than the bytes left could hold is truncation, found as it is read.
    fn count(&mut self, what: &'static str) -> Result<usize, AssignmentError> {
        match self.i32(what)? {
            -1 => Ok(0),
            n => usize::try_from(n).map_err(|_| AssignmentError::Negative(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// An assignment as a Java or librdkafka consumer encodes it.
    fn encode(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            b.extend((topic.len() as i16).to_be_bytes());
            b.extend(topic.as_bytes());
            b.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        b
    }

    #[test]
    fn a_description_is_reused_for_the_ttl_then_asked_again() {
        let t0 = Instant::now();
        let mut cache = DescriptionCache::default();
        assert_eq!(cache.fresh("g", t0), None);
        cache.store("g", t0, Ok(vec![]));
        cache.store("h", t0 + Duration::from_secs(1), Err("down".into()));
        let almost = t0 + CACHE_TTL - Duration::from_millis(1);
        assert_eq!(cache.fresh("g", almost), Some(Ok(vec![])));
        assert_eq!(cache.fresh("h", almost), Some(Err("down".into())));
        assert_eq!(cache.fresh("g", t0 + CACHE_TTL), None);
        assert_eq!(cache.entries.len(), 1, "the expired entry is dropped");
        assert!(cache.fresh("h", t0 + CACHE_TTL).is_some());
    }

    #[test]
    fn assignments_decode_to_sorted_partitions() {
        let bytes = encode(&[("orders", &[3, 1]), ("audit", &[0])]);
        assert_eq!(
            decode_assignment(&bytes),
            Ok(vec![tp("audit", 0), tp("orders", 1), tp("orders", 3)])
        );
        assert_eq!(decode_assignment(&encode(&[])), Ok(vec![]));
    }

    #[test]
    fn broken_assignments_are_errors_not_panics() {
        let bytes = encode(&[("orders", &[3, 1])]);
        for cut in 0..bytes.len() - 4 {
            assert!(decode_assignment(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = 0i16.to_be_bytes().to_vec();
        huge.extend(i32::MAX.to_be_bytes());
        assert_eq!(
            decode_assignment(&huge),
            Err(AssignmentError::Truncated("a topic name length"))
        );
        let mut negative = 0i16.to_be_bytes().to_vec();
        negative.extend((-2i32).to_be_bytes());
        assert_eq!(
            decode_assignment(&negative),
            Err(AssignmentError::Negative("the topic count"))
        );
    }

    #[test]
    fn member_ids_match_their_host_only() {
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert!(is_member_of("a", &format!("a-{uuid}"), ""));
        assert!(!is_member_of("a", &format!("a-b-{uuid}"), ""));
        assert!(is_member_of("a-b", &format!("a-b-{uuid}"), ""));
        assert!(is_member_of("a", "whatever", "a"));
        assert!(!is_member_of("a", &format!("a-{uuid}"), "a-b"));
    }

    fn record(host: &str, partitions: &[i32]) -> MemberRecord {
        MemberRecord {
            host: host.into(),
            pipeline: "p".into(),
            group_id: "g".into(),
            partitions: partitions.iter().map(|&p| tp("in", p)).collect(),
            updated_ms: 0,
            ..MemberRecord::default()
        }
    }

    fn member(client: &str, partitions: Option<&[i32]>) -> BrokerMember {
        BrokerMember {
            member_id: format!("{client}-0f8fad5b-d9cb-469f-a165-70867728950e"),
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            partitions: partitions.map(|p| p.iter().map(|&p| tp("in", p)).collect()),
        }
    }

    #[test]
    fn the_broker_decides_who_is_a_member_and_what_it_holds() {
        // host-c's record is stale (the broker evicted it); host-a's
        // published record is older than its assignment.
        let published = vec![record("host-a", &[0]), record("host-c", &[1])];
        let broker = vec![
            member("host-b", Some(&[1])),
            member("host-a", Some(&[2, 0])),
        ];
        let views = merge_members(published, Ok(broker));
        let got: Vec<(&str, Vec<i32>, &str)> = views
            .iter()
            .map(|v| {
                let parts = v.partitions.iter().map(|p| p.partition).collect();
                (v.host.as_str(), parts, v.source)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("host-a", vec![0, 2], "broker"),
                ("host-b", vec![1], "broker")
            ]
        );
        assert_eq!(views[0].client_host.as_deref(), Some("/127.0.0.1"));
    }

    #[test]
    fn published_records_fill_in_only_where_the_broker_cannot_tell() {
        // An unreadable assignment: that host's own record.
        let views = merge_members(
            vec![record("host-a", &[4])],
            Ok(vec![member("host-a", None), member("host-b", None)]),
        );
        let got: Vec<(&str, usize, &str)> = views
            .iter()
            .map(|v| (v.host.as_str(), v.partitions.len(), v.source))
            .collect();
        assert_eq!(got, [("host-a", 1, "published"), ("host-b", 0, "broker")]);
        // No broker answer: every record as published.
        let views = merge_members(
            vec![record("host-b", &[1]), record("host-a", &[0])],
            Err("mock cluster".into()),
        );
        let hosts: Vec<(&str, Option<&String>)> = views
            .iter()
            .map(|v| (v.host.as_str(), v.member_id.as_ref()))
            .collect();
        assert_eq!(hosts, [("host-a", None), ("host-b", None)]);
        // An empty group: nobody, whatever was published.
        assert_eq!(merge_members(vec![record("host-a", &[0])], Ok(vec![])), []);
    }
}
