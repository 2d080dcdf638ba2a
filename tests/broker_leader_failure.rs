//! End-to-end on a 3-node Kafka cluster: SIGKILL the node that leads input
//! and output partitions while a host processes a steady stream, restart it
//! later. Nothing may be lost or duplicated (idempotent producer with
//! acks=all; the host's consumer and group survive), and processing must
//! resume on every partition by itself.

mod e2e;
mod failover;

#[test]
fn killing_the_leader_of_input_and_output_partitions_loses_and_duplicates_nothing() {
    failover::kill_leader_mid_stream("leader-kill", "at-least-once");
}
