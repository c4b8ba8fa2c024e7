//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager).
//! Every replica watches and serves xDS; only the holder writes status. A
//! holder that stops renewing (crashed, partitioned) loses the lease after
//! its duration, another replica takes it, and its writer catches up.
//!
//! A holder that shuts down releases the lease ([`Leader::release`]), and a
//! follower notices within [`LeaderConfig::retry`]: kube-lease-manager's
//! own loop would sleep until the released lease's old expiry (up to its
//! whole duration) before looking again, so a follower here also reads the
//! Lease every `retry` and, once it is free, competes for it at once (as
//! client-go's followers do every `RetryPeriod`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a lease holds without renewal, and how early it is renewed.
    pub duration_secs: u64,
    pub grace_secs: u64,
    /// How often a follower reads the Lease to see whether it was released.
    pub retry: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease: "isobar".into(),
            identity: identity.into(),
            duration_secs: 15,
            grace_secs: 5,
            retry: Duration::from_secs(1),
        }
    }

    /// The field manager of this replica's writes to the Lease: one per
    /// replica, so that two replicas locking a free lease at once conflict
    /// (server-side apply) instead of overwriting each other.
    pub fn field_manager(&self) -> String {
        format!("{}-lease/{}", crate::writeback::FIELD_MANAGER, self.identity)
    }
}

/// Whether this replica may write, and the means to give that up.
/// Cheap to clone; clones share the election.
#[derive(Clone)]
pub struct Leader {
    leading: watch::Receiver<bool>,
    election: Option<Arc<Election>>,
}

struct Election {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    lease: String,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("leading", &*self.leading.borrow())
            .field("lease", &self.election.as_ref().map(|e| &e.lease))
            .finish()
    }
}

impl From<watch::Receiver<bool>> for Leader {
    /// Leadership decided elsewhere (a test, another election).
    fn from(leading: watch::Receiver<bool>) -> Self {
        Leader {
            leading,
            election: None,
        }
    }
}

impl Leader {
    /// For a single replica that writes without an election.
    pub fn always() -> Leader {
        always().into()
    }

    /// Follows whether this replica holds the lease.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Stops competing and, if this replica holds the lease, releases it so
    /// another replica takes it at once rather than after its duration.
    /// Waits at most `limit`; a lease not released in time expires as a
    /// crashed holder's would. Idempotent.
    pub async fn release(&self, limit: Duration) {
        let Some(election) = &self.election else {
            return;
        };
        election.stop.send_replace(true);
        let Some(task) = election.task.lock().await.take() else {
            return;
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(limit, task).await {
            Ok(_) => {}
            Err(_) => {
                abort.abort();
                warn!(lease = %election.lease, ?limit, "the leader lease was not released in time; it will expire");
            }
        }
    }
}

/// Starts competing for the lease. Fails when the Lease cannot be read or
/// created.
pub async fn elect(client: kube::Client, config: &LeaderConfig) -> anyhow::Result<Leader> {
    let name = format!("{}/{}", config.namespace, config.lease);
    let manager = manager(client.clone(), config)
        .await
        .with_context(|| format!("lease {name}"))?;
    let (tx, leading) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(compete(client, config.clone(), manager, tx, stopped));
    info!(lease = %name, identity = %config.identity, "competing for the leader lease");
    Ok(Leader {
        leading,
        election: Some(Arc::new(Election {
            stop,
            task: Mutex::new(Some(task)),
            lease: name,
        })),
    })
}

async fn manager(
    client: kube::Client,
    config: &LeaderConfig,
) -> kube_lease_manager::Result<LeaseManager> {
    LeaseManagerBuilder::new(client, &config.lease)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .with_field_manager(config.field_manager())
        .build()
        .await
}

/// The election loop: acquire and renew through the manager; as a follower
/// also watch for a released lease; on stop, release what is held.
async fn compete(
    client: kube::Client,
    config: LeaderConfig,
    first: LeaseManager,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), &config.namespace);
    let mut manager = Some(first);
    let mut is_leader = false;
    let mut failures = 0u32;
    loop {
        let m = match manager.take() {
            Some(m) => m,
            None => match self::manager(client.clone(), &config).await {
                Ok(m) => m,
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "leader election: reading the lease failed; retrying");
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        _ = tokio::time::sleep(backoff(failures)) => continue,
                    }
                }
            },
        };
        // A fresh manager starts as a follower (its state says so).
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => {
                if is_leader {
                    match m.release().await {
                        Ok(()) => info!(identity = %config.identity, "leader lease released"),
                        Err(e) => warn!(error = %e, "releasing the leader lease failed; it will expire"),
                    }
                }
                break;
            }
            changed = m.changed() => match changed {
                Ok(now) => {
                    failures = 0;
                    if now != is_leader {
                        info!(identity = %config.identity, leader = now, "leader lease {}", if now { "acquired" } else { "lost" });
                    }
                    is_leader = now;
                    leading.send_replace(now);
                    manager = Some(m);
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "leader election failed; retrying");
                    if is_leader {
                        // Unsure whether it still holds: write nothing meanwhile.
                        is_leader = false;
                        leading.send_replace(false);
                    }
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        _ = tokio::time::sleep(backoff(failures)) => {}
                    }
                }
            },
            _ = released(&leases, &config), if !is_leader => {
                // The manager's state still shows the old holder until
                // that holder's expiry: a fresh one reads the Lease anew.
                debug!(identity = %config.identity, "the leader lease was released; competing for it");
            }
        }
    }
    leading.send_replace(false);
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Completes once the Lease has no holder, read every `retry`.
async fn released(leases: &kube::Api<Lease>, config: &LeaderConfig) {
    loop {
        tokio::time::sleep(config.retry).await;
        match leases.get_opt(&config.lease).await {
            Ok(Some(lease)) => {
                let holder = lease.spec.and_then(|s| s.holder_identity);
                if holder.is_none_or(|h| h.is_empty()) {
                    return;
                }
            }
            // Gone: the manager recreates it.
            Ok(None) => return,
            Err(e) => debug!(error = %e, "reading the leader lease failed"),
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5))
}

/// A receiver that always says "leader", for a single replica that writes
/// without an election.
pub fn always() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    // Keep the sender alive for the life of the process: the receiver
    // must never see the channel close.
    std::mem::forget(tx);
    rx
}

/// The namespace this pod runs in (the service account's), if in a cluster.
pub fn own_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
