//! `isobar serve`: the composition root. It binds the ports, loads the
//! plugins, and wires the parts together; the parts do the work:
//!
//! ```text
//!  source::watch (files, plugins) ─┐
//!  source::kube (watches) ─────────┼─► controller thread ──► watch<Arc<Snapshot>> ─► xds (streams)
//!  reconcile::MemoryApi (writes) ──┘   (the store's writer,       │                  │ events
//!                                       pipeline, hot swap)        │                  ▼
//!                                        │  changes                └─► admin ◄── report ◄─ report::xds
//!                                        ▼                                       ▲
//!                                 reconcile::runner ─► MemoryApi / KubeApi       └── writeback (leader)
//! ```
//!
//! [`Server::start`] binds both ports (ephemeral ones work: read the bound
//! addresses back), loads the plugins, and returns while the controller
//! builds the first snapshot; `/readyz` turns 200 once it is served.

pub mod cluster;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use crate::controller::Debounce;

use crate::admin;
use crate::controller::{self, ClusterState, Controller, Input, Origin};
use crate::plugin::{Limits, Plugins, ReconcilerPlugin, Runtime};
use crate::reconcile::runner::{Runner, RunnerInput};
use crate::reconcile::{KubeApi, MemoryApi};
use crate::report::Report;
use crate::source::kube::{KubeSource, Watches};
use crate::source::manifests::ManifestSet;
use crate::source::watch::Watched;
use crate::store::{Event, KindKey, Writer};
use crate::writeback::WritebackConfig;
use crate::xds::{self, Snapshot, TlsConfig, XdsServer};

/// Where objects come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of manifests (watched recursively): the default.
    Manifests(PathBuf),
    /// A Kubernetes cluster: watches, and status written back.
    Cluster(ClusterConnection),
}

impl Source {
    pub fn is_manifests(&self) -> bool {
        matches!(self, Source::Manifests(_))
    }
}

/// What `isobar serve` needs of a cluster.
#[derive(Clone)]
pub struct ClusterConnection {
    /// Resolves and watches kinds ([`ApiWatches`](crate::source::kube::ApiWatches),
    /// or a test's script).
    pub watches: Arc<dyn Watches>,
    /// Status write-back; none to only read the cluster.
    pub writeback: Option<Writeback>,
    /// The client reconciler plugins' actions are carried out with (the
    /// host's credentials); needed only with reconcilers.
    pub client: Option<kube::Client>,
}

impl std::fmt::Debug for ClusterConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConnection")
            .field("writeback", &self.writeback.as_ref().map(|w| &w.config))
            .finish_non_exhaustive()
    }
}

/// Status write-back to the cluster: the client it writes with, the
/// settings, and whether this replica may write (the leader lease, which
/// shutting down releases).
#[derive(Clone)]
pub struct Writeback {
    pub client: kube::Client,
    pub config: WritebackConfig,
    pub leader: crate::leader::Leader,
}

/// Everything `isobar serve` is told.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where objects come from.
    pub source: Source,
    /// The translator plugins (each watched and hot-swapped alone; each
    /// owns the root kinds it declares).
    pub plugins: Vec<PathBuf>,
    /// The policy chain, in order (each watched and hot-swapped alone).
    pub policies: Vec<PathBuf>,
    /// Configuration files (JSON) by the name a plugin declares; watched:
    /// a change is a swap of that plugin.
    pub plugin_configs: Vec<(String, PathBuf)>,
    /// Reconciler plugins (operators), each watched and hot-swapped.
    pub reconcilers: Vec<PathBuf>,
    pub xds_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub xds_tls: Option<TlsConfig>,
    /// Serve xDS on a non-loopback address without mTLS (refused otherwise:
    /// SDS carries private keys).
    pub xds_allow_insecure: bool,
    /// Where `/healthz` and `/readyz` alone are served (the kubelet's
    /// probes), when the admin port itself stays on loopback.
    pub probe_listen: Option<SocketAddr>,
    /// A controller round running longer than this makes `/healthz` 503
    /// until it ends (None: ten plugin deadlines, at least 5 s).
    pub round_stall: Option<Duration>,
    pub limits: Limits,
    /// Where compiled components are cached (None: in memory only).
    pub cache_dir: Option<PathBuf>,
    /// In a cluster: load the plugins Plugin objects (`isobar.dev`) name,
    /// beside the flags'.
    pub follow_plugins: bool,
    /// PEM certificates trusted beside the system's roots when pulling
    /// Plugin artifacts (a registry behind a private CA).
    pub registry_roots: Vec<Vec<u8>>,
    pub debounce: Debounce,
    /// When set, the first snapshot is not built until the gate opens: the
    /// ports answer (`/readyz` says 503) meanwhile. For tests and start-up
    /// sequencing; shutting down opens it.
    pub first_build_gate: Option<Gate>,
}

/// A one-way gate: closed until `open` is called.
#[derive(Clone, Default)]
pub struct Gate(Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>);

impl Gate {
    pub fn closed() -> Self {
        Gate::default()
    }

    pub fn open(&self) {
        *self.0.0.lock() = true;
        self.0.1.notify_all();
    }

    pub fn is_open(&self) -> bool {
        *self.0.0.lock()
    }

    /// Blocks the calling thread until the gate opens.
    fn wait(&self) {
        let mut open = self.0.0.lock();
        while !*open {
            self.0.1.wait(&mut open);
        }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Gate")
            .field(&if self.is_open() { "open" } else { "closed" })
            .finish()
    }
}

pub const DEFAULT_XDS_LISTEN: &str = "127.0.0.1:18000";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// How long shutting down waits for status writes under way.
const WRITEBACK_LIMIT: Duration = Duration::from_secs(5);
/// How long shutting down waits for the leader lease to be released.
const LEASE_RELEASE_LIMIT: Duration = Duration::from_secs(3);

impl Config {
    /// The defaults: xDS on 127.0.0.1:18000, admin on 127.0.0.1:9901.
    pub fn new(manifests: impl Into<PathBuf>, plugin: impl Into<PathBuf>) -> Self {
        Self::with_source(Source::Manifests(manifests.into()), plugin)
    }

    /// Serving what a cluster holds.
    pub fn cluster(cluster: ClusterConnection, plugin: impl Into<PathBuf>) -> Self {
        Self::with_source(Source::Cluster(cluster), plugin)
    }

    pub fn with_source(source: Source, plugin: impl Into<PathBuf>) -> Self {
        Config {
            source,
            plugins: vec![plugin.into()],
            policies: Vec::new(),
            plugin_configs: Vec::new(),
            reconcilers: Vec::new(),
            xds_listen: DEFAULT_XDS_LISTEN.parse().expect("valid default"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default"),
            xds_tls: None,
            xds_allow_insecure: false,
            probe_listen: None,
            round_stall: None,
            limits: Limits::default(),
            cache_dir: crate::plugin::load::default_cache_dir(),
            follow_plugins: false,
            registry_roots: Vec::new(),
            debounce: Debounce::default(),
            first_build_gate: None,
        }
    }
}

/// A running `isobar serve`.
pub struct Server {
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    report: Arc<Report>,
    memory_api: Option<Arc<MemoryApi>>,
    xds: XdsServer,
    stop: tokio_watch::Sender<bool>,
    inputs: std::sync::mpsc::Sender<Input>,
    watcher: Option<notify::RecommendedWatcher>,
    gate: Option<Gate>,
    controller: Option<std::thread::JoinHandle<()>>,
    xds_task: Option<JoinHandle<Result<(), xds::ServeError>>>,
    admin_task: Option<JoinHandle<std::io::Result<()>>>,
    /// The xDS event consumer, the kube source's manager, the reconcilers.
    tasks: Vec<JoinHandle<()>>,
    /// Status write-back, and the lease it writes under: shutting down
    /// lets the writer finish, then releases the lease.
    writeback: Option<(JoinHandle<()>, crate::leader::Leader)>,
}

/// The path as the kernel will report it in events: absolute, with
/// symlinks in its directory resolved (the file itself may not exist yet).
fn canonical_file(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let name = abs
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let dir = abs.parent().unwrap_or(Path::new("/"));
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    Ok(dir.join(name))
}

/// Where the watched files are: the manifest directory (checked) and the
/// plugin files.
fn watched(config: &Config) -> anyhow::Result<Watched> {
    let manifests = match &config.source {
        Source::Manifests(dir) => {
            let abs = dir
                .canonicalize()
                .with_context(|| format!("manifest directory {}", dir.display()))?;
            if !abs.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            Some(abs)
        }
        Source::Cluster(_) => None,
    };
    Ok(Watched {
        manifests,
        plugins: config
            .plugins
            .iter()
            .chain(&config.policies)
            .map(|p| canonical_file(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
        configs: config
            .plugin_configs
            .iter()
            .map(|(n, p)| Ok((n.clone(), canonical_file(p)?)))
            .collect::<anyhow::Result<Vec<_>>>()?,
        reconcilers: config
            .reconcilers
            .iter()
            .map(|p| canonical_file(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
    })
}

/// The engine and every plugin, compiled off the runtime's workers.
async fn load_plugins(
    config: &Config,
    watched: &Watched,
) -> anyhow::Result<(Runtime, Plugins, Vec<ReconcilerPlugin>)> {
    let (limits, cache_dir) = (config.limits.clone(), config.cache_dir.clone());
    let translators = config.plugins.len();
    let watched = watched.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let runtime = Runtime::new(limits, cache_dir).context("starting the Wasm engine")?;
        let configs = crate::plugin::load::read_configs(&watched.configs)?;
        let plugins = crate::plugin::load::load_plugins(
            &runtime,
            &watched.plugins[..translators],
            &watched.plugins[translators..],
            &configs,
            crate::plugin::Grants::default(),
        )?;
        let reconcilers = watched
            .reconcilers
            .iter()
            .map(|p| {
                runtime
                    .load_reconciler_file(p)
                    .map_err(|e| anyhow::anyhow!(e))
                    .with_context(|| format!("loading reconciler {}", p.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((runtime, plugins, reconcilers))
    })
    .await?
}

/// The reconcilers' API: the cluster's, or (serving manifests) an in-memory
/// API server whose writes come back to the controller as input.
enum ReconcilerApi {
    Memory(Arc<MemoryApi>),
    Kube(Arc<KubeApi>),
}

/// Lets the reconcilers' API client resolve kinds as the kube source does.
struct SourceDiscovery(Arc<dyn Watches>);

impl crate::reconcile::kube::Discovery for SourceDiscovery {
    fn resolve<'a>(
        &'a self,
        kind: &'a KindKey,
    ) -> futures::future::BoxFuture<'a, Result<(kube::api::ApiResource, bool), String>> {
        Box::pin(async move {
            self.0
                .resolve(kind)
                .await
                .map(|r| (r.resource, r.namespaced))
                .map_err(|e| e.to_string())
        })
    }
}

fn reconciler_api(
    config: &Config,
    inputs: &std::sync::mpsc::Sender<Input>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<ReconcilerApi> {
    Ok(match &config.source {
        Source::Manifests(_) => {
            let (api, mut writes) = MemoryApi::new();
            let sink = inputs.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(first) = writes.recv().await {
                    let mut events: Vec<Event> = vec![first];
                    while let Ok(e) = writes.try_recv() {
                        events.push(e);
                    }
                    if sink.send(Input::Written(events)).is_err() {
                        return;
                    }
                }
            }));
            ReconcilerApi::Memory(Arc::new(api))
        }
        Source::Cluster(c) => {
            let client = c
                .client
                .clone()
                .context("reconcilers act on the cluster: the cluster source needs a client")?;
            ReconcilerApi::Kube(Arc::new(
                KubeApi::new(client).with_discovery(Arc::new(SourceDiscovery(c.watches.clone()))),
            ))
        }
    })
}

/// Where the controller's objects come from: the manifest directory (as
/// read while the plugins compiled), or the kube source's watches (and,
/// with write-back, the status writer).
#[allow(clippy::too_many_arguments)]
fn origin(
    config: &Config,
    watched: &Watched,
    prescanned: Option<(ManifestSet, Vec<Event>)>,
    memory_api: Option<(Arc<MemoryApi>, HashSet<KindKey>)>,
    plugins: &Plugins,
    reconciler_kinds: &HashSet<KindKey>,
    inputs: &std::sync::mpsc::Sender<Input>,
    report: &Arc<Report>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
    tasks: &mut Vec<JoinHandle<()>>,
    writeback: &mut Option<(JoinHandle<()>, crate::leader::Leader)>,
) -> (Origin, Option<Vec<Event>>) {
    match &config.source {
        Source::Manifests(_) => {
            let (set, events) = match prescanned {
                Some((set, events)) => (set, Some(events)),
                None => (
                    ManifestSet::new(
                        watched
                            .manifests
                            .clone()
                            .expect("a manifest source has a directory"),
                    ),
                    None,
                ),
            };
            (
                Origin::Files {
                    set,
                    api: memory_api,
                },
                events,
            )
        }
        Source::Cluster(cluster) => {
            let sink = inputs.clone();
            let (source, task) = KubeSource::start(
                cluster.watches.clone(),
                move |update| {
                    let _ = sink.send(Input::Objects(update));
                },
                report.metrics.kube.clone(),
            );
            source.want(controller::watch_specs(plugins, reconciler_kinds));
            tasks.push(task);
            if let Some(wb) = &cluster.writeback {
                *writeback = Some((
                    tokio::spawn(crate::writeback::run_until(
                        wb.client.clone(),
                        wb.config.clone(),
                        report.clone(),
                        wb.leader.watch(),
                        stopped,
                    )),
                    wb.leader.clone(),
                ));
            }
            (Origin::Cluster(ClusterState::new(source)), None)
        }
    }
}

impl Server {
    /// Loads the plugins, binds the xDS and admin ports, starts watching,
    /// and starts building the first snapshot. Fails if a plugin cannot be
    /// loaded, the manifest directory does not exist, or a port is taken.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        xds::check_exposure(
            config.xds_listen,
            config.xds_tls.as_ref(),
            config.xds_allow_insecure,
        )?;
        let watched = watched(&config)?;
        // Watch before the first read, so nothing written meanwhile is lost.
        let (inputs, inputs_rx) = std::sync::mpsc::channel();
        let sink = inputs.clone();
        let watcher = crate::source::watch::start(&watched, move |e| {
            // The controller is gone when we are shutting down.
            let _ = sink.send(Input::Files(e));
        })
        .context("watching the manifest directory and plugins")?;

        // Compiling the plugins and parsing the manifests are CPU-bound and
        // independent: both at once. (With a first-build gate the
        // controller reads the directory once it opens.)
        let prescan = watched
            .manifests
            .clone()
            .filter(|_| config.first_build_gate.is_none())
            .map(|root| {
                tokio::task::spawn_blocking(move || {
                    let mut set = ManifestSet::new(root);
                    let events = set.rescan();
                    (set, events)
                })
            });
        let (runtime, plugins, reconcilers) = load_plugins(&config, &watched).await?;
        let prescanned = match prescan {
            Some(task) => Some(task.await?),
            None => None,
        };
        for p in &plugins.translators {
            info!(plugin = %p.info.name, version = %p.info.version, digest = %p.digest, contract = %p.contract(), "translator loaded");
        }
        for p in &plugins.policies {
            info!(plugin = %p.info.name, version = %p.info.version, digest = %p.digest, "policy loaded");
        }

        let xds_listener = TcpListener::bind(config.xds_listen)
            .await
            .with_context(|| format!("binding xDS on {}", config.xds_listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin on {}", config.admin_listen))?;
        let xds_addr = xds_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (snapshots_tx, snapshots_rx) = tokio_watch::channel(Arc::new(Snapshot::default()));
        let report = Arc::new(Report::new(snapshots_rx.clone()));
        report.set_stall_after(
            config
                .round_stall
                .unwrap_or_else(|| (config.limits.deadline * 10).max(Duration::from_secs(5))),
        );
        let (stop, _) = tokio_watch::channel(false);
        let stopped = |stop: &tokio_watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();
        let (xds_server, xds_events) = XdsServer::new(snapshots_rx);
        let xds_task = tokio::spawn(xds::serve(
            xds_listener,
            xds_server.clone(),
            stopped(&stop),
            config.xds_tls.clone(),
        ));
        tasks.push(tokio::spawn(crate::report::xds::consume(
            xds_events,
            report.clone(),
            xds_server.clone(),
        )));

        let writer = Writer::new();
        let reconciler_kinds = crate::reconcile::runner::kinds_of(&reconcilers);
        // Plugin objects may carry reconcilers: following them needs the API.
        let following = config.follow_plugins
            && matches!(&config.source, Source::Cluster(c) if c.client.is_some());
        let api = if reconcilers.is_empty() && !following {
            None
        } else {
            Some(reconciler_api(&config, &inputs, &mut tasks)?)
        };
        let memory_api = match &api {
            Some(ReconcilerApi::Memory(m)) => Some(m.clone()),
            _ => None,
        };
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            admin::Sources {
                report: report.clone(),
                memory_api: memory_api.clone(),
            },
            stopped(&stop),
        ));
        info!(xds = %xds_addr, admin = %admin_addr, "serving");
        if let Some(addr) = config.probe_listen {
            let probes = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding probes on {addr}"))?;
            info!(addr = ?probes.local_addr().ok(), "probes (/healthz, /readyz) listening");
            let router = admin::probes_router(report.clone());
            let done = stopped(&stop);
            tasks.push(tokio::spawn(async move {
                let _ = admin::serve_router(probes, router, done).await;
            }));
        }

        let reconciler_link = api.map(|api| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<RunnerInput>();
            let runner = Runner::new(
                runtime.clone(),
                watched.reconcilers.clone(),
                reconciler_kinds.clone(),
                writer.store(),
                report.clone(),
            );
            tasks.push(match api {
                ReconcilerApi::Memory(m) => tokio::spawn(runner.run(reconcilers, m, rx)),
                ReconcilerApi::Kube(k) => tokio::spawn(runner.run(reconcilers, k, rx)),
            });
            controller::Reconcilers::new(reconciler_kinds.clone(), tx)
        });
        let mut writeback = None;
        let catalog = match &config.source {
            Source::Cluster(cluster) if config.follow_plugins => {
                let sink = inputs.clone();
                let (fetcher, task) = crate::catalog::Fetcher::start(
                    cluster.client.clone(),
                    config
                        .cache_dir
                        .as_ref()
                        .map(|d| crate::oci::BlobCache::new(d.join("oci"))),
                    crate::oci::Access {
                        extra_roots: config.registry_roots.clone(),
                        ..Default::default()
                    },
                    move |f| {
                        let _ = sink.send(Input::Fetched(f));
                    },
                );
                tasks.push(task);
                let sink = inputs.clone();
                report.on_nack(Box::new(move |nack| {
                    if let Ok(version) = nack.version.parse() {
                        let _ = sink.send(Input::Nacked(controller::Rejection {
                            version,
                            type_url: nack.type_url.clone(),
                            objects: nack.objects.clone(),
                            message: nack.message.clone(),
                        }));
                    }
                }));
                Some(controller::CatalogState::new(fetcher))
            }
            _ => None,
        };
        let mut watched_beside = reconciler_kinds.clone();
        if catalog.is_some() {
            watched_beside.insert(crate::catalog::kind());
        }
        let (origin, prescanned) = origin(
            &config,
            &watched,
            prescanned,
            memory_api.clone().map(|m| (m, reconciler_kinds.clone())),
            &plugins,
            &watched_beside,
            &inputs,
            &report,
            stopped(&stop),
            &mut tasks,
            &mut writeback,
        );
        let controller = Controller::new(controller::Parts {
            runtime,
            plugins,
            watched,
            writer,
            snapshots: snapshots_tx,
            report: report.clone(),
            debounce: config.debounce,
            origin,
            prescanned,
            reconcilers: reconciler_link,
            catalog,
        });
        let gate = config.first_build_gate.clone();
        let wait = gate.clone();
        let controller = std::thread::Builder::new()
            .name("isobar-controller".into())
            .spawn(move || {
                if let Some(gate) = wait {
                    gate.wait();
                }
                controller::run_guarded(controller, inputs_rx)
            })
            .context("starting the controller thread")?;

        Ok(Server {
            xds_addr,
            admin_addr,
            report,
            memory_api,
            xds: xds_server,
            stop,
            inputs,
            watcher: Some(watcher),
            gate,
            controller: Some(controller),
            xds_task: Some(xds_task),
            admin_task: Some(admin_task),
            tasks,
            writeback,
        })
    }

    /// The address xDS is served on (the bound one, when port 0 was asked).
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What the running host knows about itself.
    pub fn report(&self) -> &Arc<Report> {
        &self.report
    }

    /// The in-memory API server reconcilers write to when serving
    /// manifests.
    pub fn memory_api(&self) -> Option<Arc<MemoryApi>> {
        self.memory_api.clone()
    }

    /// Streams being served right now.
    pub fn active_streams(&self) -> usize {
        self.xds.active_streams()
    }

    /// Waits (at most `limit`) for the first complete snapshot.
    pub async fn ready(&self, limit: Duration) -> bool {
        self.report.wait_until(limit, |s| s.is_ready()).await
    }

    /// Runs until `shutdown` completes or a serving task fails, then stops.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (Some(mut xds_task), Some(mut admin_task)) =
            (self.xds_task.take(), self.admin_task.take())
        else {
            bail!("already stopped");
        };
        let outcome = tokio::select! {
            _ = shutdown => {
                self.xds_task = Some(xds_task);
                self.admin_task = Some(admin_task);
                Ok(())
            }
            r = &mut xds_task => {
                self.admin_task = Some(admin_task);
                Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the xDS server stopped"),
                    Ok(Err(e)) => anyhow::anyhow!(e),
                    Err(e) => anyhow::anyhow!("the xDS server task failed: {e}"),
                })
            }
            r = &mut admin_task => {
                self.xds_task = Some(xds_task);
                Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the admin server stopped"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("admin server"),
                    Err(e) => anyhow::anyhow!("the admin server task failed: {e}"),
                })
            }
        };
        let stopped = self.shutdown_inner().await;
        outcome.and(stopped)
    }

    /// Stops watching, ends every xDS stream (UNAVAILABLE: clients
    /// reconnect elsewhere), lets status writes under way finish and
    /// releases the leader lease (another replica takes it at once), stops
    /// the admin server and the controller.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown_inner().await
    }

    async fn shutdown_inner(&mut self) -> anyhow::Result<()> {
        const LIMIT: Duration = Duration::from_secs(10);
        self.watcher.take();
        let _ = self.inputs.send(Input::Stop);
        if let Some(gate) = &self.gate {
            gate.open();
        }
        self.stop.send_replace(true);
        // Beside the xDS drain: the writer's pass under way, then the lease.
        let handover = self.writeback.take().map(|(task, leader)| {
            tokio::spawn(async move {
                let abort = task.abort_handle();
                if tokio::time::timeout(WRITEBACK_LIMIT, task).await.is_err() {
                    abort.abort();
                    warn!(limit = ?WRITEBACK_LIMIT, "status writes still under way at shutdown; abandoned");
                }
                leader.release(LEASE_RELEASE_LIMIT).await;
            })
        });
        let mut problems = Vec::new();
        if let Some(mut task) = self.xds_task.take() {
            match tokio::time::timeout(LIMIT, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => problems.push(format!("xDS server: {e}")),
                Ok(Err(e)) => problems.push(format!("xDS task: {e}")),
                Err(_) => {
                    task.abort();
                    problems.push("xDS server did not stop in time".to_string());
                }
            }
        }
        if let Some(mut task) = self.admin_task.take() {
            match tokio::time::timeout(LIMIT, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => problems.push(format!("admin server: {e}")),
                Ok(Err(e)) => problems.push(format!("admin task: {e}")),
                Err(_) => {
                    task.abort();
                    problems.push("admin server did not stop in time".to_string());
                }
            }
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(task) = handover
            && task.await.is_err()
        {
            problems.push("releasing the leader lease failed".to_string());
        }
        if let Some(controller) = self.controller.take() {
            // The controller may be in the middle of a round: wait off the runtime.
            let joined = tokio::task::spawn_blocking(move || controller.join());
            match tokio::time::timeout(LIMIT, joined).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => problems.push("controller thread failed".to_string()),
                Err(_) => warn!("controller thread still busy; leaving it"),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(problems.join("; "))
        }
    }
}

impl Drop for Server {
    /// A server dropped without `shutdown` still stops serving.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some((task, _)) = &self.writeback {
            task.abort();
        }
        self.watcher.take();
        let _ = self.inputs.send(Input::Stop);
        if let Some(gate) = &self.gate {
            gate.open();
        }
        self.stop.send_replace(true);
    }
}

/// `isobar serve`: serves until `shutdown` completes (main passes Ctrl-C
/// and SIGTERM).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    server.run_until(shutdown).await
}

/// Reads PEM files for TLS (and, with a CA, mTLS) on the xDS port.
pub fn tls_from_files(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<TlsConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(TlsConfig {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
        client_ca_pem: client_ca.map(read).transpose()?,
    })
}

/// Completes on Ctrl-C or, on Unix, SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("interrupted; shutting down"),
        _ = term => info!("terminated; shutting down"),
    }
}
