//! Kubernetes object names as the API server validates them. Objects read
//! from files never meet an API server, so the host checks what it would:
//! a 100,000-character Service name was otherwise served as a cluster name.

use crate::store::Object;

/// RFC 1123 label: at most 63 lowercase letters, digits and '-', starting
/// and ending with a letter or digit (namespaces, most names' parts).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: at most 253 characters, labels joined by '.'
/// (the names of most kinds).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter (Service
/// names: they become DNS names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// What any kind's name must be: a path segment (no '/', '%', not "." or
/// ".."), at most 253 characters.
fn is_path_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s != "." && s != ".." && !s.contains(['/', '%'])
}

/// Checks `o`'s namespace and name as the API server would: Services by
/// RFC 1035 label, the kinds the host reads itself and the usual routing
/// kinds by RFC 1123 subdomain, any other kind as a path segment (RBAC
/// names allow ':', for instance).
pub fn check(o: &Object) -> Result<(), String> {
    if !o.namespace.is_empty() && !is_dns1123_label(&o.namespace) {
        return Err(format!(
            "metadata.namespace {:?} is not a valid namespace (RFC 1123 label: lowercase letters, digits and '-', at most 63)",
            crate::writeback::truncate(&o.namespace, 80)
        ));
    }
    let group = o.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let (ok, rule) = match (group, o.kind.as_str()) {
        ("", "Service") => (
            is_dns1035_label(&o.name),
            "RFC 1035 label: a lowercase letter, then letters, digits and '-', at most 63",
        ),
        ("", "Secret" | "ConfigMap" | "Namespace" | "Pod" | "Endpoints")
        | ("discovery.k8s.io", _)
        | ("networking.k8s.io", _)
        | ("gateway.networking.k8s.io", _)
        | ("apps", _) => (
            is_dns1123_subdomain(&o.name),
            "RFC 1123 subdomain: lowercase letters, digits, '-' and '.', at most 253",
        ),
        _ => (
            is_path_segment(&o.name),
            "at most 253 characters, without '/' or '%'",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata.name {:?} is not a valid {} name ({rule})",
            crate::writeback::truncate(&o.name, 80),
            o.kind
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(api_version: &str, kind: &str, namespace: &str, name: &str) -> Object {
        Object::from_value(serde_json::json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": namespace}}))
        .unwrap()
    }

    #[test]
    fn names_are_checked_as_the_api_server_would() {
        let ok = |a: &str, k: &str, ns: &str, n: &str| check(&object(a, k, ns, n)).is_ok();
        assert!(ok("v1", "Service", "default", "web"));
        assert!(!ok("v1", "Service", "default", "1web"), "RFC 1035");
        assert!(!ok("v1", "Service", "default", "web.internal"));
        assert!(!ok("v1", "Service", "default", &"a".repeat(100_000)));
        assert!(ok("networking.k8s.io/v1", "Ingress", "default", "shop.v2"));
        assert!(!ok("networking.k8s.io/v1", "Ingress", "default", "Shop"));
        assert!(!ok("v1", "Secret", "Default", "tls"), "namespace");
        assert!(ok(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "",
            "system:x"
        ));
        assert!(!ok("example.com/v1", "Thing", "default", "a/b"));
        let long = check(&object("v1", "Service", "default", &"a".repeat(100_000))).unwrap_err();
        assert!(long.len() < 300, "the message does not quote it whole");
    }
}
