//! The plugin runtime: one engine, compiled components cached by content
//! hash, instances under a deadline and a memory cap per call.
//!
//! Contract 0.1 and 0.2 components load side by side (one linker provides
//! both versions' imports); each version's bindings convert into the
//! host's own types (`v0_1`, `v0_2`), so nothing outside this module sees
//! a contract version. A 0.1 call gets a fresh instance; a 0.2 instance
//! serves many calls of one round (`translate_batch`, `apply_batch`) and is
//! dropped at the round's end, so no state survives a round or a swap.

mod cache;
mod call;
mod clock;
pub mod load;
mod policy;
mod reads;
pub mod reconciler;
mod v0_1;
mod v0_2;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::ir;
use crate::store::{Object, ObjectKey, Store};
use call::CallState;
pub use call::{MAX_LOG_LINE, MAX_READ_FIELD, MAX_READS, Readable, Reads};
pub use policy::{PolicyInfo, PolicyPlugin, PolicyResult};
pub use reads::ReadIndex;
pub use reconciler::{ReconcileOutcome, ReconcilerPlugin};

/// The contract this host speaks, in its versions.
pub const CONTRACT_PACKAGE: &str = "isobar:plugin";
pub const CONTRACT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// A contract version a component was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Version {
    V0_1,
    V0_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.0",
            Version::V0_2 => "0.2.0",
        }
    }

    /// `isobar:plugin@0.2.0`.
    pub fn contract(self) -> String {
        format!("{CONTRACT_PACKAGE}@{}", self.as_str())
    }
}

/// What a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    Translator,
    Policy,
    Reconciler,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Translator => "translator",
            World::Policy => "policy",
            World::Reconciler => "reconciler",
        }
    }
}

/// The interface each (version, world) exports.
const EXPORTS: [(&str, Version, World); 5] = [
    (
        "isobar:plugin/translation@0.1.0",
        Version::V0_1,
        World::Translator,
    ),
    (
        "isobar:plugin/translation@0.2.0",
        Version::V0_2,
        World::Translator,
    ),
    (
        "isobar:plugin/transformation@0.2.0",
        Version::V0_2,
        World::Policy,
    ),
    (
        "isobar:plugin/reconciliation@0.1.0",
        Version::V0_1,
        World::Reconciler,
    ),
    (
        "isobar:plugin/reconciliation@0.2.0",
        Version::V0_2,
        World::Reconciler,
    ),
];

/// Operators' configuration (JSON) by the name a plugin declares.
pub type Configs = std::collections::BTreeMap<String, Arc<str>>;

fn config_for(configs: &Configs, name: &str) -> Arc<str> {
    configs
        .get(name)
        .cloned()
        .unwrap_or_else(|| Arc::from("{}"))
}

/// Bytes of each memory slot kept resident between instances.
const KEEP_RESIDENT: usize = 2 << 20;

/// Granularity of deadlines: the engine's epoch advances this often.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A kind a plugin declares, e.g. ("networking.k8s.io/v1", "Ingress"): the
/// version says which one to watch; the store keys kinds by group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct KindRef {
    pub api_version: String,
    pub kind: String,
}

impl KindRef {
    pub fn key(&self) -> crate::store::KindKey {
        crate::store::KindKey::new(&self.api_version, &self.kind)
    }
}

impl std::fmt::Display for KindRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version, self.kind)
    }
}

/// What a translator says it is and reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// Every kind the plugin reads, roots included.
    pub watches: Vec<KindRef>,
    /// The kinds `translate` is called for.
    pub roots: Vec<KindRef>,
}

/// Per-call resource limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock budget of one call, enforced by epoch interruption.
    pub deadline: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Log lines one call may emit; the rest are counted and dropped.
    pub max_log_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_log_lines: 100,
        }
    }
}

/// WASI capabilities granted to one plugin. The default grants nothing: no
/// environment, no filesystem, no network (sockets are never granted), no
/// clock (the wall clock reads the Unix epoch; the monotonic clock is
/// virtual, moved only by the plugin's own waits) and no randomness (a
/// fixed sequence): translation is a function of its inputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
    /// Host directories the plugin may read: (host path, path in the guest).
    pub read_only_dirs: Vec<(PathBuf, String)>,
    /// The host's wall and monotonic clocks (waits still end at the
    /// deadline).
    pub clocks: bool,
    /// The host's random number generators.
    pub random: bool,
    /// A tighter deadline per call than the host's: a plugin may be held
    /// shorter, never longer (a looser one is refused at load).
    pub deadline: Option<Duration>,
    /// A lower memory cap than the host's, on the same terms.
    pub memory_bytes: Option<usize>,
}

impl Grants {
    /// The deadline and memory cap this plugin's calls run under.
    pub fn effective(&self, host: &Limits) -> (Duration, usize) {
        (
            self.deadline
                .map_or(host.deadline, |d| d.min(host.deadline)),
            self.memory_bytes
                .map_or(host.memory_bytes, |m| m.min(host.memory_bytes)),
        )
    }
}

/// What can go wrong with a plugin. Callers branch on these: a load error
/// keeps the old plugin, a call error keeps the root's last good fragment.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    #[error("reading plugin {path}: {message}")]
    Io { path: String, message: String },
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "plugin was built against contract {found}; this host speaks isobar:plugin@0.1.0 and isobar:plugin@0.2.0"
    )]
    ContractMismatch { found: String },
    #[error("plugin is a {found}, not a {wanted}: it is another kind of plugin")]
    WrongWorld { wanted: String, found: String },
    #[error("plugin describes itself inconsistently: {0}")]
    Inconsistent(String),
    #[error("root kind {kind} is claimed by two translators: {first} and {second}")]
    RootClaimed {
        kind: String,
        first: String,
        second: String,
    },
    #[error("plugin refused its configuration ({reason}): {message}")]
    ConfigRejected { reason: String, message: String },
    #[error("plugin went past a limit: {0}")]
    Limit(String),
    #[error("plugin needs imports this host does not grant: {0}")]
    Link(String),
    #[error("plugin exceeded its deadline of {0:?}")]
    Timeout(Duration),
    #[error("plugin exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin rejected the object ({reason}): {message}")]
    Rejected { reason: String, message: String },
}

impl PluginError {
    /// The CamelCase reason used in diagnostics and metrics.
    pub fn reason(&self) -> &str {
        match self {
            PluginError::Io { .. } => "PluginUnreadable",
            PluginError::Invalid(_) => "PluginInvalid",
            PluginError::ContractMismatch { .. } => "ContractMismatch",
            PluginError::WrongWorld { .. } => "WrongPluginKind",
            PluginError::Link(_) => "PluginLinkError",
            PluginError::Timeout(_) => "PluginTimeout",
            PluginError::MemoryLimit(_) => "PluginMemoryLimit",
            PluginError::Trap(_) => "PluginTrap",
            PluginError::Inconsistent(_) => "PluginInconsistent",
            PluginError::RootClaimed { .. } => "RootKindClaimed",
            PluginError::ConfigRejected { .. } => "ConfigRejected",
            PluginError::Limit(_) => "PluginLimit",
            PluginError::Rejected { reason, .. } => reason,
        }
    }
}

struct EngineShared {
    engine: Engine,
    linker: Linker<CallState>,
    limits: Limits,
    cache: cache::ComponentCache,
    stop_ticker: AtomicBool,
}

/// The host's single Wasm engine. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<EngineShared>,
}

impl Runtime {
    /// An engine with the pooling allocator and epoch interruption. Compiled
    /// components are cached in memory and, when given, in `cache_dir`.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        // Calls are short and few run at once (one per core); keep the
        // reservation modest.
        pool.total_component_instances(64)
            .total_core_instances(256)
            .total_memories(128)
            .total_tables(128)
            .total_stacks(64)
            .max_memories_per_component(8)
            .max_memory_size(limits.memory_bytes.max(1 << 20))
            // A fresh instance per call would otherwise page-fault its heap
            // in again every time: keep the first pages of each slot
            // resident and reset them with memset instead of madvise.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // WASI is linked so std-based guests instantiate, but the context
        // grants nothing: no preopens, no environment, no network.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        // Waits are bounded by the call's deadline (a blocking host call is
        // beyond epoch interruption): the plugin's own monotonic clock.
        clock::shadow_in_linker(&mut linker)?;
        // Both contract versions' imports: their interfaces have names of
        // their own, and every world of a version imports the same ones.
        v0_1::Translator::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |s| s,
        )?;
        v0_2::Translator::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |s| s,
        )?;
        let shared = Arc::new(EngineShared {
            cache: cache::ComponentCache::new(cache_dir),
            engine,
            linker,
            limits,
            stop_ticker: AtomicBool::new(false),
        });
        spawn_ticker(Arc::downgrade(&shared));
        Ok(Runtime { shared })
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Reads, compiles (or fetches from the cache), checks the contract and
    /// asks the translator to describe itself.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = read_component(path)?;
        self.load(&bytes, &path.display().to_string())
    }

    pub fn load(&self, bytes: &[u8], source: &str) -> Result<Plugin, PluginError> {
        self.load_with(bytes, source, Grants::default())
    }

    /// Loads a translator with WASI capabilities granted to it.
    pub fn load_with(
        &self,
        bytes: &[u8],
        source: &str,
        grants: Grants,
    ) -> Result<Plugin, PluginError> {
        self.load_translator(bytes, source, grants, &Configs::new())
    }

    /// Loads a translator with its grants and the operator's configuration
    /// for the name it declares (JSON; none: `{}`), which it must accept.
    pub fn load_translator(
        &self,
        bytes: &[u8],
        source: &str,
        grants: Grants,
        configs: &Configs,
    ) -> Result<Plugin, PluginError> {
        check_grants(&grants, &self.shared.limits)?;
        let (digest, version, pre) = self.prepare(bytes, World::Translator)?;
        let pre = match version {
            Version::V0_1 => TranslatorPre::V0_1(v0_1::TranslatorPre::new(pre).map_err(mismatch)?),
            Version::V0_2 => TranslatorPre::V0_2(v0_2::TranslatorPre::new(pre).map_err(mismatch)?),
        };
        let mut plugin = Plugin {
            shared: self.shared.clone(),
            pre,
            version,
            info: PluginInfo::default(),
            digest,
            source: source.to_string(),
            grants: Arc::new(grants),
            config: Arc::from("{}"),
            readable: Readable::of([]),
        };
        let info = plugin.describe()?;
        check_translator(&info)?;
        plugin.config = config_for(configs, &info.name);
        plugin.readable = Readable::of(info.watches.iter().chain(&info.roots).map(KindRef::key));
        plugin.info = info;
        plugin.check_config()?;
        Ok(plugin)
    }

    /// What a component is, without loading it as anything.
    pub fn identify(&self, bytes: &[u8]) -> Result<(Version, World), PluginError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = self
            .shared
            .cache
            .get_or_compile(&self.shared.engine, &digest, bytes)?;
        identify(&self.shared.engine, &component)
    }

    /// The names a component imports and exports (what the Wasm OCI
    /// artifact's config lists), with its contract and world.
    pub fn interface(&self, bytes: &[u8]) -> Result<Interface, PluginError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = self
            .shared
            .cache
            .get_or_compile(&self.shared.engine, &digest, bytes)?;
        let (version, world) = identify(&self.shared.engine, &component)?;
        let ty = component.component_type();
        let engine = &self.shared.engine;
        Ok(Interface {
            version,
            world,
            imports: ty.imports(engine).map(|(n, _)| n.to_string()).collect(),
            exports: ty.exports(engine).map(|(n, _)| n.to_string()).collect(),
        })
    }
}

/// A component's outside, as [`Runtime::interface`] reads it.
#[derive(Clone, Debug)]
pub struct Interface {
    pub version: Version,
    pub world: World,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

fn mismatch(e: wasmtime::Error) -> PluginError {
    PluginError::ContractMismatch {
        found: format!("{e:#}"),
    }
}

fn check_grants(grants: &Grants, host: &Limits) -> Result<(), PluginError> {
    if let Some(d) = grants.deadline
        && (d > host.deadline || d.is_zero())
    {
        return Err(PluginError::Limit(format!(
            "a deadline of {d:?} is outside what this host allows (above zero, at most {:?}: --plugin-deadline-ms)",
            host.deadline
        )));
    }
    if let Some(m) = grants.memory_bytes
        && (m > host.memory_bytes || m == 0)
    {
        return Err(PluginError::Limit(format!(
            "a memory cap of {m} bytes is outside what this host allows (above zero, at most {}: --plugin-memory-mib)",
            host.memory_bytes
        )));
    }
    for (dir, _) in &grants.read_only_dirs {
        if !dir.is_dir() {
            return Err(PluginError::Io {
                path: dir.display().to_string(),
                message: "granted directory does not exist".into(),
            });
        }
    }
    Ok(())
}

/// A translator is called for the kinds it names as roots: at least one,
/// never a Secret (plugins do not read them).
fn check_translator(info: &PluginInfo) -> Result<(), PluginError> {
    if info.roots.is_empty() {
        return Err(PluginError::Inconsistent(format!(
            "translator {} declares no root kinds: it would never be called",
            info.name
        )));
    }
    if let Some(k) = info.roots.iter().find(|k| {
        let key = k.key();
        key.group.is_empty() && key.kind == "Secret"
    }) {
        return Err(PluginError::Inconsistent(format!(
            "translator {} declares {k} as a root kind: plugins never read Secrets",
            info.name
        )));
    }
    Ok(())
}

impl Runtime {
    /// Compiles (or takes from the cache) a component that must be a
    /// `wanted`, and links it: what loading any kind of plugin starts with.
    fn prepare(
        &self,
        bytes: &[u8],
        wanted: World,
    ) -> Result<(String, Version, wasmtime::component::InstancePre<CallState>), PluginError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = self
            .shared
            .cache
            .get_or_compile(&self.shared.engine, &digest, bytes)?;
        let (version, world) = identify(&self.shared.engine, &component)?;
        if world != wanted {
            return Err(PluginError::WrongWorld {
                wanted: wanted.as_str().to_string(),
                found: world.as_str().to_string(),
            });
        }
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        Ok((digest, version, pre))
    }
}

fn read_component(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|e| PluginError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl Drop for EngineShared {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Advances the epoch so deadlines fire; exits when the engine is dropped.
fn spawn_ticker(shared: Weak<EngineShared>) {
    std::thread::Builder::new()
        .name("isobar-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match shared.upgrade() {
                    Some(s) if !s.stop_ticker.load(Ordering::Relaxed) => s.engine.increment_epoch(),
                    _ => return,
                }
            }
        })
        .expect("spawning the epoch thread");
}

/// Which contract version and world a component exports, so a user learns
/// "built for isobar:plugin@0.0.9", not "missing export".
fn identify(engine: &Engine, component: &Component) -> Result<(Version, World), PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    if let Some((_, version, world)) = EXPORTS
        .iter()
        .find(|(name, _, _)| exports.iter().any(|e| e == name))
    {
        return Ok((*version, *world));
    }
    let found = exports
        .iter()
        .find_map(|e| {
            let (pkg_iface, version) = e.split_once('@')?;
            let (pkg, _iface) = pkg_iface.split_once('/')?;
            (pkg == CONTRACT_PACKAGE).then(|| format!("{pkg}@{version}"))
        })
        .unwrap_or_else(|| {
            if exports.is_empty() {
                "no contract (it exports no interfaces)".to_string()
            } else {
                format!(
                    "no {CONTRACT_PACKAGE} contract (it exports {})",
                    exports.join(", ")
                )
            }
        });
    Err(PluginError::ContractMismatch { found })
}

/// A translator's instance factory, per contract version.
#[derive(Clone)]
enum TranslatorPre {
    V0_1(v0_1::TranslatorPre<CallState>),
    V0_2(v0_2::TranslatorPre<CallState>),
}

/// A loaded translator plugin, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    shared: Arc<EngineShared>,
    pre: TranslatorPre,
    pub version: Version,
    pub info: PluginInfo,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Where it was loaded from, for people.
    pub source: String,
    grants: Arc<Grants>,
    /// The operator's configuration, JSON.
    pub config: Arc<str>,
    readable: Readable,
}

/// The result of one plugin call (`translate` by default) and what it read.
#[derive(Debug)]
pub struct CallOutcome<T = ir::Fragment> {
    pub result: Result<T, PluginError>,
    pub reads: Reads,
    /// Log lines dropped because the call exceeded its log budget.
    pub dropped_logs: usize,
    /// Wall time of the call, instantiation included (for metrics).
    pub elapsed: std::time::Duration,
}

/// The outcome of a call just made on `ws`: its result (a wasmtime error
/// classified), and what the call read and logged.
fn outcome<T>(
    result: wasmtime::Result<Result<T, PluginError>>,
    ws: &mut wasmtime::Store<CallState>,
    started: Instant,
) -> CallOutcome<T> {
    let result = match result {
        Ok(r) => r,
        Err(e) => Err(call::classify(e, ws)),
    };
    let state = ws.data_mut();
    CallOutcome {
        // A failed call's reads are not kept: the root keeps depending on
        // what its last good call read.
        reads: if result.is_ok() {
            std::mem::take(&mut state.reads)
        } else {
            Reads::default()
        },
        result,
        dropped_logs: state.dropped_logs,
        elapsed: started.elapsed(),
    }
}

fn failed<T>(error: PluginError, started: Instant) -> CallOutcome<T> {
    CallOutcome {
        result: Err(error),
        reads: Reads::default(),
        dropped_logs: 0,
        elapsed: started.elapsed(),
    }
}

/// A 0.1 component has no `configure`: only the empty configuration.
fn no_config_for_v0_1(config: &str) -> Result<(), PluginError> {
    match serde_json::from_str::<serde_json::Value>(config) {
        Ok(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        _ => Err(PluginError::ConfigRejected {
            reason: "ContractMismatch".into(),
            message: "contract 0.1 plugins take no configuration".into(),
        }),
    }
}

fn configure_result<E: Into<PluginError>>(
    result: wasmtime::Result<Result<(), E>>,
    ws: &wasmtime::Store<CallState>,
) -> Result<(), PluginError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(match e.into() {
            PluginError::Rejected { reason, message } => {
                PluginError::ConfigRejected { reason, message }
            }
            other => other,
        }),
        Err(e) => Err(call::classify(e, ws)),
    }
}

impl Plugin {
    /// Asks a fresh instance to describe itself: the cheapest whole call.
    pub fn describe(&self) -> Result<PluginInfo, PluginError> {
        let mut ws = call::new_store(&self.shared, None, &self.info.name, &self.grants);
        let result = match &self.pre {
            TranslatorPre::V0_1(pre) => pre
                .instantiate(&mut ws)
                .and_then(|i| i.isobar_plugin_translation().call_describe(&mut ws))
                .map(Into::into),
            TranslatorPre::V0_2(pre) => pre
                .instantiate(&mut ws)
                .and_then(|i| i.isobar_plugin_translation().call_describe(&mut ws))
                .map(Into::into),
        };
        result.map_err(|e| call::classify(e, &ws))
    }

    /// `isobar:plugin@0.2.0`, or 0.1.0.
    pub fn contract(&self) -> String {
        self.version.contract()
    }

    /// The same component with another configuration, which it must
    /// accept.
    pub fn with_config(&self, config: Arc<str>) -> Result<Plugin, PluginError> {
        let plugin = Plugin {
            config,
            ..self.clone()
        };
        plugin.check_config()?;
        Ok(plugin)
    }

    /// Offers the configuration to a fresh instance (0.2); 0.1 plugins
    /// take none, so only `{}` (or none) is accepted.
    fn check_config(&self) -> Result<(), PluginError> {
        match &self.pre {
            TranslatorPre::V0_1(_) => no_config_for_v0_1(&self.config),
            TranslatorPre::V0_2(pre) => {
                let mut ws = call::new_store(&self.shared, None, &self.info.name, &self.grants);
                let instance = pre
                    .instantiate(&mut ws)
                    .map_err(|e| call::classify(e, &ws))?;
                configure_result(
                    instance
                        .isobar_plugin_translation()
                        .call_configure(&mut ws, &self.config),
                    &ws,
                )
            }
        }
    }

    /// Translates one root against `store`, recording every read.
    pub fn translate(&self, store: &Store, root: &Object) -> CallOutcome {
        self.translate_batch(store, std::slice::from_ref(&Arc::new(root.clone())))
            .pop()
            .expect("one outcome per root")
    }

    /// Translates `roots` in order, one outcome each. A 0.2 plugin serves
    /// them from one instance (configured once); every call has its own
    /// deadline and reads. A call that traps, overruns or runs out of memory
    /// fails alone: the instance is dropped and the rest go on in a fresh
    /// one. A 0.1 plugin gets a fresh instance per root, as its contract
    /// says.
    pub fn translate_batch(&self, store: &Store, roots: &[Arc<Object>]) -> Vec<CallOutcome> {
        let view = Some((store.clone(), self.readable.clone()));
        match &self.pre {
            TranslatorPre::V0_1(pre) => roots
                .iter()
                .map(|root| {
                    let started = Instant::now();
                    let mut ws =
                        call::new_store(&self.shared, view.clone(), &self.info.name, &self.grants);
                    let arg = v0_1::object(root);
                    let result = pre
                        .instantiate(&mut ws)
                        .and_then(|i| i.isobar_plugin_translation().call_translate(&mut ws, &arg));
                    outcome(
                        result.map(|r| r.map(ir::Fragment::from).map_err(Into::into)),
                        &mut ws,
                        started,
                    )
                })
                .collect(),
            TranslatorPre::V0_2(pre) => {
                let mut out = Vec::with_capacity(roots.len());
                let mut instance: Option<(wasmtime::Store<CallState>, v0_2::Translator)> = None;
                for root in roots {
                    let started = Instant::now();
                    if instance.is_none() {
                        let mut ws = call::new_store(
                            &self.shared,
                            view.clone(),
                            &self.info.name,
                            &self.grants,
                        );
                        let made = pre.instantiate(&mut ws).and_then(|i| {
                            i.isobar_plugin_translation()
                                .call_configure(&mut ws, &self.config)
                                .map(|r| (i, r))
                        });
                        match made {
                            Ok((i, Ok(()))) => instance = Some((ws, i)),
                            Ok((_, Err(e))) => {
                                out.push(failed(
                                    PluginError::ConfigRejected {
                                        reason: e.reason,
                                        message: e.message,
                                    },
                                    started,
                                ));
                                continue;
                            }
                            Err(e) => {
                                let error = call::classify(e, &ws);
                                out.push(failed(error, started));
                                continue;
                            }
                        }
                    }
                    let (ws, i) = instance.as_mut().expect("made above");
                    CallState::begin(ws);
                    let arg = v0_2::object(root);
                    let result = i.isobar_plugin_translation().call_translate(&mut *ws, &arg);
                    let broken = result.is_err();
                    out.push(outcome(
                        result.map(|r| r.map(ir::Fragment::from).map_err(Into::into)),
                        ws,
                        started,
                    ));
                    if broken {
                        // A trapped instance cannot be entered again.
                        instance = None;
                    }
                }
                out
            }
        }
    }

    /// The root kinds, as store keys.
    pub fn root_kinds(&self) -> Vec<crate::store::KindKey> {
        self.info.roots.iter().map(KindRef::key).collect()
    }

    pub fn watched_kinds(&self) -> Vec<crate::store::KindKey> {
        self.info.watches.iter().map(KindRef::key).collect()
    }

    /// Whether `key` is a root of this plugin.
    pub fn is_root(&self, key: &ObjectKey) -> bool {
        self.info.roots.iter().any(|k| k.key() == key.kind)
    }
}

/// The plugins one pipeline runs: translators, each owning the root kinds
/// it declares, and the policy chain in order.
#[derive(Clone, Debug, Default)]
pub struct Plugins {
    pub translators: Vec<Plugin>,
    pub policies: Vec<PolicyPlugin>,
}

impl From<Plugin> for Plugins {
    fn from(plugin: Plugin) -> Self {
        Plugins::translator(plugin)
    }
}

impl Plugins {
    /// Checks that no root kind has two translators.
    pub fn new(translators: Vec<Plugin>, policies: Vec<PolicyPlugin>) -> Result<Self, PluginError> {
        let set = Plugins {
            translators,
            policies,
        };
        set.check()?;
        Ok(set)
    }

    pub fn translator(plugin: Plugin) -> Self {
        Plugins {
            translators: vec![plugin],
            policies: vec![],
        }
    }

    pub fn check(&self) -> Result<(), PluginError> {
        let mut owners: std::collections::HashMap<crate::store::KindKey, &Plugin> =
            Default::default();
        for p in &self.translators {
            for k in &p.info.roots {
                if let Some(first) = owners.insert(k.key(), p) {
                    return Err(PluginError::RootClaimed {
                        kind: k.to_string(),
                        first: format!("{} ({})", first.info.name, first.source),
                        second: format!("{} ({})", p.info.name, p.source),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every kind the plugins read, roots included.
    pub fn kinds(&self) -> std::collections::HashSet<crate::store::KindKey> {
        let mut kinds: std::collections::HashSet<_> = self
            .translators
            .iter()
            .flat_map(|p| p.watched_kinds().into_iter().chain(p.root_kinds()))
            .collect();
        kinds.extend(self.policies.iter().flat_map(|p| p.read_kinds()));
        kinds
    }

    pub fn root_kinds(&self) -> std::collections::HashSet<crate::store::KindKey> {
        self.translators
            .iter()
            .flat_map(|p| p.root_kinds())
            .collect()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("digest", &self.digest)
            .field("source", &self.source)
            .finish()
    }
}
