//! The test broker and the support library agree: what is produced is read back
//! exactly once, in order, at the offsets the watermarks report. If this fails,
//! every other end-to-end test is suspect.

use std::time::Duration;

use kwasm_tests::kafka::consumer_config;
use kwasm_tests::{OutRecord, describe_group, produce, produce_sequence, unique, wait_until};
use kwasm_tests::{by_partition, committed_offsets, create_topic, end_offsets, read_to_end};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

#[test]
fn produced_sequence_is_consumed_in_order_at_the_watermarks() {
    let topic = unique("smoke");
    create_topic(&topic, 3);

    let sent = produce_sequence(&topic, 3, 300);
    assert_eq!(sent.len(), 300);

    let records = read_to_end(&topic, 300, Duration::from_secs(30));
    assert_eq!(
        records.len(),
        300,
        "consumed {} of 300 records",
        records.len()
    );

    let partitions = by_partition(&records);
    assert_eq!(
        partitions.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for (partition, records) in &partitions {
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..100).collect::<Vec<i64>>(),
            "offsets of partition {partition}"
        );
        for record in records {
            let expected = format!("{partition}:{}", record.offset);
            assert_eq!(record.value_str(), expected);
            assert_eq!(record.key_str(), expected);
            assert!(record.headers.is_empty());
        }
    }

    assert_eq!(end_offsets(&topic), vec![100, 100, 100]);
}

#[test]
fn headers_keys_and_null_values_round_trip() {
    let topic = unique("smoke-headers");
    create_topic(&topic, 1);

    let delivered = produce(
        &topic,
        [
            OutRecord::to(0, "v0")
                .key("k0")
                .header("trace", "abc")
                .header("n", [0u8, 255]),
            OutRecord {
                partition: Some(0),
                ..OutRecord::default()
            },
        ],
    );
    assert_eq!(delivered, vec![(0, 0), (0, 1)]);

    let records = read_to_end(&topic, 2, Duration::from_secs(30));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(records[0].value.as_deref(), Some(&b"v0"[..]));
    assert_eq!(
        records[0].headers,
        vec![
            ("trace".to_string(), b"abc".to_vec()),
            ("n".to_string(), vec![0, 255])
        ]
    );
    assert_eq!(records[1].key, None);
    assert_eq!(records[1].value, None);
}

#[test]
fn unknown_group_has_no_members_and_no_commits() {
    let topic = unique("smoke-group");
    create_topic(&topic, 2);
    let group = unique("smoke-group");

    assert_eq!(committed_offsets(&group, &topic, 2), vec![None, None]);
    assert!(describe_group(&group).members.is_empty());
}

#[test]
fn a_subscribed_member_is_listed_and_its_commits_read_back() {
    let topic = unique("smoke-member");
    create_topic(&topic, 2);
    produce_sequence(&topic, 2, 10);
    let group = unique("smoke-member");

    let consumer: BaseConsumer = consumer_config(Some(&group))
        .set("client.id", "smoke-member")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    // Rebalance callbacks and the join only progress while polling.
    let assigned = wait_until(Duration::from_secs(30), Duration::ZERO, || {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message.expect("consume");
        }
        consumer.assignment().map(|a| a.count()).unwrap_or(0) == 2
    });
    assert!(assigned, "no assignment of both partitions within 30 s");

    let group_info = describe_group(&group);
    assert_eq!(group_info.state, "Stable", "{group_info:?}");
    assert_eq!(group_info.members.len(), 1, "{group_info:?}");
    // Kafka names classic members `<client.id>-<uuid>` and reports the client
    // id, the chosen assignor and the member's assignment.
    let member = &group_info.members[0];
    assert!(
        member.member_id.starts_with("smoke-member-"),
        "{group_info:?}"
    );
    assert_eq!(member.client_id, "smoke-member", "{group_info:?}");
    assert_eq!(group_info.protocol, "cooperative-sticky", "{group_info:?}");
    assert_eq!(
        member.assignment.partitions_of(&topic),
        vec![0, 1],
        "{group_info:?}"
    );

    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(3))
        .expect("tpl");
    offsets
        .add_partition_offset(&topic, 1, Offset::Offset(5))
        .expect("tpl");
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    assert_eq!(committed_offsets(&group, &topic, 2), vec![Some(3), Some(5)]);
}
