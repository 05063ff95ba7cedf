//! `ratemesh-loadtest <scenario>`: runs a BFCM load scenario against ratemesh (started in
//! this process by default) and prints the ratio report; writes JSON and SVG next to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ratemesh_loadtest::scenario::{self, RunConfig, Scenario};
use ratemesh_loadtest::target::{External, InProcess, RedisSpec, TargetSpec};

/// The same allocator as the `ratemesh` binary, so the in-process target measures what a
/// deployment runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ratemesh-loadtest",
    about = "BFCM load scenarios for ratemesh with same-run baselines"
)]
struct Args {
    /// Which scenario.
    #[arg(value_enum)]
    scenario: ScenarioArg,
    /// Short, low-rate run that checks only errors and lost events (what CI runs).
    #[arg(long)]
    smoke: bool,
    /// Seconds per measured phase, warm-up included.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds at the start of each phase that are plotted but not summarised.
    #[arg(long)]
    warmup: Option<f64>,
    /// Open-loop rate (requests/s) where the scenario has one.
    #[arg(long)]
    rate: Option<f64>,
    /// Requests in flight per driver (closed-loop workers).
    #[arg(long)]
    concurrency: Option<usize>,
    /// gRPC connections per driver.
    #[arg(long)]
    connections: Option<usize>,
    /// Catalogue size.
    #[arg(long)]
    skus: Option<usize>,
    /// Zipf exponent of SKU popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// BatchGetRates sizes for `poll`, comma-separated (1 to 1000).
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Option<Vec<usize>>,
    /// Stock updates per ingest batch.
    #[arg(long)]
    ingest_batch: Option<usize>,
    /// Deadline of each GetRate call in `surge`, in milliseconds (sent as grpc-timeout;
    /// a call not answered within it is an error).
    #[arg(long, value_name = "MS")]
    client_timeout_ms: Option<u64>,
    /// `surge` sends GetRate from pre-encoded request frames over bare HTTP/2 and reads
    /// only each answer's status, as `poll`'s server-only phases do: what a refusal costs
    /// the server, without the tonic client's share of the cores.
    #[arg(long)]
    raw_client: bool,
    /// Directory for <scenario>.json and <scenario>.svg.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Redis URL: the in-process ratemesh runs on it (else on a private redis-server);
    /// with --grpc, the external deployment's Redis (for backlog figures and baselines).
    #[arg(long)]
    redis: Option<String>,
    /// A Redis Cluster's seed node URLs, comma-separated: the in-process ratemesh runs on
    /// it in cluster mode; with --grpc, the external deployment's cluster.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Run the in-process ratemesh on a private Redis Cluster started for the run: six
    /// redis-servers on this machine, three primaries with a replica each.
    #[arg(long)]
    private_cluster: bool,
    /// Replicas that must confirm an accepted push before ingest answers 202
    /// (`redis.min_replica_acks` of the in-process ratemesh).
    #[arg(long, default_value_t = 0)]
    min_replica_acks: u32,
    /// Stream partitions of the in-process ratemesh (or of the external deployment).
    #[arg(long, default_value_t = 1)]
    partitions: u16,
    /// A `[server]` setting of the in-process ratemesh, `KEY=VALUE` with a TOML value
    /// (e.g. `queue_delay_target_ms=5`, `background_runtime=false`); repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    server_setting: Vec<(String, String)>,
    /// Runs the in-process ratemesh's threads and its private redis-server this much
    /// above the load generator's nice value (1-19), so the kernel gives the load
    /// generator the CPU first, as if it ran on cores of its own: the figures then measure
    /// the server, not the client's share of the cores. 0: one priority for all.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    server_nice: i32,
    /// Load an external ratemesh at this gRPC address instead of starting one.
    #[arg(long, requires_all = ["webhook", "erp_secret"])]
    grpc: Option<String>,
    /// External ratemesh's ERP webhook address (host:port).
    #[arg(long)]
    webhook: Option<String>,
    /// An `[[ingest.sources]]` signing secret of the external ratemesh.
    #[arg(long, env = "RATEMESH_LOADTEST_ERP_SECRET")]
    erp_secret: Option<String>,
    /// API keys of the external ratemesh, by role.
    #[arg(long, env = "RATEMESH_LOADTEST_ERP_KEY", default_value = "")]
    erp_key: String,
    #[arg(long, env = "RATEMESH_LOADTEST_NETWORK_KEY", default_value = "")]
    network_key: String,
    #[arg(long, env = "RATEMESH_LOADTEST_MERCHANDISER_KEY", default_value = "")]
    merchandiser_key: String,
    #[arg(long, env = "RATEMESH_LOADTEST_ADMIN_KEY", default_value = "")]
    admin_key: String,
    /// Key prefix of the external deployment in Redis.
    #[arg(long, default_value = "ratemesh")]
    key_prefix: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ScenarioArg {
    Poll,
    Ingest,
    Freshness,
    Bfcm,
    Surge,
    Scale,
    Whatif,
    /// Every scenario in turn.
    All,
}

/// Where ratemesh's Redis is, from `--redis`, `--redis-cluster` and `--private-cluster`.
fn redis_spec(args: &Args) -> anyhow::Result<RedisSpec> {
    let spec = match (&args.redis, &args.redis_cluster, args.private_cluster) {
        (Some(_), Some(_), _) => anyhow::bail!(
            "--redis names one Redis server and --redis-cluster a cluster's seed nodes: give one of them"
        ),
        (Some(_), None, true) => anyhow::bail!(
            "--redis runs on a given Redis server and --private-cluster on a cluster started for the run: give one of them"
        ),
        (None, Some(_), true) => anyhow::bail!(
            "--redis-cluster runs on a given cluster and --private-cluster on one started for the run: give one of them"
        ),
        (Some(url), None, false) => RedisSpec::Server(url.clone()),
        (None, Some(urls), false) => {
            let urls: Vec<String> = urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            anyhow::ensure!(
                !urls.is_empty(),
                "--redis-cluster needs the cluster's seed node URLs, comma-separated \
                 (or use --private-cluster to start one)"
            );
            RedisSpec::Cluster(urls)
        }
        (None, None, true) => RedisSpec::PrivateCluster,
        (None, None, false) => RedisSpec::PrivateServer,
    };
    Ok(spec)
}

fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

fn config(args: &Args) -> anyhow::Result<RunConfig> {
    let redis = redis_spec(args)?;
    let target = match &args.grpc {
        Some(grpc) => {
            anyhow::ensure!(
                redis != RedisSpec::PrivateCluster,
                "--private-cluster starts a cluster for the in-process ratemesh; with --grpc, \
                 give the deployment's cluster with --redis-cluster URLS"
            );
            anyhow::ensure!(
                args.min_replica_acks == 0,
                "--min-replica-acks sets the in-process ratemesh's redis.min_replica_acks; \
                 an external deployment has its own"
            );
            anyhow::ensure!(
                args.server_setting.is_empty(),
                "--server-setting sets the in-process ratemesh's [server] settings; \
                 an external deployment has its own"
            );
            anyhow::ensure!(
                args.server_nice == 0,
                "--server-nice lowers the in-process ratemesh's priority; an external \
                 deployment runs elsewhere"
            );
            TargetSpec::External(External {
                grpc: grpc.clone(),
                webhook: args.webhook.clone().unwrap_or_default(),
                erp_key: args.erp_key.clone(),
                network_key: args.network_key.clone(),
                merchandiser_key: args.merchandiser_key.clone(),
                admin_key: args.admin_key.clone(),
                erp_secret: args.erp_secret.clone().unwrap_or_default(),
                redis: (redis != RedisSpec::PrivateServer).then_some(redis),
                key_prefix: args.key_prefix.clone(),
                partitions: args.partitions,
            })
        }
        None => {
            match (&redis, args.min_replica_acks) {
                (_, 0) => {}
                (RedisSpec::PrivateServer, _) => anyhow::bail!(
                    "--min-replica-acks needs replicas, and the private redis-server has none: \
                     add --private-cluster, --redis-cluster URLS or a --redis with replicas"
                ),
                (RedisSpec::PrivateCluster, n) if n > 1 => anyhow::bail!(
                    "--min-replica-acks {n}: the private cluster has one replica per primary"
                ),
                (_, n) if n > 16 => anyhow::bail!("--min-replica-acks must be at most 16"),
                _ => {}
            }
            TargetSpec::InProcess(InProcess {
                min_replica_acks: args.min_replica_acks,
                server_settings: args.server_setting.clone(),
                server_nice: args.server_nice,
                ..InProcess::on(redis, args.partitions)
            })
        }
    };
    let mut config = if args.smoke {
        RunConfig::smoke(target)
    } else {
        RunConfig::full(target)
    };
    let secs = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!(
                "{name} must be a positive number of seconds, got {v}"
            ))
        }
    };
    if let Some(d) = args.duration {
        config.duration = secs("--duration", d)?;
    }
    if let Some(w) = args.warmup {
        config.warmup = if w == 0.0 {
            Duration::ZERO
        } else {
            secs("--warmup", w)?
        };
    }
    if config.warmup >= config.duration {
        anyhow::bail!("--warmup must be shorter than --duration");
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            anyhow::bail!("--rate must be a positive number of requests per second, got {r}");
        }
        config.rate = Some(r);
    }
    if let Some(c) = args.concurrency {
        anyhow::ensure!(c > 0, "--concurrency must be at least 1");
        config.concurrency = c;
    }
    if let Some(c) = args.connections {
        anyhow::ensure!(c > 0, "--connections must be at least 1");
        config.connections = c;
    }
    if let Some(n) = args.skus {
        anyhow::ensure!(
            (1..=10_000_000).contains(&n),
            "--skus must be between 1 and 10,000,000"
        );
        config.skus = Some(n);
    }
    if let Some(sizes) = &args.batch_sizes {
        anyhow::ensure!(
            !sizes.is_empty() && sizes.iter().all(|s| (1..=1000).contains(s)),
            "--batch-sizes must be between 1 and 1000 each"
        );
        config.batch_sizes = sizes.clone();
    }
    if let Some(b) = args.ingest_batch {
        anyhow::ensure!(
            (1..=1000).contains(&b),
            "--ingest-batch must be between 1 and 1000"
        );
        config.ingest_batch = b;
    }
    if let Some(ms) = args.client_timeout_ms {
        anyhow::ensure!(
            (1..=120_000).contains(&ms),
            "--client-timeout-ms must be between 1 and 120,000"
        );
        config.client_timeout = Duration::from_millis(ms);
    }
    anyhow::ensure!(
        !args.raw_client || matches!(args.scenario, ScenarioArg::Surge | ScenarioArg::All),
        "--raw-client changes how surge sends GetRate; other scenarios do not use it"
    );
    config.raw_client = args.raw_client;
    anyhow::ensure!(
        args.zipf.is_finite() && args.zipf >= 0.0,
        "--zipf must be a non-negative number"
    );
    config.zipf = args.zipf;
    config.progress = !args.quiet;
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C ends the phases early; the report of what ran is still printed and written.
    let stop = config.stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping: finishing the current phase's requests and writing the report");
            stop.cancel();
        }
    });
    let scenarios: Vec<Scenario> = match args.scenario {
        ScenarioArg::Poll => vec![Scenario::Poll],
        ScenarioArg::Ingest => vec![Scenario::Ingest],
        ScenarioArg::Freshness => vec![Scenario::Freshness],
        ScenarioArg::Bfcm => vec![Scenario::Bfcm],
        ScenarioArg::Surge => vec![Scenario::Surge],
        ScenarioArg::Scale => vec![Scenario::Scale],
        ScenarioArg::Whatif => vec![Scenario::Whatif],
        ScenarioArg::All => Scenario::ALL.to_vec(),
    };
    let mut failed = false;
    for s in scenarios {
        if config.stopped() {
            break;
        }
        let report = scenario::run(s, &config).await;
        println!("{}", report.table());
        match report.write(&args.out) {
            Ok((json, svg)) => println!("report: {} and {}", json.display(), svg.display()),
            Err(e) => {
                eprintln!("error: writing the report to {}: {e:#}", args.out.display());
                failed = true;
            }
        }
        failed |= !report.failures().is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<RunConfig> {
        let args = Args::try_parse_from(["ratemesh-loadtest"].iter().chain(args))?;
        config(&args)
    }

    fn in_process(args: &[&str]) -> InProcess {
        match parse(args).expect("valid arguments").target {
            TargetSpec::InProcess(spec) => spec,
            other => panic!("expected an in-process target, got {other:?}"),
        }
    }

    #[test]
    fn server_settings_are_typed_validated_and_only_for_the_in_process_target() {
        let spec = in_process(&[
            "surge",
            "--server-setting",
            "queue_delay_target_ms=5",
            "--server-setting",
            "background_runtime=false",
        ]);
        let mut settings = ratemesh_testkit::settings::bare_settings();
        ratemesh_loadtest::target::apply_server_settings(&mut settings, &spec.server_settings)
            .expect("valid");
        assert_eq!(settings.server.queue_delay_target_ms, 5);
        assert!(!settings.server.background_runtime);

        for (pair, says) in [
            ("no_such_key=1", "no such key"),
            ("background_runtime=\"yes\"", "wrong type"),
            ("background_nice=20", "server.background_nice"),
            ("queue_delay_target_ms=", "not a TOML value"),
        ] {
            let (key, value) = pair.split_once('=').expect("pair");
            let err = ratemesh_loadtest::target::apply_server_settings(
                &mut ratemesh_testkit::settings::bare_settings(),
                &[(key.to_owned(), value.to_owned())],
            )
            .expect_err(pair);
            assert!(format!("{err:#}").contains(says), "{pair}: {err:#}");
        }
        assert!(parse(&["surge", "--server-setting", "novalue"]).is_err());
        let err = parse(&[
            "surge",
            "--grpc",
            "127.0.0.1:50051",
            "--webhook",
            "127.0.0.1:8080",
            "--erp-secret",
            "s",
            "--server-setting",
            "min_concurrency=2",
        ])
        .expect_err("external");
        assert!(err.to_string().contains("--server-setting"), "{err}");
    }

    #[test]
    fn the_client_timeout_defaults_to_one_second_and_takes_milliseconds() {
        let timeout = |args: &[&str]| parse(args).map(|c| c.client_timeout);
        assert_eq!(timeout(&["surge"]).expect("valid"), Duration::from_secs(1));
        assert_eq!(
            timeout(&["surge", "--smoke"]).expect("valid"),
            Duration::from_secs(1)
        );
        assert_eq!(
            timeout(&["surge", "--client-timeout-ms", "250"]).expect("valid"),
            Duration::from_millis(250)
        );
        assert!(timeout(&["surge", "--client-timeout-ms", "0"]).is_err());
    }

    #[test]
    fn the_raw_client_is_off_by_default_and_only_for_surge() {
        let raw = |args: &[&str]| parse(args).map(|c| c.raw_client);
        assert!(!raw(&["surge"]).expect("valid"));
        assert!(raw(&["surge", "--raw-client"]).expect("valid"));
        assert!(raw(&["all", "--raw-client"]).expect("valid"));
        let err = raw(&["poll", "--raw-client"]).expect_err("poll");
        assert!(err.to_string().contains("--raw-client"), "{err}");
    }

    #[test]
    fn redis_and_redis_cluster_together_are_refused() {
        let error = parse(&[
            "ingest",
            "--redis",
            "redis://127.0.0.1:7000/",
            "--redis-cluster",
            "redis://127.0.0.1:7001/",
        ])
        .expect_err("both were given");
        assert!(
            error.to_string().contains("--redis names one Redis server"),
            "{error}"
        );
        assert!(parse(&["ingest", "--redis", "redis://h/", "--private-cluster"]).is_err());
        assert!(
            parse(&[
                "ingest",
                "--redis-cluster",
                "redis://h/",
                "--private-cluster"
            ])
            .is_err()
        );
    }

    #[test]
    fn redis_cluster_takes_comma_separated_seeds() {
        let spec = in_process(&[
            "ingest",
            "--redis-cluster",
            "redis://127.0.0.1:7000/, redis://127.0.0.1:7001/",
            "--partitions",
            "6",
            "--min-replica-acks",
            "1",
        ]);
        assert_eq!(
            spec.redis,
            RedisSpec::Cluster(vec![
                "redis://127.0.0.1:7000/".into(),
                "redis://127.0.0.1:7001/".into()
            ])
        );
        assert_eq!((spec.partitions, spec.min_replica_acks), (6, 1));
        assert_eq!(
            in_process(&["all", "--private-cluster"]).redis,
            RedisSpec::PrivateCluster
        );
        assert_eq!(in_process(&["all"]).redis, RedisSpec::PrivateServer);
    }

    #[test]
    fn replica_acks_need_replicas_and_an_in_process_target() {
        assert!(parse(&["ingest", "--min-replica-acks", "1"]).is_err());
        assert!(parse(&["ingest", "--private-cluster", "--min-replica-acks", "2"]).is_err());
        assert!(
            parse(&[
                "ingest",
                "--grpc",
                "h:50051",
                "--webhook",
                "h:8080",
                "--erp-secret",
                "s",
                "--min-replica-acks",
                "1"
            ])
            .is_err()
        );
        assert_eq!(
            in_process(&["ingest", "--private-cluster", "--min-replica-acks", "1"])
                .min_replica_acks,
            1
        );
    }

    #[test]
    fn an_external_target_takes_its_cluster_but_never_a_private_one() {
        let external = [
            "poll",
            "--grpc",
            "h:50051",
            "--webhook",
            "h:8080",
            "--erp-secret",
            "s",
        ];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = external.iter().chain(extra).copied().collect();
            parse(&args)
        };
        match with(&["--redis-cluster", "redis://h:7000/"])
            .expect("valid")
            .target
        {
            TargetSpec::External(ext) => {
                assert_eq!(
                    ext.redis,
                    Some(RedisSpec::Cluster(vec!["redis://h:7000/".into()]))
                )
            }
            other => panic!("expected an external target, got {other:?}"),
        }
        match with(&[]).expect("valid").target {
            TargetSpec::External(ext) => assert_eq!(ext.redis, None),
            other => panic!("expected an external target, got {other:?}"),
        }
        assert!(with(&["--private-cluster"]).is_err());
    }
}
