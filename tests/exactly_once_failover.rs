//! End-to-end on a 3-node Kafka cluster under `delivery = "exactly-once"`:
//! SIGKILL the node leading input and output partitions mid-stream (and
//! restart it later). The `read_committed` output, read to the end, must
//! hold every input exactly once: the transactional producer rides out the
//! leader change, and any transaction the failover aborts is redone.
//! (The same scenario under at-least-once: `tests/broker_leader_failure.rs`.)

mod e2e;
mod failover;

#[test]
fn killing_a_leader_under_exactly_once_loses_and_duplicates_nothing() {
    failover::kill_leader_mid_stream("eos-leader-kill", "exactly-once");
}
