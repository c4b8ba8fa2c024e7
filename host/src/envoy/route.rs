//! Virtual hosts and route configurations.
//!
//! Path matching is restricted to what gRPC's xDS client understands as
//! well as Envoy: `path`, `prefix` and `safe_regex` (gRPC ignores routes with
//! `path_separated_prefix`). The IR's path-segment prefix is therefore
//! expanded into two routes: `path: /foo` (exactly the prefix) and
//! `prefix: /foo/` (anything below it), which together match `/foo` and
//! `/foo/bar` but never `/foobar`.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::{CompileError, millis, names, u32_value};
use crate::ir;

/// Envoy rejects a route configuration whose direct-response bodies exceed
/// `max_direct_response_body_size_bytes`, 4096 unless set; we do not set it.
pub const MAX_DIRECT_RESPONSE_BODY: usize = 4096;

/// Field numbers in `envoy.config.route.v3.RouteConfiguration`.
const ROUTE_CONFIGURATION_NAME: u32 = 1;
const ROUTE_CONFIGURATION_VIRTUAL_HOSTS: u32 = 2;

/// Compiles the routes of one domain into a virtual host. `routes` are in
/// match order already (the merge orders them most specific first); Envoy
/// and gRPC take the first route that matches.
///
/// Domains: an exact host name `h` is served as `h` and `h:*`. Socket
/// listeners strip any port from the Host header before routing
/// (`strip_any_host_port`), so Envoy only ever needs `h`; gRPC's xDS client
/// matches the authority of `xds:///h:port` with its port, and `h:*` (a
/// prefix wildcard, valid in both Envoy and gRPC) catches that. Wildcards
/// (`*.example.com`, `*`) get no port variant: `*.example.com:*` is not a
/// pattern either side supports.
///
/// A wildcard covers exactly one label in the IR (`*.example.com` matches
/// `a.example.com`, not `a.b.example.com`), while Envoy's suffix wildcard
/// matches any depth; every route of a wildcard host therefore also requires
/// `:authority` to match `{one label}.example.com` (with an optional port).
/// gRPC's xDS client does not see `:authority` as a header, so gRPC clients
/// cannot use wildcard hosts.
pub fn virtual_host(domain: &str, routes: &[ir::Route]) -> Result<VirtualHost, CompileError> {
    validate_domain(domain)?;
    let authority = wildcard_authority(domain);
    let mut out = Vec::with_capacity(routes.len() + routes.len() / 2);
    for (index, r) in routes.iter().enumerate() {
        compile_route(domain, index, r, authority.as_ref(), &mut out)?;
    }
    Ok(VirtualHost {
        name: names::virtual_host(domain),
        domains: domains(domain),
        routes: out,
        ..Default::default()
    })
}

fn domains(domain: &str) -> Vec<String> {
    if domain.starts_with('*') {
        vec![domain.to_string()]
    } else {
        vec![domain.to_string(), format!("{domain}:*")]
    }
}

/// For `*.example.com`: `:authority` is one label, then `.example.com`,
/// case-insensitively, with an optional port.
fn wildcard_authority(domain: &str) -> Option<HeaderMatcher> {
    let rest = domain.strip_prefix("*.")?;
    let mut re = String::from("(?i)[^.:/]+\\.");
    // validate_domain allows letters, digits, '-', '_' and '.' only; '.' is
    // the one that needs escaping.
    re.push_str(&rest.replace('.', "\\."));
    re.push_str("(:[0-9]+)?");
    Some(HeaderMatcher {
        name: ":authority".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(regex(re))),
            ignore_case: false,
        })),
        ..Default::default()
    })
}

fn validate_domain(domain: &str) -> Result<(), CompileError> {
    let invalid = |reason| {
        Err(CompileError::InvalidDomain {
            domain: domain.to_string(),
            reason,
        })
    };
    if domain == "*" {
        return Ok(());
    }
    let host = domain.strip_prefix("*.").unwrap_or(domain);
    if host.is_empty() {
        return invalid("empty");
    }
    if host.contains('*') {
        return invalid(
            "a wildcard may only be a whole leading label (\"*.example.com\") or \"*\"",
        );
    }
    if host.starts_with('.') || host.ends_with('.') || host.contains("..") {
        return invalid("empty label");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return invalid("only letters, digits, '-', '_' and '.' are allowed (no port)");
    }
    Ok(())
}

/// Encodes a virtual host once, to be joined by
/// [`encode_route_configuration`].
pub fn encode_virtual_host(vhost: &VirtualHost) -> Bytes {
    Bytes::from(vhost.encode_to_vec())
}

/// The encoding of `RouteConfiguration { name, virtual_hosts }` built from
/// virtual hosts encoded by [`encode_virtual_host`]. A repeated message field
/// is a sequence of (key, length, bytes) records, so the encoded hosts are
/// copied, never re-encoded: one changed host among 10k costs one encode and
/// a memcpy. The bytes are identical to prost's encoding of the same
/// message (fields 1 and 2 in order, as prost writes them).
pub fn encode_route_configuration<'a>(
    name: &str,
    encoded_vhosts: impl IntoIterator<Item = &'a [u8]>,
) -> Bytes {
    let vhosts: Vec<&[u8]> = encoded_vhosts.into_iter().collect();
    let vhost_key = key_len(ROUTE_CONFIGURATION_VIRTUAL_HOSTS);
    let mut len = vhosts
        .iter()
        .map(|v| vhost_key + encoded_len_varint(v.len() as u64) + v.len())
        .sum::<usize>();
    if !name.is_empty() {
        len +=
            key_len(ROUTE_CONFIGURATION_NAME) + encoded_len_varint(name.len() as u64) + name.len();
    }
    let mut buf = BytesMut::with_capacity(len);
    if !name.is_empty() {
        encode_key(
            ROUTE_CONFIGURATION_NAME,
            WireType::LengthDelimited,
            &mut buf,
        );
        encode_varint(name.len() as u64, &mut buf);
        buf.put_slice(name.as_bytes());
    }
    for v in vhosts {
        encode_key(
            ROUTE_CONFIGURATION_VIRTUAL_HOSTS,
            WireType::LengthDelimited,
            &mut buf,
        );
        encode_varint(v.len() as u64, &mut buf);
        buf.put_slice(v);
    }
    debug_assert_eq!(buf.len(), len);
    buf.freeze()
}

/// One Envoy path specifier of an IR route, with the prefix rewrite that
/// keeps the IR's meaning on it.
struct PathPart {
    part: Option<&'static str>,
    path: PathSpecifier,
    rewrite: Option<String>,
}

fn path_parts(
    index: usize,
    path: &ir::PathMatch,
    rewrite: Option<&str>,
) -> Result<Vec<PathPart>, CompileError> {
    let check = |p: &str| {
        if p.starts_with('/') {
            Ok(())
        } else {
            Err(CompileError::InvalidPath {
                route: index,
                path: p.to_string(),
            })
        }
    };
    // An empty rewrite cannot be said in Envoy (it means "none"); "" and "/"
    // both replace the match with the root.
    let rewrite = match rewrite {
        None => None,
        Some("") => Some("/"),
        Some(r) if r.starts_with('/') => Some(r),
        Some(r) => {
            return Err(CompileError::InvalidRewrite {
                route: index,
                rewrite: r.to_string(),
            });
        }
    };
    Ok(match path {
        ir::PathMatch::Exact(p) => {
            check(p)?;
            vec![PathPart {
                part: None,
                path: PathSpecifier::Path(p.clone()),
                rewrite: rewrite.map(str::to_string),
            }]
        }
        ir::PathMatch::Regex(re) => {
            if re.is_empty() {
                return Err(CompileError::EmptyMatchValue {
                    route: index,
                    kind: "path regex",
                });
            }
            // Envoy replaces the whole path of a regex route with
            // prefix_rewrite, as the IR says for exact paths.
            vec![PathPart {
                part: None,
                path: PathSpecifier::SafeRegex(regex(re.clone())),
                rewrite: rewrite.map(str::to_string),
            }]
        }
        ir::PathMatch::Prefix(p) => {
            check(p)?;
            let base = p.trim_end_matches('/');
            // The rewrite, without its trailing slash, replaces the prefix
            // as a whole segment: /foo → /bar and /foo/x → /bar/x for a
            // rewrite of "/bar" or "/bar/"; "/" strips the prefix.
            let target = rewrite.map(|r| r.trim_end_matches('/'));
            let exact_rewrite = target.map(|t| {
                if t.is_empty() {
                    "/".to_string()
                } else {
                    t.to_string()
                }
            });
            let prefix_rewrite = target.map(|t| format!("{t}/"));
            if base.is_empty() {
                // "/" matches everything. With a rewrite, "/" itself is
                // rewritten to the target (not the target plus a slash).
                match rewrite {
                    None => vec![PathPart {
                        part: None,
                        path: PathSpecifier::Prefix("/".into()),
                        rewrite: None,
                    }],
                    Some(_) => vec![
                        PathPart {
                            part: Some("exact"),
                            path: PathSpecifier::Path("/".into()),
                            rewrite: exact_rewrite,
                        },
                        PathPart {
                            part: Some("prefix"),
                            path: PathSpecifier::Prefix("/".into()),
                            rewrite: prefix_rewrite,
                        },
                    ],
                }
            } else {
                vec![
                    PathPart {
                        part: Some("exact"),
                        path: PathSpecifier::Path(base.to_string()),
                        rewrite: exact_rewrite,
                    },
                    PathPart {
                        part: Some("prefix"),
                        path: PathSpecifier::Prefix(format!("{base}/")),
                        rewrite: prefix_rewrite,
                    },
                ]
            }
        }
    })
}

fn compile_route(
    domain: &str,
    index: usize,
    r: &ir::Route,
    authority: Option<&HeaderMatcher>,
    out: &mut Vec<Route>,
) -> Result<(), CompileError> {
    let parts = path_parts(index, &r.matches.path, prefix_rewrite(r))?;

    let mut headers = Vec::with_capacity(r.matches.headers.len() + 2);
    headers.extend(authority.cloned());
    for h in &r.matches.headers {
        headers.push(header_matcher(index, h)?);
    }
    if let Some(method) = &r.matches.method {
        if method.is_empty() {
            return Err(CompileError::EmptyMatchValue {
                route: index,
                kind: "method",
            });
        }
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(method.clone())),
                ignore_case: false,
            })),
            ..Default::default()
        });
    }
    let mut query = Vec::with_capacity(r.matches.query.len());
    for q in &r.matches.query {
        query.push(query_matcher(index, q)?);
    }

    let action = action(index, r)?;
    let (req_add, req_remove) = header_changes(index, r.request_headers.as_ref())?;
    let (resp_add, resp_remove) = header_changes(index, r.response_headers.as_ref())?;

    for part in parts {
        let mut action = action.clone();
        if let Some(rewrite) = part.rewrite {
            match &mut action {
                route::Action::Route(ra) => ra.prefix_rewrite = rewrite,
                // A redirect without a path of its own replaces the matched
                // prefix the same way a forward would.
                route::Action::Redirect(rd) if rd.path_rewrite_specifier.is_none() => {
                    rd.path_rewrite_specifier = Some(
                        redirect_action::PathRewriteSpecifier::PrefixRewrite(rewrite),
                    )
                }
                _ => {}
            }
        }
        out.push(Route {
            name: names::route(domain, index, part.part),
            r#match: Some(RouteMatch {
                path_specifier: Some(part.path),
                headers: headers.clone(),
                query_parameters: query.clone(),
                ..Default::default()
            }),
            action: Some(action),
            request_headers_to_add: req_add.clone(),
            request_headers_to_remove: req_remove.clone(),
            response_headers_to_add: resp_add.clone(),
            response_headers_to_remove: resp_remove.clone(),
            ..Default::default()
        });
    }
    Ok(())
}

/// RE2 syntax. The engine is left unset: Envoy's default engine is RE2, and
/// the `google_re2` field is deprecated (a warning on every load); gRPC
/// ignores the engine.
fn regex(regex: String) -> RegexMatcher {
    RegexMatcher {
        regex,
        engine_type: None,
    }
}

fn string_matcher(index: usize, m: &ir::StringMatch) -> Result<StringMatcher, CompileError> {
    let nonempty = |kind| {
        if m.value.is_empty() {
            Err(CompileError::EmptyMatchValue { route: index, kind })
        } else {
            Ok(m.value.clone())
        }
    };
    let (pattern, ignore_case) = match m.kind {
        ir::StringMatchKind::Exact => (MatchPattern::Exact(m.value.clone()), m.ignore_case),
        ir::StringMatchKind::Prefix => (MatchPattern::Prefix(nonempty("prefix")?), m.ignore_case),
        ir::StringMatchKind::Suffix => (MatchPattern::Suffix(nonempty("suffix")?), m.ignore_case),
        ir::StringMatchKind::Contains => {
            (MatchPattern::Contains(nonempty("contains")?), m.ignore_case)
        }
        // ignore_case has no effect on safe_regex; RE2 says it inline.
        ir::StringMatchKind::Regex => {
            let re = nonempty("regex")?;
            let re = if m.ignore_case {
                format!("(?i){re}")
            } else {
                re
            };
            (MatchPattern::SafeRegex(regex(re)), false)
        }
    };
    Ok(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    })
}

fn header_matcher(index: usize, h: &ir::HeaderMatch) -> Result<HeaderMatcher, CompileError> {
    let bare = h.name.strip_prefix(':').unwrap_or(&h.name);
    if !is_token(bare) {
        return Err(CompileError::InvalidHeaderName {
            route: index,
            name: h.name.clone(),
        });
    }
    let spec = match &h.value {
        ir::HeaderValueMatch::Present => HeaderMatchSpecifier::PresentMatch(true),
        ir::HeaderValueMatch::Value(m) => {
            HeaderMatchSpecifier::StringMatch(string_matcher(index, m)?)
        }
    };
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        invert_match: h.invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    })
}

fn query_matcher(index: usize, q: &ir::QueryMatch) -> Result<QueryParameterMatcher, CompileError> {
    if q.name.is_empty() {
        return Err(CompileError::EmptyMatchValue {
            route: index,
            kind: "query parameter name",
        });
    }
    let spec = match &q.value {
        None => QueryParameterMatchSpecifier::PresentMatch(true),
        Some(m) => QueryParameterMatchSpecifier::StringMatch(string_matcher(index, m)?),
    };
    Ok(QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(spec),
    })
}

/// What replaces the matched prefix: the route's rewrite, or a redirect's
/// prefix (a redirect without a path of its own replaces the matched
/// prefix the way a forward would).
fn prefix_rewrite(r: &ir::Route) -> Option<&str> {
    let route = match &r.path_rewrite {
        Some(ir::PathModifier::Prefix(p)) => Some(p.as_str()),
        _ => None,
    };
    match &r.action {
        ir::RouteAction::Redirect(rd) => match &rd.path {
            Some(ir::PathModifier::Prefix(p)) => Some(p.as_str()),
            Some(ir::PathModifier::Full(_)) => None,
            None => route,
        },
        _ => route,
    }
}

fn check_path(index: usize, path: &str) -> Result<(), CompileError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(CompileError::InvalidPath {
            route: index,
            path: path.to_string(),
        })
    }
}

fn action(index: usize, r: &ir::Route) -> Result<route::Action, CompileError> {
    Ok(match &r.action {
        ir::RouteAction::Forward(backends) => {
            let mut ra = RouteAction {
                cluster_specifier: Some(cluster_specifier(index, backends)?),
                timeout: r.timeout_ms.map(millis),
                retry_policy: r.retry.as_ref().map(|p| RetryPolicy {
                    retry_on: p.retry_on.clone(),
                    num_retries: Some(u32_value(p.attempts)),
                    per_try_timeout: p.per_try_timeout_ms.map(millis),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if let Some(ir::PathModifier::Full(path)) = &r.path_rewrite {
                check_path(index, path)?;
                ra.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex("^/.*$".into())),
                    substitution: path.clone(),
                });
            }
            for m in &r.mirrors {
                if let Some(percent) = m.percent.filter(|p| *p > 100) {
                    return Err(CompileError::InvalidMirrorPercent {
                        route: index,
                        percent,
                    });
                }
                ra.request_mirror_policies.push(RequestMirrorPolicy {
                    cluster: names::cluster(&m.backend),
                    runtime_fraction: m.percent.map(|p| RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: p,
                            denominator: fractional_percent::DenominatorType::Hundred as i32,
                        }),
                        runtime_key: String::new(),
                    }),
                    ..Default::default()
                });
            }
            if let Some(host) = &r.host_rewrite {
                if host.is_empty() || !is_header_value(host) {
                    return Err(CompileError::InvalidHeaderValue {
                        route: index,
                        name: "host rewrite".into(),
                    });
                }
                ra.host_rewrite_specifier =
                    Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
            }
            route::Action::Route(ra)
        }
        ir::RouteAction::Redirect(rd) => {
            use redirect_action::RedirectResponseCode as Code;
            let code = match rd.status {
                301 => Code::MovedPermanently,
                302 => Code::Found,
                303 => Code::SeeOther,
                307 => Code::TemporaryRedirect,
                308 => Code::PermanentRedirect,
                status => {
                    return Err(CompileError::InvalidRedirectStatus {
                        route: index,
                        status,
                    });
                }
            };
            let path_redirect = match &rd.path {
                Some(ir::PathModifier::Full(p)) => {
                    check_path(index, p)?;
                    Some(p.clone())
                }
                Some(ir::PathModifier::Prefix(p)) => {
                    check_path(index, p)?;
                    None
                }
                None => None,
            };
            route::Action::Redirect(RedirectAction {
                response_code: code as i32,
                scheme_rewrite_specifier: rd.scheme.clone().map(|s| {
                    redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s.to_ascii_lowercase())
                }),
                host_redirect: rd.host.clone().unwrap_or_default(),
                port_redirect: rd.port.map(u32::from).unwrap_or(0),
                path_rewrite_specifier: path_redirect
                    .map(redirect_action::PathRewriteSpecifier::PathRedirect),
                strip_query: false,
            })
        }
        ir::RouteAction::DirectResponse(dr) => {
            if !(200..=599).contains(&dr.status) {
                return Err(CompileError::InvalidDirectResponseStatus {
                    route: index,
                    status: dr.status,
                });
            }
            if let Some(size) = dr
                .body
                .as_ref()
                .map(String::len)
                .filter(|&n| n > MAX_DIRECT_RESPONSE_BODY)
            {
                return Err(CompileError::DirectResponseBodyTooLarge {
                    route: index,
                    size,
                    max: MAX_DIRECT_RESPONSE_BODY,
                });
            }
            route::Action::DirectResponse(DirectResponseAction {
                status: u32::from(dr.status),
                body: dr.body.clone().map(|b| DataSource {
                    specifier: Some(data_source::Specifier::InlineString(b)),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
    })
}

/// Backends with weight 0 get no traffic and are left out (Envoy and gRPC
/// both want positive weights); the same backend listed twice gets the sum
/// of its weights. One backend left is a plain cluster.
fn cluster_specifier(
    index: usize,
    backends: &[ir::WeightedBackend],
) -> Result<ClusterSpecifier, CompileError> {
    let mut clusters: Vec<(String, u32)> = Vec::with_capacity(backends.len());
    // Where each cluster is in `clusters`: one lookup per backend, so a
    // plugin listing many backends costs linear time, not quadratic.
    let mut at: HashMap<String, usize> = HashMap::with_capacity(backends.len());
    let mut total: u32 = 0;
    for wb in backends.iter().filter(|wb| wb.weight > 0) {
        total = total
            .checked_add(wb.weight)
            .ok_or(CompileError::WeightOverflow { route: index })?;
        let name = names::cluster(&wb.backend);
        match at.get(&name) {
            Some(&i) => clusters[i].1 += wb.weight,
            None => {
                at.insert(name.clone(), clusters.len());
                clusters.push((name, wb.weight));
            }
        }
    }
    match clusters.len() {
        0 => Err(CompileError::NoBackends { route: index }),
        1 => Ok(ClusterSpecifier::Cluster(clusters.pop().unwrap().0)),
        _ => Ok(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight: Some(u32_value(weight)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    }
}

/// `set` overwrites (or adds), `add` appends; both in the IR's order.
fn header_changes(
    index: usize,
    changes: Option<&ir::HeaderChanges>,
) -> Result<(Vec<HeaderValueOption>, Vec<String>), CompileError> {
    let Some(changes) = changes else {
        return Ok((Vec::new(), Vec::new()));
    };
    let check_name = |name: &str| {
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            Err(CompileError::ForbiddenHeader {
                route: index,
                name: name.to_string(),
            })
        } else if !is_token(name) {
            Err(CompileError::InvalidHeaderName {
                route: index,
                name: name.to_string(),
            })
        } else {
            Ok(name.to_ascii_lowercase())
        }
    };
    let option = |hv: &ir::HeaderValue, action: HeaderAppendAction| {
        let key = check_name(&hv.name)?;
        if !is_header_value(&hv.value) {
            return Err(CompileError::InvalidHeaderValue {
                route: index,
                name: hv.name.clone(),
            });
        }
        Ok(HeaderValueOption {
            header: Some(HeaderValue {
                key,
                value: hv.value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        })
    };
    let mut add = Vec::with_capacity(changes.set.len() + changes.add.len());
    for hv in &changes.set {
        add.push(option(hv, HeaderAppendAction::OverwriteIfExistsOrAdd)?);
    }
    for hv in &changes.add {
        add.push(option(hv, HeaderAppendAction::AppendIfExistsOrAdd)?);
    }
    let remove = changes
        .remove
        .iter()
        .map(|n| check_name(n))
        .collect::<Result<_, _>>()?;
    Ok((add, remove))
}

/// RFC 9110 token: what a header name may be made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(s: &str) -> bool {
    !s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

    pub(crate) fn backend(name: &str) -> ir::Backend {
        ir::Backend::service("ns", name, 80)
    }

    fn forward(backends: &[(&str, u32)]) -> ir::RouteAction {
        ir::RouteAction::Forward(
            backends
                .iter()
                .map(|(n, w)| backend(n).weighted(*w))
                .collect(),
        )
    }

    pub(crate) fn route(path: ir::PathMatch, action: ir::RouteAction) -> ir::Route {
        ir::Route::new(ir::RouteMatch::new(path), action)
    }

    fn prefix(p: &str) -> ir::PathMatch {
        ir::PathMatch::Prefix(p.into())
    }

    fn compile(r: ir::Route) -> Vec<Route> {
        virtual_host("a.example.com", &[r]).unwrap().routes
    }

    fn path_of(r: &Route) -> &PathSpecifier {
        r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap()
    }

    fn route_action(r: &Route) -> &RouteAction {
        match r.action.as_ref().unwrap() {
            route::Action::Route(ra) => ra,
            other => panic!("not a forward: {other:?}"),
        }
    }

    /// What the built virtual host looks like to Envoy: decoded from bytes.
    fn roundtrip(vh: &VirtualHost) -> VirtualHost {
        VirtualHost::decode(encode_virtual_host(vh)).unwrap()
    }

    #[test]
    fn exact_path_is_one_path_route() {
        let routes = compile(route(
            ir::PathMatch::Exact("/foo".into()),
            forward(&[("a", 1)]),
        ));
        assert_eq!(routes.len(), 1);
        assert_eq!(path_of(&routes[0]), &PathSpecifier::Path("/foo".into()));
        assert_eq!(routes[0].name, "a.example.com/0");
    }

    #[test]
    fn segment_prefix_expands_to_exact_then_slash_prefix() {
        for p in ["/foo", "/foo/"] {
            let routes = compile(route(prefix(p), forward(&[("a", 1)])));
            assert_eq!(routes.len(), 2, "{p}");
            assert_eq!(path_of(&routes[0]), &PathSpecifier::Path("/foo".into()));
            assert_eq!(path_of(&routes[1]), &PathSpecifier::Prefix("/foo/".into()));
            assert_eq!(routes[0].name, "a.example.com/0/exact");
            assert_eq!(routes[1].name, "a.example.com/0/prefix");
            // identical everything else
            assert_eq!(routes[0].action, routes[1].action);
        }
    }

    /// The expansion's meaning, checked the way Envoy and gRPC evaluate
    /// `path` and `prefix`: /foo and /foo/... match, /foobar does not.
    #[test]
    fn segment_prefix_matches_segments_only() {
        let routes = compile(route(prefix("/foo"), forward(&[("a", 1)])));
        let matches = |req: &str| {
            routes.iter().any(|r| match path_of(r) {
                PathSpecifier::Path(p) => req == p,
                PathSpecifier::Prefix(p) => req.starts_with(p.as_str()),
                other => panic!("{other:?}"),
            })
        };
        assert!(matches("/foo"));
        assert!(matches("/foo/"));
        assert!(matches("/foo/bar"));
        assert!(!matches("/foobar"));
        assert!(!matches("/fo"));
        assert!(!matches("/"));
    }

    #[test]
    fn root_prefix_is_a_single_prefix_route() {
        let routes = compile(route(prefix("/"), forward(&[("a", 1)])));
        assert_eq!(routes.len(), 1);
        assert_eq!(path_of(&routes[0]), &PathSpecifier::Prefix("/".into()));
        assert_eq!(routes[0].name, "a.example.com/0");
    }

    #[test]
    fn prefix_rewrite_is_consistent_on_both_expanded_routes() {
        let rewrites = |p: &str, rw: &str| {
            let mut r = route(prefix(p), forward(&[("a", 1)]));
            r.path_rewrite = Some(ir::PathModifier::Prefix(rw.into()));
            compile(r)
                .iter()
                .map(|r| (path_of(r).clone(), route_action(r).prefix_rewrite.clone()))
                .collect::<Vec<_>>()
        };
        use PathSpecifier::{Path, Prefix};
        // /foo → /bar, /foo/x → /bar/x
        let want = vec![
            (Path("/foo".into()), "/bar".to_string()),
            (Prefix("/foo/".into()), "/bar/".to_string()),
        ];
        assert_eq!(rewrites("/foo", "/bar"), want);
        assert_eq!(rewrites("/foo/", "/bar/"), want);
        // strip the prefix: /foo → /, /foo/x → /x
        let strip = vec![
            (Path("/foo".into()), "/".to_string()),
            (Prefix("/foo/".into()), "/".to_string()),
        ];
        assert_eq!(rewrites("/foo", "/"), strip);
        assert_eq!(rewrites("/foo", ""), strip);
        // the root with a rewrite: / → /bar, /x → /bar/x
        assert_eq!(
            rewrites("/", "/bar"),
            vec![
                (Path("/".into()), "/bar".to_string()),
                (Prefix("/".into()), "/bar/".to_string())
            ]
        );
    }

    #[test]
    fn exact_and_regex_rewrite_replace_the_whole_path() {
        let mut r = route(ir::PathMatch::Exact("/old".into()), forward(&[("a", 1)]));
        r.path_rewrite = Some(ir::PathModifier::Prefix("/new".into()));
        assert_eq!(route_action(&compile(r)[0]).prefix_rewrite, "/new");
    }

    #[test]
    fn regex_path_is_safe_regex() {
        let routes = compile(route(
            ir::PathMatch::Regex("/v[0-9]+/.*".into()),
            forward(&[("a", 1)]),
        ));
        assert_eq!(
            path_of(&routes[0]),
            &PathSpecifier::SafeRegex(RegexMatcher {
                regex: "/v[0-9]+/.*".into(),
                engine_type: None
            })
        );
    }

    #[test]
    fn paths_and_rewrites_must_be_absolute() {
        let err = virtual_host("a", &[route(prefix("foo"), forward(&[("a", 1)]))]).unwrap_err();
        assert_eq!(
            err,
            CompileError::InvalidPath {
                route: 0,
                path: "foo".into()
            }
        );
        let mut r = route(prefix("/foo"), forward(&[("a", 1)]));
        r.path_rewrite = Some(ir::PathModifier::Prefix("bar".into()));
        assert!(matches!(
            virtual_host("a", &[r]),
            Err(CompileError::InvalidRewrite { .. })
        ));
    }

    #[test]
    fn headers_query_and_method_become_matchers() {
        let mut r = route(prefix("/"), forward(&[("a", 1)]));
        let sm = |kind, value: &str, ignore_case| ir::StringMatch {
            kind,
            value: value.into(),
            ignore_case,
        };
        r.matches.headers = vec![
            ir::HeaderMatch {
                name: "X-Exact".into(),
                value: ir::HeaderValueMatch::Value(sm(ir::StringMatchKind::Exact, "v", true)),
                invert: false,
            },
            ir::HeaderMatch {
                name: "x-prefix".into(),
                value: ir::HeaderValueMatch::Value(sm(ir::StringMatchKind::Prefix, "p", false)),
                invert: true,
            },
            ir::HeaderMatch {
                name: "x-suffix".into(),
                value: ir::HeaderValueMatch::Value(sm(ir::StringMatchKind::Suffix, "s", false)),
                invert: false,
            },
            ir::HeaderMatch {
                name: "x-contains".into(),
                value: ir::HeaderValueMatch::Value(sm(ir::StringMatchKind::Contains, "c", false)),
                invert: false,
            },
            ir::HeaderMatch {
                name: "x-regex".into(),
                value: ir::HeaderValueMatch::Value(sm(ir::StringMatchKind::Regex, "a+", true)),
                invert: false,
            },
            ir::HeaderMatch {
                name: "x-present".into(),
                value: ir::HeaderValueMatch::Present,
                invert: false,
            },
        ];
        r.matches.query = vec![
            ir::QueryMatch {
                name: "q".into(),
                value: Some(sm(ir::StringMatchKind::Exact, "1", false)),
            },
            ir::QueryMatch {
                name: "flag".into(),
                value: None,
            },
        ];
        r.matches.method = Some("POST".into());
        let vh = roundtrip(&virtual_host("a.example.com", &[r]).unwrap());
        let m = vh.routes[0].r#match.as_ref().unwrap();
        let spec = |i: usize| m.headers[i].header_match_specifier.clone().unwrap();
        let string = |pattern, ignore_case| {
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(pattern),
                ignore_case,
            })
        };
        assert_eq!(m.headers.len(), 7);
        assert_eq!(m.headers[0].name, "x-exact");
        assert_eq!(spec(0), string(MatchPattern::Exact("v".into()), true));
        assert_eq!(spec(1), string(MatchPattern::Prefix("p".into()), false));
        assert!(m.headers[1].invert_match);
        assert_eq!(spec(2), string(MatchPattern::Suffix("s".into()), false));
        assert_eq!(spec(3), string(MatchPattern::Contains("c".into()), false));
        assert_eq!(
            spec(4),
            string(MatchPattern::SafeRegex(regex("(?i)a+".into())), false)
        );
        assert_eq!(spec(5), HeaderMatchSpecifier::PresentMatch(true));
        assert_eq!(m.headers[6].name, ":method");
        assert_eq!(spec(6), string(MatchPattern::Exact("POST".into()), false));
        assert_eq!(m.query_parameters.len(), 2);
        assert_eq!(
            m.query_parameters[0].query_parameter_match_specifier,
            Some(QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("1".into())),
                ignore_case: false
            }))
        );
        assert_eq!(
            m.query_parameters[1].query_parameter_match_specifier,
            Some(QueryParameterMatchSpecifier::PresentMatch(true))
        );
    }

    #[test]
    fn matchers_are_repeated_on_both_expanded_routes() {
        let mut r = route(prefix("/api"), forward(&[("a", 1)]));
        r.matches.method = Some("GET".into());
        let routes = compile(r);
        assert_eq!(
            routes[0].r#match.as_ref().unwrap().headers,
            routes[1].r#match.as_ref().unwrap().headers
        );
        assert_eq!(routes[1].r#match.as_ref().unwrap().headers.len(), 1);
    }

    #[test]
    fn empty_prefix_match_values_are_refused() {
        let mut r = route(prefix("/"), forward(&[("a", 1)]));
        r.matches.headers = vec![ir::HeaderMatch {
            name: "x".into(),
            value: ir::HeaderValueMatch::Value(ir::StringMatch {
                kind: ir::StringMatchKind::Prefix,
                value: String::new(),
                ignore_case: false,
            }),
            invert: false,
        }];
        assert_eq!(
            virtual_host("a", &[r]).unwrap_err(),
            CompileError::EmptyMatchValue {
                route: 0,
                kind: "prefix"
            }
        );
    }

    #[test]
    fn single_backend_is_a_plain_cluster() {
        let routes = compile(route(prefix("/"), forward(&[("a", 7)])));
        assert_eq!(
            route_action(&routes[0]).cluster_specifier,
            Some(ClusterSpecifier::Cluster("ns/a/80".into()))
        );
    }

    #[test]
    fn several_backends_are_weighted_clusters() {
        let routes = compile(route(
            prefix("/"),
            forward(&[("a", 90), ("b", 10), ("off", 0), ("a", 5)]),
        ));
        let Some(ClusterSpecifier::WeightedClusters(wc)) =
            &route_action(&routes[0]).cluster_specifier
        else {
            panic!("not weighted")
        };
        let got: Vec<_> = wc
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.unwrap().value))
            .collect();
        assert_eq!(got, [("ns/a/80", 95), ("ns/b/80", 10)]);
    }

    /// Issue 17: merging duplicate backends looked each one up in a list
    /// (quadratic in the backends a plugin returns); now a map. 40k
    /// backends, each named twice, merge in first-seen order.
    #[test]
    fn many_backends_merge_in_order_with_their_weights_summed() {
        let names: Vec<String> = (0..20_000).map(|i| format!("b{i}")).collect();
        let mut list: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        list.extend(names.iter().map(|n| (n.as_str(), 2)));
        let routes = compile(route(prefix("/"), forward(&list)));
        let Some(ClusterSpecifier::WeightedClusters(wc)) =
            &route_action(&routes[0]).cluster_specifier
        else {
            panic!("not weighted")
        };
        assert_eq!(wc.clusters.len(), names.len());
        for (c, n) in wc.clusters.iter().zip(&names) {
            assert_eq!(c.name, format!("ns/{n}/80"));
            assert_eq!(c.weight.unwrap().value, 3);
        }
    }

    #[test]
    fn zero_weight_leaving_one_backend_is_a_plain_cluster() {
        let routes = compile(route(prefix("/"), forward(&[("a", 0), ("b", 3)])));
        assert_eq!(
            route_action(&routes[0]).cluster_specifier,
            Some(ClusterSpecifier::Cluster("ns/b/80".into()))
        );
    }

    #[test]
    fn no_backend_with_weight_is_an_error() {
        for backends in [&[][..], &[("a", 0)][..]] {
            let err = virtual_host("a", &[route(prefix("/"), forward(backends))]).unwrap_err();
            assert_eq!(err, CompileError::NoBackends { route: 0 });
        }
        let err = virtual_host(
            "a",
            &[route(prefix("/"), forward(&[("a", u32::MAX), ("b", 1)]))],
        )
        .unwrap_err();
        assert_eq!(err, CompileError::WeightOverflow { route: 0 });
    }

    #[test]
    fn forward_options_timeout_retry_host_rewrite() {
        let mut r = route(prefix("/"), forward(&[("a", 1)]));
        r.timeout_ms = Some(2500);
        r.retry = Some(ir::RetryPolicy {
            retry_on: "5xx,connect-failure".into(),
            attempts: 3,
            per_try_timeout_ms: Some(500),
        });
        r.host_rewrite = Some("internal.example.com".into());
        let vh = roundtrip(&virtual_host("a", &[r]).unwrap());
        let ra = route_action(&vh.routes[0]);
        assert_eq!(ra.timeout, Some(millis(2500)));
        let retry = ra.retry_policy.as_ref().unwrap();
        assert_eq!(retry.retry_on, "5xx,connect-failure");
        assert_eq!(retry.num_retries, Some(u32_value(3)));
        assert_eq!(retry.per_try_timeout, Some(millis(500)));
        assert_eq!(
            ra.host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral(
                "internal.example.com".into()
            ))
        );
    }

    #[test]
    fn redirect() {
        let r = route(
            ir::PathMatch::Exact("/old".into()),
            ir::RouteAction::Redirect(ir::Redirect {
                scheme: Some("HTTPS".into()),
                host: Some("new.example.com".into()),
                port: Some(8443),
                path: Some(ir::PathModifier::Full("/new".into())),
                status: 308,
            }),
        );
        let vh = roundtrip(&virtual_host("a", &[r]).unwrap());
        let Some(route::Action::Redirect(rd)) = &vh.routes[0].action else {
            panic!()
        };
        assert_eq!(
            rd.response_code,
            redirect_action::RedirectResponseCode::PermanentRedirect as i32
        );
        assert_eq!(
            rd.scheme_rewrite_specifier,
            Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(
                "https".into()
            ))
        );
        assert_eq!(rd.host_redirect, "new.example.com");
        assert_eq!(rd.port_redirect, 8443);
        assert_eq!(
            rd.path_rewrite_specifier,
            Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                "/new".into()
            ))
        );
    }

    #[test]
    fn redirect_of_a_prefix_with_a_rewrite_replaces_the_prefix() {
        let mut r = route(
            prefix("/old"),
            ir::RouteAction::Redirect(ir::Redirect {
                scheme: None,
                host: None,
                port: None,
                path: None,
                status: 302,
            }),
        );
        r.path_rewrite = Some(ir::PathModifier::Prefix("/new".into()));
        let routes = compile(r);
        let rewrite = |r: &Route| match r.action.as_ref().unwrap() {
            route::Action::Redirect(rd) => rd.path_rewrite_specifier.clone(),
            _ => panic!(),
        };
        use redirect_action::PathRewriteSpecifier::PrefixRewrite;
        assert_eq!(rewrite(&routes[0]), Some(PrefixRewrite("/new".into())));
        assert_eq!(rewrite(&routes[1]), Some(PrefixRewrite("/new/".into())));
    }

    #[test]
    fn redirect_status_must_be_a_redirect() {
        let r = route(
            prefix("/"),
            ir::RouteAction::Redirect(ir::Redirect {
                scheme: None,
                host: None,
                port: None,
                path: None,
                status: 200,
            }),
        );
        assert_eq!(
            virtual_host("a", &[r]).unwrap_err(),
            CompileError::InvalidRedirectStatus {
                route: 0,
                status: 200
            }
        );
    }

    #[test]
    fn direct_response_with_body() {
        let r = route(
            prefix("/"),
            ir::RouteAction::DirectResponse(ir::DirectResponse {
                status: 503,
                body: Some("no backend".into()),
            }),
        );
        let vh = roundtrip(&virtual_host("a", &[r]).unwrap());
        let Some(route::Action::DirectResponse(dr)) = &vh.routes[0].action else {
            panic!()
        };
        assert_eq!(dr.status, 503);
        assert_eq!(
            dr.body.as_ref().unwrap().specifier,
            Some(data_source::Specifier::InlineString("no backend".into()))
        );

        let bad = |status, body: Option<String>| {
            virtual_host(
                "a",
                &[route(
                    prefix("/"),
                    ir::RouteAction::DirectResponse(ir::DirectResponse { status, body }),
                )],
            )
            .unwrap_err()
        };
        assert_eq!(
            bad(99, None),
            CompileError::InvalidDirectResponseStatus {
                route: 0,
                status: 99
            }
        );
        assert!(matches!(
            bad(200, Some("x".repeat(MAX_DIRECT_RESPONSE_BODY + 1))),
            CompileError::DirectResponseBodyTooLarge { .. }
        ));
    }

    #[test]
    fn header_changes_set_add_remove() {
        let mut r = route(prefix("/"), forward(&[("a", 1)]));
        let hv = |n: &str, v: &str| ir::HeaderValue {
            name: n.into(),
            value: v.into(),
        };
        r.request_headers = Some(ir::HeaderChanges {
            set: vec![hv("X-Set", "1")],
            add: vec![hv("x-add", "2")],
            remove: vec!["x-gone".into()],
        });
        r.response_headers = Some(ir::HeaderChanges {
            set: vec![],
            add: vec![hv("x-resp", "3")],
            remove: vec![],
        });
        let vh = roundtrip(&virtual_host("a", &[r]).unwrap());
        let rt = &vh.routes[0];
        let opts: Vec<_> = rt
            .request_headers_to_add
            .iter()
            .map(|o| {
                (
                    o.header.as_ref().unwrap().key.as_str(),
                    o.header.as_ref().unwrap().value.as_str(),
                    o.append_action,
                )
            })
            .collect();
        assert_eq!(
            opts,
            [
                (
                    "x-set",
                    "1",
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                ),
                ("x-add", "2", HeaderAppendAction::AppendIfExistsOrAdd as i32)
            ]
        );
        assert_eq!(rt.request_headers_to_remove, ["x-gone"]);
        assert_eq!(rt.response_headers_to_add.len(), 1);
        assert_eq!(
            rt.response_headers_to_add[0].header.as_ref().unwrap().key,
            "x-resp"
        );
    }

    #[test]
    fn pseudo_and_host_headers_cannot_be_changed() {
        for name in [":authority", "Host", ":path"] {
            let mut r = route(prefix("/"), forward(&[("a", 1)]));
            r.request_headers = Some(ir::HeaderChanges {
                set: vec![],
                add: vec![],
                remove: vec![name.into()],
            });
            assert_eq!(
                virtual_host("a", &[r]).unwrap_err(),
                CompileError::ForbiddenHeader {
                    route: 0,
                    name: name.into()
                }
            );
        }
        let mut r = route(prefix("/"), forward(&[("a", 1)]));
        r.response_headers = Some(ir::HeaderChanges {
            set: vec![ir::HeaderValue {
                name: "x".into(),
                value: "a\r\nb".into(),
            }],
            add: vec![],
            remove: vec![],
        });
        assert!(matches!(
            virtual_host("a", &[r]),
            Err(CompileError::InvalidHeaderValue { .. })
        ));
    }

    #[test]
    fn domains_and_port_variants() {
        let vh = virtual_host("a.example.com", &[]).unwrap();
        assert_eq!(vh.name, "a.example.com");
        assert_eq!(vh.domains, ["a.example.com", "a.example.com:*"]);
        assert_eq!(
            virtual_host("*.example.com", &[]).unwrap().domains,
            ["*.example.com"]
        );
        assert_eq!(virtual_host("*", &[]).unwrap().domains, ["*"]);
        for bad in [
            "",
            "a.*.com",
            "a.example.com:80",
            "*.",
            "a..b",
            "a b",
            "**.example.com",
        ] {
            assert!(
                matches!(
                    virtual_host(bad, &[]),
                    Err(CompileError::InvalidDomain { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wildcard_hosts_match_exactly_one_label() {
        let vh = virtual_host(
            "*.example.com",
            &[route(prefix("/api"), forward(&[("a", 1)]))],
        )
        .unwrap();
        let want = HeaderMatcher {
            name: ":authority".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(regex(
                    r"(?i)[^.:/]+\.example\.com(:[0-9]+)?".into(),
                ))),
                ignore_case: false,
            })),
            ..Default::default()
        };
        assert_eq!(vh.routes.len(), 2);
        for r in &roundtrip(&vh).routes {
            assert_eq!(
                r.r#match.as_ref().unwrap().headers,
                std::slice::from_ref(&want)
            );
        }
        // exact hosts and the catch-all need no such matcher
        for domain in ["a.example.com", "*"] {
            let vh = virtual_host(domain, &[route(prefix("/"), forward(&[("a", 1)]))]).unwrap();
            assert!(
                vh.routes[0].r#match.as_ref().unwrap().headers.is_empty(),
                "{domain}"
            );
        }
    }

    #[test]
    fn route_names_are_unique_and_deterministic() {
        let routes = vec![
            route(prefix("/a"), forward(&[("a", 1)])),
            route(ir::PathMatch::Exact("/b".into()), forward(&[("a", 1)])),
            route(prefix("/"), forward(&[("a", 1)])),
        ];
        let one = virtual_host("h", &routes).unwrap();
        let two = virtual_host("h", &routes).unwrap();
        assert_eq!(one, two);
        assert_eq!(encode_virtual_host(&one), encode_virtual_host(&two));
        let names: Vec<_> = one.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["h/0/exact", "h/0/prefix", "h/1", "h/2"]);
    }

    fn many_vhosts(n: usize) -> Vec<VirtualHost> {
        (0..n)
            .map(|i| {
                let mut r = route(
                    prefix(&format!("/p{i}")),
                    forward(&[("a", 1), ("b", i as u32 + 1)]),
                );
                r.timeout_ms = Some(i as u32);
                virtual_host(
                    &format!("host{i}.example.com"),
                    &[r, route(prefix("/"), forward(&[("c", 1)]))],
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn concatenated_route_configuration_equals_prost_encoding() {
        for n in [0, 1, 3, 200] {
            let vhosts = many_vhosts(n);
            let encoded: Vec<Bytes> = vhosts.iter().map(encode_virtual_host).collect();
            let joined = encode_route_configuration(
                "https/a.example.com",
                encoded.iter().map(|b| b.as_ref()),
            );
            let msg = RouteConfiguration {
                name: "https/a.example.com".into(),
                virtual_hosts: vhosts.clone(),
                ..Default::default()
            };
            assert_eq!(
                joined.as_ref(),
                msg.encode_to_vec().as_slice(),
                "bytes, n={n}"
            );
            assert_eq!(
                RouteConfiguration::decode(joined).unwrap(),
                msg,
                "decoded, n={n}"
            );
        }
    }

    #[test]
    fn concatenation_with_empty_name_and_one_changed_host() {
        let mut vhosts = many_vhosts(10);
        let mut encoded: Vec<Bytes> = vhosts.iter().map(encode_virtual_host).collect();
        // change one host: only its encoding is redone
        vhosts[4] = virtual_host(
            "host4.example.com",
            &[route(prefix("/changed"), forward(&[("z", 1)]))],
        )
        .unwrap();
        encoded[4] = encode_virtual_host(&vhosts[4]);
        let joined = encode_route_configuration("", encoded.iter().map(|b| b.as_ref()));
        let msg = RouteConfiguration {
            virtual_hosts: vhosts,
            ..Default::default()
        };
        assert_eq!(joined.as_ref(), msg.encode_to_vec().as_slice());
        assert_eq!(RouteConfiguration::decode(joined).unwrap(), msg);
    }
}
