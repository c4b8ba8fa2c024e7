//! Virtual hosts: a merged virtual host compiled to an encoded Envoy
//! `VirtualHost`, checked against what the host knows (every backend a
//! Service port that exists, routes Envoy accepts), with what it needs from
//! the rest of the snapshot (clusters, a secret, API listeners).
//!
//! Compiling reads only the merge, the listener and the store, so a round's
//! dirty hosts compile in parallel; what they hold (cluster and secret uses,
//! reverse indexes) is then taken in key order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;

use crate::envoy;
use crate::ir;
use crate::store::{Index, KindKey, NamespacedName, ObjectKey};
use crate::translate::merge::{MergedListener, MergedVhost, VhostKey};

/// A compiled virtual host and what it needs from the rest of the snapshot.
#[derive(Clone, Debug)]
pub(super) struct CompiledVhost {
    /// Contributing roots, oldest first.
    pub roots: Vec<ObjectKey>,
    /// Backends of the served routes, one per use: cluster reference counts.
    pub backends: Vec<ir::Backend>,
    /// None when the virtual host cannot be served (the diagnostics say why).
    pub encoded: Option<Bytes>,
    /// Services its routes name, served or not: a change to one compiles
    /// the host again.
    pub services: BTreeSet<NamespacedName>,
    pub secret: Option<NamespacedName>,
    /// API listeners for proxyless gRPC clients dialling this domain.
    pub api_listeners: Vec<String>,
    pub diagnostics: Vec<ir::Diagnostic>,
}

#[derive(Default)]
pub(super) struct VirtualHosts {
    compiled: BTreeMap<VhostKey, CompiledVhost>,
    by_service: HashMap<NamespacedName, HashSet<VhostKey>>,
    by_secret: HashMap<NamespacedName, HashSet<VhostKey>>,
}

fn diag(root: &ObjectKey, reason: &str, message: String) -> ir::Diagnostic {
    ir::Diagnostic::error(ir::ObjectRef::of(root), reason, message)
}

/// The part of a Service that backend checks read.
#[derive(serde::Deserialize)]
struct ServicePorts {
    spec: Option<ServicePortsSpec>,
}

#[derive(serde::Deserialize)]
struct ServicePortsSpec {
    ports: Option<Vec<ServicePort>>,
}

#[derive(serde::Deserialize)]
struct ServicePort {
    port: i32,
}

impl VirtualHosts {
    pub fn get(&self, key: &VhostKey) -> Option<&CompiledVhost> {
        self.compiled.get(key)
    }

    /// The compiled hosts of one listener, in domain order.
    pub fn on_listener<'a>(
        &'a self,
        listener: &'a str,
    ) -> impl Iterator<Item = (&'a VhostKey, &'a CompiledVhost)> + 'a {
        self.compiled
            .range(VhostKey::first_on(listener)..)
            .take_while(move |(k, _)| k.listener == listener)
    }

    pub fn using_service(&self, service: &NamespacedName) -> impl Iterator<Item = &VhostKey> {
        self.by_service.get(service).into_iter().flatten()
    }

    pub fn using_secret(&self, secret: &NamespacedName) -> impl Iterator<Item = &VhostKey> {
        self.by_secret.get(secret).into_iter().flatten()
    }

    /// Forgets what `key` held; returns it.
    pub fn take(&mut self, key: &VhostKey) -> Option<CompiledVhost> {
        let old = self.compiled.remove(key)?;
        for s in &old.services {
            unindex(&mut self.by_service, s, key);
        }
        if let Some(secret) = &old.secret {
            unindex(&mut self.by_secret, secret, key);
        }
        Some(old)
    }

    pub fn insert(&mut self, key: VhostKey, compiled: CompiledVhost) {
        for s in &compiled.services {
            self.by_service
                .entry(s.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some(secret) = &compiled.secret {
            self.by_secret
                .entry(secret.clone())
                .or_default()
                .insert(key.clone());
        }
        self.compiled.insert(key, compiled);
    }

    /// The virtual host as `merged` makes it on `listener`.
    pub fn compile(
        key: &VhostKey,
        merged: &MergedVhost,
        listener: Option<&MergedListener>,
        store: &Index,
    ) -> CompiledVhost {
        let mut compiled = CompiledVhost {
            encoded: None,
            services: BTreeSet::new(),
            secret: None,
            api_listeners: vec![],
            diagnostics: merged.diagnostics.clone(),
            roots: merged.roots.clone(),
            backends: vec![],
        };
        let first_root = compiled.roots[0].clone();
        match listener.map(|l| &l.listener) {
            None => compiled.diagnostics.extend(compiled.roots.iter().map(|r| {
                diag(
                    r,
                    "ListenerNotFound",
                    format!(
                        "virtual host {} names listener {} which no object declares",
                        key.domain, key.listener
                    ),
                )
            })),
            Some(l) if l.protocol == ir::ListenerProtocol::Https && merged.tls.is_none() => {
                compiled.diagnostics.push(diag(
                    &first_root,
                    "TLSRequired",
                    format!(
                        "virtual host {} on https listener {} has no TLS secret",
                        key.domain, key.listener
                    ),
                ))
            }
            Some(l) => compile_routes(key, merged, l, store, &mut compiled),
        }
        if compiled.encoded.is_none() {
            compiled.backends.clear();
            compiled.secret = None;
        }
        compiled
    }
}

fn compile_routes(
    key: &VhostKey,
    merged: &MergedVhost,
    listener: &ir::Listener,
    store: &Index,
    compiled: &mut CompiledVhost,
) {
    // The host's own validation: every backend must be a Service port that
    // exists, whatever the plugin said.
    let mut clusters = BTreeSet::new();
    let mut routes = Vec::with_capacity(merged.routes.len());
    for mr in &merged.routes {
        // A regex Envoy would refuse NACKs the whole route configuration:
        // only this route is left out.
        if let Err(e) = envoy::regex::check_route(&mr.route) {
            compiled.diagnostics.push(diag(
                &mr.root,
                "InvalidRegex",
                format!("virtual host {}: route left out: {e}", key.domain),
            ));
            continue;
        }
        let mut route = mr.route.clone();
        // A mirror to a backend that is not there is left out; the route
        // itself still serves.
        route.mirrors.retain(|m| {
            compiled
                .services
                .insert(NamespacedName::new(&m.backend.namespace, &m.backend.name));
            match check_backend(store, &m.backend) {
                Some((reason, message)) => {
                    compiled.diagnostics.push(diag(
                        &mr.root,
                        reason,
                        format!("mirror left out: {message}"),
                    ));
                    false
                }
                None => {
                    clusters.insert(envoy::names::cluster(&m.backend));
                    compiled.backends.push(m.backend.clone());
                    true
                }
            }
        });
        if let ir::RouteAction::Forward(backends) = &route.action {
            compiled.services.extend(
                backends
                    .iter()
                    .map(|wb| NamespacedName::new(&wb.backend.namespace, &wb.backend.name)),
            );
            if let Some((reason, message)) = backends
                .iter()
                .find_map(|wb| check_backend(store, &wb.backend))
            {
                compiled.diagnostics.push(diag(&mr.root, reason, message));
                route.action = ir::RouteAction::DirectResponse(ir::DirectResponse::new(503));
            } else {
                clusters.extend(backends.iter().map(|wb| envoy::names::cluster(&wb.backend)));
                compiled
                    .backends
                    .extend(backends.iter().map(|wb| wb.backend.clone()));
            }
        }
        routes.push(route);
    }
    let invalid = |compiled: &mut CompiledVhost, e: &dyn std::fmt::Display| {
        let diags: Vec<_> = compiled
            .roots
            .iter()
            .map(|r| {
                diag(
                    r,
                    "InvalidRoute",
                    format!("virtual host {}: {e}", key.domain),
                )
            })
            .collect();
        compiled.diagnostics.extend(diags);
    };
    match envoy::virtual_host(&key.domain, &routes) {
        Ok(vh) => {
            let errors = envoy::validate_virtual_host(&vh, |c| clusters.contains(c));
            if errors.is_empty() {
                compiled.encoded = Some(envoy::encode_virtual_host(&vh));
            } else {
                for e in &errors {
                    invalid(compiled, e);
                }
            }
        }
        Err(e) => invalid(compiled, &e),
    }
    match listener.protocol {
        ir::ListenerProtocol::Https => {
            compiled.secret = merged
                .tls
                .as_ref()
                .map(|s| NamespacedName::new(&s.namespace, &s.name));
        }
        ir::ListenerProtocol::Http => {
            if compiled.encoded.is_some() && !key.domain.contains('*') {
                compiled.api_listeners = vec![
                    key.domain.clone(),
                    format!("{}:{}", key.domain, listener.port),
                ];
            }
        }
    }
}

fn check_backend(store: &Index, b: &ir::Backend) -> Option<(&'static str, String)> {
    let key = ObjectKey::new(
        KindKey::new("v1", "Service"),
        b.namespace.clone(),
        b.name.clone(),
    );
    let Some(obj) = store.get(&key) else {
        return Some((
            "BackendNotFound",
            format!("Service {}/{} does not exist", b.namespace, b.name),
        ));
    };
    // Only the ports: this runs for every backend of every virtual host
    // compiled (30k times in a 10k-Ingress rebuild), and a whole typed
    // Service costs several times more to read.
    let svc: ServicePorts = match obj.parse() {
        Ok(s) => s,
        Err(e) => {
            return Some((
                "BackendInvalid",
                format!("Service {}/{} cannot be read: {e}", b.namespace, b.name),
            ));
        }
    };
    let has_port = svc
        .spec
        .and_then(|s| s.ports)
        .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(b.port)));
    (!has_port).then(|| {
        (
            "BackendNotFound",
            format!("Service {}/{} has no port {}", b.namespace, b.name, b.port),
        )
    })
}

fn unindex(
    index: &mut HashMap<NamespacedName, HashSet<VhostKey>>,
    at: &NamespacedName,
    key: &VhostKey,
) {
    if let Some(set) = index.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            index.remove(at);
        }
    }
}
