//! How the host measures latency for Prometheus: one set of histogram
//! buckets for every stage (so stages can be compared) and seconds as the
//! unit. Kept apart so every module that measures (the report's metrics,
//! the work queue) shares them without importing one another.

use std::time::Duration;

use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Latency buckets from 100 µs to ~52 s (doubling).
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 20))
    }
}

/// Seconds as Prometheus wants them.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
