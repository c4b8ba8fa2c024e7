//! `isobar serve`: the running controller over a manifest directory.
//!
//! ```text
//!  notify ─► controller thread ─────────────► watch<Arc<Snapshot>> ─► xDS streams (tokio)
//!  (files,   debounced batches, store,                              │
//!   plugin)  pipeline, hot swap                                     └─► admin: /debug/config_dump
//!                   │                                xDS events ─► metrics, NACK diagnostics
//!                   └─► Status (plugins, errors, diagnostics) ─► admin: /readyz, /debug/*, /metrics
//! ```
//!
//! [`Server::start`] binds both ports (ephemeral ones work: read the bound
//! addresses back), loads the plugin, and returns while the controller
//! builds the first snapshot; `/readyz` turns 200 once it is served.

pub mod cluster;
mod controller;
mod events;
pub mod manifests;
pub mod operators;
pub mod status;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use controller::Debounce;
pub use status::Status;

use crate::plugin::{Limits, Runtime};
use crate::source::kube::{KubeSource, Watches};
use crate::writeback::WritebackConfig;
use crate::xds::{self, Snapshot, TlsConfig, XdsServer};
use watch::{Input, Watched};

/// Where objects come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A directory of manifests (watched recursively): the default.
    Manifests(PathBuf),
    /// A Kubernetes cluster: watches, and status written back.
    Cluster(Cluster),
}

/// What `isobar serve` needs of a cluster.
#[derive(Clone)]
pub struct Cluster {
    /// Resolves and watches kinds ([`ApiWatches`](crate::source::kube::ApiWatches),
    /// or a test's script).
    pub watches: Arc<dyn Watches>,
    /// Status write-back; none to only read the cluster.
    pub writeback: Option<Writeback>,
    /// The client reconciler plugins' actions are carried out with (the
    /// host's credentials); needed only with reconcilers.
    pub client: Option<kube::Client>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("writeback", &self.writeback.as_ref().map(|w| &w.config))
            .finish_non_exhaustive()
    }
}

/// Status write-back to the cluster: the client it writes with, the
/// settings, and whether this replica may write (the leader lease).
#[derive(Clone)]
pub struct Writeback {
    pub client: kube::Client,
    pub config: WritebackConfig,
    pub leader: tokio_watch::Receiver<bool>,
}

/// Everything `isobar serve` is told.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where objects come from.
    pub source: Source,
    /// The translator plugin (watched: a new file is hot-swapped in).
    pub plugin: PathBuf,
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
    pub(crate) fn wait(&self) {
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

impl Config {
    /// The defaults: xDS on 127.0.0.1:18000, admin on 127.0.0.1:9901.
    pub fn new(manifests: impl Into<PathBuf>, plugin: impl Into<PathBuf>) -> Self {
        Self::with_source(Source::Manifests(manifests.into()), plugin)
    }

    /// Serving what a cluster holds.
    pub fn cluster(cluster: Cluster, plugin: impl Into<PathBuf>) -> Self {
        Self::with_source(Source::Cluster(cluster), plugin)
    }

    pub fn with_source(source: Source, plugin: impl Into<PathBuf>) -> Self {
        Config {
            source,
            plugin: plugin.into(),
            reconcilers: Vec::new(),
            xds_listen: DEFAULT_XDS_LISTEN.parse().expect("valid default"),
            admin_listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default"),
            xds_tls: None,
            xds_allow_insecure: false,
            probe_listen: None,
            round_stall: None,
            limits: Limits::default(),
            cache_dir: crate::app::default_cache_dir(),
            debounce: Debounce::default(),
            first_build_gate: None,
        }
    }
}

/// A running `isobar serve`.
pub struct Server {
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    status: Arc<Status>,
    xds: XdsServer,
    stop: tokio_watch::Sender<bool>,
    inputs: std::sync::mpsc::Sender<Input>,
    watcher: Option<notify::RecommendedWatcher>,
    gate: Option<Gate>,
    controller: Option<std::thread::JoinHandle<()>>,
    xds_task: Option<JoinHandle<Result<(), xds::ServeError>>>,
    admin_task: Option<JoinHandle<std::io::Result<()>>>,
    events_task: JoinHandle<()>,
    /// The kube source's manager and the status writer, when serving a cluster.
    cluster_tasks: Vec<JoinHandle<()>>,
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

impl Server {
    /// Loads the plugin, binds the xDS and admin ports, starts watching, and
    /// starts building the first snapshot. Fails if the plugin cannot be
    /// loaded, the manifest directory does not exist, or a port is taken.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        xds::check_exposure(
            config.xds_listen,
            config.xds_tls.as_ref(),
            config.xds_allow_insecure,
        )?;
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
        let plugin_path = canonical_file(&config.plugin)?;
        let reconciler_paths = config
            .reconcilers
            .iter()
            .map(|p| canonical_file(p))
            .collect::<anyhow::Result<Vec<_>>>()?;

        // Watch before the first read, so nothing written meanwhile is lost.
        let watched = Watched {
            manifests: manifests.clone(),
            plugin: plugin_path.clone(),
            reconcilers: reconciler_paths.clone(),
        };
        let (inputs, inputs_rx) = std::sync::mpsc::channel();
        let watcher = watch::start(&watched, inputs.clone())
            .context("watching the manifest directory and plugin")?;

        // Compiling the plugin and parsing the manifests are CPU-bound and
        // independent: both at once, off the runtime's workers. (With a
        // first-build gate the controller reads the directory once it opens.)
        let (limits, cache_dir, path) = (
            config.limits.clone(),
            config.cache_dir.clone(),
            plugin_path.clone(),
        );
        let reconciler_files = reconciler_paths.clone();
        let compile = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let runtime = Runtime::new(limits, cache_dir).context("starting the Wasm engine")?;
            let plugin = runtime
                .load_file(&path)
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("loading plugin {}", path.display()))?;
            let reconcilers = reconciler_files
                .iter()
                .map(|p| {
                    runtime
                        .load_reconciler_file(p)
                        .map_err(|e| anyhow::anyhow!(e))
                        .with_context(|| format!("loading reconciler {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok((runtime, plugin, reconcilers))
        });
        let prescan = manifests
            .clone()
            .filter(|_| config.first_build_gate.is_none())
            .map(|root| {
                tokio::task::spawn_blocking(move || {
                    let mut set = manifests::ManifestSet::new(root);
                    let events = set.rescan();
                    (set, events)
                })
            });
        let (runtime, plugin, reconcilers) = compile.await??;
        let prescanned = match prescan {
            Some(task) => Some(task.await?),
            None => None,
        };
        info!(plugin = %plugin.info.name, version = %plugin.info.version, digest = %plugin.digest, "plugin loaded");

        let xds_listener = TcpListener::bind(config.xds_listen)
            .await
            .with_context(|| format!("binding xDS on {}", config.xds_listen))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin on {}", config.admin_listen))?;
        let xds_addr = xds_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (snapshots_tx, snapshots_rx) = tokio_watch::channel(Arc::new(Snapshot::default()));
        let status = Arc::new(Status::new(snapshots_rx.clone()));
        status.set_stall_after(
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

        let (xds_server, xds_events) = XdsServer::new(snapshots_rx);
        let xds_task = tokio::spawn(xds::serve(
            xds_listener,
            xds_server.clone(),
            stopped(&stop),
            config.xds_tls.clone(),
        ));
        let events_task = tokio::spawn(events::consume(
            xds_events,
            status.clone(),
            xds_server.clone(),
        ));
        let admin_task = tokio::spawn(crate::admin::serve(
            admin_listener,
            status.clone(),
            stopped(&stop),
        ));
        info!(xds = %xds_addr, admin = %admin_addr, "serving");
        let mut cluster_tasks = Vec::new();
        if let Some(addr) = config.probe_listen {
            let probes = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding probes on {addr}"))?;
            info!(addr = ?probes.local_addr().ok(), "probes (/healthz, /readyz) listening");
            let router = crate::admin::probes_router(status.clone());
            let done = stopped(&stop);
            cluster_tasks.push(tokio::spawn(async move {
                let _ = crate::admin::serve_router(probes, router, done).await;
            }));
        }

        // Reconcilers: their kinds join the watched ones; their objects go
        // to the operators task, their actions to the cluster (or, serving
        // files, to an in-memory one).
        let op_kinds = operators::kinds_of(&reconcilers);
        let operators_link = if reconcilers.is_empty() {
            None
        } else {
            let world = match &config.source {
                Source::Manifests(_) => {
                    let (memory, writes) = crate::reconcile::MemoryCluster::new();
                    let memory = Arc::new(memory);
                    status.set_memory_cluster(memory.clone());
                    operators::World::Memory(memory, writes)
                }
                Source::Cluster(c) => {
                    let client = c.client.clone().context(
                        "reconcilers act on the cluster: the cluster source needs a client",
                    )?;
                    operators::World::Kube(Arc::new(
                        crate::reconcile::kube::KubeCluster::new(client)
                            .with_resolver(c.watches.clone()),
                    ))
                }
            };
            let (ops_tx, ops_rx) = tokio::sync::mpsc::unbounded_channel();
            let ops = operators::Operators::new(
                runtime.clone(),
                reconciler_paths.clone(),
                op_kinds.clone(),
                status.clone(),
            );
            cluster_tasks.push(tokio::spawn(ops.run(reconcilers, world, ops_rx)));
            Some((op_kinds.clone(), ops_tx))
        };
        let (origin, prescanned) = match (&config.source, prescanned) {
            (Source::Manifests(_), Some((set, events))) => {
                (controller::Origin::Files(set), Some(events))
            }
            (Source::Manifests(_), None) => (
                controller::Origin::Files(manifests::ManifestSet::new(
                    manifests
                        .clone()
                        .expect("a manifest source has a directory"),
                )),
                None,
            ),
            (Source::Cluster(cluster), _) => {
                let sink = inputs.clone();
                let (source, task) = KubeSource::start(
                    cluster.watches.clone(),
                    move |update| {
                        let _ = sink.send(Input::Objects(update));
                    },
                    status.clone(),
                );
                source.want(controller::watch_specs(&plugin, &op_kinds));
                cluster_tasks.push(task);
                if let Some(wb) = &cluster.writeback {
                    cluster_tasks.push(tokio::spawn(crate::writeback::run(
                        wb.client.clone(),
                        wb.config.clone(),
                        status.clone(),
                        wb.leader.clone(),
                    )));
                }
                (
                    controller::Origin::Cluster(controller::ClusterObjects::new(source)),
                    None,
                )
            }
        };
        let controller = controller::Controller::new(
            runtime,
            plugin,
            watched,
            snapshots_tx,
            status.clone(),
            config.debounce,
            origin,
            prescanned,
            operators_link,
        );
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
            status,
            xds: xds_server,
            stop,
            inputs,
            watcher: Some(watcher),
            gate,
            controller: Some(controller),
            xds_task: Some(xds_task),
            admin_task: Some(admin_task),
            events_task,
            cluster_tasks,
        })
    }

    /// The address xDS is served on (the bound one, when port 0 was asked).
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Streams being served right now.
    pub fn active_streams(&self) -> usize {
        self.xds.active_streams()
    }

    /// Waits (at most `limit`) for the first complete snapshot.
    pub async fn ready(&self, limit: Duration) -> bool {
        self.status.wait_until(limit, |s| s.is_ready()).await
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
    /// reconnect elsewhere), stops the admin server and the controller.
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
        self.events_task.abort();
        for task in self.cluster_tasks.drain(..) {
            task.abort();
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
        for task in &self.cluster_tasks {
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
