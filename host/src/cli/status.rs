//! `kwasm status`: who holds which partition of every pipeline, and how far
//! behind it is.
//!
//! The group's membership (`GET /v1/pipelines/{name}/members`) names every
//! host and its partitions; positions, commits, lag and state come from
//! `GET /v1/assignments`, which only the contacted host answers for its own
//! partitions. Other hosts' partitions therefore show `-` in those columns.

use std::collections::{BTreeMap, BTreeSet};

use super::client::ApiClient;
use super::model::{Assignments, Members, PartitionProgress, Pipeline, TopicPartition};
use super::table::{Align, Table, number_or_dash};
use super::{CliError, ClientArgs, emit};

/// Arguments of `kwasm status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Refresh the table in place until Ctrl-C (on a terminal; otherwise
    /// print a new table each time, separated by a blank line).
    #[arg(short, long)]
    watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
    interval_s: f64,
    #[command(flatten)]
    client: ClientArgs,
}

/// `--interval-s`: 0.2 s to 1 h.
fn parse_interval(text: &str) -> Result<f64, String> {
    let s: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if (0.2..=3600.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{s} s is outside 0.2 to 3600"))
    }
}

/// Runs `kwasm status`.
pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let client = args.client.client()?;
    if !args.watch {
        let view = fetch(&client)?;
        return emit(&render(&view));
    }
    use std::io::IsTerminal;
    let in_place = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        // A failed fetch is shown and retried: a watch outlives a restart.
        let table = match fetch(&client) {
            Ok(view) => render(&view),
            Err(e) => format!("error: {e}\n"),
        };
        emit(&watch_frame(&table, in_place, first))?;
        first = false;
        std::thread::sleep(std::time::Duration::from_secs_f64(args.interval_s));
    }
}

/// One refresh of `--watch`: on a terminal, cursor home, the table with
/// each line cleared to its end, then the rest of the screen cleared (no
/// flicker, no scrolling); elsewhere, the table after a blank line.
fn watch_frame(table: &str, in_place: bool, first: bool) -> String {
    if !in_place {
        return if first {
            table.to_owned()
        } else {
            format!("\n{table}")
        };
    }
    let mut out = String::from(if first { "\x1b[2J\x1b[H" } else { "\x1b[H" });
    for line in table.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// Everything `status` shows, as fetched.
struct StatusView {
    pipelines: Vec<Pipeline>,
    members: BTreeMap<String, Members>,
    here: Assignments,
}

fn fetch(client: &ApiClient) -> Result<StatusView, CliError> {
    let pipelines = client.list_pipelines()?.pipelines;
    let here = client.assignments()?;
    let mut members = BTreeMap::new();
    for p in &pipelines {
        members.insert(p.name.clone(), client.pipeline_members(&p.name)?);
    }
    Ok(StatusView {
        pipelines,
        members,
        here,
    })
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusRow {
    pipeline: String,
    host: String,
    partition: Option<TopicPartition>,
    position: Option<i64>,
    committed: Option<i64>,
    lag: Option<i64>,
    state: String,
}

impl StatusRow {
    fn new(
        pipeline: &str,
        host: &str,
        partition: Option<TopicPartition>,
        progress: Option<&PartitionProgress>,
    ) -> Self {
        StatusRow {
            pipeline: pipeline.to_owned(),
            host: host.to_owned(),
            partition,
            position: progress.and_then(|p| p.position),
            committed: progress.and_then(|p| p.committed),
            lag: progress.and_then(|p| p.lag),
            state: progress
                .and_then(|p| p.state.clone())
                .unwrap_or_else(|| "-".to_owned()),
        }
    }
}

/// The rows of one pipeline: every member's partitions (with progress where
/// the contacted host holds them), then partitions the contacted host holds
/// but has not published as a member yet, or one placeholder row when no
/// host holds anything.
fn pipeline_rows(
    pipeline: &Pipeline,
    members: Option<&Members>,
    here: &Assignments,
) -> Vec<StatusRow> {
    let held_here: BTreeMap<TopicPartition, &PartitionProgress> = here
        .pipelines
        .iter()
        .filter(|a| a.pipeline == pipeline.name)
        .flat_map(|a| &a.partitions)
        .map(|p| {
            (
                TopicPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                },
                p,
            )
        })
        .collect();
    let mut hosts: Vec<_> = members
        .map(|m| m.members.iter().collect())
        .unwrap_or_default();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));

    let mut rows = Vec::new();
    let mut shown_here = BTreeSet::new();
    for member in hosts {
        let mut partitions = member.partitions.clone();
        partitions.sort();
        if partitions.is_empty() {
            rows.push(StatusRow::new(&pipeline.name, &member.host, None, None));
        }
        for tp in partitions {
            let progress = (member.host == here.host)
                .then(|| held_here.get(&tp).copied())
                .flatten();
            if progress.is_some() {
                shown_here.insert(tp.clone());
            }
            rows.push(StatusRow::new(
                &pipeline.name,
                &member.host,
                Some(tp),
                progress,
            ));
        }
    }
    for (tp, progress) in &held_here {
        if !shown_here.contains(tp) {
            rows.push(StatusRow::new(
                &pipeline.name,
                &here.host,
                Some(tp.clone()),
                Some(progress),
            ));
        }
    }
    if rows.is_empty() {
        let mut row = StatusRow::new(&pipeline.name, "-", None, None);
        row.state = if pipeline.paused {
            "paused"
        } else {
            "unassigned"
        }
        .to_owned();
        rows.push(row);
    }
    rows
}

/// The table, then a note when some positions are only known elsewhere.
fn render(view: &StatusView) -> String {
    if view.pipelines.is_empty() {
        return "no pipelines (create one with `kwasm pipeline apply FILE`)\n".to_owned();
    }
    let mut table = Table::new(&[
        ("PIPELINE", Align::Left),
        ("HOST", Align::Left),
        ("TOPIC", Align::Left),
        ("PARTITION", Align::Right),
        ("POSITION", Align::Right),
        ("COMMITTED", Align::Right),
        ("LAG", Align::Right),
        ("STATE", Align::Left),
    ]);
    let mut pipelines: Vec<&Pipeline> = view.pipelines.iter().collect();
    pipelines.sort_by(|a, b| a.name.cmp(&b.name));
    let mut elsewhere = false;
    for p in pipelines {
        for row in pipeline_rows(p, view.members.get(&p.name), &view.here) {
            elsewhere |= row.partition.is_some() && row.host != view.here.host;
            table.push(cells(row));
        }
    }
    let mut text = table.render();
    if elsewhere {
        text.push_str(&format!(
            "\nPOSITION, COMMITTED, LAG and STATE are known by the host holding the partition; \
             this is {}. Ask another host with --url.\n",
            view.here.host
        ));
    }
    text
}

fn cells(row: StatusRow) -> Vec<String> {
    let (topic, partition) = match row.partition {
        Some(tp) => (tp.topic, tp.partition.to_string()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    vec![
        row.pipeline,
        row.host,
        topic,
        partition,
        number_or_dash(row.position),
        number_or_dash(row.committed),
        number_or_dash(row.lag),
        row.state,
    ]
}

#[cfg(test)]
mod watch_tests {
    use super::watch_frame;

    #[test]
    fn a_watch_frame_redraws_in_place_on_a_terminal_and_appends_elsewhere() {
        let table = "A B\n1 2\n";
        assert_eq!(
            watch_frame(table, true, true),
            "\x1b[2J\x1b[HA B\x1b[K\n1 2\x1b[K\n\x1b[J"
        );
        assert_eq!(
            watch_frame(table, true, false),
            "\x1b[HA B\x1b[K\n1 2\x1b[K\n\x1b[J"
        );
        assert_eq!(watch_frame(table, false, true), table);
        assert_eq!(watch_frame(table, false, false), "\nA B\n1 2\n");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view() -> StatusView {
        let pipelines: Vec<Pipeline> = serde_json::from_value(json!([
            {"name": "orders-clean", "plugin": "redact@2", "inputs": ["orders"], "output": "oc"},
            {"name": "audit", "plugin": "filter@1", "inputs": ["audit"], "output": "ao", "paused": true}
        ]))
        .expect("pipelines");
        let members: Members = serde_json::from_value(json!({"pipeline": "orders-clean", "group_id": "g", "members": [
            {"host": "host-b", "client_id": "b", "partitions": [{"topic": "orders", "partition": 1}]},
            {"host": "host-a", "client_id": "a", "partitions": [
                {"topic": "orders", "partition": 2}, {"topic": "orders", "partition": 0}]},
            {"host": "host-c", "client_id": "c", "partitions": []}
        ]}))
        .expect("members");
        let here: Assignments = serde_json::from_value(json!({"host": "host-a", "pipelines": [
            {"pipeline": "orders-clean", "group_id": "g", "plugin": "redact", "plugin_version": 2,
             "plugin_digest": "d", "partitions": [
                {"topic": "orders", "partition": 0, "position": 120, "committed": 118,
                 "high_watermark": 125, "lag": 5, "state": "running"},
                {"topic": "orders", "partition": 2, "position": null, "committed": null,
                 "high_watermark": null, "lag": null, "state": "paused"},
                {"topic": "orders", "partition": 3, "position": 7, "committed": 7,
                 "high_watermark": 7, "lag": 0, "state": "running"}
            ]}
        ]}))
        .expect("assignments");
        StatusView {
            pipelines,
            members: BTreeMap::from([("orders-clean".to_owned(), members)]),
            here,
        }
    }

    #[test]
    fn every_members_partitions_are_listed_with_what_the_contacted_host_knows() {
        assert_eq!(
            render(&view()),
            "PIPELINE      HOST    TOPIC   PARTITION  POSITION  COMMITTED  LAG  STATE\n\
             audit         -       -               -         -          -    -  paused\n\
             orders-clean  host-a  orders          0       120        118    5  running\n\
             orders-clean  host-a  orders          2         -          -    -  paused\n\
             orders-clean  host-b  orders          1         -          -    -  -\n\
             orders-clean  host-c  -               -         -          -    -  -\n\
             orders-clean  host-a  orders          3         7          7    0  running\n\
             \n\
             POSITION, COMMITTED, LAG and STATE are known by the host holding the partition; \
             this is host-a. Ask another host with --url.\n"
        );
    }

    #[test]
    fn a_pipeline_nobody_holds_says_so() {
        let pipeline: Pipeline =
            serde_json::from_value(json!({"name": "idle", "plugin": "p@1"})).expect("pipeline");
        let here = Assignments {
            host: "host-a".into(),
            pipelines: vec![],
        };
        let rows = pipeline_rows(&pipeline, Some(&Members { members: vec![] }), &here);
        assert_eq!(
            rows,
            vec![StatusRow {
                pipeline: "idle".into(),
                host: "-".into(),
                partition: None,
                position: None,
                committed: None,
                lag: None,
                state: "unassigned".into(),
            }]
        );
    }

    #[test]
    fn no_pipelines_is_a_sentence_not_an_empty_table() {
        let view = StatusView {
            pipelines: vec![],
            members: BTreeMap::new(),
            here: Assignments {
                host: "h".into(),
                pipelines: vec![],
            },
        };
        assert_eq!(
            render(&view),
            "no pipelines (create one with `kwasm pipeline apply FILE`)\n"
        );
    }
}
