//! Hot swap of the translator: the new component is compiled, checked
//! against the contract, and translates the whole current store in a
//! pipeline of its own (the same store: nothing is reloaded or copied).
//! Only if every call succeeded does it replace the old pipeline, and its
//! snapshot (whose version continues the old one's) is published. Any
//! failure keeps the old plugin and snapshot and records why.
//!
//! In the cluster, a plugin that reads kinds nobody watched yet waits until
//! their watches have listed once.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Controller, Origin, kinds_of, watch_specs};
use crate::pipeline::Pipeline;
use crate::plugin::{Grants, Plugins};
use crate::report::metrics::labels1;
use crate::report::{PluginFailure, rfc3339};
use crate::store::KindKey;

/// Plugins compiled and waiting for the first list of kinds they add.
pub(super) struct Pending {
    plugins: Plugins,
    source: String,
    at: Option<Instant>,
    kinds: HashSet<KindKey>,
    /// The Plugin object's swap this is, if one.
    catalog: Option<super::catalog::Swapping>,
}

impl Controller {
    /// Completes a swap that waited for the watches of kinds it adds.
    pub(super) fn swap_when_synced(&mut self) {
        let Origin::Cluster(cluster) = &mut self.origin else {
            return;
        };
        if cluster
            .pending
            .as_ref()
            .is_some_and(|p| cluster.all_synced(&p.kinds))
            && let Some(p) = cluster.pending.take()
        {
            info!(plugin = %p.source, "the kinds the new plugins read have synced");
            if let Some(c) = &mut self.catalog {
                c.swapping = p.catalog;
            }
            self.commit_swap(
                p.plugins,
                p.source,
                None,
                p.at,
                Instant::now(),
                Duration::ZERO,
            );
        }
    }

    /// Tries the plugin files (by index: translators, then policies) and
    /// the configuration files (by plugin name) that may have changed.
    pub(super) fn swap_all(
        &mut self,
        files: &BTreeSet<usize>,
        configs: &BTreeSet<String>,
        at: Option<Instant>,
    ) {
        for &i in files {
            self.swap(i, at);
        }
        for name in configs {
            self.swap_config(name, at);
        }
    }

    /// Tries plugin file `i` as it is now; the others stay as they are.
    pub(super) fn swap(&mut self, i: usize, at: Option<Instant>) {
        let Some(path) = self.watched.plugins.get(i).cloned() else {
            return;
        };
        let source = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Being replaced, or removed: the old plugin keeps serving.
                info!(plugin = %source, "plugin file is gone; the loaded plugin keeps serving");
                return;
            }
            Err(e) => {
                return self.reject(source, None, "PluginUnreadable", e.to_string());
            }
        };
        let digest = hex::encode(Sha256::digest(&bytes));
        let mut plugins = self.pipeline.plugins();
        let translators = plugins.translators.len();
        let current = if i < translators {
            &plugins.translators[i].digest
        } else {
            &plugins.policies[i - translators].digest
        };
        if &digest == current {
            return;
        }
        let configs = match crate::plugin::load::read_configs(&self.watched.configs) {
            Ok(c) => c,
            Err(e) => return self.reject(source, Some(digest), "ConfigInvalid", format!("{e:#}")),
        };
        let started = Instant::now();
        let loaded = if i < translators {
            self.runtime
                .load_translator(&bytes, &source, Grants::default(), &configs)
                .map(|p| plugins.translators[i] = p)
        } else {
            self.runtime
                .load_policy(&bytes, &source, Grants::default(), &configs)
                .map(|p| plugins.policies[i - translators] = p)
        };
        if let Err(e) = loaded.and_then(|()| plugins.check()) {
            return self.reject(source, Some(digest), e.reason(), e.to_string());
        }
        let compiled = started.elapsed();
        self.try_swap(plugins, source, Some(digest), at, started, compiled);
    }

    /// Gives the plugin named `name` its configuration file as it is now:
    /// a swap like a new component's, dry run included.
    fn swap_config(&mut self, name: &str, at: Option<Instant>) {
        let Some((_, path)) = self
            .watched
            .configs
            .iter()
            .find(|(n, _)| n == name)
            .cloned()
        else {
            return;
        };
        let source = path.display().to_string();
        let config = match crate::plugin::load::read_config(&path) {
            Ok(c) => c,
            Err(e) => {
                if !path.exists() {
                    info!(config = %source, "configuration file is gone; the loaded configuration stays");
                    return;
                }
                return self.reject(source, None, "ConfigInvalid", format!("{e:#}"));
            }
        };
        let started = Instant::now();
        let mut plugins = self.pipeline.plugins();
        let mut changed = false;
        // A refusal names the plugin, not only the file.
        self.swapping = Some(name.to_string());
        for p in &mut plugins.translators {
            if p.info.name == name && p.config != config {
                match p.with_config(config.clone()) {
                    Ok(next) => *p = next,
                    Err(e) => return self.reject(source, None, e.reason(), e.to_string()),
                }
                changed = true;
            }
        }
        for p in &mut plugins.policies {
            if p.info.name == name && p.config != config {
                match p.with_config(config.clone()) {
                    Ok(next) => *p = next,
                    Err(e) => return self.reject(source, None, e.reason(), e.to_string()),
                }
                changed = true;
            }
        }
        if changed {
            self.try_swap(plugins, source, None, at, started, Duration::ZERO);
        }
        self.swapping = None;
    }

    /// In the cluster, waits for the watches of kinds the candidate adds;
    /// then (or at once) the dry run and the swap.
    pub(super) fn try_swap(
        &mut self,
        plugins: Plugins,
        source: String,
        digest: Option<String>,
        at: Option<Instant>,
        started: Instant,
        compiled: Duration,
    ) {
        let reconciler_kinds = self.reconciler_kinds();
        if let Origin::Cluster(cluster) = &mut self.origin {
            // A previous candidate still waiting for its watches is superseded.
            cluster.pending = None;
            let kinds = kinds_of(&plugins);
            if !cluster.all_synced(&kinds) {
                // Watch what it adds (keeping what the loaded plugins read),
                // and swap once those kinds have listed.
                let mut specs = watch_specs(&self.pipeline.plugins(), &reconciler_kinds);
                specs.extend(watch_specs(&plugins, &reconciler_kinds));
                info!(plugin = %source, "starting the watches the new plugin needs before swapping");
                cluster.source.want(specs);
                cluster.pending = Some(Pending {
                    plugins,
                    source,
                    at,
                    kinds,
                    catalog: self.catalog.as_mut().and_then(|c| c.swapping.take()),
                });
                return;
            }
        }
        self.commit_swap(plugins, source, digest, at, started, compiled);
    }

    /// Kinds watched beside the plugins': the reconcilers', and Plugin
    /// objects when followed.
    pub(super) fn reconciler_kinds(&self) -> HashSet<KindKey> {
        let mut kinds = self
            .reconcilers
            .as_ref()
            .map(|r| r.kinds.clone())
            .unwrap_or_default();
        if self.catalog.is_some() {
            kinds.insert(crate::catalog::kind());
        }
        kinds
    }

    /// Runs the whole current store through `plugins`, off to the side
    /// (every root translated, every virtual host through the policy
    /// chain), and swaps them in only if every call succeeded.
    fn commit_swap(
        &mut self,
        plugins: Plugins,
        source: String,
        digest: Option<String>,
        at: Option<Instant>,
        started: Instant,
        compiled: Duration,
    ) {
        let kinds = kinds_of(&plugins);
        let mut next = Pipeline::with(self.writer.store(), plugins.clone());
        let old_version = self.pipeline.snapshot().version;
        next.continue_after(old_version);
        let round = next.rebuild();
        self.observe_round(&round);
        // A rollback goes back to the version that served before: the
        // input it fails on now is reported as any failure is.
        if round.translation.failures > 0 && !self.rolling_back() {
            let failed: Vec<String> = next
                .diagnostics()
                .into_iter()
                .filter(|d| round.translation.failure_reasons.contains_key(&d.reason))
                .take(3)
                .map(|d| {
                    format!(
                        "{} {}/{}: {}",
                        d.object.kind, d.object.namespace, d.object.name, d.message
                    )
                })
                .collect();
            let message = format!(
                "{} of {} plugin calls failed in the dry run ({}); first: {}",
                round.translation.failures,
                round.translation.calls,
                round
                    .translation
                    .failure_reasons
                    .iter()
                    .map(|(r, n)| format!("{r}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                failed.join("; ")
            );
            return self.reject(source, digest, "DryRunFailed", message);
        }
        if next.snapshot().version <= old_version {
            // Nothing was built (an empty store): still a new version, so
            // clients drop what the old plugin produced.
            next.continue_after(old_version + 1);
        }
        let old = std::mem::replace(&mut self.pipeline, next);
        let reconciler_kinds = self.reconciler_kinds();
        if let Origin::Cluster(cluster) = &mut self.origin {
            cluster
                .source
                .want(watch_specs(&plugins, &reconciler_kinds));
            let mut keep = kinds.clone();
            keep.extend(reconciler_kinds);
            cluster.synced.retain(|k| keep.contains(k));
            self.writer.retain_kinds(&keep);
        }
        self.kinds = kinds;
        self.report
            .metrics
            .plugin_swaps
            .get_or_create(&labels1("result", "applied"))
            .inc();
        info!(
            source = %source,
            translators = ?plugins.translators.iter().map(|p| p.info.name.as_str()).collect::<Vec<_>>(),
            policies = ?plugins.policies.iter().map(|p| p.info.name.as_str()).collect::<Vec<_>>(),
            calls = round.translation.calls,
            snapshot = self.pipeline.snapshot().version,
            compile_ms = compiled.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "plugin swapped"
        );
        drop(old);
        self.after_round(at, "plugin");
        // Once its snapshot is out: whoever sees the new plugin sees it.
        self.report.plugins_loaded(&plugins);
        self.log_unread_kinds();
        self.plugin_swap_done(None);
    }

    fn reject(&mut self, source: String, digest: Option<String>, reason: &str, message: String) {
        warn!(plugin = %source, reason, error = %message, "plugin not swapped; the loaded plugin keeps serving");
        self.report
            .metrics
            .plugin_swaps
            .get_or_create(&labels1("result", "rejected"))
            .inc();
        self.report.plugin_rejected(PluginFailure {
            at: rfc3339(SystemTime::now()),
            plugin: self.swapping.take(),
            source,
            digest: digest.map(|d| format!("sha256:{d}")),
            reason: reason.to_string(),
            message: message.clone(),
        });
        self.plugin_swap_done(Some((reason, &message)));
    }
}
