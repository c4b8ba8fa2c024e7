//! Work queue metrics: one set of families shared by every queue in the
//! process, one series per queue name, so a dashboard can compare plugins.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

// The same buckets as the host's other latencies.
use crate::latency::LatencyBuckets;

/// `queue="<name>"`.
type QueueLabel = [(&'static str, String); 1];

/// The `isobar_queue_*` families. Cheap to clone (shared handles); create
/// one per process, [`register`](Self::register) it once, and pass it to
/// every [`WorkQueue::new`](super::WorkQueue::new). An unregistered one is a
/// harmless sink (tests, tools).
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    depth: Family<QueueLabel, Gauge>,
    adds: Family<QueueLabel, Counter>,
    retries: Family<QueueLabel, Counter>,
    latency: Family<QueueLabel, Histogram, LatencyBuckets>,
    work_duration: Family<QueueLabel, Histogram, LatencyBuckets>,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueMetrics {
    pub fn new() -> Self {
        QueueMetrics {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            latency: Family::new_with_constructor(LatencyBuckets),
            work_duration: Family::new_with_constructor(LatencyBuckets),
        }
    }

    /// Registers the families as `queue_*` into `registry`, which is meant
    /// to be the host's `isobar`-prefixed one (giving `isobar_queue_*`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "queue_depth",
            "Keys ready and waiting for a worker",
            self.depth.clone(),
        );
        registry.register(
            "queue_adds",
            "Keys that became ready (duplicates of a pending key are not counted)",
            self.adds.clone(),
        );
        registry.register(
            "queue_retries",
            "Keys requeued with backoff after a failure",
            self.retries.clone(),
        );
        registry.register_with_unit(
            "queue_latency",
            "From a key becoming ready to a worker taking it",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register_with_unit(
            "queue_work_duration",
            "From a worker taking a key to releasing it",
            Unit::Seconds,
            self.work_duration.clone(),
        );
    }

    /// One queue's series, resolved once so the hot path skips the family's
    /// label lookup.
    pub(super) fn handles(&self, queue: &str) -> Handles {
        let label = [("queue", queue.to_owned())];
        Handles {
            depth: self.depth.get_or_create_owned(&label),
            adds: self.adds.get_or_create_owned(&label),
            retries: self.retries.get_or_create_owned(&label),
            latency: self.latency.get_or_create_owned(&label),
            work_duration: self.work_duration.get_or_create_owned(&label),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Handles {
    pub(super) depth: Gauge,
    pub(super) adds: Counter,
    pub(super) retries: Counter,
    pub(super) latency: Histogram,
    pub(super) work_duration: Histogram,
}
