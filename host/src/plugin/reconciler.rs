//! Reconciler plugins (world `reconciler`, contract 0.1 or 0.2): loaded
//! and called like translators (same engine, cache, limits; a fresh
//! instance per call: the work queue calls one object at a time), but they
//! return actions for the host to carry out rather than routing IR.

use std::sync::Arc;

use super::call::{self, CallState};
use super::{
    EngineShared, Grants, KindRef, PluginError, Readable, Runtime, Version, World, v0_1, v0_2,
};
use crate::store::{KindKey, Object, Store};

/// What a reconciler says it is, reconciles, owns and reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcilerInfo {
    pub name: String,
    pub version: String,
    pub reconciles: KindRef,
    pub owns: Vec<KindRef>,
    pub watches: Vec<KindRef>,
}

/// Names any object, cluster-scoped ones with an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// A Kubernetes Event on the reconciled object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// What a reconcile asks the host to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Server-side apply of a child object (its JSON).
    Apply(String),
    /// Server-side apply of the reconciled object's status (its JSON).
    PatchStatus(String),
    Event(Event),
    AddFinalizer(String),
    RemoveFinalizer(String),
    /// Delete an object the reconciled object owns.
    Delete(ObjectId),
    RequeueAfterMs(u64),
}

/// A reconciler's instance factory, per contract version.
#[derive(Clone)]
enum Pre {
    V0_1(v0_1::reconciler::ReconcilerPre<CallState>),
    V0_2(v0_2::reconciler::ReconcilerPre<CallState>),
}

/// A loaded reconciler component, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct ReconcilerPlugin {
    shared: Arc<EngineShared>,
    pre: Pre,
    pub version: Version,
    pub info: ReconcilerInfo,
    pub digest: String,
    pub source: String,
    grants: Arc<Grants>,
    pub config: Arc<str>,
    readable: Readable,
}

/// The result of one `reconcile` call and what it read.
pub type ReconcileOutcome = super::CallOutcome<Vec<Action>>;

impl Runtime {
    /// Compiles (or takes from the cache) a reconciler component and asks it
    /// to describe itself.
    pub fn load_reconciler(
        &self,
        bytes: &[u8],
        source: &str,
    ) -> Result<ReconcilerPlugin, PluginError> {
        self.load_reconciler_with(bytes, source, Grants::default(), None)
    }

    /// With grants and the operator's configuration (which it must accept).
    pub fn load_reconciler_with(
        &self,
        bytes: &[u8],
        source: &str,
        grants: Grants,
        config: Option<Arc<str>>,
    ) -> Result<ReconcilerPlugin, PluginError> {
        super::check_grants(&grants, &self.shared.limits)?;
        let (digest, version, pre) = self.prepare(bytes, World::Reconciler)?;
        let pre = match version {
            Version::V0_1 => {
                Pre::V0_1(v0_1::reconciler::ReconcilerPre::new(pre).map_err(super::mismatch)?)
            }
            Version::V0_2 => {
                Pre::V0_2(v0_2::reconciler::ReconcilerPre::new(pre).map_err(super::mismatch)?)
            }
        };
        let mut plugin = ReconcilerPlugin {
            shared: self.shared.clone(),
            pre,
            version,
            info: ReconcilerInfo::default(),
            digest,
            source: source.to_string(),
            grants: Arc::new(grants),
            config: config.unwrap_or_else(|| Arc::from("{}")),
            readable: Readable::of([]),
        };
        plugin.info = plugin.describe()?;
        plugin.readable = Readable::of(plugin.watched_kinds());
        if let Pre::V0_1(_) = plugin.pre {
            super::no_config_for_v0_1(&plugin.config)?;
        } else {
            // A configuration the plugin refuses refuses the plugin.
            let mut ws = call::new_store(&plugin.shared, None, &plugin.info.name, &plugin.grants);
            plugin.configure(&mut ws)?;
        }
        Ok(plugin)
    }

    pub fn load_reconciler_file(
        &self,
        path: &std::path::Path,
    ) -> Result<ReconcilerPlugin, PluginError> {
        let bytes = super::read_component(path)?;
        self.load_reconciler(&bytes, &path.display().to_string())
    }
}

impl ReconcilerPlugin {
    pub fn describe(&self) -> Result<ReconcilerInfo, PluginError> {
        let mut ws = call::new_store(&self.shared, None, &self.info.name, &self.grants);
        let result = match &self.pre {
            Pre::V0_1(pre) => pre
                .instantiate(&mut ws)
                .and_then(|i| i.isobar_plugin_reconciliation().call_describe(&mut ws))
                .map(Into::into),
            Pre::V0_2(pre) => pre
                .instantiate(&mut ws)
                .and_then(|i| i.isobar_plugin_reconciliation().call_describe(&mut ws))
                .map(Into::into),
        };
        result.map_err(|e| call::classify(e, &ws))
    }

    fn configure(&self, ws: &mut wasmtime::Store<CallState>) -> Result<(), PluginError> {
        let Pre::V0_2(pre) = &self.pre else {
            return Ok(());
        };
        let i = pre
            .instantiate(&mut *ws)
            .map_err(|e| call::classify(e, ws))?;
        super::configure_result(
            i.isobar_plugin_reconciliation()
                .call_configure(&mut *ws, &self.config),
            ws,
        )
    }

    pub fn contract(&self) -> String {
        self.version.contract()
    }

    /// Reconciles one object against `store` on a fresh instance, recording
    /// every read.
    pub fn reconcile(&self, store: &Store, object: &Object) -> ReconcileOutcome {
        let started = std::time::Instant::now();
        let view = Some((store.clone(), self.readable.clone()));
        let mut ws = call::new_store(&self.shared, view, &self.info.name, &self.grants);
        let result = match &self.pre {
            Pre::V0_1(pre) => {
                let arg = v0_1::object(object);
                pre.instantiate(&mut ws).and_then(|i| {
                    i.isobar_plugin_reconciliation()
                        .call_reconcile(&mut ws, &arg)
                        .map(|r| {
                            r.map(|a| a.into_iter().map(Action::from).collect())
                                .map_err(Into::into)
                        })
                })
            }
            Pre::V0_2(pre) => {
                let arg = v0_2::object(object);
                pre.instantiate(&mut ws).and_then(|i| {
                    let configured = i
                        .isobar_plugin_reconciliation()
                        .call_configure(&mut ws, &self.config)?;
                    if let Err(e) = configured {
                        return Ok(Err(PluginError::ConfigRejected {
                            reason: e.reason,
                            message: e.message,
                        }));
                    }
                    CallState::begin(&mut ws);
                    i.isobar_plugin_reconciliation()
                        .call_reconcile(&mut ws, &arg)
                        .map(|r| {
                            r.map(|a| a.into_iter().map(Action::from).collect())
                                .map_err(Into::into)
                        })
                })
            }
        };
        super::outcome(result, &mut ws, started)
    }

    /// The reconciled kind.
    pub fn kind(&self) -> KindKey {
        self.info.reconciles.key()
    }

    pub fn owned_kinds(&self) -> Vec<KindKey> {
        self.info.owns.iter().map(KindRef::key).collect()
    }

    /// Every kind the plugin needs in the store: reconciled, owned, read.
    pub fn watched_kinds(&self) -> Vec<KindKey> {
        let mut kinds = vec![self.kind()];
        kinds.extend(self.owned_kinds());
        kinds.extend(self.info.watches.iter().map(KindRef::key));
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

impl std::fmt::Debug for ReconcilerPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconcilerPlugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("digest", &self.digest)
            .finish()
    }
}
