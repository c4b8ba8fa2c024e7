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
        format!(
            "{}-lease/{}",
            crate::writeback::FIELD_MANAGER,
            self.identity
        )
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::testing::fake_api::FakeApi;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/isobar";
    const WAIT: Duration = Duration::from_secs(30);

    fn config(identity: &str) -> LeaderConfig {
        LeaderConfig {
            retry: Duration::from_millis(200),
            ..LeaderConfig::new("default", identity)
        }
    }

    async fn until(leader: &Leader, want: bool, what: &str) {
        let mut rx = leader.watch();
        tokio::time::timeout(WAIT, rx.wait_for(|l| *l == want))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
    }

    fn holder(api: &FakeApi) -> serde_json::Value {
        api.object(LEASE).unwrap()["spec"]["holderIdentity"].clone()
    }

    fn lease() -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "isobar", "namespace": "default", "resourceVersion": "1"},
               "spec": {}})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_released_lease_is_taken_by_the_follower_at_once() {
        let (api, client) = FakeApi::start([(LEASE, lease())]);
        let a = elect(client.clone(), &config("a")).await.unwrap();
        until(&a, true, "a to lead").await;
        let b = elect(client, &config("b")).await.unwrap();
        assert!(!b.is_leader());
        assert_eq!(holder(&api), "a");

        let released = Instant::now();
        a.release(Duration::from_secs(5)).await;
        assert!(!a.is_leader(), "a released but still says it leads");
        until(&b, true, "b to take the released lease").await;
        // Reported, not asserted: the follower reads the Lease every 200 ms
        // here (1 s by default); without the release it would wait for the
        // lease to expire (15 s).
        eprintln!("released lease taken after {:?}", released.elapsed());
        assert_eq!(holder(&api), "b");
        // Each replica writes the Lease as its own field manager.
        assert!(
            api.requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.uri.contains("fieldManager=isobar-lease%2Fb")),
            "{:?}",
            api.requests()
        );
        b.release(Duration::from_secs(5)).await;
        assert!(holder(&api).is_null());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_not_released_is_taken_only_once_it_expires() {
        let (api, client) = FakeApi::start([(LEASE, lease())]);
        let short = |id: &str| LeaderConfig {
            duration_secs: 2,
            grace_secs: 1,
            ..config(id)
        };
        let a = elect(client.clone(), &short("a")).await.unwrap();
        until(&a, true, "a to lead").await;
        // a stops renewing without releasing (a crash, a partition).
        a.election
            .as_ref()
            .unwrap()
            .task
            .lock()
            .await
            .take()
            .unwrap()
            .abort();
        let b = elect(client, &short("b")).await.unwrap();
        let started = Instant::now();
        until(&b, true, "b to take the expired lease").await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "b took a lease that had not expired"
        );
        assert_eq!(holder(&api), "b");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn releasing_a_lease_this_replica_does_not_hold_leaves_it_alone() {
        let (api, client) = FakeApi::start([(LEASE, lease())]);
        let a = elect(client.clone(), &config("a")).await.unwrap();
        until(&a, true, "a to lead").await;
        let b = elect(client, &config("b")).await.unwrap();
        b.release(Duration::from_secs(5)).await;
        assert_eq!(holder(&api), "a");
        assert!(a.is_leader());
        // Releasing twice is harmless.
        b.release(Duration::from_secs(5)).await;
        Leader::always().release(Duration::from_secs(1)).await;
    }
}
