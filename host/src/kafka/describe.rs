//! Describing one consumer group with librdkafka's DescribeConsumerGroups
//! admin API, which rust-rdkafka does not wrap.
//!
//! Why this API and not `fetch_group_list` (classic DescribeGroups): Kafka
//! 4 answers DescribeGroups for a KIP-848 (`group.protocol=consumer`) group
//! with no members, so the admin API showed an empty or published-only
//! group. librdkafka (2.10 and later) sends ConsumerGroupDescribe (KIP-848)
//! first and falls back to DescribeGroups by itself when the group is a
//! classic one (the broker answers GROUP_ID_NOT_FOUND) or the broker has no
//! ConsumerGroupDescribe (UNSUPPORTED_VERSION, or librdkafka's
//! UNSUPPORTED_FEATURE); it decodes the classic assignments too, and says
//! which kind of group answered.
//!
//! All `unsafe` of the call lives here: every librdkafka object this module
//! creates (queue, options, result event) is held by an [`Owned`] guard
//! that destroys it on every path; everything read from the result is
//! copied into owned Rust values before the event is destroyed. The call
//! blocks for up to the timeout: run it off the async workers.

use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext};
use serde::Serialize;

use crate::registry::TopicPartition;

/// How long past the request timeout the result queue is waited on, so
/// librdkafka's own timeout (an error naming what it waited for) normally
/// arrives before ours.
const POLL_MARGIN: Duration = Duration::from_secs(1);

/// A group as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// Its state as the coordinator reports it.
    pub state: GroupState,
    /// Which protocol the group speaks (which request answered).
    pub group_type: GroupType,
    /// Its members, in the broker's order.
    pub members: Vec<MemberDescription>,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id the coordinator gave it (classic: `<client.id>-<uuid>`;
    /// KIP-848: a client-generated UUID).
    pub member_id: String,
    /// Its `client.id` (kwasm: the host id).
    pub client_id: String,
    /// The address it connects from (`/127.0.0.1`).
    pub client_host: String,
    /// The partitions it holds, sorted. Under the classic protocol this is
    /// the assignment the leader handed out, which the coordinator reports
    /// only while the group is stable (empty otherwise); under KIP-848 the
    /// member's current assignment.
    pub assignment: Vec<TopicPartition>,
    /// KIP-848 only: the assignment the coordinator is moving the member
    /// to, sorted; equal to `assignment` once it has reconciled.
    pub target_assignment: Option<Vec<TopicPartition>>,
}

/// A group's state. librdkafka 2.12 knows the classic states only: a
/// KIP-848 group's `Assigning` and `Reconciling` come back as `Unknown`
/// (its `Empty`, `Stable` and `Dead` share the classic names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// Not a state librdkafka has a name for.
    Unknown,
    /// Classic: members are rejoining.
    PreparingRebalance,
    /// Classic: waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member holds its assignment.
    Stable,
    /// No such group (or it is being removed).
    Dead,
    /// The group exists (committed offsets) but has no members.
    Empty,
}

/// Which group protocol a group speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupType {
    /// JoinGroup/SyncGroup (answered by DescribeGroups).
    Classic,
    /// KIP-848 (answered by ConsumerGroupDescribe).
    Consumer,
    /// librdkafka could not tell.
    Unknown,
}

/// Why a group could not be described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// A group id with a NUL byte cannot be passed to librdkafka.
    #[error("group id {0:?} contains a NUL byte")]
    InvalidGroupId(String),
    /// librdkafka refused to set up the request (or the task running it
    /// failed).
    #[error("the describe could not run: {0}")]
    Setup(String),
    /// The broker cannot describe groups (librdkafka's mock cluster has
    /// neither DescribeGroups nor ConsumerGroupDescribe).
    #[error("the broker cannot describe groups: {message}")]
    Unsupported {
        /// librdkafka's message.
        message: String,
    },
    /// No answer within the timeout.
    #[error("no answer from the broker within {timeout_ms} ms")]
    TimedOut {
        /// The request timeout.
        timeout_ms: u64,
    },
    /// The broker or librdkafka answered with an error (authorization,
    /// coordinator not available, ...).
    #[error("{message} (error code {code})")]
    Broker {
        /// Kafka's (or librdkafka's negative) error code.
        code: i32,
        /// librdkafka's message.
        message: String,
    },
    /// The result did not contain the group asked about.
    #[error("the answer does not describe group `{0}`")]
    NotInResult(String),
}

/// Describes `group` through `client` (any client: the admin client's
/// `inner()` serves), waiting up to `timeout`. Blocks.
pub fn describe_consumer_group<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    timeout: Duration,
) -> Result<GroupDescription, DescribeError> {
    let group_c = CString::new(group).map_err(|_| DescribeError::InvalidGroupId(group.into()))?;
    let rk = client.native_ptr();
    let timeout_ms = millis(timeout);
    // SAFETY: `rk` is the live client `client` borrows for this whole call.
    // The queue is ours; librdkafka keeps its own reference for a result
    // that arrives after we gave up, so destroying ours early is safe.
    let queue = unsafe { Owned::new(rdsys::rd_kafka_queue_new(rk), rdsys::rd_kafka_queue_destroy) }
        .ok_or_else(|| DescribeError::Setup("no result queue".into()))?;
    // SAFETY: as above; the options are ours until dropped.
    let options = unsafe {
        Owned::new(
            rdsys::rd_kafka_AdminOptions_new(
                rk,
                rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            ),
            rdsys::rd_kafka_AdminOptions_destroy,
        )
    }
    .ok_or_else(|| DescribeError::Setup("no admin options".into()))?;
    let mut errstr = [0 as c_char; 256];
    // SAFETY: live options; `errstr` is writable for the length passed, and
    // librdkafka NUL-terminates what it writes there.
    let set = unsafe {
        rdsys::rd_kafka_AdminOptions_set_request_timeout(
            options.as_ptr(),
            c_int::try_from(timeout_ms).unwrap_or(c_int::MAX),
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if set != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: zero-initialised and NUL-terminated by librdkafka.
        let why = unsafe { CStr::from_ptr(errstr.as_ptr()) };
        return Err(DescribeError::Setup(why.to_string_lossy().into_owned()));
    }
    let mut groups = [group_c.as_ptr()];
    // SAFETY: live client, options and queue; librdkafka copies the group
    // names and the options before returning, so `group_c` and `options`
    // may go at any time after this call.
    unsafe {
        rdsys::rd_kafka_DescribeConsumerGroups(
            rk,
            groups.as_mut_ptr(),
            groups.len(),
            options.as_ptr(),
            queue.as_ptr(),
        );
    }
    let poll_ms = timeout_ms.saturating_add(millis(POLL_MARGIN));
    // SAFETY: live queue; the event returned (if any) is ours to destroy.
    let event = unsafe {
        Owned::new(
            rdsys::rd_kafka_queue_poll(
                queue.as_ptr(),
                c_int::try_from(poll_ms).unwrap_or(c_int::MAX),
            ),
            rdsys::rd_kafka_event_destroy,
        )
    }
    .ok_or(DescribeError::TimedOut { timeout_ms })?;
    // SAFETY: `event` is live until it drops at the end of this function,
    // after everything was copied out of it.
    unsafe { read_result(&event, group, timeout_ms) }
}

/// Copies the description of `group` out of a DescribeConsumerGroups
/// result event.
///
/// # Safety
/// `event` must be live for the whole call.
unsafe fn read_result(
    event: &Owned<rdsys::rd_kafka_event_t>,
    group: &str,
    timeout_ms: u64,
) -> Result<GroupDescription, DescribeError> {
    let ev = event.as_ptr();
    // SAFETY: live event (caller); the string is the event's.
    let code = unsafe { rd_kafka_event_error_raw(ev) };
    if code != 0 {
        // SAFETY: as above.
        let message = unsafe { string(rdsys::rd_kafka_event_error_string(ev)) };
        return Err(classify(code, message, timeout_ms));
    }
    // SAFETY: live event; NULL when it is some other kind of event.
    let result = unsafe { rdsys::rd_kafka_event_DescribeConsumerGroups_result(ev) };
    if result.is_null() {
        return Err(DescribeError::NotInResult(group.into()));
    }
    let mut count = 0usize;
    // SAFETY: `result` is the live event; the array of `count` descriptions
    // belongs to it.
    let descriptions =
        unsafe { rdsys::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count) };
    if descriptions.is_null() {
        return Err(DescribeError::NotInResult(group.into()));
    }
    // SAFETY: librdkafka returns `count` valid pointers at `descriptions`.
    let descriptions = unsafe { std::slice::from_raw_parts(descriptions, count) };
    for &desc in descriptions {
        // SAFETY: a description of the live event.
        if unsafe { string(rdsys::rd_kafka_ConsumerGroupDescription_group_id(desc)) } == group {
            // SAFETY: as above.
            return unsafe { read_group(desc, group, timeout_ms) };
        }
    }
    Err(DescribeError::NotInResult(group.into()))
}

/// Copies one group description.
///
/// # Safety
/// `desc` must be a description of a live result event.
unsafe fn read_group(
    desc: *const rdsys::rd_kafka_ConsumerGroupDescription_t,
    group: &str,
    timeout_ms: u64,
) -> Result<GroupDescription, DescribeError> {
    // SAFETY: (for every call below) `desc` and what it returns belong to
    // the live event (caller); the group's error is the description's, not
    // ours to destroy.
    unsafe {
        let error = rdsys::rd_kafka_ConsumerGroupDescription_error(desc);
        if !error.is_null() {
            let message = string(rdsys::rd_kafka_error_string(error));
            return Err(classify(
                rd_kafka_error_code_raw(error),
                message,
                timeout_ms,
            ));
        }
        let members = (0..rdsys::rd_kafka_ConsumerGroupDescription_member_count(desc))
            .map(|i| rdsys::rd_kafka_ConsumerGroupDescription_member(desc, i))
            .filter(|m| !m.is_null())
            .map(|m| read_member(m))
            .collect();
        Ok(GroupDescription {
            group_id: group.to_owned(),
            state: group_state(rd_kafka_ConsumerGroupDescription_state_raw(desc)),
            group_type: group_type(rd_kafka_ConsumerGroupDescription_type_raw(desc)),
            members,
        })
    }
}

/// Copies one member.
///
/// # Safety
/// `member` must be a member of a live result event.
unsafe fn read_member(member: *const rdsys::rd_kafka_MemberDescription_t) -> MemberDescription {
    // SAFETY: (every call) the member and what it returns belong to the
    // live event; a NULL string or assignment reads as empty or absent.
    unsafe {
        let assignment = rdsys::rd_kafka_MemberDescription_assignment(member);
        let target = rdsys::rd_kafka_MemberDescription_target_assignment(member);
        MemberDescription {
            member_id: string(rdsys::rd_kafka_MemberDescription_consumer_id(member)),
            client_id: string(rdsys::rd_kafka_MemberDescription_client_id(member)),
            client_host: string(rdsys::rd_kafka_MemberDescription_host(member)),
            assignment: assignment_partitions(assignment).unwrap_or_default(),
            target_assignment: assignment_partitions(target),
        }
    }
}

/// The sorted partitions of a member assignment; `None` for a NULL one.
///
/// # Safety
/// `assignment` must be NULL or an assignment of a live result event.
unsafe fn assignment_partitions(
    assignment: *const rdsys::rd_kafka_MemberAssignment_t,
) -> Option<Vec<TopicPartition>> {
    if assignment.is_null() {
        return None;
    }
    // SAFETY: a live assignment (caller); its list belongs to it.
    let list = unsafe { rdsys::rd_kafka_MemberAssignment_partitions(assignment) };
    if list.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: a live topic-partition list holds `cnt` elements at `elems`.
    let elems = unsafe {
        let list = &*list;
        match usize::try_from(list.cnt) {
            Ok(n) if n > 0 && !list.elems.is_null() => std::slice::from_raw_parts(list.elems, n),
            _ => &[],
        }
    };
    let mut partitions: Vec<TopicPartition> = elems
        .iter()
        .map(|tp| TopicPartition {
            // SAFETY: the element's topic is a NUL-terminated string of
            // the live list.
            topic: unsafe { string(tp.topic) },
            partition: tp.partition,
        })
        .collect();
    partitions.sort();
    Some(partitions)
}

/// A librdkafka string copied, lossily; NULL reads as empty.
///
/// # Safety
/// `s` must be NULL or a NUL-terminated string live for the call.
unsafe fn string(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: NUL-terminated and live (caller).
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The error for a (Kafka or librdkafka) error `code`.
fn classify(code: i32, message: String, timeout_ms: u64) -> DescribeError {
    use rdsys::rd_kafka_resp_err_t as E;
    let is = |e: E| code == e as i32;
    if is(E::RD_KAFKA_RESP_ERR__TIMED_OUT) {
        DescribeError::TimedOut { timeout_ms }
    } else if is(E::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE)
        || is(E::RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION)
    {
        DescribeError::Unsupported { message }
    } else {
        DescribeError::Broker { code, message }
    }
}

/// librdkafka's `rd_kafka_consumer_group_state_t`, by value.
fn group_state(raw: c_uint) -> GroupState {
    use rdsys::rd_kafka_consumer_group_state_t as S;
    match raw {
        x if x == S::RD_KAFKA_CONSUMER_GROUP_STATE_PREPARING_REBALANCE as c_uint => {
            GroupState::PreparingRebalance
        }
        x if x == S::RD_KAFKA_CONSUMER_GROUP_STATE_COMPLETING_REBALANCE as c_uint => {
            GroupState::CompletingRebalance
        }
        x if x == S::RD_KAFKA_CONSUMER_GROUP_STATE_STABLE as c_uint => GroupState::Stable,
        x if x == S::RD_KAFKA_CONSUMER_GROUP_STATE_DEAD as c_uint => GroupState::Dead,
        x if x == S::RD_KAFKA_CONSUMER_GROUP_STATE_EMPTY as c_uint => GroupState::Empty,
        _ => GroupState::Unknown,
    }
}

/// librdkafka's `rd_kafka_consumer_group_type_t`, by value.
fn group_type(raw: c_uint) -> GroupType {
    use rdsys::rd_kafka_consumer_group_type_t as T;
    match raw {
        x if x == T::RD_KAFKA_CONSUMER_GROUP_TYPE_CLASSIC as c_uint => GroupType::Classic,
        x if x == T::RD_KAFKA_CONSUMER_GROUP_TYPE_CONSUMER as c_uint => GroupType::Consumer,
        _ => GroupType::Unknown,
    }
}

// The same librdkafka functions rdkafka-sys binds, declared here with
// plain integer returns: its bindings return Rust enums, and a value
// outside them (a broker's error code newer than librdkafka's list, a
// state a later librdkafka adds) would be undefined behaviour before any
// check could run. The symbols are the ones rdkafka-sys links.
unsafe extern "C" {
    #[link_name = "rd_kafka_event_error"]
    fn rd_kafka_event_error_raw(rkev: *mut rdsys::rd_kafka_event_t) -> c_int;
    #[link_name = "rd_kafka_error_code"]
    fn rd_kafka_error_code_raw(error: *const rdsys::rd_kafka_error_t) -> c_int;
    #[link_name = "rd_kafka_ConsumerGroupDescription_state"]
    fn rd_kafka_ConsumerGroupDescription_state_raw(
        grpdesc: *const rdsys::rd_kafka_ConsumerGroupDescription_t,
    ) -> c_uint;
    #[link_name = "rd_kafka_ConsumerGroupDescription_type"]
    fn rd_kafka_ConsumerGroupDescription_type_raw(
        grpdesc: *const rdsys::rd_kafka_ConsumerGroupDescription_t,
    ) -> c_uint;
}

/// A librdkafka object this module created, destroyed once, on drop.
struct Owned<T> {
    ptr: NonNull<T>,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// `None` for a NULL `ptr`.
    ///
    /// # Safety
    /// A non-NULL `ptr` must be an object the caller owns, that `destroy`
    /// frees and nothing else does.
    unsafe fn new(ptr: *mut T, destroy: unsafe extern "C" fn(*mut T)) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Owned { ptr, destroy })
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: owned (see `new`), destroyed here only, once.
        unsafe { (self.destroy)(self.ptr.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdsys::rd_kafka_consumer_group_state_t as S;
    use rdsys::rd_kafka_consumer_group_type_t as T;

    #[test]
    fn librdkafka_states_and_types_map_by_value_and_anything_else_is_unknown() {
        let states = [
            (
                S::RD_KAFKA_CONSUMER_GROUP_STATE_UNKNOWN,
                GroupState::Unknown,
            ),
            (
                S::RD_KAFKA_CONSUMER_GROUP_STATE_PREPARING_REBALANCE,
                GroupState::PreparingRebalance,
            ),
            (
                S::RD_KAFKA_CONSUMER_GROUP_STATE_COMPLETING_REBALANCE,
                GroupState::CompletingRebalance,
            ),
            (S::RD_KAFKA_CONSUMER_GROUP_STATE_STABLE, GroupState::Stable),
            (S::RD_KAFKA_CONSUMER_GROUP_STATE_DEAD, GroupState::Dead),
            (S::RD_KAFKA_CONSUMER_GROUP_STATE_EMPTY, GroupState::Empty),
        ];
        for (raw, state) in states {
            assert_eq!(group_state(raw as c_uint), state, "{raw:?}");
        }
        assert_eq!(
            group_state(S::RD_KAFKA_CONSUMER_GROUP_STATE__CNT as c_uint),
            GroupState::Unknown
        );
        assert_eq!(group_state(77), GroupState::Unknown);
        assert_eq!(
            group_type(T::RD_KAFKA_CONSUMER_GROUP_TYPE_CLASSIC as c_uint),
            GroupType::Classic
        );
        assert_eq!(
            group_type(T::RD_KAFKA_CONSUMER_GROUP_TYPE_CONSUMER as c_uint),
            GroupType::Consumer
        );
        assert_eq!(
            group_type(T::RD_KAFKA_CONSUMER_GROUP_TYPE_UNKNOWN as c_uint),
            GroupType::Unknown
        );
        assert_eq!(group_type(9), GroupType::Unknown);
        assert_eq!(
            serde_json::to_value((GroupState::PreparingRebalance, GroupType::Consumer)).ok(),
            Some(serde_json::json!(["preparing_rebalance", "consumer"]))
        );
    }

    #[test]
    fn error_codes_say_timeout_unsupported_or_broker() {
        use rdsys::rd_kafka_resp_err_t as E;
        assert_eq!(
            classify(E::RD_KAFKA_RESP_ERR__TIMED_OUT as i32, "t".into(), 5000),
            DescribeError::TimedOut { timeout_ms: 5000 }
        );
        for unsupported in [
            E::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE,
            E::RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION,
        ] {
            assert_eq!(
                classify(unsupported as i32, "no".into(), 1),
                DescribeError::Unsupported {
                    message: "no".into()
                }
            );
        }
        // GROUP_AUTHORIZATION_FAILED, and a code newer than librdkafka's list.
        for code in [30, 127] {
            assert_eq!(
                classify(code, "m".into(), 1),
                DescribeError::Broker {
                    code,
                    message: "m".into()
                }
            );
        }
    }

    /// The whole FFI path against librdkafka's mock cluster, which has
    /// neither ConsumerGroupDescribe nor DescribeGroups: a typed error,
    /// promptly, and nothing leaked or crashed on the way.
    #[test]
    fn a_broker_that_cannot_describe_groups_is_an_error_not_a_hang() {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", mock.bootstrap_servers())
                .create()
                .expect("admin client");
        let started = std::time::Instant::now();
        let got = describe_consumer_group(admin.inner(), "g", Duration::from_secs(5));
        println!("mock cluster, after {:?}: {got:?}", started.elapsed());
        assert!(
            matches!(got, Err(DescribeError::Unsupported { .. })),
            "{got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            describe_consumer_group(admin.inner(), "a\0b", Duration::from_secs(1)),
            Err(DescribeError::InvalidGroupId("a\0b".into()))
        );
    }
}
