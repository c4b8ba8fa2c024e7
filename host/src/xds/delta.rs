//! Incremental ADS (`DeltaAggregatedResources`):
//!
//! - Per type, the stream tracks what the client has (name -> version),
//!   seeded from `initial_resource_versions` on the type's first request so
//!   a reconnecting client is not sent what it already holds.
//! - A response carries only resources whose version (the content hash in
//!   `Resource::version`) differs from what the client has, and names in
//!   `removed_resources` what the client has but should no longer: deleted
//!   from the snapshot, unsubscribed, or no longer covered by a wildcard.
//! - Subscriptions: `*` (or, for Listener and Cluster, a first request that
//!   names nothing: the legacy wildcard) and explicit names;
//!   `resource_names_subscribe` of a name the client supposedly has forces
//!   a resend, as the spec requires. Subscription changes are deltas, so
//!   they are applied whatever nonce the request carries.
//! - ACK/NACK: `response_nonce` names the response; `error_detail` makes it
//!   a NACK. The versions recorded as sent are kept, so the rejected content
//!   is not resent in a loop; a later snapshot that changes it sends it.
//! - The first request of a type is always answered (possibly empty) so the
//!   client can finish initialising.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;
use tracing::debug;

use super::event::{Ack, Nack, Protocol, Push, XdsEvent};
use super::snapshot::{Resource, Resources, Snapshot};
use super::staging::{Answer, Client};
use super::stream::{
    Handler, MAX_PENDING, Prepared, StreamCtx, legacy_wildcard, nack_message, nack_subjects,
    push_rank,
};
use super::wire::DeltaResponse;

#[derive(Default)]
pub(crate) struct Delta {
    types: BTreeMap<String, TypeState>,
}

struct TypeState {
    type_url: Arc<str>,
    wildcard: bool,
    /// The client has subscribed by name at least once: the legacy wildcard
    /// no longer applies.
    explicit: bool,
    names: BTreeSet<String>,
    /// What the client has, as far as this stream knows: name -> version.
    known: HashMap<String, String>,
    /// Bumped on every subscription change.
    generation: u64,
    /// The snapshot `known` was brought to, and the subscription generation
    /// then: from there only the snapshot's changes need looking at.
    synced: Option<(Arc<Snapshot>, u64)>,
    /// Responses not yet ACKed or NACKed, oldest first.
    pending: VecDeque<Pending>,
    responded: bool,
    /// Whether the latest answered response was NACKed.
    nacked: bool,
}

struct Pending {
    nonce: String,
    version: Arc<str>,
    resources: Vec<Arc<Resource>>,
}

impl Client for Delta {
    fn answer(&self, type_url: &str) -> Answer {
        match self.types.get(type_url) {
            Some(s) if !s.pending.is_empty() => Answer::Pending,
            Some(s) if s.responded && s.nacked => Answer::Nacked,
            Some(s) if s.responded => Answer::Acked,
            _ => Answer::Nothing,
        }
    }

    fn sees(&self, type_url: &str, resource: &Resource) -> bool {
        self.types.get(type_url).is_some_and(|s| s.sees(resource))
    }
}

impl Handler for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        ctx: &mut StreamCtx,
        current: Option<&Arc<Prepared>>,
        request: DeltaDiscoveryRequest,
    ) -> Result<Vec<DeltaResponse>, Status> {
        let DeltaDiscoveryRequest {
            type_url,
            resource_names_subscribe,
            resource_names_unsubscribe,
            resource_locators_subscribe,
            resource_locators_unsubscribe,
            initial_resource_versions,
            response_nonce,
            error_detail,
            ..
        } = request;
        if type_url.is_empty() {
            debug!(stream = ctx.id, node = %ctx.node(), "delta request without type_url ignored");
            return Ok(Vec::new());
        }
        let first = !self.types.contains_key(&type_url);
        ctx.check_type(&type_url, self.types.len(), first)?;
        let state = self
            .types
            .entry(type_url)
            .or_insert_with_key(|t| TypeState::new(t));

        if !response_nonce.is_empty() {
            match state.pending.iter().position(|p| p.nonce == response_nonce) {
                Some(i) => {
                    // Older unanswered responses are superseded.
                    let answered = state
                        .pending
                        .drain(..=i)
                        .next_back()
                        .expect("drained at least one");
                    state.nacked = error_detail.is_some();
                    match error_detail {
                        Some(error) => {
                            let message = nack_message(error.message);
                            let (resource_names, sources) =
                                nack_subjects(&message, answered.resources.iter());
                            // The host logs it (once, with the objects behind it).
                            debug!(
                                stream = ctx.id,
                                node = %ctx.node(),
                                type_url = %state.type_url,
                                version = %answered.version,
                                nonce = %response_nonce,
                                "xDS client rejected configuration"
                            );
                            ctx.emit(XdsEvent::Nack(Nack {
                                stream: ctx.id,
                                node: ctx.node().to_string(),
                                protocol: Protocol::Delta,
                                type_url: state.type_url.to_string(),
                                version: answered.version.to_string(),
                                client_version: String::new(),
                                nonce: response_nonce,
                                code: error.code,
                                message,
                                resource_names,
                                sources,
                            }));
                        }
                        None => {
                            debug!(
                                stream = ctx.id,
                                node = %ctx.node(),
                                type_url = %state.type_url,
                                version = %answered.version,
                                nonce = %response_nonce,
                                "xDS client acknowledged"
                            );
                            ctx.emit(XdsEvent::Ack(Ack {
                                stream: ctx.id,
                                node: ctx.node().to_string(),
                                protocol: Protocol::Delta,
                                type_url: state.type_url.to_string(),
                                version: answered.version.to_string(),
                                nonce: response_nonce,
                            }));
                        }
                    }
                }
                None => debug!(
                    stream = ctx.id,
                    node = %ctx.node(),
                    type_url = %state.type_url,
                    nonce = %response_nonce,
                    "delta request with an unknown or stale nonce: no ACK/NACK"
                ),
            }
        }

        if first {
            ctx.check_names(&state.type_url, initial_resource_versions.len())?;
            state.known = initial_resource_versions.into_iter().collect();
        }

        let subscribe: Vec<String> = resource_names_subscribe
            .into_iter()
            .chain(resource_locators_subscribe.into_iter().map(|l| l.name))
            .collect();
        let unsubscribe = resource_names_unsubscribe
            .into_iter()
            .chain(resource_locators_unsubscribe.into_iter().map(|l| l.name));
        state.resubscribe(first, subscribe, unsubscribe);
        // One request is bounded by its size; what accumulates over many,
        // here (the stream ends, and its state with it).
        ctx.check_names(&state.type_url, state.names.len())?;

        Ok(match current {
            Some(p) => state.push(ctx, p).into_iter().collect(),
            None => Vec::new(),
        })
    }

    fn on_snapshot(&mut self, ctx: &mut StreamCtx, current: &Arc<Prepared>) -> Vec<DeltaResponse> {
        let mut states: Vec<&mut TypeState> = self.types.values_mut().collect();
        states.sort_by(|a, b| push_rank(&a.type_url).cmp(&push_rank(&b.type_url)));
        states
            .into_iter()
            .filter_map(|s| s.push(ctx, current))
            .collect()
    }
}

impl TypeState {
    fn new(type_url: &str) -> Self {
        TypeState {
            type_url: type_url.into(),
            wildcard: false,
            explicit: false,
            names: BTreeSet::new(),
            known: HashMap::new(),
            generation: 0,
            synced: None,
            pending: VecDeque::new(),
            responded: false,
            nacked: false,
        }
    }

    fn resubscribe(
        &mut self,
        first: bool,
        subscribe: Vec<String>,
        unsubscribe: impl Iterator<Item = String>,
    ) {
        let mut changed = false;
        if first && subscribe.is_empty() && legacy_wildcard(&self.type_url) {
            self.wildcard = true;
            changed = true;
        }
        if !subscribe.is_empty() {
            if !self.explicit && self.wildcard && !subscribe.iter().any(|n| n == "*") {
                // Naming resources ends the legacy wildcard unless `*` is named too.
                self.wildcard = false;
            }
            self.explicit = true;
            for name in subscribe {
                if name == "*" {
                    self.wildcard = true;
                    continue;
                }
                if !first {
                    // The client may have forgotten it: send it again.
                    self.known.remove(&name);
                }
                self.names.insert(name);
            }
            changed = true;
        }
        for name in unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(&name);
            }
            changed = true;
        }
        if changed {
            self.generation += 1;
        }
    }

    /// Whether the subscription covers `r`: a wildcard sees everything but
    /// `named_only` resources (API listeners), which need naming.
    fn sees(&self, r: &Resource) -> bool {
        (self.wildcard && !r.named_only) || self.names.contains(&r.name)
    }

    /// Brings the client up to `current`: the response to send, if any.
    fn push(&mut self, ctx: &mut StreamCtx, current: &Arc<Prepared>) -> Option<DeltaResponse> {
        let of_type = current.snapshot.of_type(&self.type_url);
        let (resources, mut removed) = match &self.synced {
            Some((at, generation)) if *generation == self.generation => {
                let changes = current.changes_since(at, &self.type_url);
                self.sync_changes(of_type, &changes.updated, &changes.removed)
            }
            _ => self.sync_all(of_type),
        };
        self.synced = Some((current.snapshot.clone(), self.generation));
        removed.sort();
        if resources.is_empty() && removed.is_empty() && self.responded {
            return None;
        }
        self.responded = true;

        let nonce = ctx.next_nonce();
        debug!(
            stream = ctx.id,
            node = %ctx.node(),
            type_url = %self.type_url,
            version = %current.version,
            nonce = %nonce,
            resources = resources.len(),
            removed = removed.len(),
            "xDS delta push"
        );
        ctx.emit(XdsEvent::Pushed(Push {
            stream: ctx.id,
            node: ctx.node().to_string(),
            protocol: Protocol::Delta,
            type_url: self.type_url.to_string(),
            version: current.version.to_string(),
            nonce: nonce.clone(),
            resources: resources.len(),
            removed: removed.len(),
        }));
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            nonce: nonce.clone(),
            version: current.version.clone(),
            resources: resources.clone(),
        });
        Some(DeltaResponse {
            system_version_info: current.version.clone(),
            type_url: self.type_url.clone(),
            nonce,
            resources,
            removed,
        })
    }

    /// Compares every subscribed resource with what the client has.
    fn sync_all(&mut self, of_type: Option<&Resources>) -> (Vec<Arc<Resource>>, Vec<String>) {
        let mut resources = Vec::new();
        if let Some(of_type) = of_type {
            let visible: Vec<&Arc<Resource>> = if self.wildcard {
                of_type
                    .values()
                    .filter(|r| !r.named_only || self.names.contains(&r.name))
                    .collect()
            } else {
                self.names.iter().filter_map(|n| of_type.get(n)).collect()
            };
            for r in visible {
                if self.known.get(&r.name) != Some(&r.version) {
                    self.known.insert(r.name.clone(), r.version.clone());
                    resources.push(r.clone());
                }
            }
        }
        let mut removed = Vec::new();
        let (wildcard, names) = (self.wildcard, &self.names);
        self.known.retain(|name, _| {
            let visible = of_type
                .and_then(|m| m.get(name))
                .is_some_and(|r| (wildcard && !r.named_only) || names.contains(name));
            if !visible {
                removed.push(name.clone());
            }
            visible
        });
        (resources, removed)
    }

    /// Looks only at the names that changed since the last sync.
    fn sync_changes(
        &mut self,
        of_type: Option<&Resources>,
        updated: &BTreeSet<String>,
        gone: &BTreeSet<String>,
    ) -> (Vec<Arc<Resource>>, Vec<String>) {
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for name in updated {
            match of_type.and_then(|m| m.get(name)) {
                Some(r) if self.sees(r) => {
                    if self.known.get(name) != Some(&r.version) {
                        self.known.insert(name.clone(), r.version.clone());
                        resources.push(r.clone());
                    }
                }
                _ => {
                    if self.known.remove(name).is_some() {
                        removed.push(name.clone());
                    }
                }
            }
        }
        for name in gone {
            if self.known.remove(name).is_some() {
                removed.push(name.clone());
            }
        }
        (resources, removed)
    }
}
