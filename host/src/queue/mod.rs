//! The work queue that drives reconciler plugins, with client-go's
//! semantics, so that operators written against those expectations behave
//! the same here:
//!
//! - A key is handed to one worker at a time. Adding a key that is already
//!   waiting does nothing; adding one that is being worked on marks it dirty,
//!   and it is handed out once more after that worker releases it. Controllers
//!   are level-based, so many events for a key collapse into one reconcile.
//! - A failure requeues the key after the larger of a per-key exponential
//!   backoff (5 ms doubling to 1000 s, reset by success) and a global token
//!   bucket (10 qps, burst 100), so neither one broken object nor a broken API
//!   server makes the host spin.
//! - Requeue-after: the earliest pending deadline wins, and an immediate add
//!   supersedes a pending delayed one.
//!
//! All times are `tokio::time` instants so tests run on virtual time. There
//! is no background task: whoever waits in [`WorkQueue::get`] also sleeps
//! until the next deadline.

pub(crate) mod limit;
mod metrics;
mod owners;
#[cfg(test)]
mod tests;

pub use metrics::QueueMetrics;
pub use owners::Owners;

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, debug, debug_span, error, info, warn};

use limit::{Backoff, TokenBucket};
use metrics::Handles;

/// What a queue key must be: cheap to clone, hashable, printable in logs.
pub trait Key: Clone + Eq + Hash + Debug + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Debug + Send + Sync + 'static> Key for T {}

/// Rate limits for retries. The defaults are client-go's
/// `DefaultControllerRateLimiter`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// First retry delay of a failing key; doubles with each failure.
    pub base_delay: Duration,
    /// Cap of the per-key backoff.
    pub max_delay: Duration,
    /// Retries per second over all keys; `f64::INFINITY` disables the bucket.
    pub qps: f64,
    /// Retries allowed at once before `qps` applies.
    pub burst: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1000),
            qps: 10.0,
            burst: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue takes no more keys; a feeding loop should stop.
    #[error("work queue {queue} is shut down")]
    ShutDown { queue: String },
    #[error("invalid work queue config: {0}")]
    InvalidConfig(String),
}

/// What a worker tells the queue about a key it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<E> {
    /// Reconciled; forget its failures. Wait for the next event.
    Done,
    /// Reconciled, but look again after this long (external state, timers).
    /// Resets the backoff: this is not a failure.
    Requeue(Duration),
    /// Failed: retry with backoff.
    Error(E),
}

/// A cheap-to-clone handle to one queue (e.g. one reconciler plugin's).
pub struct WorkQueue<K: Key> {
    inner: Arc<Inner<K>>,
}

impl<K: Key> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Key> Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("WorkQueue")
            .field("name", &self.inner.name)
            .field("ready", &st.ready.len())
            .field("processing", &st.processing.len())
            .field("delayed", &st.delayed.len())
            .field("shut_down", &st.shut_down)
            .finish()
    }
}

struct Inner<K> {
    name: String,
    backoff: Backoff,
    state: Mutex<State<K>>,
    /// Wakes getters: one per key made ready, all at shutdown.
    notify: Notify,
    metrics: Handles,
}

struct State<K> {
    /// Keys ready for a worker, in the order they became ready.
    ready: VecDeque<K>,
    /// Keys that need a run, with when they became ready: those in `ready`,
    /// and those being worked on that must run again after.
    dirty: HashMap<K, Instant>,
    /// Keys being worked on, with when the worker took them.
    processing: HashMap<K, Instant>,
    /// Pending requeue-after deadlines, by key and in deadline order (ties
    /// by insertion); the two always hold the same entries.
    delayed: HashMap<K, (Instant, u64)>,
    timers: BTreeMap<(Instant, u64), K>,
    next_timer: u64,
    /// Consecutive failures per key, for the backoff.
    failures: HashMap<K, u32>,
    bucket: TokenBucket,
    shut_down: bool,
}

/// `sleep_until` and `Instant + Duration` panic past the clock's range;
/// thirty years is never, in effect (tokio uses the same horizon).
fn deadline_after(now: Instant, delay: Duration) -> Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(delay.min(FAR_FUTURE))
        .unwrap_or_else(|| now + FAR_FUTURE)
}

impl<K: Key> WorkQueue<K> {
    /// A queue whose metrics are labelled `queue="<name>"`: give each queue
    /// its own name (the plugin's), or their series merge.
    pub fn new(
        name: impl Into<String>,
        config: QueueConfig,
        metrics: &QueueMetrics,
    ) -> Result<Self, QueueError> {
        let name = name.into();
        // NaN is neither greater nor less: rejected too.
        if config.qps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(QueueError::InvalidConfig(format!(
                "qps must be positive, got {}",
                config.qps
            )));
        }
        let interval = Duration::try_from_secs_f64(1.0 / config.qps)
            .map_err(|_| QueueError::InvalidConfig(format!("qps {} is too small", config.qps)))?;
        let handles = metrics.handles(&name);
        handles.depth.set(0);
        Ok(WorkQueue {
            inner: Arc::new(Inner {
                backoff: Backoff::new(config.base_delay, config.max_delay),
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    dirty: HashMap::new(),
                    processing: HashMap::new(),
                    delayed: HashMap::new(),
                    timers: BTreeMap::new(),
                    next_timer: 0,
                    failures: HashMap::new(),
                    bucket: TokenBucket::new(interval, config.burst),
                    shut_down: false,
                }),
                notify: Notify::new(),
                metrics: handles,
                name,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Makes `key` ready now (see the module docs for deduplication).
    pub fn add(&self, key: K) -> Result<(), QueueError> {
        let mut st = self.inner.state.lock();
        self.inner.check_open(&st)?;
        // Now is earlier than any pending deadline.
        st.cancel_timer(&key);
        self.inner.enqueue(&mut st, key, Instant::now());
        Ok(())
    }

    /// Makes `key` ready after `delay`, unless it is due sooner already.
    pub fn add_after(&self, key: K, delay: Duration) -> Result<(), QueueError> {
        let mut st = self.inner.state.lock();
        self.inner.check_open(&st)?;
        self.inner.schedule(&mut st, key, delay, Instant::now());
        Ok(())
    }

    /// Records a failure of `key` and requeues it after its backoff or the
    /// global bucket's delay, whichever is longer; returns that delay. As
    /// with [`add_after`](Self::add_after), a sooner pending run wins: a
    /// new event for a failing key is not held back by its backoff.
    pub fn add_rate_limited(&self, key: K) -> Result<Duration, QueueError> {
        let mut st = self.inner.state.lock();
        self.inner.check_open(&st)?;
        let now = Instant::now();
        let failures = st.failures.entry(key.clone()).or_insert(0);
        let backoff = self.inner.backoff.delay(*failures);
        *failures = failures.saturating_add(1);
        let delay = backoff.max(st.bucket.reserve(now));
        self.inner.metrics.retries.inc();
        self.inner.schedule(&mut st, key, delay, now);
        Ok(delay)
    }

    /// Resets `key`'s backoff: its next failure waits the base delay again.
    pub fn forget(&self, key: &K) {
        self.inner.state.lock().failures.remove(key);
    }

    /// Failures recorded for `key` since it was last forgotten, so a caller
    /// can give up on a key or escalate.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.inner
            .state
            .lock()
            .failures
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys ready for a worker now.
    pub fn len(&self) -> usize {
        let mut st = self.inner.state.lock();
        self.inner.promote_due(&mut st, Instant::now());
        st.ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for a ready key and hands it out as a [`Lease`]; `None` once the
    /// queue is shut down. Cancel-safe: a key is only taken when this returns.
    pub async fn get(&self) -> Option<Lease<K>> {
        loop {
            let mut notified = pin!(self.inner.notify.notified());
            let next_deadline = {
                let mut st = self.inner.state.lock();
                if st.shut_down {
                    return None;
                }
                let now = Instant::now();
                self.inner.promote_due(&mut st, now);
                if let Some(key) = st.ready.pop_front() {
                    let ready_at = st.dirty.remove(&key).unwrap_or(now);
                    st.processing.insert(key.clone(), now);
                    let m = &self.inner.metrics;
                    m.depth.set(st.ready.len() as i64);
                    m.latency
                        .observe(now.saturating_duration_since(ready_at).as_secs_f64());
                    return Some(Lease {
                        queue: self.clone(),
                        key,
                    });
                }
                // Registered under the lock: every add happens under it too,
                // so none can slip between this check and the wait.
                notified.as_mut().enable();
                st.timers.first_key_value().map(|(&(at, _), _)| at)
            };
            match next_deadline {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Stops handing out and taking keys. Keys not yet handed out are
    /// dropped: the store is the truth, and a restarted host relists and
    /// enqueues everything again. Leases already out stay valid.
    pub fn shutdown(&self) {
        {
            let mut st = self.inner.state.lock();
            if st.shut_down {
                return;
            }
            st.shut_down = true;
            st.ready.clear();
            st.dirty.clear();
            st.delayed.clear();
            st.timers.clear();
            self.inner.metrics.depth.set(0);
        }
        self.inner.notify.notify_waiters();
        info!(queue = %self.inner.name, "work queue shut down");
    }

    pub fn is_shut_down(&self) -> bool {
        self.inner.state.lock().shut_down
    }

    /// Drives the queue with at most `concurrency` workers at once until
    /// [`shutdown`](Self::shutdown); returns once every worker it started
    /// has finished. Each worker runs as its own task (so workers use every
    /// core) in a `work` span with `queue` and `key`; a worker that panics
    /// counts as an error and is retried with backoff.
    ///
    /// The bound is per call: two `run`s on one queue may run twice as many
    /// workers, though still never two on one key. CPU-bound work (a Wasm
    /// call) belongs in `spawn_blocking` inside the worker, so it does not
    /// hold a runtime thread.
    pub async fn run<F, Fut, E>(&self, concurrency: NonZeroUsize, worker: F)
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome<E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let worker = Arc::new(worker);
        let mut running = JoinSet::new();
        loop {
            while let Some(res) = running.try_join_next() {
                self.reap(res);
            }
            // Wait for a free slot before taking a key, so keys wait in the
            // queue (where adds deduplicate) rather than in a worker's hand.
            if running.len() >= concurrency.get() {
                if let Some(res) = running.join_next().await {
                    self.reap(res);
                }
                continue;
            }
            let Some(lease) = self.get().await else {
                break;
            };
            let span = debug_span!("work", queue = %self.inner.name, key = ?lease.key);
            let worker = Arc::clone(&worker);
            running.spawn(
                async move {
                    let key = lease.key.clone();
                    // Calling the worker inside the future catches a panic
                    // while building it as well as while polling it.
                    let run = AssertUnwindSafe(async move { (*worker)(key).await });
                    match run.catch_unwind().await {
                        Ok(outcome) => lease.finish(outcome),
                        Err(panic) => {
                            let message = panic_message(&*panic);
                            error!(panic = %message, "worker panicked");
                            lease.finish(Outcome::Error(format!("worker panicked: {message}")));
                        }
                    }
                }
                .instrument(span),
            );
        }
        debug!(queue = %self.inner.name, in_flight = running.len(), "waiting for workers to finish");
        while let Some(res) = running.join_next().await {
            self.reap(res);
        }
    }

    fn reap(&self, res: Result<(), tokio::task::JoinError>) {
        // Worker panics are caught inside the task; this is the queue's own
        // bookkeeping failing, which must not go unnoticed.
        if let Err(err) = res {
            error!(queue = %self.inner.name, error = %err, "work task failed");
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

impl<K: Key> Inner<K> {
    fn check_open(&self, st: &State<K>) -> Result<(), QueueError> {
        if st.shut_down {
            Err(QueueError::ShutDown {
                queue: self.name.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Marks `key` as needing a run from `ready_at`; hands it to the ready
    /// list unless a worker holds it (then release does).
    fn enqueue(&self, st: &mut State<K>, key: K, ready_at: Instant) {
        if st.dirty.contains_key(&key) {
            return;
        }
        self.metrics.adds.inc();
        let held = st.processing.contains_key(&key);
        debug!(queue = %self.name, key = ?key, held, "key ready");
        st.dirty.insert(key.clone(), ready_at);
        if !held {
            st.ready.push_back(key);
            self.metrics.depth.set(st.ready.len() as i64);
            self.notify.notify_one();
        }
    }

    fn schedule(&self, st: &mut State<K>, key: K, delay: Duration, now: Instant) {
        if delay.is_zero() {
            st.cancel_timer(&key);
            self.enqueue(st, key, now);
            return;
        }
        // Already due (waiting, or to run again after its worker): sooner
        // than any delay.
        if st.dirty.contains_key(&key) {
            return;
        }
        let at = deadline_after(now, delay);
        if let Some(&(pending, _)) = st.delayed.get(&key) {
            if pending <= at {
                return;
            }
            st.cancel_timer(&key);
        }
        let slot = (at, st.next_timer);
        st.next_timer += 1;
        st.timers.insert(slot, key.clone());
        debug!(queue = %self.name, key = ?key, ?delay, "key delayed");
        st.delayed.insert(key, slot);
        // A getter may be asleep until a later deadline: have one look again.
        if st.timers.first_key_value().map(|(s, _)| *s) == Some(slot) {
            self.notify.notify_one();
        }
    }

    fn promote_due(&self, st: &mut State<K>, now: Instant) {
        while let Some(entry) = st.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), key) = entry.remove_entry();
            st.delayed.remove(&key);
            // Latency counts from the deadline, not from whenever a getter
            // came by to notice it.
            self.enqueue(st, key, at);
        }
    }

    /// A worker let go of `key`: a run that was asked for meanwhile starts.
    fn release(&self, key: &K) {
        let mut st = self.state.lock();
        if let Some(taken) = st.processing.remove(key) {
            self.metrics.work_duration.observe(
                Instant::now()
                    .saturating_duration_since(taken)
                    .as_secs_f64(),
            );
        }
        if !st.shut_down && st.dirty.contains_key(key) {
            st.ready.push_back(key.clone());
            self.metrics.depth.set(st.ready.len() as i64);
            self.notify.notify_one();
        }
    }
}

impl<K> State<K>
where
    K: Eq + Hash,
{
    fn cancel_timer(&mut self, key: &K) {
        if let Some(slot) = self.delayed.remove(key) {
            self.timers.remove(&slot);
        }
    }
}

/// A key handed to a worker. While it is held the key goes to no other
/// worker; dropping it (or [`finish`](Self::finish)) releases the key, so a
/// cancelled or panicking worker cannot wedge it.
#[must_use = "dropping a lease releases its key at once"]
pub struct Lease<K: Key> {
    queue: WorkQueue<K>,
    key: K,
}

impl<K: Key> Lease<K> {
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Applies the worker's outcome, then releases the key. After shutdown
    /// requeues are dropped.
    pub fn finish<E: Display>(self, outcome: Outcome<E>) {
        let q = &self.queue;
        let key = &self.key;
        match outcome {
            Outcome::Done => q.forget(key),
            Outcome::Requeue(after) => {
                q.forget(key);
                // Shut down: nothing more to do for this key.
                let _ = q.add_after(key.clone(), after);
            }
            Outcome::Error(err) => match q.add_rate_limited(key.clone()) {
                Ok(retry_in) => warn!(
                    queue = %q.name(), key = ?key, error = %err, ?retry_in,
                    requeues = q.num_requeues(key), "work failed, retrying"
                ),
                Err(_) => warn!(
                    queue = %q.name(), key = ?key, error = %err,
                    "work failed, queue shut down: not retrying"
                ),
            },
        }
    }
}

impl<K: Key> Drop for Lease<K> {
    fn drop(&mut self) {
        self.queue.inner.release(&self.key);
    }
}

impl<K: Key> Debug for Lease<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("queue", &self.queue.inner.name)
            .field("key", &self.key)
            .finish()
    }
}
