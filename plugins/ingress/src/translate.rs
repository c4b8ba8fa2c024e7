//! One Ingress (already known to be ours) to a fragment.
//!
//! Rules are first collected per host as listener-independent routes; those
//! are then placed on `ingress_http` and, for TLS hosts, `ingress_https`,
//! adding what depends on the placement (wildcard `:authority` checks,
//! https redirects).

use std::collections::BTreeMap;

use isobar_guest::Store;
use isobar_guest::k8s_openapi::api::core::v1::{Service, ServicePort};
use isobar_guest::k8s_openapi::api::networking::v1::{
    HTTPIngressPath, Ingress, IngressBackend, IngressSpec,
};
use isobar_guest::types::*;

use crate::annotations::Annotations;
use crate::{HTTP_LISTENER, HTTP_PORT, HTTPS_LISTENER, HTTPS_PORT};

/// Characters that make an ImplementationSpecific path a regex. `.` is left
/// out on purpose: `/index.html` is a path, not a pattern.
const REGEX_META: &[char] = &[
    '^', '$', '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '\\',
];

pub fn translate(root: &Object, ingress: &Ingress, store: &dyn Store) -> Fragment {
    let namespace = [
        root.namespace.as_str(),
        ingress.metadata.namespace.as_deref().unwrap_or(""),
    ]
    .into_iter()
    .find(|ns| !ns.is_empty())
    .unwrap_or("default")
    .to_owned();
    let name = ingress
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| root.name.clone());
    let object = ObjectRef::new("Ingress", &namespace, name);
    let mut diagnostics = Vec::new();
    let annotations = Annotations::parse(
        ingress
            .metadata
            .annotations
            .as_ref()
            .unwrap_or(&Default::default()),
        &object,
        &mut diagnostics,
    );
    let mut translation = Translation {
        store,
        namespace,
        object,
        annotations,
        services: BTreeMap::new(),
        diagnostics,
    };
    let empty = IngressSpec::default();
    let spec = ingress.spec.as_ref().unwrap_or(&empty);
    let hosts = translation.hosts(spec);
    let tls = translation.tls_hosts(spec, &hosts);
    translation.assemble(&hosts, &tls)
}

struct Translation<'a> {
    store: &'a dyn Store,
    namespace: String,
    /// The Ingress, for diagnostics.
    object: ObjectRef,
    annotations: Annotations,
    /// Services by name, read once per translation however many paths use
    /// them. (A BTreeMap, not a HashMap: std's HashMap seeds itself from
    /// `wasi:random`, an import a translator has no business needing.)
    services: BTreeMap<String, Result<Option<Service>, Error>>,
    diagnostics: Vec<Diagnostic>,
}

/// The routes of one rule host (domain), not yet placed on a listener.
struct HostRoutes {
    domain: String,
    routes: Vec<Route>,
}

/// Why a backend cannot be used (becomes a warning on the Ingress).
struct Unusable {
    reason: String,
    message: String,
}

/// A host served over https with this certificate.
struct TlsHost {
    domain: String,
    secret: SecretRef,
}

impl Translation<'_> {
    fn warn(&mut self, reason: &str, message: String) {
        self.diagnose(Diagnostic::warning(self.object.clone(), reason, message));
    }

    fn diagnose(&mut self, diagnostic: Diagnostic) {
        // One cause referenced by many paths is reported once.
        if !self.diagnostics.contains(&diagnostic) {
            self.diagnostics.push(diagnostic);
        }
    }

    /// Rules (and the default backend) grouped by domain, in spec order.
    fn hosts(&mut self, spec: &IngressSpec) -> Vec<HostRoutes> {
        let mut hosts: Vec<HostRoutes> = Vec::new();
        for rule in spec.rules.iter().flatten() {
            let Some(domain) = self.domain(rule.host.as_deref(), "rule") else {
                continue;
            };
            let index = host_entry(&mut hosts, domain);
            for path in rule.http.iter().flat_map(|http| &http.paths) {
                let Some(matches) = self.route_match(path) else {
                    continue;
                };
                if hosts[index].routes.iter().any(|r| r.matches == matches) {
                    let message = format!(
                        "host {:?}: path {:?} ({}) is listed more than once; the first one is used",
                        hosts[index].domain,
                        path.path.as_deref().unwrap_or(""),
                        path.path_type,
                    );
                    self.warn("DuplicatePath", message);
                    continue;
                }
                let route = self.route(matches, &path.backend);
                hosts[index].routes.push(route);
            }
        }
        if let Some(backend) = &spec.default_backend {
            let index = host_entry(&mut hosts, "*".to_owned());
            let matches = RouteMatch::prefix("/");
            // A host-less rule's own "/" path is more specific than the
            // default, so it wins.
            if !hosts[index].routes.iter().any(|r| r.matches == matches) {
                let route = self.route(matches, backend);
                hosts[index].routes.push(route);
            }
        }
        hosts
    }

    /// The virtual-host domain for an Ingress host: "*" when empty, otherwise
    /// the lower-cased host if it is a valid DNS name or one-label wildcard.
    fn domain(&mut self, host: Option<&str>, context: &str) -> Option<String> {
        let host = host.map(str::trim).unwrap_or("");
        if host.is_empty() {
            return Some("*".to_owned());
        }
        let host = host.to_ascii_lowercase();
        if is_valid_host(&host) {
            Some(host)
        } else {
            self.warn(
                "InvalidHost",
                format!(
                    "{context} host {host:?} is not a DNS name or a wildcard like \"*.example.com\"; ignored"
                ),
            );
            None
        }
    }

    fn route_match(&mut self, path: &HTTPIngressPath) -> Option<RouteMatch> {
        let value = path.path.as_deref().unwrap_or("");
        match path.path_type.as_str() {
            "Exact" => self.plain_path(value, "Exact").map(RouteMatch::exact),
            "Prefix" => self.plain_path(value, "Prefix").map(RouteMatch::prefix),
            // A missing pathType is treated as ImplementationSpecific, its
            // pre-v1 default.
            "ImplementationSpecific" | "" => {
                if value.is_empty() {
                    Some(RouteMatch::prefix("/"))
                } else if value.contains(REGEX_META) {
                    self.regex_path(value).map(RouteMatch::regex)
                } else {
                    self.plain_path(value, "ImplementationSpecific")
                        .map(RouteMatch::prefix)
                }
            }
            other => {
                self.warn(
                    "InvalidPathType",
                    format!("path {value:?}: unknown pathType {other:?}; ignored"),
                );
                None
            }
        }
    }

    /// Exact and prefix paths must be absolute and free of characters that
    /// can never occur in a request path.
    fn plain_path(&mut self, value: &str, path_type: &str) -> Option<String> {
        let bad_char = value
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control());
        let why = if !value.starts_with('/') {
            "must start with \"/\"".to_owned()
        } else if let Some(c) = bad_char {
            format!("must not contain {c:?}")
        } else {
            return Some(value.to_owned());
        };
        self.warn(
            "InvalidPath",
            format!("{path_type} path {value:?} {why}; ignored"),
        );
        None
    }

    /// Checks the expression here so a typo is a diagnostic on this Ingress
    /// rather than a data-plane rejection of the whole route table.
    fn regex_path(&mut self, value: &str) -> Option<String> {
        match crate::regex::check(value) {
            Ok(()) => Some(value.to_owned()),
            Err(why) => {
                self.warn(
                    "InvalidPath",
                    format!(
                        "ImplementationSpecific path {value:?} is not a valid RE2 regular expression ({why}); ignored"
                    ),
                );
                None
            }
        }
    }

    /// A route to `backend`, or a 503 with a diagnostic when it is unusable.
    fn route(&mut self, matches: RouteMatch, backend: &IngressBackend) -> Route {
        match self.backend(backend) {
            Ok(backend) => {
                let mut route = Route::forward(matches, backend);
                route.timeout_ms = self.annotations.timeout_ms;
                route.retry = self.annotations.retry.clone();
                route
            }
            Err(Unusable { reason, message }) => {
                self.warn(&reason, message);
                Route::direct_response(matches, DirectResponse::new(503))
            }
        }
    }

    fn backend(&mut self, backend: &IngressBackend) -> Result<Backend, Unusable> {
        let unusable = |reason: &str, message: String| Unusable {
            reason: reason.to_owned(),
            message,
        };
        if let Some(resource) = &backend.resource {
            return Err(unusable(
                "ResourceBackendUnsupported",
                format!(
                    "backend resource {}/{} is not supported, only Service backends are",
                    resource.kind, resource.name
                ),
            ));
        }
        let Some(service_backend) = &backend.service else {
            return Err(unusable(
                "InvalidBackend",
                "backend names neither a service nor a resource".to_owned(),
            ));
        };
        let name = service_backend.name.as_str();
        let qualified = format!("{}/{name}", self.namespace);
        let (number, port_name) = service_backend
            .port
            .as_ref()
            .map(|port| (port.number.filter(|n| *n != 0), port.name.as_deref()))
            .unwrap_or_default();
        let port_name = port_name.filter(|n| !n.is_empty());
        if number.is_none() && port_name.is_none() {
            return Err(unusable(
                "InvalidBackend",
                format!("backend service {name:?} names no port"),
            ));
        }

        let service = match self.service(name) {
            Ok(Some(service)) => service,
            Ok(None) => {
                return Err(unusable(
                    "ServiceNotFound",
                    format!("Service {qualified} not found"),
                ));
            }
            Err(error) => return Err(unusable(&error.reason, error.message)),
        };
        let spec = service.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(unusable(
                "ExternalNameServiceUnsupported",
                format!("Service {qualified} is of type ExternalName, which is not supported"),
            ));
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        // The API allows exactly one of number and name; prefer the number.
        let (port, wanted): (Option<&ServicePort>, String) = match number {
            Some(number) => (ports.iter().find(|p| p.port == number), number.to_string()),
            None => {
                let port_name = port_name.unwrap_or_default();
                (
                    ports.iter().find(|p| p.name.as_deref() == Some(port_name)),
                    format!("{port_name:?}"),
                )
            }
        };
        let Some((port, number)) = port.and_then(|p| Some((p, u16::try_from(p.port).ok()?))) else {
            return Err(unusable(
                "ServicePortNotFound",
                format!("Service {qualified} has no port {wanted}"),
            ));
        };
        Ok(Backend::service(&self.namespace, name, number).with_protocol(protocol(port)))
    }

    fn service(&mut self, name: &str) -> Result<Option<Service>, Error> {
        let (store, namespace) = (self.store, self.namespace.as_str());
        self.services
            .entry(name.to_owned())
            .or_insert_with(|| store.get_typed::<Service>(namespace, name))
            .clone()
    }

    /// The https hosts and their certificates, first TLS entry first.
    fn tls_hosts(&mut self, spec: &IngressSpec, hosts: &[HostRoutes]) -> Vec<TlsHost> {
        let mut tls_hosts: Vec<TlsHost> = Vec::new();
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                self.warn(
                    "TLSSecretMissing",
                    format!("spec.tls[{i}] has no secretName; its hosts are served over http only"),
                );
                continue;
            };
            let secret = SecretRef::new(&self.namespace, secret_name);
            let listed: Vec<&str> = tls.hosts.iter().flatten().map(String::as_str).collect();
            let domains: Vec<String> = if listed.is_empty() {
                // No hosts: the certificate covers every host the rules name.
                hosts
                    .iter()
                    .filter(|h| h.domain != "*")
                    .map(|h| h.domain.clone())
                    .collect()
            } else {
                listed
                    .into_iter()
                    .filter_map(|host| self.domain(Some(host), "tls"))
                    .filter(|domain| domain != "*")
                    .collect()
            };
            if domains.is_empty() {
                self.warn(
                    "TLSWithoutHosts",
                    format!(
                        "spec.tls[{i}] (secret {secret_name}) covers no host: list hosts or name them in rules"
                    ),
                );
            }
            for domain in domains {
                match tls_hosts.iter().find(|t| t.domain == domain) {
                    Some(earlier) if earlier.secret != secret => {
                        let message = format!(
                            "host {domain:?} is in several spec.tls entries; secret {} is used, not {secret_name}",
                            earlier.secret.name
                        );
                        self.warn("TLSHostConflict", message);
                    }
                    Some(_) => {}
                    None => tls_hosts.push(TlsHost {
                        domain,
                        secret: secret.clone(),
                    }),
                }
            }
        }
        tls_hosts
    }

    /// Places the host routes on listeners and returns the fragment.
    fn assemble(mut self, hosts: &[HostRoutes], tls: &[TlsHost]) -> Fragment {
        let mut fragment = Fragment::new();
        let force_redirect = self.annotations.force_ssl_redirect;
        let mut https = Vec::new();
        let mut extra_http = Vec::new();
        for tls_host in tls {
            let Some(source) = routes_for(hosts, &tls_host.domain) else {
                self.diagnose(Diagnostic::info(
                    self.object.clone(),
                    "TLSHostWithoutRoutes",
                    format!(
                        "TLS host {:?} has no rule and there is no default backend; nothing is served for it",
                        tls_host.domain
                    ),
                ));
                continue;
            };
            https.push(
                VirtualHost::new(HTTPS_LISTENER, &tls_host.domain)
                    .with_tls(tls_host.secret.clone())
                    .with_routes(place(&source.routes, &tls_host.domain, false)),
            );
            // A TLS host served by another host's routes (wildcard or "*")
            // has no http virtual host of its own; give it one to redirect.
            if force_redirect && source.domain != tls_host.domain {
                extra_http.push(
                    VirtualHost::new(HTTP_LISTENER, &tls_host.domain).with_routes(place(
                        &source.routes,
                        &tls_host.domain,
                        true,
                    )),
                );
            }
        }

        for host in hosts.iter().filter(|h| !h.routes.is_empty()) {
            let redirect = force_redirect
                && https
                    .iter()
                    .any(|vh: &VirtualHost| vh.domain == host.domain);
            fragment.add_virtual_host(
                VirtualHost::new(HTTP_LISTENER, &host.domain).with_routes(place(
                    &host.routes,
                    &host.domain,
                    redirect,
                )),
            );
        }
        fragment.virtual_hosts.extend(extra_http);
        if !fragment.virtual_hosts.is_empty() {
            fragment.add_listener(Listener::http(HTTP_LISTENER, HTTP_PORT));
        }
        if !https.is_empty() {
            fragment.add_listener(Listener::https(HTTPS_LISTENER, HTTPS_PORT));
        }
        fragment.virtual_hosts.extend(https);
        fragment.diagnostics = self.diagnostics;
        fragment
    }
}

fn host_entry(hosts: &mut Vec<HostRoutes>, domain: String) -> usize {
    match hosts.iter().position(|h| h.domain == domain) {
        Some(index) => index,
        None => {
            hosts.push(HostRoutes {
                domain,
                routes: Vec::new(),
            });
            hosts.len() - 1
        }
    }
}

/// The routes that serve `domain`: its own rule, else a wildcard rule
/// covering it, else the host-less rules and default backend ("*").
fn routes_for<'h>(hosts: &'h [HostRoutes], domain: &str) -> Option<&'h HostRoutes> {
    let find = |wanted: &str| {
        hosts
            .iter()
            .find(|h| h.domain == wanted && !h.routes.is_empty())
    };
    let wildcard = match domain.split_once('.') {
        Some((label, parent)) if label != "*" => find(&format!("*.{parent}")),
        _ => None,
    };
    find(domain).or(wildcard).or_else(|| find("*"))
}

/// Copies `routes` for a virtual host of `domain`: wildcard domains also
/// check `:authority` (the IR wildcard matches several labels, the Ingress
/// one exactly one); `redirect` turns every route into a 301 to https.
fn place(routes: &[Route], domain: &str, redirect: bool) -> Vec<Route> {
    let authority = domain
        .strip_prefix('*')
        .filter(|rest| !rest.is_empty())
        .map(|parent| {
            HeaderMatch::regex(
                ":authority",
                // Valid hosts are [a-z0-9.-], so only the dots need escaping.
                format!("(?i)[^.:]+{}(:[0-9]+)?", parent.replace('.', "\\.")),
            )
        });
    routes
        .iter()
        .map(|route| {
            let mut matches = route.matches.clone();
            matches.headers.extend(authority.clone());
            if redirect {
                Route::redirect(matches, Redirect::to_https())
            } else {
                Route {
                    matches,
                    ..route.clone()
                }
            }
        })
        .collect()
}

fn protocol(port: &ServicePort) -> BackendProtocol {
    match port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => BackendProtocol::Http2,
        Some("grpc") => BackendProtocol::Grpc,
        _ => BackendProtocol::Http1,
    }
}

/// A DNS-1123 subdomain, optionally with a leading `*.` wildcard label.
fn is_valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
