//! `ratemesh streams [--json]`: the streams each service consumes, its consumer group on
//! each and the Redis key of every partition stream, from the contract's table of readers
//! (what the services start their consumers from) and the loaded `redis.key_prefix` and
//! `redis.partitions`. deploy/check.sh compares the Helm chart's autoscaling triggers with
//! the JSON form, so the chart cannot watch a group the code does not create.

use clap::Args;
use ratemesh::ServiceName;
use ratemesh_runtime::Settings;
use serde::Serialize;

use super::table;

#[derive(Debug, Args)]
pub(crate) struct StreamsArgs {
    /// One JSON document (for scripts and deploy checks) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where every consumer group of a deployment reads.
#[derive(Debug, Serialize)]
struct Layout {
    key_prefix: String,
    /// Partition streams per stream (`redis.partitions`).
    partitions: u16,
    /// Every service, in the order `ratemesh up` starts them.
    services: Vec<ServiceStreams>,
}

#[derive(Debug, Serialize)]
struct ServiceStreams {
    service: &'static str,
    /// Empty for a service that reads no stream through a consumer group.
    consumes: Vec<Consumed>,
}

#[derive(Debug, Serialize)]
struct Consumed {
    stream: &'static str,
    group: &'static str,
    partitions: u16,
    /// The key of each partition stream, partition 0 first.
    keys: Vec<String>,
}

pub(crate) fn run(args: &StreamsArgs, settings: anyhow::Result<Settings>) -> anyhow::Result<()> {
    let settings = settings?;
    let layout = layout(&settings.redis.key_prefix, settings.redis.partitions);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&layout)?);
    } else {
        print!("{}", render(&layout));
    }
    Ok(())
}

fn layout(key_prefix: &str, partitions: u16) -> Layout {
    let services = ServiceName::ALL
        .iter()
        .map(|service| ServiceStreams {
            service: service.name(),
            consumes: service
                .reader()
                .map(|reader| {
                    reader
                        .streams
                        .iter()
                        .map(|&stream| Consumed {
                            stream,
                            group: reader.group,
                            partitions,
                            keys: (0..partitions)
                                .map(|p| partition_stream_key(key_prefix, stream, p))
                                .collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Layout {
        key_prefix: key_prefix.to_owned(),
        partitions,
        services,
    }
}

/// The Redis key of partition `partition` of `stream`: `{<prefix>:p<n>}:s:<stream>`, the
/// layout services/bus/src/redis/keys.rs documents (a hash tag per partition, so one
/// partition is one Redis Cluster slot). tests/streams.rs checks it against the keys the
/// services create on a real Redis.
fn partition_stream_key(key_prefix: &str, stream: &str, partition: u16) -> String {
    format!("{{{key_prefix}:p{partition}}}:s:{stream}")
}

/// One row per consumed stream; a service that reads none gets one row saying so.
fn render(layout: &Layout) -> String {
    let mut rows = Vec::new();
    for service in &layout.services {
        if service.consumes.is_empty() {
            rows.push(vec![
                service.service.to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "(consumes no stream)".to_owned(),
            ]);
        }
        for consumed in &service.consumes {
            let keys = match consumed.keys.as_slice() {
                [] => String::new(),
                [only] => only.clone(),
                [first, .., last] => format!("{first} .. {last}"),
            };
            rows.push(vec![
                service.service.to_owned(),
                consumed.group.to_owned(),
                consumed.stream.to_owned(),
                consumed.partitions.to_string(),
                keys,
            ]);
        }
    }
    format!(
        "key prefix {:?}, {} partition stream(s) per stream\n\n{}",
        layout.key_prefix,
        layout.partitions,
        table::render(
            &["SERVICE", "GROUP", "STREAM", "PARTITIONS", "KEYS"],
            &rows,
            "(no services)",
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed<'a>(layout: &'a Layout, service: &str) -> Vec<(&'a str, &'a str)> {
        layout
            .services
            .iter()
            .find(|s| s.service == service)
            .unwrap_or_else(|| panic!("no service {service}"))
            .consumes
            .iter()
            .map(|c| (c.stream, c.group))
            .collect()
    }

    #[test]
    fn each_service_lists_the_streams_of_its_group() {
        let layout = layout("acme", 2);
        assert_eq!(consumed(&layout, "ingest"), []);
        assert_eq!(
            consumed(&layout, "rates"),
            [
                ("stock", "rates"),
                ("overrides", "rates"),
                ("incentives", "rates")
            ]
        );
        assert_eq!(consumed(&layout, "incentives"), [("stock", "incentives")]);
        assert_eq!(
            consumed(&layout, "notifier"),
            [("rates", "notifier"), ("incentives", "notifier")]
        );
    }

    #[test]
    fn every_partition_has_its_key_under_its_hash_tag() {
        let layout = layout("acme", 3);
        let stock = &layout.services[1].consumes[0];
        assert_eq!(stock.partitions, 3);
        assert_eq!(
            stock.keys,
            [
                "{acme:p0}:s:stock",
                "{acme:p1}:s:stock",
                "{acme:p2}:s:stock"
            ]
        );
    }

    #[test]
    fn the_table_shows_one_row_per_consumed_stream_and_the_first_and_last_key() {
        let text = render(&layout("acme", 16));
        assert!(
            text.starts_with("key prefix \"acme\", 16 partition"),
            "{text}"
        );
        let rows: Vec<&str> = text.lines().skip(3).collect();
        assert_eq!(rows.len(), 1 + 3 + 1 + 2, "{text}");
        assert!(rows[0].starts_with("ingest") && rows[0].ends_with("(consumes no stream)"));
        let incentives: Vec<&&str> = rows
            .iter()
            .filter(|r| r.starts_with("incentives"))
            .collect();
        assert_eq!(incentives.len(), 1, "{text}");
        let cells: Vec<&str> = incentives[0].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "incentives",
                "incentives",
                "stock",
                "16",
                "{acme:p0}:s:stock",
                "..",
                "{acme:p15}:s:stock"
            ]
        );
    }
}
