//! Hosts: exact, wildcard, default backend, TLS, redirects.

use super::*;

#[test]
fn exact_host_and_catch_all_rule() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[
                ("shop.example.com", &[("/", "Prefix", "web", json!(80))]),
                ("", &[("/", "Prefix", "web", json!(80))]),
            ],
        )],
    ));
    let rc = route_config(p.snapshot(), HTTP).unwrap();
    let mut domains: Vec<Vec<String>> =
        rc.virtual_hosts.iter().map(|v| v.domains.clone()).collect();
    domains.sort();
    assert!(
        domains.iter().any(|d| d.contains(&"*".to_string())),
        "{domains:?}"
    );
    assert!(
        domains
            .iter()
            .any(|d| d.contains(&"shop.example.com".to_string())),
        "{domains:?}"
    );
}

#[test]
fn wildcard_host_matches_exactly_one_label() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("*.example.com", &[("/", "Prefix", "web", json!(80))])],
        )],
    ));
    let rc = route_config(p.snapshot(), HTTP).unwrap();
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.contains(&"*.example.com".to_string()))
        .expect("wildcard vhost");
    let route = &vh.routes[0];
    let authority = route
        .r#match
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .find(|h| h.name == ":authority")
        .expect(":authority matcher");
    let re = format!("{:?}", authority.header_match_specifier);
    assert!(re.contains("example"), "{re}");
}

#[test]
fn default_backend_serves_the_catch_all_host() {
    let mut ing = ingress("shop", "i", &[]);
    ing["spec"]["defaultBackend"] = json!({"service":{"name":"web","port":{"number":80}}});
    let p = ingress_pipeline(with(base(), [ing]));
    assert_eq!(
        routes(p.snapshot(), HTTP, "*"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
}

#[test]
fn tls_hosts_get_an_sni_filter_chain_and_an_sds_secret() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"shop-cert"}]);
    let p = ingress_pipeline(with(base(), [ing, tls_secret("shop", "shop-cert")]));
    let s = p.snapshot();
    let l = listener(s, "ingress_https").expect("https listener");
    assert_eq!(l.filter_chains.len(), 1);
    let sni = &l.filter_chains[0]
        .filter_chain_match
        .as_ref()
        .unwrap()
        .server_names;
    assert_eq!(sni, &["shop.example.com".to_string()]);
    assert_eq!(
        routes(s, "ingress_https/shop.example.com", "shop.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    let secret = secret(s, "shop/shop-cert").expect("sds secret");
    assert_eq!(secret.name, "shop/shop-cert");
    // still served on plain HTTP without force-ssl-redirect
    assert_eq!(
        routes(s, HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
}

#[test]
fn tls_with_a_missing_secret_is_not_served_and_says_why() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"missing"}]);
    let mut p = ingress_pipeline(with(base(), [ing]));
    assert!(
        listener(p.snapshot(), "ingress_https").is_none(),
        "a listener without filter chains is not served"
    );
    assert!(
        reasons(&p.diagnostics()).contains(&("i".into(), "SecretInvalid".into())),
        "{:?}",
        p.diagnostics()
    );
    // the secret arrives: the chain appears
    p.apply([apply(tls_secret("shop", "missing"))]);
    assert_eq!(
        listener(p.snapshot(), "ingress_https")
            .unwrap()
            .filter_chains
            .len(),
        1
    );
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
}

#[test]
fn force_ssl_redirect_turns_http_routes_into_redirects() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"c"}]);
    ing["metadata"]["annotations"] = json!({"ingress.kubernetes.io/force-ssl-redirect":"true"});
    let p = ingress_pipeline(with(base(), [ing, tls_secret("shop", "c")]));
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "redirect")])
    );
}

/// Issue 15: a Secret that does not parse was reported with its content
/// quoted (the private key reached /debug/diagnostics).
#[test]
fn an_unreadable_secret_is_reported_without_its_content() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"shop-cert"}]);
    let mut bad = tls_secret("shop", "shop-cert");
    // Not base64: serde's message would quote it.
    bad["data"]["tls.key"] = json!("-----BEGIN PRIVATE KEY----- SECRET-KEY-MATERIAL");
    let p = ingress_pipeline(with(base(), [ing, bad]));
    let d = p.diagnostics();
    let secret_invalid: Vec<_> = d.iter().filter(|d| d.reason == "SecretInvalid").collect();
    assert_eq!(secret_invalid.len(), 1, "{d:?}");
    let message = &secret_invalid[0].message;
    assert!(
        message.contains("shop/shop-cert cannot be read"),
        "{message}"
    );
    assert!(!message.contains("SECRET-KEY-MATERIAL"), "{message}");
    assert!(!message.contains("PRIVATE"), "{message}");
}
