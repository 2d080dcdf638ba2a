//! End-to-end on a 3-node Kafka cluster: every node SIGKILLed at once for
//! 30 s, then all restarted. The host reports not-ready during the outage,
//! stays up, and after recovery processes everything: nothing lost.

mod e2e;
mod failover;

use std::time::{Duration, Instant};

use e2e::{account, http_get};
use failover::{Scenario, sequence};
use kwasm_tests::{OutRecord, produce, wait_until};

#[test]
fn a_30_s_full_cluster_outage_loses_nothing() {
    let mut s = Scenario::start("cluster-outage");
    let host = s.start_host();
    let first = sequence(0, 1_000);
    produce(
        &s.input,
        first
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    let out = kwasm_tests::read_to_end(&s.output, first.len(), Duration::from_secs(60));
    assert_eq!(out.len(), first.len(), "all of the first batch came out");
    let before = s.committed();
    host.wait_ready(Duration::from_secs(30));

    let ids = s.cluster.ids();
    let down = Instant::now();
    for &id in &ids {
        s.cluster.kill(id);
    }
    let not_ready = wait_until(Duration::from_secs(25), Duration::from_millis(200), || {
        http_get(host.admin_port, "/readyz").is_some_and(|(status, _)| status == 503)
    });
    assert!(not_ready, "host never reported not-ready during the outage");
    println!(
        "cluster down: host not ready after {:.1} s: {:?}",
        down.elapsed().as_secs_f64(),
        http_get(host.admin_port, "/readyz")
    );
    assert!(
        http_get(host.admin_port, "/healthz").is_some_and(|(status, _)| status == 200),
        "the host stays up"
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    let restarted = Instant::now();
    s.cluster.restart_all(&ids);
    let serving = Instant::now();
    println!(
        "cluster serving again {:.1} s after the restart ({:.1} s after the kill)",
        restarted.elapsed().as_secs_f64(),
        down.elapsed().as_secs_f64()
    );

    let second = sequence(1_000, 1_000);
    produce(
        &s.input,
        second
            .iter()
            .map(|(p, v)| OutRecord::to(*p, v.clone()).key(v.clone())),
    );
    let resumed = s.wait_processing_again(&before, serving, Duration::from_secs(120));
    let all: Vec<(i32, String)> = first.iter().chain(&second).cloned().collect();
    let output = kwasm_tests::read_to_end(&s.output, all.len(), Duration::from_secs(120));
    let acc = account(&all, &output);
    println!(
        "cluster outage: processing again {:.1} s after the cluster served again; produced {}, lost {}, duplicates {}, out of order {}",
        resumed.as_secs_f64(),
        all.len(),
        acc.lost,
        acc.duplicates,
        acc.out_of_order
    );
    assert_eq!(acc.lost, 0, "{acc:?}");
    host.wait_ready(Duration::from_secs(60));
}
