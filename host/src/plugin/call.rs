//! The state of plugin calls on one instance: the store view it reads
//! through (confined to the kinds the plugin declared), the reads each call
//! made, its limits, and its (captured) stderr.
//!
//! An instance may serve many calls (contract 0.2: a batch of one round);
//! [`CallState::begin`] resets what belongs to one call (reads, logs, the
//! clock, the epoch deadline), so every call is bounded and recorded on its
//! own.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{EngineShared, Grants, PluginError};
use crate::store::{KindKey, Object, ObjectKey, Store};

/// Every store read a call made. Lists are keyed by kind and namespace
/// (None: all namespaces).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reads {
    pub gets: BTreeSet<ObjectKey>,
    pub lists: BTreeSet<(KindKey, Option<String>)>,
}

impl Reads {
    /// Whether these reads saw `key`: got it, or listed its kind in its
    /// namespace or in all.
    pub fn saw(&self, key: &ObjectKey) -> bool {
        self.gets.contains(key)
            || self
                .lists
                .iter()
                .any(|(k, ns)| *k == key.kind && ns.as_ref().is_none_or(|n| *n == key.namespace))
    }

    /// Whether these reads saw the object `r` names.
    pub fn saw_ref(&self, r: &crate::ir::ObjectRef) -> bool {
        self.gets.iter().any(|k| r.names(k))
            || self.lists.iter().any(|(kind, ns)| {
                kind.kind == r.kind
                    && (r.group.is_empty() || r.group == kind.group)
                    && ns.as_ref().is_none_or(|ns| ns == &r.namespace)
            })
    }
}

const STDERR_CAPTURE: usize = 16 << 10;

/// Reads one call may make (gets and lists together): what it makes the
/// host hold is bounded.
pub const MAX_READS: usize = 10_000;
/// Longest api version, kind, namespace or name a read may name.
pub const MAX_READ_FIELD: usize = 316;
/// A log line is cut to this many bytes.
pub const MAX_LOG_LINE: usize = 4096;

/// The kinds a plugin may read. Secrets never (a plugin names them; the
/// host resolves and serves them), whatever the plugin declares.
#[derive(Clone, Debug)]
pub struct Readable(Arc<HashSet<KindKey>>);

impl Readable {
    pub fn of(kinds: impl IntoIterator<Item = KindKey>) -> Self {
        Readable(Arc::new(
            kinds
                .into_iter()
                .filter(|k| !(k.group.is_empty() && k.kind == "Secret"))
                .collect(),
        ))
    }

    pub fn contains(&self, kind: &KindKey) -> bool {
        self.0.contains(kind)
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

pub(super) struct CallState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// What the guest sees of time, and the waits it asked for.
    pub(super) clock: super::clock::CallClock,
    stderr: MemoryOutputPipe,
    store: Option<Store>,
    readable: Option<Readable>,
    pub reads: Reads,
    /// Reads refused (another kind, a Secret): they return nothing.
    pub refused_reads: usize,
    reads_made: usize,
    /// A call went past a cap: why, for the error.
    pub limit_hit: Option<String>,
    memory_cap: usize,
    memory_cap_hit: bool,
    plugin: String,
    logs: usize,
    max_logs: usize,
    /// The last error the guest logged: the SDK logs a panic's message
    /// before the trap, so the diagnostic can say what happened.
    last_error_log: Option<String>,
    pub dropped_logs: usize,
    grants_clocks: bool,
    deadline: std::time::Duration,
}

/// A wasmtime store for one instance of `plugin`, reading `store` as far
/// as `readable` lets it.
pub(super) fn new_store(
    shared: &EngineShared,
    store: Option<(Store, Readable)>,
    plugin: &str,
    grants: &Grants,
) -> wasmtime::Store<CallState> {
    let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
    let mut wasi = WasiCtxBuilder::new();
    wasi.stderr(stderr.clone());
    for (k, v) in &grants.env {
        wasi.env(k, v);
    }
    // Translation is a function of its inputs: no wall clock and no
    // randomness unless granted (the monotonic clock: see `clock`).
    if !grants.clocks {
        wasi.wall_clock(super::clock::Frozen);
    }
    if !grants.random {
        let pattern: Vec<u8> = (0..=255).collect();
        wasi.secure_random(wasmtime_wasi::Deterministic::new(pattern.clone()))
            .insecure_random(wasmtime_wasi::Deterministic::new(pattern))
            .insecure_random_seed(0);
    }
    for (host, guest) in &grants.read_only_dirs {
        if let Err(error) = wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly) {
            tracing::warn!(plugin, dir = %host.display(), %error, "granted directory cannot be opened");
        }
    }
    let (store, readable) = match store {
        Some((s, r)) => (Some(s), Some(r)),
        None => (None, None),
    };
    let (deadline, memory_cap) = grants.effective(&shared.limits);
    let state = CallState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        clock: super::clock::CallClock::new(grants.clocks, deadline),
        stderr,
        store,
        readable,
        reads: Reads::default(),
        refused_reads: 0,
        reads_made: 0,
        limit_hit: None,
        memory_cap,
        memory_cap_hit: false,
        plugin: plugin.to_string(),
        logs: 0,
        max_logs: shared.limits.max_log_lines,
        last_error_log: None,
        dropped_logs: 0,
        grants_clocks: grants.clocks,
        deadline,
    };
    let mut wstore = wasmtime::Store::new(&shared.engine, state);
    wstore.limiter(|s| s);
    set_deadline(&mut wstore);
    wstore
}

fn set_deadline(wstore: &mut wasmtime::Store<CallState>) {
    let ticks = wstore
        .data()
        .deadline
        .as_micros()
        .div_ceil(super::EPOCH_TICK.as_micros())
        .max(1) as u64;
    // One extra tick: the ticker may advance right after we read the epoch.
    wstore.set_epoch_deadline(ticks + 1);
}

impl CallState {
    /// Starts the next call on this instance: its own reads, log budget,
    /// clock and deadline.
    pub(super) fn begin(wstore: &mut wasmtime::Store<CallState>) {
        let s = wstore.data_mut();
        s.reads = Reads::default();
        s.refused_reads = 0;
        s.reads_made = 0;
        s.limit_hit = None;
        s.logs = 0;
        s.dropped_logs = 0;
        s.last_error_log = None;
        s.clock = super::clock::CallClock::new(s.grants_clocks, s.deadline);
        set_deadline(wstore);
    }

    /// Counts a read against the call's caps; an error ends the call.
    fn count_read(&mut self, fields: [&str; 4]) -> wasmtime::Result<()> {
        self.reads_made += 1;
        let why = if self.reads_made > MAX_READS {
            Some(format!("more than {MAX_READS} store reads in one call"))
        } else if fields.iter().any(|f| f.len() > MAX_READ_FIELD) {
            Some(format!(
                "a store read named a field longer than {MAX_READ_FIELD} bytes"
            ))
        } else {
            None
        };
        match why {
            Some(why) => {
                self.limit_hit = Some(why.clone());
                Err(wasmtime::Error::msg(why))
            }
            None => Ok(()),
        }
    }

    fn may_read(&mut self, kind: &KindKey) -> bool {
        let ok = self.readable.as_ref().is_some_and(|r| r.contains(kind));
        if !ok {
            self.refused_reads += 1;
        }
        ok
    }

    /// `store.get`: the object if the plugin may read its kind.
    pub(super) fn read_get(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: String,
        name: String,
    ) -> wasmtime::Result<Option<Arc<Object>>> {
        self.count_read([api_version, kind, &namespace, &name])?;
        let kind = KindKey::new(api_version, kind);
        if !self.may_read(&kind) {
            return Ok(None);
        }
        let key = ObjectKey::new(kind, namespace, name);
        let stored = self.store.as_ref().and_then(|s| s.get(&key));
        // Record the store's own key when there is one: shared, not a copy.
        self.reads
            .gets
            .insert(stored.as_ref().map_or(key, |o| o.key()));
        Ok(stored)
    }

    /// `store.list`: the objects of a kind the plugin may read.
    pub(super) fn read_list(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: Option<String>,
    ) -> wasmtime::Result<Vec<Arc<Object>>> {
        self.count_read([api_version, kind, namespace.as_deref().unwrap_or(""), ""])?;
        let kind = KindKey::new(api_version, kind);
        if !self.may_read(&kind) {
            return Ok(Vec::new());
        }
        let found = match &self.store {
            Some(s) => s.list(&kind, namespace.as_deref()),
            None => Vec::new(),
        };
        self.reads.lists.insert((kind, namespace));
        Ok(found)
    }

    /// `log.log`: bounded in count and length.
    pub(super) fn guest_log(&mut self, level: LogLevel, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("…");
        }
        if matches!(level, LogLevel::Error) {
            self.last_error_log = Some(message.chars().take(1024).collect());
        }
        self.logs += 1;
        if self.logs > self.max_logs {
            self.dropped_logs += 1;
            return;
        }
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, message),
            LogLevel::Debug => tracing::debug!(plugin, message),
            LogLevel::Info => tracing::info!(plugin, message),
            LogLevel::Warn => tracing::warn!(plugin, message),
            LogLevel::Error => tracing::error!(plugin, message),
        }
    }
}

/// Turns a wasmtime error into the typed cause.
pub(super) fn classify(err: wasmtime::Error, store: &wasmtime::Store<CallState>) -> PluginError {
    let state = store.data();
    if state.memory_cap_hit {
        return PluginError::MemoryLimit(state.memory_cap);
    }
    if let Some(why) = &state.limit_hit {
        return PluginError::Limit(why.clone());
    }
    if state.clock.deadline_hit {
        // A wait past the deadline, refused in the host call.
        return PluginError::Timeout(state.deadline);
    }
    if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
        return PluginError::Timeout(state.deadline);
    }
    let stderr = String::from_utf8_lossy(&state.stderr.contents())
        .trim()
        .to_string();
    let cause = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    let mut message = cause;
    if let Some(logged) = &state.last_error_log {
        message = format!("{message}; {logged}");
    }
    if !stderr.is_empty() {
        message = format!("{message}; stderr: {stderr}");
    }
    PluginError::Trap(message)
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_cap_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
