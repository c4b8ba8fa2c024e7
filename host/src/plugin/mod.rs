//! The plugin runtime: one engine, compiled components cached by content
//! hash, a fresh instance per call under a deadline and a memory cap.
//!
//! Every call gets a new instance from an `InstancePre`, so no state leaks
//! between calls or survives a swap; the store is the truth.

mod cache;
mod call;
mod clock;
pub mod load;
mod reads;
pub mod reconciler;
mod v0_1;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::ir;
use crate::store::{Object, ObjectKey, Store};
use call::CallState;
pub use call::Reads;
pub use reads::ReadIndex;
pub use reconciler::{ReconcileOutcome, ReconcilerPlugin};
use v0_1::{Translator, TranslatorPre};

/// The contract this host speaks.
pub const CONTRACT_PACKAGE: &str = "isobar:plugin";
pub const CONTRACT_VERSION: &str = "0.1.0";
const TRANSLATION_EXPORT: &str = "isobar:plugin/translation@0.1.0";
const RECONCILIATION_EXPORT: &str = "isobar:plugin/reconciliation@0.1.0";

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
        "plugin was built against contract {found}; this host speaks {CONTRACT_PACKAGE}@{CONTRACT_VERSION}"
    )]
    ContractMismatch { found: String },
    #[error("plugin exports {found}, not {wanted}: it is another kind of plugin")]
    WrongWorld { wanted: String, found: String },
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
        Translator::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
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
    /// asks the plugin to describe itself.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = read_component(path)?;
        self.load(&bytes, &path.display().to_string())
    }

    pub fn load(&self, bytes: &[u8], source: &str) -> Result<Plugin, PluginError> {
        self.load_with(bytes, source, Grants::default())
    }

    /// Loads a plugin with WASI capabilities granted to it.
    pub fn load_with(
        &self,
        bytes: &[u8],
        source: &str,
        grants: Grants,
    ) -> Result<Plugin, PluginError> {
        for (dir, _) in &grants.read_only_dirs {
            if !dir.is_dir() {
                return Err(PluginError::Io {
                    path: dir.display().to_string(),
                    message: "granted directory does not exist".into(),
                });
            }
        }
        let (digest, pre) = self.prepare(bytes, TRANSLATION_EXPORT)?;
        let pre = TranslatorPre::new(pre).map_err(|e| PluginError::ContractMismatch {
            found: format!("{e:#}"),
        })?;
        let mut plugin = Plugin {
            shared: self.shared.clone(),
            pre,
            info: PluginInfo::default(),
            digest,
            source: source.to_string(),
            grants: Arc::new(grants),
        };
        plugin.info = plugin.describe()?;
        Ok(plugin)
    }
}

impl Runtime {
    /// Compiles (or takes from the cache) a component exporting `export`
    /// and links it: what loading either kind of plugin starts with.
    fn prepare(
        &self,
        bytes: &[u8],
        export: &str,
    ) -> Result<(String, wasmtime::component::InstancePre<CallState>), PluginError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let component = self
            .shared
            .cache
            .get_or_compile(&self.shared.engine, &digest, bytes)?;
        check_contract(&self.shared.engine, &component, export)?;
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        Ok((digest, pre))
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

/// Names the contract a component was built against, so a user learns
/// "built for isobar:plugin@0.0.9", not "missing export".
fn check_contract(engine: &Engine, component: &Component, wanted: &str) -> Result<(), PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_string())
        .collect();
    if exports.iter().any(|e| e == wanted) {
        return Ok(());
    }
    let other_world = [TRANSLATION_EXPORT, RECONCILIATION_EXPORT]
        .into_iter()
        .find(|e| *e != wanted && exports.iter().any(|x| x == e));
    if let Some(other) = other_world {
        return Err(PluginError::WrongWorld {
            wanted: wanted.to_string(),
            found: other.to_string(),
        });
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

/// A loaded translator plugin, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    shared: Arc<EngineShared>,
    pre: TranslatorPre<CallState>,
    pub info: PluginInfo,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Where it was loaded from, for people.
    pub source: String,
    grants: Arc<Grants>,
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

impl<T> CallOutcome<T> {
    /// Converts what the call returned (the contract's bindings) into the
    /// host's own types.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> CallOutcome<U> {
        CallOutcome {
            result: self.result.map(f),
            reads: self.reads,
            dropped_logs: self.dropped_logs,
            elapsed: self.elapsed,
        }
    }
}

impl Plugin {
    /// Asks a fresh instance to describe itself: the cheapest whole call.
    pub fn describe(&self) -> Result<PluginInfo, PluginError> {
        let mut store = call::new_store(&self.shared, None, &self.info.name, &self.grants);
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|i| i.isobar_plugin_translation().call_describe(&mut store));
        result
            .map(Into::into)
            .map_err(|e| call::classify(e, &store, &self.shared.limits))
    }

    /// Translates one root against `store`, recording every read.
    pub fn translate(&self, store: &Store, root: &Object) -> CallOutcome {
        let root = v0_1::object(root);
        call::call(&self.shared, store, &self.info.name, &self.grants, |ws| {
            self.pre
                .instantiate(&mut *ws)?
                .isobar_plugin_translation()
                .call_translate(ws, &root)
        })
        .map(ir::Fragment::from)
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
