//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager).
//! Every replica watches and serves xDS; only the holder writes status. A
//! holder that stops renewing (crashed, partitioned) loses the lease after
//! its duration, another replica takes it, and its writer catches up.

use anyhow::Context;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::info;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a lease holds without renewal, and how early it is renewed.
    pub duration_secs: u64,
    pub grace_secs: u64,
}

impl LeaderConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease: "isobar".into(),
            identity: identity.into(),
            duration_secs: 15,
            grace_secs: 5,
        }
    }
}

/// Starts competing for the lease; the receiver says whether this replica
/// holds it. Dropping every receiver releases the lease.
pub async fn elect(
    client: kube::Client,
    config: &LeaderConfig,
) -> anyhow::Result<watch::Receiver<bool>> {
    let manager = LeaseManagerBuilder::new(client, &config.lease)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .with_field_manager(crate::writeback::FIELD_MANAGER)
        .build()
        .await
        .with_context(|| format!("lease {}/{}", config.namespace, config.lease))?;
    let (leader, _task) = manager.watch().await;
    info!(lease = %format!("{}/{}", config.namespace, config.lease), identity = %config.identity, "competing for the leader lease");
    Ok(leader)
}

/// For a single replica that writes without an election.
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
