//! Composes services into one process: binds the gRPC, webhook and admin listeners, runs
//! the services' background work, and shuts everything down in order.
//!
//! A service crate turns [`Context`] into a [`ServiceModule`]; `ratemesh up` hands all four
//! modules to one [`App`], `ratemesh serve <service>` hands one. Tests do the same with
//! port 0 and read the bound addresses back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ratemesh_bus::Bus;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::auth::{AccessTable, ApiKeys, MethodRoles};
use crate::background::Background;
use crate::grpc::RpcLayer;
use crate::health::{HealthEntry, HealthState, Readiness};
use crate::settings::Settings;
use crate::tls::{CertPrincipalLayer, CertPrincipals, ServerTls};

/// What every service is built from: settings, the backend, and the shutdown signal.
#[derive(Clone)]
pub struct Context {
    settings: Arc<Settings>,
    bus: Bus,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field(
                "backend",
                &if self.settings.redis.url().is_some() {
                    "redis"
                } else {
                    "embedded"
                },
            )
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context over an existing backend.
    pub fn new(settings: Settings, bus: Bus) -> Self {
        Self {
            settings: Arc::new(settings),
            bus,
            shutdown: CancellationToken::new(),
        }
    }

    /// Connects the backend the settings name: Redis when `redis.url` is set, otherwise the
    /// embedded in-process bus.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let bus = crate::backend::connect(&settings).await?;
        Ok(Self::new(settings, bus))
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The streams and state backend.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Cancelled when shutdown starts: background work finishes its current step and
    /// returns, long-lived streams end so clients can resume elsewhere.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'static>>;
type AddRoutes = Box<dyn FnOnce(&mut RoutesBuilder) + Send>;

/// What a gRPC service added to a [`ServiceModule`] is: a tonic server of one of the
/// generated services (with its name), shareable across connections.
pub trait GrpcService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// One service, as the app runs it.
pub struct ServiceModule {
    name: &'static str,
    grpc_services: Vec<(&'static str, MethodRoles)>,
    add_routes: Vec<AddRoutes>,
    http: Option<axum::Router>,
    readiness: Readiness,
    /// gRPC services that answer from memory once the module is ready.
    from_memory: Vec<&'static str>,
    /// RPCs (full service name, method) that only read.
    reads: Vec<(&'static str, &'static str)>,
    /// Those of them that are point reads.
    point_reads: Vec<(&'static str, &'static str)>,
    tasks: Vec<(&'static str, Task)>,
    /// Work that keeps what the listeners serve current.
    serving_tasks: Vec<(&'static str, Task)>,
}

impl std::fmt::Debug for ServiceModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceModule")
            .field("name", &self.name)
            .field(
                "grpc_services",
                &self.grpc_services.iter().map(|s| s.0).collect::<Vec<_>>(),
            )
            .field("http", &self.http.is_some())
            .field("tasks", &self.tasks.iter().map(|t| t.0).collect::<Vec<_>>())
            .field(
                "serving_tasks",
                &self.serving_tasks.iter().map(|t| t.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ServiceModule {
    /// A module named `name` (`ingest`, `rates`, …) whose readiness is `readiness`.
    pub fn new(name: &'static str, readiness: Readiness) -> Self {
        Self {
            name,
            grpc_services: Vec::new(),
            add_routes: Vec::new(),
            http: None,
            readiness,
            from_memory: Vec::new(),
            reads: Vec::new(),
            point_reads: Vec::new(),
            tasks: Vec::new(),
            serving_tasks: Vec::new(),
        }
    }

    /// Adds a gRPC service and the service's declaration of who may call each of its RPCs;
    /// its name is reported by health and reflection.
    pub fn grpc<S: GrpcService>(self, service: S, access: MethodRoles) -> Self {
        self.add_grpc(service, access, false)
    }

    /// Like [`ServiceModule::grpc`], for a service that answers from memory once the
    /// module is ready: it stays SERVING while the backend is disconnected, and so does the
    /// module (the process stays ready for it), while the module's other services report
    /// NOT_SERVING by name.
    pub fn grpc_from_memory<S: GrpcService>(self, service: S, access: MethodRoles) -> Self {
        self.add_grpc(service, access, true)
    }

    /// Declares `methods` of the service `S` (added before) as reads that start no work
    /// elsewhere — no stream entry, webhook or call a trace would follow — so a call gets
    /// its `rpc` span only when that span can be exported: at hundreds of thousands of reads
    /// a second, span data nobody sees is a good part of each call's cost.
    ///
    /// # Panics
    /// If `S` was not added, or a method is not in its declaration: both are mistakes in
    /// the module's code.
    pub fn reads<S: NamedService>(mut self, methods: &'static [&'static str]) -> Self {
        for method in self.declared::<S>(methods) {
            self.reads.push(method);
        }
        self
    }

    /// Declares `methods` of the service `S` (added before) as point reads: reads (see
    /// [`ServiceModule::reads`]) of a few microseconds from memory. While
    /// a connection thread has time to spare (`server.grpc_inline_read_share`), such a call
    /// is answered on the thread that read it, not handed to a handler thread and back.
    ///
    /// # Panics
    /// As [`ServiceModule::reads`].
    pub fn point_reads<S: NamedService>(mut self, methods: &'static [&'static str]) -> Self {
        for method in self.declared::<S>(methods) {
            self.reads.push(method);
            self.point_reads.push(method);
        }
        self
    }

    /// `methods` of `S` as (full service name, method), each checked against the service's
    /// declaration.
    fn declared<S: NamedService>(
        &self,
        methods: &'static [&'static str],
    ) -> Vec<(&'static str, &'static str)> {
        let (_, declared) = self
            .grpc_services
            .iter()
            .find(|(name, _)| *name == S::NAME)
            .unwrap_or_else(|| panic!("{} must be added before its reads are declared", S::NAME));
        methods
            .iter()
            .map(|method| {
                assert!(
                    declared.iter().any(|(m, _)| m == method),
                    "{}/{method} is not declared",
                    S::NAME
                );
                (S::NAME, *method)
            })
            .collect()
    }

    fn add_grpc<S: GrpcService>(
        mut self,
        service: S,
        access: MethodRoles,
        from_memory: bool,
    ) -> Self {
        self.grpc_services.push((S::NAME, access));
        if from_memory {
            self.from_memory.push(S::NAME);
        }
        self.add_routes.push(Box::new(move |routes| {
            routes.add_service(service);
        }));
        self
    }

    /// Adds HTTP routes to the webhook port.
    pub fn http(mut self, router: axum::Router) -> Self {
        self.http = Some(match self.http.take() {
            Some(existing) => existing.merge(router),
            None => router,
        });
        self
    }

    /// Adds background work (a stream consumer, a timer loop). It must return once
    /// [`Context::shutdown`] is cancelled; an error before then stops the process. It runs
    /// on the background runtime (`server.background_*`), behind the listeners when the
    /// CPU is saturated.
    pub fn task(
        mut self,
        name: &'static str,
        work: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        self.tasks.push((name, Box::pin(work)));
        self
    }

    /// Adds work that keeps what the listeners serve current and takes locks their reads
    /// wait for (a replica's loader). It runs on a thread of its own at the listeners'
    /// priority, not on the background runtime: a background thread the kernel preempts
    /// while it holds such a lock keeps it through the time the listeners run first (tens
    /// of milliseconds under saturation), and every read of what it locked waits as long.
    /// The same contract as [`Self::task`] otherwise.
    pub fn serving_task(
        mut self,
        name: &'static str,
        work: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        self.serving_tasks.push((name, Box::pin(work)));
        self
    }

    /// The module's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The HTTP/2 flow-control window of a gRPC connection. A unary call's message arrives in
/// a small DATA frame that stays buffered until the call's task runs; h2 closes the
/// connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames") once the small frames held
/// exceed half this window. At the 1 MiB default that is about 2,200 calls, which a surge
/// of 10,000 calls/s on one connection queues within a quarter second, and the GOAWAY
/// fails every call on the connection at once. 8 MiB holds about 1.7 s of such a surge,
/// longer than callers' deadlines, while a peer still cannot buffer more than 8 MiB.
const GRPC_CONNECTION_WINDOW: u32 = 8 << 20;

/// A bound, not yet running process.
pub struct App {
    ctx: Context,
    grpc: TcpListener,
    http: Option<TcpListener>,
    admin: TcpListener,
    modules: Vec<ServiceModule>,
    /// The listeners' TLS (`server.tls_*`), loaded at bind so a bad file stops the start.
    tls: Option<ServerTls>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("grpc", &self.grpc_addr())
            .field("http", &self.http_addr())
            .field("admin", &self.admin_addr())
            .field("modules", &self.modules)
            .finish()
    }
}

async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

impl App {
    /// Binds the listeners for `modules`. The webhook port is bound only if a module has
    /// HTTP routes.
    pub async fn bind(ctx: &Context, modules: Vec<ServiceModule>) -> anyhow::Result<Self> {
        let server = &ctx.settings().server;
        let grpc = bind("gRPC", server.grpc_addr).await?;
        let http = match modules.iter().any(|m| m.http.is_some()) {
            true => Some(bind("webhook HTTP", server.http_addr).await?),
            false => None,
        };
        let admin = bind("admin HTTP", server.admin_addr).await?;
        let tls = ServerTls::from_settings(server)?;
        Ok(Self {
            ctx: ctx.clone(),
            grpc,
            http,
            admin,
            modules,
            tls,
        })
    }

    /// Where gRPC is served.
    pub fn grpc_addr(&self) -> SocketAddr {
        local_addr(&self.grpc)
    }

    /// Where the ERP webhooks are served, if a module has any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(local_addr)
    }

    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    /// The names of the modules this app runs.
    pub fn module_names(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name).collect()
    }

    /// The gRPC service names served, for start-up messages.
    pub fn grpc_services(&self) -> Vec<&'static str> {
        self.modules
            .iter()
            .flat_map(|m| m.grpc_services.iter().map(|s| s.0))
            .collect()
    }

    /// Serves until `signal` resolves (or a background task fails), then shuts down:
    /// health turns NOT_SERVING, the listeners stop accepting, in-flight calls and
    /// background work get `server.shutdown_grace_ms` to finish.
    pub async fn run(self, signal: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let App {
            ctx,
            grpc,
            http,
            admin,
            modules,
            tls,
        } = self;
        let settings = ctx.settings().clone();
        crate::metrics::spawn_upkeep();

        let (shutting_down_tx, shutting_down) = watch::channel(false);
        let health_state = HealthState {
            entries: modules
                .iter()
                .map(|m| HealthEntry {
                    grpc_services: m.grpc_services.iter().map(|s| s.0).collect(),
                    readiness: m.readiness.clone(),
                    from_memory: m.from_memory.clone(),
                })
                .collect(),
            backend: ctx.bus().connected(),
            shutting_down,
        };

        let (reporter, health_service) = tonic_health::server::health_reporter();
        health_state.publish(&reporter).await;
        let follower = tokio::spawn(health_state.clone().follow(reporter));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ratemesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ratemesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service")?;

        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        routes.add_service(reflection);
        routes.add_service(reflection_alpha);
        let mut http_router: Option<axum::Router> = None;
        let background = match settings.server.background_runtime {
            true => Background::start(
                settings.server.background_threads,
                settings.server.background_nice,
            )
            .context("starting the background runtime")?,
            false => Background::shared(),
        };
        // Created here, on a listener's thread, whose priority its thread starts with.
        let serving = match settings.server.background_runtime
            && modules.iter().any(|m| !m.serving_tasks.is_empty())
        {
            true => Some(
                Background::named("ratemesh-serving", 1, 0)
                    .context("starting the serving-state runtime")?,
            ),
            false => None,
        };
        let mut tasks = JoinSet::new();
        let access = AccessTable::new(modules.iter().flat_map(|m| m.grpc_services.iter().copied()));
        let reads: Vec<_> = modules
            .iter()
            .flat_map(|m| m.reads.iter().copied())
            .collect();
        let point_reads: Vec<_> = modules
            .iter()
            .flat_map(|m| m.point_reads.iter().copied())
            .collect();
        for module in modules {
            for add in module.add_routes {
                add(&mut routes);
            }
            if let Some(router) = module.http {
                http_router = Some(match http_router.take() {
                    Some(existing) => existing.merge(router),
                    None => router,
                });
            }
            let serving_handle = serving
                .as_ref()
                .map_or(background.handle(), Background::handle);
            let placed = (module.tasks.into_iter().map(|t| (t, background.handle()))).chain(
                module
                    .serving_tasks
                    .into_iter()
                    .map(|t| (t, serving_handle)),
            );
            for ((name, task), runtime) in placed {
                let module_name = module.name;
                tasks.spawn_on(
                    async move {
                        let result = task.await;
                        (module_name, name, result)
                    },
                    runtime,
                );
            }
        }

        // Stream upkeep runs once per process, whichever services it hosts: trimming is
        // idempotent and the gauges are global figures, so replicas doing the same is fine.
        {
            let (bus, shutdown) = (ctx.bus().clone(), ctx.shutdown().clone());
            let retention = settings.retention.clone();
            tasks.spawn_on(
                async move {
                    let result = crate::retention::run(bus, retention, shutdown).await;
                    ("runtime", "stream retention", result)
                },
                background.handle(),
            );
            let (bus, shutdown) = (ctx.bus().clone(), ctx.shutdown().clone());
            let interval = settings.telemetry.gauge_interval();
            tasks.spawn_on(
                async move {
                    let result = crate::stream_gauges::run(bus, interval, shutdown).await;
                    ("runtime", "stream gauges", result)
                },
                background.handle(),
            );
        }

        let stop_accepting = CancellationToken::new();
        let mut auth = settings.auth.clone();
        let cert_principals = match CertPrincipals::from_settings(&settings.server)? {
            Some((principals, keys)) => {
                auth.keys.extend(keys);
                Some(CertPrincipalLayer(principals))
            }
            None => None,
        };
        let keys = ApiKeys::from_settings(&auth);
        let grpc_service = tower::ServiceBuilder::new()
            .option_layer(cert_principals)
            .layer(RpcLayer::with_reads(
                keys,
                access,
                settings.server.admission(),
                &reads,
                &point_reads,
            ))
            .service(routes.routes());
        let mut grpc_server = crate::grpc::serve::Server::new()
            .request_timeout(settings.server.request_timeout())
            .connection_window(GRPC_CONNECTION_WINDOW);
        // Connections on threads of their own (by default), calls on this runtime: a
        // refusal, answered on its connection task, then waits behind no handler.
        let connections = match settings.server.grpc_connection_runtime {
            true => {
                grpc_server = grpc_server
                    .handlers(tokio::runtime::Handle::current())
                    .inline_reads(settings.server.grpc_inline_read_share);
                let threads = connection_threads(settings.server.grpc_connection_threads);
                let runtime = Background::named("ratemesh-grpc-conn", threads, 0)
                    .context("starting the gRPC connection runtime")?;
                Some(runtime)
            }
            false => None,
        };
        let connections_handle = connections
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |c| c.handle().clone());
        let mut servers = JoinSet::new();
        let stopped = stop_accepting.clone().cancelled_owned();
        {
            // The listener (and the connections it accepts) registered with the runtime
            // that polls them; the TLS handshake tasks spawned there too.
            let _connections = connections_handle.enter();
            let grpc = TcpListener::from_std(grpc.into_std().context("gRPC listener")?)
                .context("gRPC listener")?;
            let server: Pin<Box<dyn Future<Output = ()> + Send>> = match &tls {
                Some(tls) => {
                    let incoming =
                        crate::tls::incoming(grpc, tls.grpc.clone(), stop_accepting.clone());
                    Box::pin(grpc_server.serve(incoming, grpc_service, stopped))
                }
                None => {
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                    Box::pin(grpc_server.serve(incoming, grpc_service, stopped))
                }
            };
            servers.spawn_on(
                async move {
                    server.await;
                    Ok(())
                },
                &connections_handle,
            );
        }
        if let (Some(listener), Some(router)) = (http, http_router) {
            let stop = stop_accepting.clone();
            let limits = settings.server.http_limits();
            let tls = tls.filter(|_| settings.server.http_tls).map(|tls| tls.http);
            servers.spawn(async move {
                crate::http_server::serve(listener, router, limits, tls, stop)
                    .await
                    .context("webhook HTTP server")
            });
        }
        let stop_admin = CancellationToken::new();
        let admin_server = {
            let stop = stop_admin.clone();
            let router = crate::admin::router(health_state);
            tokio::spawn(async move {
                axum::serve(admin, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        };

        // Serve until the signal, or until something that should run forever stops.
        let mut failure: Option<anyhow::Error> = None;
        tokio::select! {
            _ = signal => {}
            Some(done) = servers.join_next() => {
                failure = Some(match done {
                    Ok(Ok(())) => anyhow::anyhow!("a server stopped unexpectedly"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("a server panicked: {e}"),
                });
            }
            Some(done) = tasks.join_next() => {
                failure = Some(match done {
                    Ok((module, task, Ok(()))) => anyhow::anyhow!("{module} {task} stopped unexpectedly"),
                    Ok((module, task, Err(e))) => e.context(format!("{module} {task} failed")),
                    Err(e) => anyhow::anyhow!("a background task panicked: {e}"),
                });
            }
        }
        if let Some(err) = &failure {
            tracing::error!(error = format!("{err:#}"), "stopping because of a failure");
        }

        // Drain: NOT_SERVING first, so load balancers stop routing here, then stop
        // accepting, then let in-flight calls and background work finish under a deadline.
        let _ = shutting_down_tx.send(true);
        stop_accepting.cancel();
        ctx.shutdown().cancel();
        let grace = settings.server.shutdown_grace();
        let drained = tokio::time::timeout(grace, async {
            while let Some(done) = servers.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = format!("{e:#}"), "server stopped with an error");
                }
            }
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok((module, task, Err(e))) => {
                        tracing::warn!(
                            module,
                            task,
                            error = format!("{e:#}"),
                            "background task failed during shutdown"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "background task panicked during shutdown")
                    }
                    Ok(_) => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "shutdown deadline passed; abandoning unfinished calls and tasks"
            );
            servers.abort_all();
            tasks.abort_all();
        }
        stop_admin.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_server).await;
        follower.abort();
        drop(background);
        drop(serving);
        drop(connections);
        tracing::info!("stopped");
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// The connection runtime's threads for the `server.grpc_connection_threads` setting: as
/// set, or for 0 one per two CPUs, at least two. Besides reading frames and answering
/// refusals they answer the point reads (`server.grpc_inline_read_share`), most of a rates
/// pod's calls; a single thread would make that one core's worth.
fn connection_threads(setting: usize) -> usize {
    if setting > 0 {
        return setting;
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cpus / 2).max(2)
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    // A bound TCP listener always has a local address.
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
mod tests {
    use super::connection_threads;

    #[test]
    fn connection_threads_are_as_set_or_one_per_two_cpus() {
        assert_eq!(connection_threads(3), 3);
        assert_eq!(connection_threads(1), 1);
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let auto = connection_threads(0);
        assert_eq!(auto, (cpus / 2).max(2), "{cpus} CPUs");
        assert!(auto >= 2);
    }
}
