//! The state of one plugin call: the store view it reads through, the
//! reads it made, its limits, and its (captured) stderr.

use std::collections::BTreeSet;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::v0_1::isobar::plugin::{log, store, types};
use super::{EngineShared, Grants, Limits, PluginError};
use crate::store::{KindKey, ObjectKey, Store};

/// Every store read a call made. Lists are keyed by kind and namespace
/// (None: all namespaces).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reads {
    pub gets: BTreeSet<ObjectKey>,
    pub lists: BTreeSet<(KindKey, Option<String>)>,
}

const STDERR_CAPTURE: usize = 16 << 10;

pub(super) struct CallState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// What the guest sees of time, and the waits it asked for.
    pub(super) clock: super::clock::CallClock,
    stderr: MemoryOutputPipe,
    store: Option<Store>,
    pub reads: Reads,
    memory_cap: usize,
    memory_cap_hit: bool,
    plugin: String,
    logs: usize,
    max_logs: usize,
    /// The last error the guest logged: the SDK logs a panic's message
    /// before the trap, so the diagnostic can say what happened.
    last_error_log: Option<String>,
    pub dropped_logs: usize,
}

pub(super) fn new_store(
    shared: &EngineShared,
    store: Option<Store>,
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
    let state = CallState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        clock: super::clock::CallClock::new(grants.clocks, shared.limits.deadline),
        stderr,
        store,
        reads: Reads::default(),
        memory_cap: shared.limits.memory_bytes,
        memory_cap_hit: false,
        plugin: plugin.to_string(),
        logs: 0,
        max_logs: shared.limits.max_log_lines,
        last_error_log: None,
        dropped_logs: 0,
    };
    let mut wstore = wasmtime::Store::new(&shared.engine, state);
    wstore.limiter(|s| s);
    let ticks = shared
        .limits
        .deadline
        .as_micros()
        .div_ceil(super::EPOCH_TICK.as_micros())
        .max(1) as u64;
    // One extra tick: the ticker may advance right after we read the epoch.
    wstore.set_epoch_deadline(ticks + 1);
    wstore
}

/// One call on a fresh instance against `store`: `f` instantiates and
/// calls; the guest's `err` becomes `Rejected`, a trap its typed cause.
pub(super) fn call<T>(
    shared: &EngineShared,
    store: &Store,
    plugin: &str,
    grants: &Grants,
    f: impl FnOnce(&mut wasmtime::Store<CallState>) -> wasmtime::Result<Result<T, types::Error>>,
) -> super::CallOutcome<T> {
    let started = std::time::Instant::now();
    let mut wstore = new_store(shared, Some(store.clone()), plugin, grants);
    let result = match f(&mut wstore) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(classify(e, &wstore, &shared.limits)),
    };
    let state = wstore.into_data();
    super::CallOutcome {
        result,
        dropped_logs: state.dropped_logs,
        reads: state.reads,
        elapsed: started.elapsed(),
    }
}

/// Turns a wasmtime error into the typed cause.
pub(super) fn classify(
    err: wasmtime::Error,
    store: &wasmtime::Store<CallState>,
    limits: &Limits,
) -> PluginError {
    let state = store.data();
    if state.memory_cap_hit {
        return PluginError::MemoryLimit(limits.memory_bytes);
    }
    if state.clock.deadline_hit {
        // A wait past the deadline, refused in the host call.
        return PluginError::Timeout(limits.deadline);
    }
    if let Some(Trap::Interrupt) = err.downcast_ref::<Trap>() {
        return PluginError::Timeout(limits.deadline);
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

impl types::Host for CallState {}

impl store::Host for CallState {
    fn get(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
    ) -> Option<types::Object> {
        let key = ObjectKey::new(KindKey::new(&api_version, &kind), namespace, name);
        let stored = self.store.as_ref().and_then(|s| s.get(&key));
        let found = stored.as_deref().map(super::v0_1::object);
        // Record the store's own key when there is one: shared, not a copy.
        self.reads.gets.insert(stored.map_or(key, |o| o.key()));
        found
    }

    fn list(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
    ) -> Vec<types::Object> {
        let kind = KindKey::new(&api_version, &kind);
        let found = match &self.store {
            Some(s) => s
                .read()
                .list(&kind, namespace.as_deref())
                .map(|o| super::v0_1::object(o))
                .collect(),
            None => Vec::new(),
        };
        self.reads.lists.insert((kind, namespace));
        found
    }
}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) {
        if matches!(level, log::Level::Error) {
            self.last_error_log = Some(message.chars().take(1024).collect());
        }
        self.logs += 1;
        if self.logs > self.max_logs {
            self.dropped_logs += 1;
            return;
        }
        let plugin = self.plugin.as_str();
        match level {
            log::Level::Trace => tracing::trace!(plugin, message),
            log::Level::Debug => tracing::debug!(plugin, message),
            log::Level::Info => tracing::info!(plugin, message),
            log::Level::Warn => tracing::warn!(plugin, message),
            log::Level::Error => tracing::error!(plugin, message),
        }
    }
}
