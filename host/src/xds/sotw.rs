//! State-of-the-world ADS (`StreamAggregatedResources`), per Envoy's "xDS
//! REST and gRPC protocol":
//!
//! - Nothing is sent for a type until the client asks for it.
//! - Subscriptions are per type: a wildcard (`*`, or for Listener and
//!   Cluster an initial request without names: the legacy wildcard, which
//!   ends once the client names resources) or a set of names. A Listener or
//!   Cluster response carries every subscribed resource that exists (leaving
//!   one out removes it). For the other types the spec lets a response carry
//!   only what changed: after the first response of a subscription, a
//!   RouteConfiguration, ClusterLoadAssignment or Secret update carries just
//!   the resources that changed, so one endpoint change is one small message
//!   per stream, however many clusters there are.
//! - `version_info` is the snapshot version; every response has a fresh
//!   nonce. A request whose `response_nonce` is not the latest sent for its
//!   type is stale and ignored entirely.
//! - ACK: the latest nonce and that response's version. NACK: the latest
//!   nonce with `error_detail`; the client stays on its last good version,
//!   the host hears about it, and the same content is not sent again: the
//!   next push happens when a snapshot changes what the subscription sees.
//! - A request that widens the subscription is answered with the current
//!   state (the spec requires resending newly requested names).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tonic::Status;
use tracing::debug;

use super::event::{Ack, Nack, Protocol, Push, XdsEvent};
use super::snapshot::{Resource, Resources};
use super::staging::{Answer, Client};
use super::stream::{
    Handler, Prepared, StreamCtx, full_state, legacy_wildcard, nack_message, nack_subjects,
    push_rank,
};
use super::wire::{RawNames, Selection, SotwRequest, SotwResponse};

#[derive(Default)]
pub(crate) struct Sotw {
    types: BTreeMap<String, TypeState>,
}

struct TypeState {
    type_url: Arc<str>,
    wildcard: bool,
    /// The client has named resources at least once: an empty list now
    /// means "none", no longer the legacy wildcard.
    explicit: bool,
    names: Arc<BTreeSet<String>>,
    /// The names of the last request, as they came: an ACK that repeats
    /// them (the common case) is recognised without decoding a string.
    last_names: RawNames,
    last: Option<Sent>,
    /// The nonce last NACKed: a client repeating a NACK is heard once.
    nacked: Option<String>,
    /// How the client answered the latest response: `None` until it does,
    /// then whether it was a NACK.
    answered: Option<bool>,
}

/// The latest response sent for a type.
struct Sent {
    nonce: String,
    /// The snapshot version the response carried: what an ACK names.
    version: Arc<str>,
    /// The type's resources when it was sent (a persistent map: sharing
    /// structure with later ones), for telling what a NACK is about.
    sent: Option<Resources>,
    /// What the response carried.
    selection: Selection,
    /// The latest snapshot the client is known to be up to date with for
    /// this type: the response's, or a later one that changed nothing it
    /// sees. Diffs start here, so a type that rarely changes never diffs
    /// against an old snapshot (nor keeps one alive).
    basis: Arc<Prepared>,
}

impl Client for Sotw {
    fn answer(&self, type_url: &str) -> Answer {
        match self.types.get(type_url) {
            Some(s) if s.last.is_some() => match s.answered {
                None => Answer::Pending,
                Some(true) => Answer::Nacked,
                Some(false) => Answer::Acked,
            },
            _ => Answer::Nothing,
        }
    }

    fn sees(&self, type_url: &str, resource: &Resource) -> bool {
        self.types
            .get(type_url)
            .is_some_and(|s| s.selection().includes(resource))
    }
}

impl Handler for Sotw {
    type Request = SotwRequest;
    type Response = SotwResponse;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(request: &SotwRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        ctx: &mut StreamCtx,
        current: Option<&Arc<Prepared>>,
        request: SotwRequest,
    ) -> Result<Vec<SotwResponse>, Status> {
        let SotwRequest {
            version_info,
            resource_names,
            resource_locators,
            type_url,
            response_nonce,
            error_detail,
            ..
        } = request;
        if type_url.is_empty() {
            debug!(stream = ctx.id, node = %ctx.node(), "ADS request without type_url ignored");
            return Ok(Vec::new());
        }
        ctx.check_type(
            &type_url,
            self.types.len(),
            !self.types.contains_key(&type_url),
        )?;
        let state = self
            .types
            .entry(type_url)
            .or_insert_with_key(|t| TypeState::new(t));

        if let Some(last) = &state.last
            && !response_nonce.is_empty()
        {
            if response_nonce != last.nonce {
                debug!(
                    stream = ctx.id,
                    node = %ctx.node(),
                    type_url = %state.type_url,
                    nonce = %response_nonce,
                    latest_nonce = %last.nonce,
                    "stale request ignored"
                );
                return Ok(Vec::new());
            }
            let version = last.version.to_string();
            state.answered = Some(error_detail.is_some());
            if let Some(error) = error_detail {
                if state.nacked.as_deref() == Some(response_nonce.as_str()) {
                    // The same NACK again: reported once per nonce.
                    debug!(stream = ctx.id, node = %ctx.node(), type_url = %state.type_url, nonce = %response_nonce, "repeated NACK ignored");
                    return Ok(Vec::new());
                }
                state.nacked = Some(response_nonce.clone());
                let message = nack_message(error.message);
                let (resource_names, sources) =
                    nack_subjects(&message, state.resources_of(last).into_iter());
                // The host logs it (once, with the objects behind it).
                debug!(
                    stream = ctx.id,
                    node = %ctx.node(),
                    type_url = %state.type_url,
                    version = %version,
                    nonce = %response_nonce,
                    client_version = %version_info,
                    "xDS client rejected configuration"
                );
                ctx.emit(XdsEvent::Nack(Nack {
                    stream: ctx.id,
                    node: ctx.node().to_string(),
                    protocol: Protocol::Sotw,
                    type_url: state.type_url.to_string(),
                    version,
                    client_version: version_info,
                    nonce: response_nonce,
                    code: error.code,
                    message,
                    resource_names,
                    sources,
                }));
            } else if version_info == version {
                debug!(
                    stream = ctx.id,
                    node = %ctx.node(),
                    type_url = %state.type_url,
                    version = %version,
                    nonce = %response_nonce,
                    "xDS client acknowledged"
                );
                ctx.emit(XdsEvent::Ack(Ack {
                    stream: ctx.id,
                    node: ctx.node().to_string(),
                    protocol: Protocol::Sotw,
                    type_url: state.type_url.to_string(),
                    version,
                    nonce: response_nonce,
                }));
            }
        }

        // The same names as last time leave the subscription as it is.
        let widened = if resource_locators.is_empty()
            && state.last.is_some()
            && resource_names == state.last_names
        {
            false
        } else {
            ctx.check_names(
                &state.type_url,
                resource_names.iter().count() + resource_locators.len(),
            )?;
            let names = resource_names
                .iter()
                .map(str::to_string)
                .chain(resource_locators.into_iter().map(|l| l.name));
            let widened = state.resubscribe(names);
            state.last_names = resource_names;
            widened
        };
        Ok(match current {
            Some(p) if state.last.is_none() || widened => vec![state.respond(ctx, p, None)],
            _ => Vec::new(),
        })
    }

    fn on_snapshot(&mut self, ctx: &mut StreamCtx, current: &Arc<Prepared>) -> Vec<SotwResponse> {
        let mut states: Vec<&mut TypeState> = self.types.values_mut().collect();
        states.sort_by(|a, b| push_rank(&a.type_url).cmp(&push_rank(&b.type_url)));
        states
            .into_iter()
            .filter_map(|s| s.update(ctx, current))
            .collect()
    }
}

fn selected(resources: Option<&Resources>, name: &str, selection: &Selection) -> bool {
    resources
        .and_then(|m| m.get(name))
        .is_some_and(|r| selection.includes(r))
}

impl TypeState {
    fn new(type_url: &str) -> Self {
        TypeState {
            type_url: type_url.into(),
            wildcard: false,
            explicit: false,
            names: Arc::default(),
            last_names: RawNames::default(),
            last: None,
            nacked: None,
            answered: None,
        }
    }

    /// Applies the request's resource names; true when the client now sees
    /// something it did not before.
    fn resubscribe(&mut self, names: impl Iterator<Item = String>) -> bool {
        let names: Vec<String> = names.collect();
        // Every SotW request repeats the whole subscription (an Envoy ACKing
        // endpoints names every cluster): the same names in the same order
        // are the common case, told apart without building a set.
        if self.explicit
            && !self.wildcard
            && !names.is_empty()
            && names.iter().eq(self.names.iter())
        {
            return false;
        }
        let mut star = false;
        let mut named = BTreeSet::new();
        for name in names {
            if name == "*" {
                star = true;
            } else {
                named.insert(name);
            }
        }
        let wildcard = if star || !named.is_empty() {
            self.explicit = true;
            star
        } else {
            legacy_wildcard(&self.type_url) && !self.explicit
        };
        let widened = if wildcard {
            // Names beside `*` can bring in `named_only` resources.
            !self.wildcard || !named.is_subset(&self.names)
        } else {
            !self.wildcard && !named.is_subset(&self.names)
        };
        self.wildcard = wildcard;
        if *self.names != named {
            self.names = Arc::new(named);
        }
        widened
    }

    fn selection(&self) -> Selection {
        if self.wildcard && !self.names.is_empty() {
            Selection::AllAnd(self.names.clone())
        } else if self.wildcard {
            Selection::All
        } else {
            Selection::Named(self.names.clone())
        }
    }

    /// The response that brings the client from the latest response to
    /// `current`, if the subscription sees any change: the whole subscribed
    /// set for full-state types, only the changed resources for the others.
    fn update(&mut self, ctx: &mut StreamCtx, current: &Arc<Prepared>) -> Option<SotwResponse> {
        let Some(last) = &self.last else {
            // Asked before the first snapshot was ready.
            return Some(self.respond(ctx, current, None));
        };
        if Arc::ptr_eq(&last.basis, current) {
            return None;
        }
        let changes = current.changes_since(&last.basis.snapshot, &self.type_url);
        let selection = self.selection();
        let old = last.basis.snapshot.of_type(&self.type_url);
        let new = current.snapshot.of_type(&self.type_url);
        let response = if full_state(&self.type_url) {
            let visible = changes
                .updated
                .iter()
                .any(|n| selected(new, n, &selection) || selected(old, n, &selection))
                || changes.removed.iter().any(|n| selected(old, n, &selection));
            visible.then_some(None)
        } else {
            let changed: BTreeSet<String> = changes
                .updated
                .iter()
                .filter(|n| selected(new, n, &selection))
                .cloned()
                .collect();
            (!changed.is_empty()).then(|| Some(Arc::new(changed)))
        };
        match response {
            Some(only) => Some(self.respond(ctx, current, only)),
            None => {
                // Nothing it sees changed: it is up to date with `current`.
                if let Some(last) = &mut self.last {
                    last.basis = current.clone();
                }
                None
            }
        }
    }

    /// Sends `only` (changed resources of a type that allows partial
    /// responses) or, without it, everything the subscription sees.
    fn respond(
        &mut self,
        ctx: &mut StreamCtx,
        current: &Arc<Prepared>,
        only: Option<Arc<BTreeSet<String>>>,
    ) -> SotwResponse {
        let nonce = ctx.next_nonce();
        let selection = match only {
            Some(names) => Selection::Named(names),
            None => self.selection(),
        };
        let response = SotwResponse {
            version_info: current.version.clone(),
            type_url: self.type_url.clone(),
            nonce: nonce.clone(),
            snapshot: current.snapshot.clone(),
            selection: selection.clone(),
        };
        let resources = response.resources().count();
        debug!(
            stream = ctx.id,
            node = %ctx.node(),
            type_url = %self.type_url,
            version = %current.version,
            nonce = %nonce,
            resources,
            "xDS push"
        );
        ctx.emit(XdsEvent::Pushed(Push {
            stream: ctx.id,
            node: ctx.node().to_string(),
            protocol: Protocol::Sotw,
            type_url: self.type_url.to_string(),
            version: current.version.to_string(),
            nonce: nonce.clone(),
            resources,
            removed: 0,
        }));
        self.answered = None;
        self.last = Some(Sent {
            nonce,
            version: current.version.clone(),
            sent: current.snapshot.of_type(&self.type_url).cloned(),
            selection,
            basis: current.clone(),
        });
        response
    }

    /// The resources a sent response carried.
    fn resources_of<'a>(&self, sent: &'a Sent) -> Vec<&'a Arc<Resource>> {
        let Some(resources) = &sent.sent else {
            return Vec::new();
        };
        match &sent.selection {
            Selection::Named(names) => names.iter().filter_map(|n| resources.get(n)).collect(),
            all => resources.values().filter(|r| all.includes(r)).collect(),
        }
    }
}
