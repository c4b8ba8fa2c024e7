//! Connecting `isobar serve` to a cluster: the client, the watches, leader
//! election and status write-back, from the flags.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use super::{ClusterConnection, Writeback};
use crate::leader::LeaderConfig;
use crate::source::kube::{ApiWatches, WatchConfig};
use crate::writeback::WritebackConfig;

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// A kubeconfig file; otherwise `$KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub watch: WatchConfig,
    /// None: read only, never write status.
    pub writeback: Option<WritebackConfig>,
    /// None: write without an election (a single replica).
    pub leader: Option<LeaderConfig>,
}

/// A client from a kubeconfig file, or inferred (env, home, in-cluster).
pub async fn client(
    kubeconfig: Option<&PathBuf>,
    context: Option<&String>,
) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let options = kube::config::KubeConfigOptions {
                context: context.cloned(),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if context.is_some() => {
            let options = kube::config::KubeConfigOptions {
                context: context.cloned(),
                ..Default::default()
            };
            kube::Config::from_kubeconfig(&options).await.context("kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster: pass --manifests <dir> to serve files, or --kubeconfig")?,
    };
    info!(server = %config.cluster_url, "connecting to the cluster");
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Connects: the client, the watches (asking the server's version), and,
/// when writing status, the leader election.
pub async fn connect(options: ClusterOptions) -> anyhow::Result<ClusterConnection> {
    let client = client(options.kubeconfig.as_ref(), options.context.as_ref()).await?;
    let watches = ApiWatches::connect(client.clone(), options.watch.clone()).await;
    let writeback = match options.writeback {
        None => None,
        Some(config) => {
            let leader = match &options.leader {
                Some(l) => crate::leader::elect(client.clone(), l).await?,
                None => crate::leader::Leader::always(),
            };
            Some(Writeback {
                client: client.clone(),
                config,
                leader,
            })
        }
    };
    Ok(ClusterConnection {
        watches: Arc::new(watches),
        writeback,
        client: Some(client),
    })
}
