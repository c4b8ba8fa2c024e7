//! A test policy (contract 0.2, world `policy`) for the host's policy
//! chain tests. What it does to a virtual host is asked for by the
//! annotation `isobar.dev/test-policy` on the Ingresses behind the host's
//! routes (read through the store, so the host records the read):
//!
//! * `header:NAME=VALUE`: add a response header to every route of the host;
//! * `error`: return an error; `trap`: panic; `loop`: spin past the deadline;
//! * `other-domain`: return the host under another domain;
//! * `foreign-source`: return a route whose source is not behind the host;
//! * `no-source`: return a route without its source;
//! * `tls`: point the host at another Secret;
//! * `foreign-diagnostic`: put a diagnostic on an object it neither was
//!   given nor read.
//!
//! The configuration `{"tag": "..."}` adds response header `x-policy-tag`
//! to every route (a configuration change shows in the output);
//! `{"refuse": true}` refuses the configuration. A global counts the calls
//! an instance served, exposed as header `x-policy-calls` when configured
//! with `{"count": true}`: nothing may survive a round.

use std::cell::Cell;

use isobar_guest::k8s_openapi::api::networking::v1::Ingress;
use isobar_guest::prelude::*;

pub const ANNOTATION: &str = "isobar.dev/test-policy";

pub struct FaultsPolicy;

thread_local! {
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    refuse: bool,
    #[serde(default)]
    count: bool,
}

fn header(route: &mut Route, name: &str, value: &str) {
    let changes = route.response_headers.get_or_insert_with(|| HeaderChanges {
        set: vec![],
        add: vec![],
        remove: vec![],
    });
    changes.set.push(HeaderValue {
        name: name.to_string(),
        value: value.to_string(),
    });
}

impl Policy for FaultsPolicy {
    fn describe() -> PolicyInfo {
        PolicyInfo::new("faults-policy", env!("CARGO_PKG_VERSION")).read::<Ingress>()
    }

    fn configure(config: &str) -> Result<(), Error> {
        let c: Config =
            serde_json::from_str(config).map_err(|e| Error::new("InvalidConfig", e.to_string()))?;
        if c.refuse {
            return Err(Error::new(
                "ConfigRefused",
                "asked to refuse this configuration",
            ));
        }
        Ok(())
    }

    fn apply(mut host: VirtualHost, store: &dyn Store) -> Result<PolicyOutput, Error> {
        let config: Config = isobar_guest::config_as()?;
        let calls = CALLS.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let mut asks: Vec<String> = Vec::new();
        let mut sources: Vec<ObjectRef> = Vec::new();
        for r in &host.routes {
            let Some(s) = &r.source else { continue };
            if s.kind != "Ingress" || sources.contains(s) {
                continue;
            }
            sources.push(s.clone());
            if let Some(ing) = store.get_typed::<Ingress>(&s.namespace, &s.name)? {
                if let Some(v) = ing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION))
                {
                    asks.push(v.clone());
                }
            }
        }
        let mut out_diagnostics = Vec::new();
        for ask in &asks {
            match ask.as_str() {
                "error" => {
                    return Err(Error::new(
                        "AskedToFail",
                        "the Ingress asked this policy to fail",
                    ));
                }
                "trap" => panic!("the Ingress asked this policy to trap"),
                "loop" => {
                    let mut x: u64 = 1;
                    loop {
                        x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                    }
                }
                "other-domain" => host.domain = format!("other.{}", host.domain),
                "foreign-source" => {
                    if let Some(r) = host.routes.first_mut() {
                        r.source = Some(ObjectRef {
                            api_version: "networking.k8s.io/v1".into(),
                            kind: "Ingress".into(),
                            namespace: "elsewhere".into(),
                            name: "not-behind-this-host".into(),
                        });
                    }
                }
                "no-source" => {
                    if let Some(r) = host.routes.first_mut() {
                        r.source = None;
                    }
                }
                "tls" => {
                    host.tls = Some(SecretRef {
                        namespace: "kube-system".into(),
                        name: "someone-elses-key".into(),
                    });
                }
                "foreign-diagnostic" => out_diagnostics.push(Diagnostic::warning(
                    ObjectRef {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        namespace: "elsewhere".into(),
                        name: "unrelated".into(),
                    },
                    "Unrelated",
                    "a diagnostic on an object this policy never saw",
                )),
                other => {
                    if let Some((name, value)) = other
                        .strip_prefix("header:")
                        .and_then(|h| h.split_once('='))
                    {
                        for r in &mut host.routes {
                            header(r, name, value);
                        }
                    } else if let Some(s) = sources.first() {
                        out_diagnostics.push(Diagnostic::warning(
                            s.clone(),
                            "UnknownAsk",
                            format!("{ANNOTATION}: unknown value {other:?}"),
                        ));
                    }
                }
            }
        }
        if let Some(tag) = &config.tag {
            for r in &mut host.routes {
                header(r, "x-policy-tag", tag);
            }
        }
        if config.count {
            for r in &mut host.routes {
                header(r, "x-policy-calls", &calls.to_string());
            }
        }
        let mut out = PolicyOutput::new(host);
        for d in out_diagnostics {
            out = out.with_diagnostic(d);
        }
        Ok(out)
    }
}

isobar_guest::export_policy!(FaultsPolicy);
