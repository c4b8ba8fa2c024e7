//! The policy chain: between merge and compile, each merged virtual host
//! goes through the policies in command-line order, each given what the
//! one before left.
//!
//! A policy sees the host as the contract's `virtual-host`, every route
//! carrying the object that produced it (`source`), and returns it
//! transformed. Its store reads are recorded per host, so a change wakes
//! only the hosts whose policies read the changed object; a host whose
//! merged input did not change is not run again.
//!
//! What a policy returns is checked before it is used: the same listener,
//! domain and TLS reference (a policy cannot point SNI at another Secret),
//! every route's source one of the input's, every diagnostic on an object
//! behind the host or one it read. A host whose chain fails (a call error
//! or a refused output) keeps its last good output and gets a diagnostic on
//! every object behind it; a host that never had a good output is left out
//! (failing closed: a policy may be the host's authentication).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::ir;
use crate::plugin::{PolicyPlugin, ReadIndex, Reads};
use crate::store::{ObjectKey, Store};
use crate::translate::merge::{MergedRoute, MergedVhost, VhostKey};
use crate::translate::{PluginRound, RoundStats};

/// Below this many hosts a policy's calls stay on this thread.
const PARALLEL: usize = 128;

/// What the chain made of one host.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainOutput {
    /// The host to compile (the input itself with no policy applying);
    /// none when the chain failed and there is no last good output.
    pub host: Option<MergedVhost>,
    /// The policies' diagnostics, and why the chain failed.
    pub diagnostics: Vec<ir::Diagnostic>,
}

struct HostState {
    input: MergedVhost,
    /// The last good output (with its policies' diagnostics).
    good: Option<(MergedVhost, Vec<ir::Diagnostic>)>,
    reads: Reads,
}

/// The chain and what it made of every host it ran for.
#[derive(Default)]
pub struct Chain {
    policies: Vec<PolicyPlugin>,
    hosts: HashMap<VhostKey, HostState>,
    readers: ReadIndex<VhostKey>,
}

impl Chain {
    pub fn new(policies: Vec<PolicyPlugin>) -> Self {
        Chain {
            policies,
            hosts: HashMap::new(),
            readers: ReadIndex::default(),
        }
    }

    pub fn policies(&self) -> &[PolicyPlugin] {
        &self.policies
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The hosts whose policies read `key` (to run again when it changes).
    pub fn readers_of<'a>(&'a self, key: &ObjectKey) -> impl Iterator<Item = &'a VhostKey> {
        self.readers.readers_of(key)
    }

    /// Forgets a host that no root contributes to any more.
    pub fn forget(&mut self, key: &VhostKey) {
        if let Some(state) = self.hosts.remove(key) {
            self.readers.unindex(key, &state.reads);
        }
    }

    /// Runs the chain over `inputs` (merged hosts whose input or reads may
    /// have changed); one output per input, in order, and each policy's
    /// share of the round.
    pub fn run(
        &mut self,
        store: &Store,
        inputs: Vec<(VhostKey, MergedVhost)>,
    ) -> (Vec<ChainOutput>, Vec<PluginRound>) {
        let mut rounds: Vec<PluginRound> = self
            .policies
            .iter()
            .map(|p| PluginRound {
                plugin: Arc::from(p.info.name.as_str()),
                stats: RoundStats::default(),
            })
            .collect();
        if self.policies.is_empty() {
            let outputs = inputs
                .into_iter()
                .map(|(_, m)| ChainOutput {
                    host: Some(m),
                    diagnostics: vec![],
                })
                .collect();
            return (outputs, rounds);
        }
        // Every host moves through the chain together, one policy at a
        // time, so each policy's calls are batched on few instances.
        let mut work: Vec<Work> = inputs
            .iter()
            .map(|(_, m)| Work {
                host: contract_host(m),
                sources: sources(m),
                reads: Reads::default(),
                diagnostics: vec![],
                failed: None,
            })
            .collect();
        for (policy, round) in self.policies.iter().zip(&mut rounds) {
            let todo: Vec<usize> = work
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    w.failed.is_none() && policy.applies_to(&w.host.listener, &w.host.domain)
                })
                .map(|(i, _)| i)
                .collect();
            let hosts: Vec<&ir::VirtualHost> = todo.iter().map(|&i| &work[i].host).collect();
            let outcomes = if hosts.len() < PARALLEL {
                policy.apply_batch(store, &hosts)
            } else {
                use rayon::prelude::*;
                hosts
                    .par_chunks(PARALLEL)
                    .flat_map_iter(|chunk| policy.apply_batch(store, chunk))
                    .collect()
            };
            for (i, outcome) in todo.into_iter().zip(outcomes) {
                let w = &mut work[i];
                round.stats.calls += 1;
                round.stats.dropped_logs += outcome.dropped_logs;
                round.stats.call_durations.push(outcome.elapsed);
                let checked = outcome
                    .result
                    .map_err(|e| (e.reason().to_string(), e.to_string()))
                    .and_then(|r| check(&w.host, &w.sources, &outcome.reads, r));
                match checked {
                    Ok(result) => {
                        w.host = result.host;
                        w.diagnostics.extend(result.diagnostics);
                        w.reads.gets.extend(outcome.reads.gets);
                        w.reads.lists.extend(outcome.reads.lists);
                    }
                    Err((reason, message)) => {
                        round.stats.failures += 1;
                        *round
                            .stats
                            .failure_reasons
                            .entry(reason.clone())
                            .or_default() += 1;
                        tracing::warn!(policy = %policy.info.name, listener = %w.host.listener,
                            domain = %w.host.domain, reason = %reason, error = %message,
                            "policy failed; the host keeps its last good output");
                        w.failed = Some((policy.info.name.clone(), reason, message));
                    }
                }
            }
        }
        let mut outputs = Vec::with_capacity(inputs.len());
        for ((key, input), w) in inputs.into_iter().zip(work) {
            let previous = self.hosts.remove(&key);
            if let Some(prev) = &previous {
                self.readers.unindex(&key, &prev.reads);
            }
            let (state, output) = match w.failed {
                None => {
                    let host = merged_host(&input, w.host);
                    let output = ChainOutput {
                        host: Some(host.clone()),
                        diagnostics: w.diagnostics.clone(),
                    };
                    let state = HostState {
                        input,
                        good: Some((host, w.diagnostics)),
                        reads: w.reads,
                    };
                    (state, output)
                }
                Some((policy, reason, message)) => {
                    let good = previous.as_ref().and_then(|p| p.good.clone());
                    let serving = if good.is_some() {
                        "serving its last good output"
                    } else {
                        "the host is not served until the chain succeeds"
                    };
                    let mut diagnostics: Vec<ir::Diagnostic> = w
                        .sources
                        .iter()
                        .map(|o| {
                            ir::Diagnostic::error(
                                o.clone(),
                                reason.clone(),
                                format!(
                                    "policy {policy} failed on host {} (listener {}): {message}; {serving}",
                                    key.domain, key.listener
                                ),
                            )
                        })
                        .collect();
                    if let Some((_, d)) = &good {
                        diagnostics.extend(d.iter().cloned());
                    }
                    // A failed call's reads are not kept (a call that ran
                    // out of time may have read anything): the host keeps
                    // depending on what its last good run read, and on the
                    // roots behind it, so a fix to either wakes it.
                    let mut reads = previous.map(|p| p.reads).unwrap_or_default();
                    reads.gets.extend(w.reads.gets);
                    reads.lists.extend(w.reads.lists);
                    reads.gets.extend(input.roots.iter().cloned());
                    let state = HostState {
                        input,
                        good: good.clone(),
                        reads,
                    };
                    (
                        state,
                        ChainOutput {
                            host: good.map(|(h, _)| h),
                            diagnostics,
                        },
                    )
                }
            };
            self.readers.index(&key, &state.reads);
            self.hosts.insert(key, state);
            outputs.push(output);
        }
        (outputs, rounds)
    }

    /// The input a host was last run with, for tests and debugging.
    pub fn input(&self, key: &VhostKey) -> Option<&MergedVhost> {
        self.hosts.get(key).map(|s| &s.input)
    }
}

struct Work {
    host: ir::VirtualHost,
    /// The objects behind the input's routes.
    sources: BTreeSet<ir::ObjectRef>,
    reads: Reads,
    diagnostics: Vec<ir::Diagnostic>,
    failed: Option<(String, String, String)>,
}

/// The merged host as a policy sees it: every route names its source.
fn contract_host(m: &MergedVhost) -> ir::VirtualHost {
    ir::VirtualHost {
        listener: m.listener.clone(),
        domain: m.domain.clone(),
        tls: m.tls.clone(),
        routes: m
            .routes
            .iter()
            .map(|r| {
                let mut route = r.route.clone();
                route
                    .source
                    .get_or_insert_with(|| ir::ObjectRef::of(&r.root));
                route
            })
            .collect(),
    }
}

fn sources(m: &MergedVhost) -> BTreeSet<ir::ObjectRef> {
    m.routes
        .iter()
        .map(|r| {
            r.route
                .source
                .clone()
                .unwrap_or_else(|| ir::ObjectRef::of(&r.root))
        })
        .chain(m.roots.iter().map(ir::ObjectRef::of))
        .collect()
}

/// The merged host again, each route attributed to the root that produced
/// its source (checked to be one of the input's).
fn merged_host(input: &MergedVhost, host: ir::VirtualHost) -> MergedVhost {
    let root_of: HashMap<ir::ObjectRef, &ObjectKey> = input
        .routes
        .iter()
        .map(|r| {
            (
                r.route
                    .source
                    .clone()
                    .unwrap_or_else(|| ir::ObjectRef::of(&r.root)),
                &r.root,
            )
        })
        .chain(input.roots.iter().map(|k| (ir::ObjectRef::of(k), k)))
        .collect();
    let first = &input.roots[0];
    MergedVhost {
        listener: input.listener.clone(),
        domain: input.domain.clone(),
        tls: input.tls.clone(),
        routes: host
            .routes
            .into_iter()
            .map(|route| {
                let root = route
                    .source
                    .as_ref()
                    .and_then(|s| root_of.get(s))
                    .copied()
                    .unwrap_or(first)
                    .clone();
                MergedRoute { route, root }
            })
            .collect(),
        roots: input.roots.clone(),
        diagnostics: input.diagnostics.clone(),
    }
}

/// Refuses an output that is not the same host, names sources it was not
/// given, or puts diagnostics on objects it neither was given nor read.
fn check(
    input: &ir::VirtualHost,
    sources: &BTreeSet<ir::ObjectRef>,
    reads: &Reads,
    result: crate::plugin::PolicyResult,
) -> Result<crate::plugin::PolicyResult, (String, String)> {
    let invalid = |m: String| Err(("PolicyOutputInvalid".to_string(), m));
    let host = &result.host;
    if host.listener != input.listener || host.domain != input.domain {
        return invalid(format!(
            "returned host {} on listener {} for host {} on listener {}",
            host.domain, host.listener, input.domain, input.listener
        ));
    }
    if host.tls != input.tls {
        return invalid("changed the host's TLS reference (policies may not)".into());
    }
    if let Some(r) = host.routes.iter().find(|r| match &r.source {
        None => true,
        Some(s) => !sources.contains(s),
    }) {
        return invalid(match &r.source {
            None => "returned a route without its source object".to_string(),
            Some(s) => format!(
                "returned a route whose source {} {}/{} is not behind this host",
                s.kind, s.namespace, s.name
            ),
        });
    }
    if let Some(d) = result
        .diagnostics
        .iter()
        .find(|d| !sources.contains(&d.object) && !reads.saw_ref(&d.object))
    {
        return invalid(format!(
            "put a diagnostic on {} {}/{}, which is neither behind this host nor read by the policy",
            d.object.kind, d.object.namespace, d.object.name
        ));
    }
    Ok(result)
}
