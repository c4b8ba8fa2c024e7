//! Hot swap of the translator: the new component is compiled, checked
//! against the contract, and translates the whole current store in a
//! pipeline of its own (the same store: nothing is reloaded or copied).
//! Only if every call succeeded does it replace the old pipeline, and its
//! snapshot (whose version continues the old one's) is published. Any
//! failure keeps the old plugin and snapshot and records why.
//!
//! In the cluster, a plugin that reads kinds nobody watched yet waits until
//! their watches have listed once.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Controller, Origin, kinds_of, watch_specs};
use crate::pipeline::Pipeline;
use crate::plugin::Plugin;
use crate::report::metrics::labels1;
use crate::report::{PluginFailure, rfc3339};
use crate::store::KindKey;

/// A plugin compiled and waiting for the first list of kinds it adds.
pub(super) struct Pending {
    plugin: Plugin,
    source: String,
    at: Option<Instant>,
    kinds: HashSet<KindKey>,
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
            info!(plugin = %p.plugin.info.name, "the kinds the new plugin reads have synced");
            self.commit_swap(p.plugin, p.source, p.at, Instant::now(), Duration::ZERO);
        }
    }

    /// Tries the plugin file as it is now.
    pub(super) fn swap(&mut self, at: Option<Instant>) {
        let path = self.watched.plugin.clone();
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
        if digest == self.pipeline.plugin().digest {
            return;
        }
        let started = Instant::now();
        let plugin = match self.runtime.load(&bytes, &source) {
            Ok(p) => p,
            Err(e) => return self.reject(source, Some(digest), e.reason(), e.to_string()),
        };
        let compiled = started.elapsed();
        let reconciler_kinds = self.reconciler_kinds();
        if let Origin::Cluster(cluster) = &mut self.origin {
            // A previous candidate still waiting for its watches is superseded.
            cluster.pending = None;
            let kinds = kinds_of(&plugin);
            if !cluster.all_synced(&kinds) {
                // Watch what it adds (keeping what the loaded plugin reads),
                // and swap once those kinds have listed.
                let mut specs = watch_specs(self.pipeline.plugin(), &reconciler_kinds);
                specs.extend(watch_specs(&plugin, &reconciler_kinds));
                info!(plugin = %plugin.info.name, "starting the watches the new plugin needs before swapping");
                cluster.source.want(specs);
                cluster.pending = Some(Pending {
                    plugin,
                    source,
                    at,
                    kinds,
                });
                return;
            }
        }
        self.commit_swap(plugin, source, at, started, compiled);
    }

    fn reconciler_kinds(&self) -> HashSet<KindKey> {
        self.reconcilers
            .as_ref()
            .map(|r| r.kinds.clone())
            .unwrap_or_default()
    }

    /// Translates the whole current store with `plugin`, off to the side,
    /// and swaps it in only if every call succeeded.
    fn commit_swap(
        &mut self,
        plugin: Plugin,
        source: String,
        at: Option<Instant>,
        started: Instant,
        compiled: Duration,
    ) {
        let digest = plugin.digest.clone();
        let kinds = kinds_of(&plugin);
        let mut next = Pipeline::new(self.writer.store(), plugin.clone());
        let old_version = self.pipeline.snapshot().version;
        next.continue_after(old_version);
        let round = next.rebuild();
        self.observe_round_for(&plugin, &round);
        if round.translation.failures > 0 {
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
                "{} of {} translate calls failed ({}); first: {}",
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
            return self.reject(source, Some(digest), "TranslationFailed", message);
        }
        if next.snapshot().version <= old_version {
            // Nothing was built (an empty store): still a new version, so
            // clients drop what the old plugin produced.
            next.continue_after(old_version + 1);
        }
        let old = std::mem::replace(&mut self.pipeline, next);
        let reconciler_kinds = self.reconciler_kinds();
        if let Origin::Cluster(cluster) = &mut self.origin {
            cluster.source.want(watch_specs(&plugin, &reconciler_kinds));
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
            plugin = %plugin.info.name,
            version = %plugin.info.version,
            digest = %plugin.digest,
            replaced = %old.plugin().info.name,
            calls = round.translation.calls,
            snapshot = self.pipeline.snapshot().version,
            compile_ms = compiled.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "plugin swapped"
        );
        drop(old);
        self.after_round(at, "plugin");
        // Once its snapshot is out: whoever sees the new plugin sees it.
        self.report.plugin_loaded(&plugin);
        self.log_unread_kinds();
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
            source,
            digest: digest.map(|d| format!("sha256:{d}")),
            reason: reason.to_string(),
            message,
        });
    }
}
