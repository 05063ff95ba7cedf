//! `ratemesh streams [--json]`: the streams each service consumes, its consumer group on
//! each and the Redis key of every partition stream, from the contract's table of readers
//! (what the services start their consumers from) and the loaded `redis.key_prefix` and
//! `redis.partitions`. deploy/check.sh compares the Helm chart's autoscaling triggers with
//! the JSON form, so the chart cannot watch a group the code does not create.
//!
//! `ratemesh streams groups` asks Redis which consumer groups exist on the streams
//! retention trims, with their live readers and what each still holds back; a group no
//! service reads for (the input archive's after `ingest.archive.dir` was unset) stops
//! trimming at its position for good, and shows there with no readers and a growing
//! backlog. `ratemesh streams drop-group GROUP` destroys it. The services' own groups are
//! refused without `--force`, and so is a group something still reads for: a consumer that
//! finds its group gone creates it again at the start of the stream.

use clap::{Args, Subcommand};
use ratemesh::ServiceName;
use ratemesh_bus::Bus;
use ratemesh_runtime::Settings;
use serde::Serialize;

use super::{BadInput, table};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct StreamsArgs {
    /// One JSON document (for scripts and deploy checks) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Option<StreamsCommand>,
}

#[derive(Debug, Subcommand)]
enum StreamsCommand {
    /// The consumer groups that exist in Redis on each stream retention trims: their live
    /// readers, entries pending and not yet delivered (what trimming keeps for them) and
    /// dead letters. A group with no readers holds the stream back until it is dropped.
    Groups {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Destroy a consumer group nothing reads for any more (the input archive's
    /// `archive`, once it is turned off), with its pending entries and dead letters, so
    /// retention trims past where it stood.
    DropGroup(DropGroupArgs),
}

#[derive(Debug, Args)]
struct DropGroupArgs {
    /// The consumer group.
    group: String,
    /// Only on this stream (repeat for more). Default: every stream the group is on.
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    /// Drop it even if it is a service's own group or something still reads for it
    /// (that reader creates it again at the start of the stream and reads it all again).
    #[arg(long)]
    force: bool,
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

pub(crate) async fn run(
    args: &StreamsArgs,
    settings: anyhow::Result<Settings>,
) -> anyhow::Result<()> {
    let settings = settings?;
    match &args.command {
        None => {}
        Some(StreamsCommand::Groups { json }) => return groups(&settings, *json).await,
        Some(StreamsCommand::DropGroup(drop)) => return drop_group(&settings, drop).await,
    }
    let layout = layout(&settings.redis.key_prefix, settings.redis.partitions);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&layout)?);
    } else {
        print!("{}", render(&layout));
    }
    Ok(())
}

/// One consumer group on one stream, as `streams groups` shows it.
#[derive(Debug, Serialize)]
struct StreamGroup {
    stream: &'static str,
    #[serde(flatten)]
    info: GroupInfoJson,
    /// The service whose group it is; `None` for any other (the input archive's).
    service: Option<&'static str>,
}

/// [`ratemesh_bus::GroupInfo`] for the JSON output.
#[derive(Debug, Serialize)]
struct GroupInfoJson {
    group: String,
    readers: u64,
    pending: u64,
    undelivered: u64,
    dead_letters: u64,
}

/// The streams retention trims, which a stale group holds back: every stream the services
/// share.
fn trimmed_streams(settings: &Settings) -> Vec<&'static str> {
    settings
        .retention
        .streams()
        .iter()
        .map(|(stream, _)| *stream)
        .collect()
}

/// The service that consumes `stream` in `group`, if any.
fn service_of(stream: &str, group: &str) -> Option<&'static str> {
    ServiceName::ALL.into_iter().find_map(|service| {
        let reader = service.reader()?;
        (reader.group == group && reader.streams.contains(&stream)).then(|| service.name())
    })
}

/// The bus of the loaded settings, which must be Redis: the in-process bus lives in the
/// process that runs the services, out of this command's reach.
async fn redis_bus(settings: &Settings) -> anyhow::Result<Bus> {
    if settings.redis.url().is_none() {
        return Err(BadInput(anyhow::anyhow!(
            "redis.url: not set, so the streams are in the memory of the process that runs the services (`ratemesh up`); give the deployment's settings (--config, RATEMESH__REDIS__URL)"
        ))
        .into());
    }
    ratemesh_runtime::backend::connect(settings).await
}

async fn groups(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let bus = redis_bus(settings).await?;
    let mut found = Vec::new();
    for stream in trimmed_streams(settings) {
        for info in bus.groups(stream).await? {
            found.push(StreamGroup {
                stream,
                service: service_of(stream, &info.group),
                info: GroupInfoJson {
                    group: info.group,
                    readers: info.readers,
                    pending: info.pending,
                    undelivered: info.undelivered,
                    dead_letters: info.dead_letters,
                },
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|g| {
            let note = match (g.service, g.info.readers) {
                (Some(service), _) => format!("the {service} service's"),
                (None, 0) => format!(
                    "no reader: trimming stops here; `ratemesh streams drop-group {}` if it is gone for good",
                    g.info.group
                ),
                (None, _) => String::new(),
            };
            vec![
                g.stream.to_owned(),
                g.info.group.clone(),
                g.info.readers.to_string(),
                g.info.pending.to_string(),
                g.info.undelivered.to_string(),
                g.info.dead_letters.to_string(),
                note,
            ]
        })
        .collect();
    table::print(
        &[
            "STREAM",
            "GROUP",
            "READERS",
            "PENDING",
            "UNDELIVERED",
            "DEAD",
            "NOTE",
        ],
        &rows,
        "(no consumer groups)",
    );
    Ok(())
}

async fn drop_group(settings: &Settings, args: &DropGroupArgs) -> anyhow::Result<()> {
    let group = args.group.trim();
    let known = trimmed_streams(settings);
    for stream in &args.streams {
        if !known.contains(&stream.as_str()) {
            return Err(BadInput(anyhow::anyhow!(
                "--stream {stream}: not a stream of ratemesh (they are {})",
                known.join(", ")
            ))
            .into());
        }
    }
    let owner = ServiceName::ALL
        .into_iter()
        .find(|service| service.reader().is_some_and(|r| r.group == group));
    if let Some(service) = owner.map(ServiceName::name)
        && !args.force
    {
        return Err(BadInput(anyhow::anyhow!(
            "refusing to drop group {group}: it is the {service} service's own; while the service runs it creates the group again at the start of each stream and handles every entry there again, and while it does not, dropping loses its backlog. Pass --force only if the service is gone for good"
        ))
        .into());
    }
    let bus = redis_bus(settings).await?;
    let wanted: Vec<&str> = if args.streams.is_empty() {
        known
    } else {
        known
            .into_iter()
            .filter(|s| args.streams.iter().any(|w| w == s))
            .collect()
    };
    let mut on = Vec::new();
    for stream in wanted {
        let info = bus
            .groups(stream)
            .await?
            .into_iter()
            .find(|g| g.group == group);
        match info {
            Some(info) => on.push((stream, info)),
            None if !args.streams.is_empty() => {
                println!("group {group} is not on stream {stream}");
            }
            None => {}
        }
    }
    if on.is_empty() && args.streams.is_empty() {
        println!("group {group} is on no stream: nothing to drop");
        return Ok(());
    }
    let read: Vec<String> = on
        .iter()
        .filter(|(_, info)| info.readers > 0)
        .map(|(stream, info)| format!("{} on {stream}", info.readers))
        .collect();
    if !read.is_empty() && !args.force {
        return Err(BadInput(anyhow::anyhow!(
            "refusing to drop group {group}: it still has live readers ({}); a reader that finds its group gone creates it again at the start of the stream and reads it all again. Stop them first (for the archive: unset ingest.archive.dir and scale the archiving pod down), or pass --force",
            read.join(", ")
        ))
        .into());
    }
    for (stream, info) in on {
        if bus.drop_group(stream, group).await? {
            println!(
                "dropped group {group} from stream {stream}: {} pending, {} undelivered, {} dead letters",
                info.pending, info.undelivered, info.dead_letters
            );
        } else {
            println!("group {group} is not on stream {stream}");
        }
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
