//! The host's Prometheus metrics (prometheus-client, OpenMetrics text), all
//! named `isobar_*`.
//!
//! Latency is measured per stage of a change's way to the data planes:
//! object change → snapshot built → pushed on a stream → ACKed by the client
//! (and, end to end, change → ACK). Times come from one monotonic clock in
//! this process; nothing depends on a shared wall clock.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use crate::latency::{LatencyBuckets, secs};
use crate::queue::QueueMetrics;
use crate::source::kube::SourceMetrics;

/// Labels as (name, value) pairs, fixed in number per family.
pub type Labels<const N: usize> = [(&'static str, String); N];

type Latency<const N: usize> = Family<Labels<N>, Histogram, LatencyBuckets>;

/// Every metric the serving host exports. Cheap to share (`Arc`); every
/// metric is internally synchronised.
pub struct Metrics {
    registry: Registry,
    /// Trigger ("manifests", "plugin", "initial"): first file event of a
    /// batch to the snapshot published.
    pub change_to_snapshot: Latency<1>,
    /// Snapshot published to a response written, per protocol and type.
    pub snapshot_to_push: Latency<2>,
    /// Snapshot published to the client's ACK, per protocol and type.
    pub snapshot_to_ack: Latency<2>,
    /// First file event of the batch to the client's ACK.
    pub change_to_ack: Latency<2>,
    pub xds_nacks: Family<Labels<2>, Counter>,
    pub xds_pushes: Family<Labels<2>, Counter>,
    /// Open streams by node and protocol.
    pub xds_streams: Family<Labels<2>, Gauge>,
    pub xds_dropped_events: Gauge,
    /// One translate call, by plugin.
    pub plugin_call_duration: Latency<1>,
    pub plugin_calls: Family<Labels<1>, Counter>,
    /// Failed calls by plugin and reason (PluginTrap, PluginTimeout,
    /// PluginMemoryLimit, or the plugin's own rejection reason).
    pub plugin_failures: Family<Labels<2>, Counter>,
    /// Hot swaps by result ("applied", "rejected").
    pub plugin_swaps: Family<Labels<1>, Counter>,
    pub snapshot_version: Gauge,
    pub snapshot_resources: Family<Labels<1>, Gauge>,
    pub manifest_errors: Gauge,
    pub diagnostics: Family<Labels<1>, Gauge>,
    pub ready: Gauge,
    /// The kube source's (`isobar_kube_*`).
    pub kube: SourceMetrics,
    /// The reconcilers' work queues' (`isobar_queue_*`).
    pub queue: QueueMetrics,
    /// Status writes by kind and result ("written", "unchanged", "failed").
    pub status_writes: Family<Labels<2>, Counter>,
    /// Kubernetes Events published for diagnostics, by reason.
    pub status_events: Family<Labels<1>, Counter>,
    /// 1 while this replica holds the leader lease (writes status).
    pub leader: Gauge,
    /// Label values chosen outside the host, kept bounded.
    chosen: parking_lot::Mutex<Chosen>,
}

/// Label values a plugin (its name, its reasons) or a client (its node
/// id) chooses: each is cut to [`MAX_LABEL`] bytes, and only so many
/// distinct values get series of their own; the rest share `other`.
/// Without this, a 1 MiB node id was a label value, and every reason a
/// plugin made up a new series.
#[derive(Default)]
struct Chosen {
    /// Plugin names and reasons seen (they never go away: a series once
    /// made stays).
    values: std::collections::HashSet<String>,
    /// Nodes with open streams: how many, and each stream's label.
    live_nodes: std::collections::HashMap<String, usize>,
    stream_nodes: std::collections::HashMap<u64, String>,
}

/// Longest label value kept from outside the host.
pub const MAX_LABEL: usize = 64;
/// Distinct plugin names and reasons with series of their own.
pub const MAX_CHOSEN_VALUES: usize = 256;
/// Nodes with open streams that get series of their own.
pub const MAX_NODE_SERIES: usize = 1024;
/// The label shared by values past the budget.
pub const OTHER: &str = "other";

fn clip(value: &str) -> String {
    let mut end = value.len().min(MAX_LABEL);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("isobar"),
            change_to_snapshot: Latency::new_with_constructor(LatencyBuckets),
            snapshot_to_push: Latency::new_with_constructor(LatencyBuckets),
            snapshot_to_ack: Latency::new_with_constructor(LatencyBuckets),
            change_to_ack: Latency::new_with_constructor(LatencyBuckets),
            xds_nacks: Family::default(),
            xds_pushes: Family::default(),
            xds_streams: Family::default(),
            xds_dropped_events: Gauge::default(),
            plugin_call_duration: Latency::new_with_constructor(LatencyBuckets),
            plugin_calls: Family::default(),
            plugin_failures: Family::default(),
            plugin_swaps: Family::default(),
            snapshot_version: Gauge::default(),
            snapshot_resources: Family::default(),
            manifest_errors: Gauge::default(),
            diagnostics: Family::default(),
            ready: Gauge::default(),
            kube: SourceMetrics::default(),
            queue: QueueMetrics::new(),
            status_writes: Family::default(),
            status_events: Family::default(),
            leader: Gauge::default(),
            chosen: Default::default(),
        };
        let r = &mut m.registry;
        r.register_with_unit(
            "change_to_snapshot",
            "From an object change (first file event of a batch) to the snapshot that includes it",
            Unit::Seconds,
            m.change_to_snapshot.clone(),
        );
        r.register_with_unit(
            "snapshot_to_push",
            "From a snapshot being published to a response carrying it written to a stream",
            Unit::Seconds,
            m.snapshot_to_push.clone(),
        );
        r.register_with_unit(
            "snapshot_to_ack",
            "From a snapshot being published to a client acknowledging it",
            Unit::Seconds,
            m.snapshot_to_ack.clone(),
        );
        r.register_with_unit(
            "change_to_ack",
            "From an object change to a client acknowledging the snapshot that includes it",
            Unit::Seconds,
            m.change_to_ack.clone(),
        );
        r.register(
            "xds_nacks",
            "Responses rejected by xDS clients",
            m.xds_nacks.clone(),
        );
        r.register(
            "xds_pushes",
            "Responses written to xDS streams",
            m.xds_pushes.clone(),
        );
        r.register(
            "xds_streams",
            "Open xDS streams by node",
            m.xds_streams.clone(),
        );
        r.register(
            "xds_dropped_events",
            "xDS stream events the host did not drain in time",
            m.xds_dropped_events.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Duration of one translate call into a plugin",
            Unit::Seconds,
            m.plugin_call_duration.clone(),
        );
        r.register(
            "plugin_calls",
            "Translate calls into plugins",
            m.plugin_calls.clone(),
        );
        r.register(
            "plugin_failures",
            "Failed plugin calls by reason (traps, timeouts, memory limit, rejections)",
            m.plugin_failures.clone(),
        );
        r.register(
            "plugin_swaps",
            "Plugin hot swaps by result",
            m.plugin_swaps.clone(),
        );
        r.register(
            "snapshot_version",
            "Version of the snapshot being served",
            m.snapshot_version.clone(),
        );
        r.register(
            "snapshot_resources",
            "Resources in the served snapshot by type",
            m.snapshot_resources.clone(),
        );
        r.register(
            "manifest_errors",
            "Manifest problems currently keeping a file on its last good objects",
            m.manifest_errors.clone(),
        );
        r.register(
            "diagnostics",
            "Current diagnostics by severity",
            m.diagnostics.clone(),
        );
        r.register(
            "ready",
            "1 once the first complete snapshot is served",
            m.ready.clone(),
        );
        m.kube.register(r);
        m.queue.register(r);
        r.register(
            "status_writes",
            "Status write-back by kind and result (written, unchanged, failed)",
            m.status_writes.clone(),
        );
        r.register(
            "status_events",
            "Kubernetes Events published for diagnostics by reason",
            m.status_events.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease and writes status",
            m.leader.clone(),
        );
        m
    }

    /// A plugin's name or reason as a label value: clipped, and `other`
    /// once [`MAX_CHOSEN_VALUES`] distinct values have series.
    pub fn chosen_label(&self, value: &str) -> String {
        let value = clip(value);
        let mut chosen = self.chosen.lock();
        if chosen.values.contains(&value) {
            return value;
        }
        if chosen.values.len() >= MAX_CHOSEN_VALUES {
            return OTHER.into();
        }
        chosen.values.insert(value.clone());
        value
    }

    /// The node label for a stream that opened: the node id (clipped)
    /// while fewer than [`MAX_NODE_SERIES`] nodes have open streams, else
    /// `other`. Release it with [`Metrics::node_label_closed`].
    pub fn node_label_opened(&self, stream: u64, node: &str) -> String {
        let node = clip(node);
        let mut chosen = self.chosen.lock();
        let label =
            if chosen.live_nodes.contains_key(&node) || chosen.live_nodes.len() < MAX_NODE_SERIES {
                *chosen.live_nodes.entry(node.clone()).or_default() += 1;
                node
            } else {
                OTHER.to_string()
            };
        chosen.stream_nodes.insert(stream, label.clone());
        label
    }

    /// The label a closed stream was counted under.
    pub fn node_label_closed(&self, stream: u64) -> Option<String> {
        let mut chosen = self.chosen.lock();
        let label = chosen.stream_nodes.remove(&stream)?;
        if let Some(n) = chosen.live_nodes.get_mut(&label) {
            *n -= 1;
            if *n == 0 {
                chosen.live_nodes.remove(&label);
            }
        }
        Some(label)
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub fn labels1(k: &'static str, v: impl Into<String>) -> Labels<1> {
    [(k, v.into())]
}

pub fn labels2(
    k1: &'static str,
    v1: impl Into<String>,
    k2: &'static str,
    v2: impl Into<String>,
) -> Labels<2> {
    [(k1, v1.into()), (k2, v2.into())]
}

/// The short name of an xDS type URL for labels: `listener`, `route`, …
pub fn short_type(type_url: &str) -> String {
    use crate::xds::type_url as t;
    match type_url {
        t::LISTENER => "listener".into(),
        t::ROUTE => "route".into(),
        t::CLUSTER => "cluster".into(),
        t::ENDPOINT => "endpoint".into(),
        t::SECRET => "secret".into(),
        // Clients choose type URLs: keep the label set bounded.
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: a 1 MiB node id became a label value, and reasons a
    /// plugin made up each made a series.
    #[test]
    fn labels_chosen_outside_the_host_are_bounded() {
        let m = Metrics::new();
        let huge = "n".repeat(1 << 20);
        assert_eq!(m.node_label_opened(1, &huge).len(), MAX_LABEL);
        for i in 0..MAX_NODE_SERIES as u64 + 10 {
            m.node_label_opened(100 + i, &format!("node-{i}"));
        }
        assert_eq!(m.node_label_opened(5000, "late"), OTHER);
        // A node that has a series keeps it for its next stream.
        assert_eq!(m.node_label_opened(5001, "node-3"), "node-3");
        // Streams closing free their node's slot.
        assert_eq!(m.node_label_closed(1).unwrap().len(), MAX_LABEL);
        assert_eq!(m.node_label_opened(5002, "late"), "late");
        assert_eq!(m.node_label_closed(5000).as_deref(), Some(OTHER));
        assert_eq!(m.node_label_closed(5000), None);

        for i in 0..MAX_CHOSEN_VALUES + 10 {
            m.chosen_label(&format!("Reason{i}"));
        }
        assert_eq!(m.chosen_label("Reason3"), "Reason3");
        assert_eq!(m.chosen_label("YetAnother"), OTHER);
        assert!(m.chosen_label(&"R".repeat(10_000)).len() <= MAX_LABEL);
    }
}
