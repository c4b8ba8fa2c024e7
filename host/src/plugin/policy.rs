//! Policy plugins (contract 0.2, world `policy`): a transformation of one
//! merged virtual host into another, run between merge and compile.

use std::sync::Arc;
use std::time::Instant;

use super::call::{self, CallState};
use super::{
    CallOutcome, EngineShared, Grants, KindRef, PluginError, Readable, Runtime, Version, World,
    configure_result, failed, outcome, v0_2,
};
use crate::ir;
use crate::store::{KindKey, Store};

/// What a policy says it is, reads and applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    /// Kinds it reads through `store`.
    pub reads: Vec<KindRef>,
    /// Listeners whose virtual hosts it runs for; empty: all.
    pub listeners: Vec<String>,
    /// Domains it runs for; empty: all.
    pub domains: Vec<String>,
}

/// What one `apply` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyResult {
    pub host: ir::VirtualHost,
    pub diagnostics: Vec<ir::Diagnostic>,
}

/// A loaded policy, ready to be called. Cheap to clone.
#[derive(Clone)]
pub struct PolicyPlugin {
    shared: Arc<EngineShared>,
    pre: v0_2::policy::PolicyPre<CallState>,
    pub info: PolicyInfo,
    pub digest: String,
    pub source: String,
    grants: Arc<Grants>,
    pub config: Arc<str>,
    readable: Readable,
}

impl Runtime {
    /// Loads a policy with its grants and configuration (which it must
    /// accept).
    pub fn load_policy(
        &self,
        bytes: &[u8],
        source: &str,
        grants: Grants,
        configs: &super::Configs,
    ) -> Result<PolicyPlugin, PluginError> {
        super::check_grants(&grants, &self.shared.limits)?;
        let (digest, version, pre) = self.prepare(bytes, World::Policy)?;
        debug_assert_eq!(version, Version::V0_2, "policies exist from 0.2 on");
        let pre = v0_2::policy::PolicyPre::new(pre).map_err(super::mismatch)?;
        let mut plugin = PolicyPlugin {
            shared: self.shared.clone(),
            pre,
            info: PolicyInfo::default(),
            digest,
            source: source.to_string(),
            grants: Arc::new(grants),
            config: Arc::from("{}"),
            readable: Readable::of([]),
        };
        plugin.info = plugin.describe()?;
        if let Some(k) = plugin
            .info
            .reads
            .iter()
            .find(|k| k.key() == KindKey::new("v1", "Secret"))
        {
            return Err(PluginError::Inconsistent(format!(
                "policy {} declares it reads {k}: plugins never read Secrets",
                plugin.info.name
            )));
        }
        plugin.config = super::config_for(configs, &plugin.info.name);
        plugin.readable = Readable::of(plugin.read_kinds());
        plugin.check_config()?;
        Ok(plugin)
    }
}

impl PolicyPlugin {
    pub fn describe(&self) -> Result<PolicyInfo, PluginError> {
        let mut ws = call::new_store(&self.shared, None, &self.info.name, &self.grants);
        self.pre
            .instantiate(&mut ws)
            .and_then(|i| i.isobar_plugin_transformation().call_describe(&mut ws))
            .map(Into::into)
            .map_err(|e| call::classify(e, &ws))
    }

    pub fn contract(&self) -> String {
        Version::V0_2.contract()
    }

    /// The kinds it reads, as store keys.
    pub fn read_kinds(&self) -> Vec<KindKey> {
        self.info.reads.iter().map(KindRef::key).collect()
    }

    /// Whether it runs for the virtual host of `domain` on `listener`.
    pub fn applies_to(&self, listener: &str, domain: &str) -> bool {
        (self.info.listeners.is_empty() || self.info.listeners.iter().any(|l| l == listener))
            && (self.info.domains.is_empty() || self.info.domains.iter().any(|d| d == domain))
    }

    /// The same component with another configuration, which it must
    /// accept.
    pub fn with_config(&self, config: Arc<str>) -> Result<PolicyPlugin, PluginError> {
        let plugin = PolicyPlugin {
            config,
            ..self.clone()
        };
        plugin.check_config()?;
        Ok(plugin)
    }

    fn check_config(&self) -> Result<(), PluginError> {
        let mut ws = call::new_store(&self.shared, None, &self.info.name, &self.grants);
        let instance = self
            .pre
            .instantiate(&mut ws)
            .map_err(|e| call::classify(e, &ws))?;
        configure_result(
            instance
                .isobar_plugin_transformation()
                .call_configure(&mut ws, &self.config),
            &ws,
        )
    }

    /// Applies the policy to each host in order, one instance serving them
    /// all (a failed call drops it; the rest go on in a fresh one).
    pub fn apply_batch(
        &self,
        store: &Store,
        hosts: &[&ir::VirtualHost],
    ) -> Vec<CallOutcome<PolicyResult>> {
        let view = Some((store.clone(), self.readable.clone()));
        let mut out = Vec::with_capacity(hosts.len());
        let mut instance: Option<(wasmtime::Store<CallState>, v0_2::policy::Policy)> = None;
        for host in hosts {
            let started = Instant::now();
            if instance.is_none() {
                let mut ws =
                    call::new_store(&self.shared, view.clone(), &self.info.name, &self.grants);
                let made = self.pre.instantiate(&mut ws).and_then(|i| {
                    i.isobar_plugin_transformation()
                        .call_configure(&mut ws, &self.config)
                        .map(|r| (i, r))
                });
                match made {
                    Ok((i, Ok(()))) => instance = Some((ws, i)),
                    Ok((_, Err(e))) => {
                        out.push(failed(
                            PluginError::ConfigRejected {
                                reason: e.reason,
                                message: e.message,
                            },
                            started,
                        ));
                        continue;
                    }
                    Err(e) => {
                        let error = call::classify(e, &ws);
                        out.push(failed(error, started));
                        continue;
                    }
                }
            }
            let (ws, i) = instance.as_mut().expect("made above");
            CallState::begin(ws);
            let arg = v0_2::virtual_host(host);
            let result = i.isobar_plugin_transformation().call_apply(&mut *ws, &arg);
            let broken = result.is_err();
            out.push(outcome(
                result.map(|r| r.map(v0_2::policy_output).map_err(Into::into)),
                ws,
                started,
            ));
            if broken {
                instance = None;
            }
        }
        out
    }
}

impl std::fmt::Debug for PolicyPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyPlugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("digest", &self.digest)
            .finish()
    }
}
