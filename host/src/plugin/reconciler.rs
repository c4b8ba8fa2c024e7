//! Reconciler plugins (world `reconciler`): loaded and called like
//! translators (same engine, cache, limits, fresh instance per call), but
//! they return actions for the host to carry out rather than routing IR.

use std::sync::Arc;

use super::call::{self, CallState};
use super::v0_1::reconciler::{Reconciler, ReconcilerPre};
use super::{EngineShared, Grants, KindRef, PluginError, RECONCILIATION_EXPORT, Runtime};
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

/// A loaded reconciler component, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct ReconcilerPlugin {
    shared: Arc<EngineShared>,
    pre: ReconcilerPre<CallState>,
    pub info: ReconcilerInfo,
    pub digest: String,
    pub source: String,
    grants: Arc<Grants>,
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
        let (digest, pre) = self.prepare(bytes, RECONCILIATION_EXPORT)?;
        let pre = ReconcilerPre::new(pre).map_err(|e| PluginError::ContractMismatch {
            found: format!("{e:#}"),
        })?;
        let mut plugin = ReconcilerPlugin {
            shared: self.shared.clone(),
            pre,
            info: ReconcilerInfo::default(),
            digest,
            source: source.to_string(),
            grants: Arc::new(Grants::default()),
        };
        plugin.info = plugin.describe()?;
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
        let mut store = call::new_store(&self.shared, None, &self.info.name, &self.grants);
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|i: Reconciler| i.isobar_plugin_reconciliation().call_describe(&mut store));
        result
            .map(Into::into)
            .map_err(|e| call::classify(e, &store, &self.shared.limits))
    }

    /// Reconciles one object against `store`, recording every read.
    pub fn reconcile(&self, store: &Store, object: &Object) -> ReconcileOutcome {
        let object = super::v0_1::object(object);
        call::call(&self.shared, store, &self.info.name, &self.grants, |ws| {
            self.pre
                .instantiate(&mut *ws)?
                .isobar_plugin_reconciliation()
                .call_reconcile(ws, &object)
        })
        .map(|actions| actions.into_iter().map(Action::from).collect())
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
