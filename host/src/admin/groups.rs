//! The members of a pipeline's consumer group, for
//! `GET /v1/pipelines/{name}/members`: read from the broker (librdkafka's
//! DescribeConsumerGroups, [`crate::kafka::describe`]: ConsumerGroupDescribe
//! for a KIP-848 group, DescribeGroups for a classic one; member id, client
//! id, client host, assignment, the group's state and protocol), and from
//! the records hosts publish to the registry only where the broker cannot
//! tell.
//!
//! One long-lived admin client serves every call, and a description is
//! cached for [`CACHE_TTL`]: an API caller polling the endpoint (or many
//! callers at once) costs the broker at most one describe per group per
//! TTL, never a new librdkafka client (threads, sockets, a metadata round)
//! per request. Describes run one at a time, off the async workers (the
//! describe blocks until the broker answers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use serde::Serialize;

use crate::kafka::describe::{
    DescribeError, GroupDescription, GroupState, GroupType, describe_consumer_group,
};
use crate::registry::{MemberRecord, TopicPartition};

/// How long one description of a group is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How long a describe may take before the published records are used.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pipeline's group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMembers {
    /// The group's state as the broker reports it; `null` when the broker
    /// could not be asked.
    pub group_state: Option<GroupState>,
    /// `classic` or `consumer` (KIP-848), as the broker reports it; `null`
    /// when it could not be asked or the group does not exist (`dead`).
    pub group_protocol: Option<GroupType>,
    /// The members, by host.
    pub members: Vec<MemberView>,
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
    /// KIP-848 only: the partitions the coordinator is moving it to,
    /// sorted; `null` under the classic protocol and for published rows.
    pub target_partitions: Option<Vec<TopicPartition>>,
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

/// A group as the broker describes it, or why it could not.
type Description = Result<GroupDescription, DescribeError>;

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

    /// The broker's description of `group`, at most [`CACHE_TTL`] old; an
    /// error when the broker cannot describe groups or did not answer.
    pub async fn describe(&self, group: &str) -> Description {
        let mut cache = self.inner.cache.lock().await;
        if let Some(description) = cache.fresh(group, Instant::now()) {
            return description;
        }
        let inner = self.inner.clone();
        let name = group.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            describe_consumer_group(inner.client.inner(), &name, DESCRIBE_TIMEOUT)
        })
        .await
        .unwrap_or_else(|e| Err(DescribeError::Setup(format!("describe task failed: {e}"))));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics_names::ADMIN_GROUP_DESCRIBES, "result" => outcome)
            .increment(1);
        cache.store(group, Instant::now(), result.clone());
        result
    }
}

/// The members to show. The broker's description is the truth about who
/// is in the group (a killed host's stale record disappears once the
/// broker evicts it); a member's partitions come from its assignment, or
/// from its host's published record where the broker does not report one
/// ([`reports_assignments`]). When the broker could not be asked
/// (librdkafka's mock cluster cannot describe groups), the published
/// records are shown as they are, stale ones included.
pub fn merge_members(published: Vec<MemberRecord>, broker: Description) -> GroupMembers {
    let Ok(group) = broker else {
        return published_only(published);
    };
    let reports_assignments = reports_assignments(&group);
    let mut views: Vec<MemberView> = group
        .members
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
            let (partitions, source) = match (reports_assignments, record) {
                (true, _) => (m.assignment, "broker"),
                (false, Some(r)) => (r.partitions.clone(), "published"),
                (false, None) => (Vec::new(), "broker"),
            };
            MemberView {
                host,
                member_id: Some(m.member_id),
                client_id: Some(m.client_id),
                client_host: Some(m.client_host),
                partitions,
                target_partitions: m.target_assignment,
                source,
            }
        })
        .collect();
    views.sort_by(|a, b| (&a.host, &a.member_id).cmp(&(&b.host, &b.member_id)));
    GroupMembers {
        group_state: Some(group.state),
        group_protocol: match (group.state, group.group_type) {
            (GroupState::Dead, _) | (_, GroupType::Unknown) => None,
            (_, protocol) => Some(protocol),
        },
        members: views,
    }
}

/// Whether the members' assignments in `group` are what they hold. A
/// classic coordinator reports assignments only while the group is stable
/// (during a rebalance every member's comes back empty, although under
/// cooperative-sticky most keep their partitions); a KIP-848 coordinator
/// always reports each member's current assignment.
fn reports_assignments(group: &GroupDescription) -> bool {
    group.group_type != GroupType::Classic || group.state == GroupState::Stable
}

/// Every published record as it is, for a group the broker could not
/// describe (or on a host with no describer).
pub fn published_only(published: Vec<MemberRecord>) -> GroupMembers {
    let mut views: Vec<MemberView> = published
        .into_iter()
        .map(|r| MemberView {
            host: r.host,
            member_id: None,
            client_id: None,
            client_host: None,
            partitions: r.partitions,
            target_partitions: None,
            source: "published",
        })
        .collect();
    views.sort_by(|a, b| a.host.cmp(&b.host));
    GroupMembers {
        group_state: None,
        group_protocol: None,
        members: views,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::describe::MemberDescription;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    fn parts(partitions: &[i32]) -> Vec<TopicPartition> {
        partitions.iter().map(|&p| tp("in", p)).collect()
    }

    #[test]
    fn a_description_is_reused_for_the_ttl_then_asked_again() {
        let t0 = Instant::now();
        let mut cache = DescriptionCache::default();
        assert_eq!(cache.fresh("g", t0), None);
        let down = DescribeError::TimedOut { timeout_ms: 5000 };
        cache.store(
            "g",
            t0,
            Ok(group(GroupType::Consumer, GroupState::Stable, vec![])),
        );
        cache.store("h", t0 + Duration::from_secs(1), Err(down.clone()));
        let almost = t0 + CACHE_TTL - Duration::from_millis(1);
        assert!(matches!(cache.fresh("g", almost), Some(Ok(_))));
        assert_eq!(cache.fresh("h", almost), Some(Err(down)));
        assert_eq!(cache.fresh("g", t0 + CACHE_TTL), None);
        assert_eq!(cache.entries.len(), 1, "the expired entry is dropped");
        assert!(cache.fresh("h", t0 + CACHE_TTL).is_some());
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
            partitions: parts(partitions),
            updated_ms: 0,
            ..MemberRecord::default()
        }
    }

    /// A member as librdkafka describes it: assignments sorted, a target
    /// only under KIP-848.
    fn member(client: &str, assignment: &[i32], target: Option<&[i32]>) -> MemberDescription {
        MemberDescription {
            member_id: format!("{client}-0f8fad5b-d9cb-469f-a165-70867728950e"),
            client_id: client.into(),
            client_host: "/127.0.0.1".into(),
            assignment: parts(assignment),
            target_assignment: target.map(parts),
        }
    }

    fn group(
        group_type: GroupType,
        state: GroupState,
        members: Vec<MemberDescription>,
    ) -> GroupDescription {
        GroupDescription {
            group_id: "g".into(),
            state,
            group_type,
            members,
        }
    }

    /// (host, partitions, source) of each row.
    fn rows(members: &GroupMembers) -> Vec<(&str, Vec<i32>, &str)> {
        members
            .members
            .iter()
            .map(|v| {
                let parts = v.partitions.iter().map(|p| p.partition).collect();
                (v.host.as_str(), parts, v.source)
            })
            .collect()
    }

    #[test]
    fn the_broker_decides_who_is_a_member_and_what_it_holds() {
        // host-c's record is stale (the broker evicted it); host-a's
        // published record is older than its assignment.
        let published = vec![record("host-a", &[0]), record("host-c", &[1])];
        for protocol in [GroupType::Classic, GroupType::Consumer] {
            let target = (protocol == GroupType::Consumer).then_some(&[0, 2][..]);
            let broker = group(
                protocol,
                GroupState::Stable,
                vec![
                    member("host-b", &[1], target.map(|_| &[1][..])),
                    member("host-a", &[0, 2], target),
                ],
            );
            let view = merge_members(published.clone(), Ok(broker));
            assert_eq!(
                rows(&view),
                [
                    ("host-a", vec![0, 2], "broker"),
                    ("host-b", vec![1], "broker")
                ],
                "{protocol:?}"
            );
            assert_eq!(
                (view.group_state, view.group_protocol),
                (Some(GroupState::Stable), Some(protocol))
            );
            let m = &view.members[0];
            assert_eq!(m.client_host.as_deref(), Some("/127.0.0.1"));
            assert_eq!(m.target_partitions, target.map(parts));
        }
    }

    #[test]
    fn a_kip_848_member_shows_its_current_assignment_and_its_target() {
        // The coordinator moves partition 2 from host-a to host-b; host-a
        // has not released it yet (state `Reconciling`, which librdkafka
        // 2.12 reports as unknown).
        let broker = group(
            GroupType::Consumer,
            GroupState::Unknown,
            vec![
                member("host-a", &[0, 2], Some(&[0])),
                member("host-b", &[1], Some(&[1, 2])),
            ],
        );
        let view = merge_members(vec![record("host-a", &[0])], Ok(broker));
        assert_eq!(
            rows(&view),
            [
                ("host-a", vec![0, 2], "broker"),
                ("host-b", vec![1], "broker")
            ]
        );
        let targets: Vec<Option<Vec<TopicPartition>>> = view
            .members
            .iter()
            .map(|m| m.target_partitions.clone())
            .collect();
        assert_eq!(targets, [Some(parts(&[0])), Some(parts(&[1, 2]))]);
        assert_eq!(view.group_protocol, Some(GroupType::Consumer));
    }

    #[test]
    fn published_records_fill_in_only_where_the_broker_cannot_tell() {
        // A classic group mid-rebalance: the coordinator reports every
        // assignment empty, so each host's own record is shown.
        let rebalancing = group(
            GroupType::Classic,
            GroupState::PreparingRebalance,
            vec![member("host-a", &[], None), member("host-b", &[], None)],
        );
        let view = merge_members(vec![record("host-a", &[4])], Ok(rebalancing));
        assert_eq!(
            rows(&view),
            [
                ("host-a", vec![4], "published"),
                ("host-b", vec![], "broker")
            ]
        );
        assert_eq!(view.group_state, Some(GroupState::PreparingRebalance));
        // A stable classic member with nothing assigned holds nothing,
        // whatever it published.
        let stable = group(
            GroupType::Classic,
            GroupState::Stable,
            vec![member("host-a", &[], None)],
        );
        let view = merge_members(vec![record("host-a", &[4])], Ok(stable));
        assert_eq!(rows(&view), [("host-a", vec![], "broker")]);
        // No broker answer: every record as published.
        let view = merge_members(
            vec![record("host-b", &[1]), record("host-a", &[0])],
            Err(DescribeError::Unsupported {
                message: "mock cluster".into(),
            }),
        );
        let hosts: Vec<(&str, Option<&String>, &str)> = view
            .members
            .iter()
            .map(|v| (v.host.as_str(), v.member_id.as_ref(), v.source))
            .collect();
        assert_eq!(
            hosts,
            [("host-a", None, "published"), ("host-b", None, "published")]
        );
        assert_eq!((view.group_state, view.group_protocol), (None, None));
    }

    #[test]
    fn a_group_the_broker_does_not_know_has_no_members_and_no_protocol() {
        // librdkafka falls back to DescribeGroups for an unknown group,
        // which answers `Dead` and stamps it classic.
        let dead = group(GroupType::Classic, GroupState::Dead, vec![]);
        let view = merge_members(vec![record("host-a", &[0])], Ok(dead));
        assert_eq!(
            view,
            GroupMembers {
                group_state: Some(GroupState::Dead),
                group_protocol: None,
                members: vec![],
            }
        );
        let json = serde_json::to_value(&view).ok();
        assert_eq!(
            json,
            Some(serde_json::json!({"group_state": "dead", "group_protocol": null, "members": []}))
        );
    }
}
