//! Queue behaviour on virtual time: every instant below is exact.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::time::{advance, sleep, timeout};

use super::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn queue<K: Key>() -> WorkQueue<K> {
    WorkQueue::new("test", QueueConfig::default(), &QueueMetrics::new()).unwrap()
}

fn workers(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Takes a key that is ready now, without letting time pass.
async fn try_get<K: Key>(q: &WorkQueue<K>) -> Option<Lease<K>> {
    timeout(Duration::ZERO, q.get()).await.ok().flatten()
}

async fn get_key<K: Key>(q: &WorkQueue<K>) -> K {
    q.get().await.expect("queue shut down").key().clone()
}

#[tokio::test(start_paused = true)]
async fn add_deduplicates_waiting_keys() {
    let q = queue();
    for k in ["a", "a", "b", "a", "b"] {
        q.add(k).unwrap();
    }
    assert_eq!(q.len(), 2);
    let a = try_get(&q).await.unwrap();
    let b = try_get(&q).await.unwrap();
    assert_eq!((a.key(), b.key()), (&"a", &"b"));
    assert!(try_get(&q).await.is_none());
    drop((a, b));
    // Nothing was asked for while they were held.
    assert!(q.is_empty());
    assert!(try_get(&q).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn add_while_held_runs_once_more_after_release() {
    let q = queue();
    q.add("a").unwrap();
    let lease = try_get(&q).await.unwrap();
    for _ in 0..3 {
        q.add("a").unwrap();
    }
    // Not handed to a second worker while the first holds it.
    assert_eq!(q.len(), 0);
    assert!(try_get(&q).await.is_none());
    lease.finish(Outcome::<String>::Done);
    assert_eq!(q.len(), 1);
    let again = try_get(&q).await.unwrap();
    assert_eq!(again.key(), &"a");
    drop(again);
    // Three adds while held made one more run, not three.
    assert!(try_get(&q).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropped_lease_releases_its_key() {
    let q = queue();
    q.add("a").unwrap();
    let lease = try_get(&q).await.unwrap();
    // A worker that is cancelled drops its lease without finishing.
    drop(lease);
    q.add("a").unwrap();
    assert_eq!(try_get(&q).await.unwrap().key(), &"a");
}

#[tokio::test(start_paused = true)]
async fn one_worker_per_key_under_concurrency() {
    let q = queue();
    let held: Arc<Mutex<HashMap<&str, usize>>> = Arc::default();
    let runs: Arc<Mutex<HashMap<&str, usize>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let high_water = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (held, runs, overlaps) = (held.clone(), runs.clone(), overlaps.clone());
        let (in_flight, high_water) = (in_flight.clone(), high_water.clone());
        move |k: &'static str| {
            let (held, runs, overlaps) = (held.clone(), runs.clone(), overlaps.clone());
            let (in_flight, high_water) = (in_flight.clone(), high_water.clone());
            async move {
                {
                    let mut held = held.lock();
                    let n = held.entry(k).or_default();
                    *n += 1;
                    if *n > 1 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                high_water.fetch_max(now, Ordering::SeqCst);
                sleep(10 * MS).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                *held.lock().get_mut(k).unwrap() -= 1;
                *runs.lock().entry(k).or_default() += 1;
                Outcome::<String>::Done
            }
        }
    };
    let driver = tokio::spawn({
        let q = q.clone();
        async move { q.run(workers(4), worker).await }
    });
    // An event storm on two keys: one add of each every millisecond.
    for _ in 0..100 {
        q.add("a").unwrap();
        q.add("b").unwrap();
        sleep(MS).await;
    }
    sleep(SEC).await;
    q.shutdown();
    driver.await.unwrap();

    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    // Four workers, but two keys: never more than two at once.
    assert_eq!(high_water.load(Ordering::SeqCst), 2);
    let runs = runs.lock();
    for k in ["a", "b"] {
        // 100 adds over 100 ms of 10 ms runs collapse into about 11 runs.
        let n = runs[k];
        assert!((10..=12).contains(&n), "{k} ran {n} times");
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_per_key_caps_and_resets_on_forget() {
    let q = queue();
    let mut want = 5 * MS;
    for i in 0..20 {
        let got = q.add_rate_limited("a").unwrap();
        assert_eq!(got, want.min(1000 * SEC), "failure {i}");
        want *= 2;
    }
    assert_eq!(q.num_requeues(&"a"), 20);
    // Per key: another key starts at the base.
    assert_eq!(q.add_rate_limited("b").unwrap(), 5 * MS);
    q.forget(&"a");
    assert_eq!(q.num_requeues(&"a"), 0);
    assert_eq!(q.add_rate_limited("a").unwrap(), 5 * MS);
    assert_eq!(q.add_rate_limited("a").unwrap(), 10 * MS);
    // Forgetting an unknown key is harmless.
    q.forget(&"never");
}

#[tokio::test(start_paused = true)]
async fn rate_limited_key_is_handed_out_after_its_delay() {
    let q = queue();
    let t0 = Instant::now();
    q.add_rate_limited("a").unwrap();
    advance(4 * MS).await;
    assert!(try_get(&q).await.is_none());
    assert_eq!(get_key(&q).await, "a");
    assert_eq!(t0.elapsed(), 5 * MS);
}

#[tokio::test(start_paused = true)]
async fn bucket_allows_burst_of_100_then_10_per_second() {
    let q: WorkQueue<u32> = queue();
    // Distinct keys, so each one's backoff is the 5 ms base.
    for k in 0..100 {
        assert_eq!(q.add_rate_limited(k).unwrap(), 5 * MS, "key {k}");
    }
    assert_eq!(q.add_rate_limited(100).unwrap(), 100 * MS);
    assert_eq!(q.add_rate_limited(101).unwrap(), 200 * MS);
    // One second refills ten tokens; two were borrowed already.
    advance(SEC).await;
    for k in 200..208 {
        assert_eq!(q.add_rate_limited(k).unwrap(), 5 * MS, "key {k}");
    }
    assert_eq!(q.add_rate_limited(208).unwrap(), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn delay_is_the_larger_of_backoff_and_bucket() {
    let config = QueueConfig {
        qps: 1.0,
        burst: 1,
        ..QueueConfig::default()
    };
    let q: WorkQueue<&str> = WorkQueue::new("test", config, &QueueMetrics::new()).unwrap();
    // Backoff wins while the bucket has a token …
    assert_eq!(q.add_rate_limited("a").unwrap(), 5 * MS);
    // … the bucket once it is empty, whatever the key's backoff.
    assert_eq!(q.add_rate_limited("b").unwrap(), SEC);
    assert_eq!(q.add_rate_limited("a").unwrap(), 2 * SEC);
    assert_eq!(q.num_requeues(&"a"), 2);

    let config = QueueConfig {
        base_delay: 10 * SEC,
        ..QueueConfig::default()
    };
    let q: WorkQueue<&str> = WorkQueue::new("test", config, &QueueMetrics::new()).unwrap();
    assert_eq!(q.add_rate_limited("a").unwrap(), 10 * SEC);
}

#[tokio::test(start_paused = true)]
async fn add_after_hands_out_at_deadlines_in_order() {
    let q = queue();
    let t0 = Instant::now();
    q.add_after("c", 3 * SEC).unwrap();
    q.add_after("a", SEC).unwrap();
    q.add_after("b", 2 * SEC).unwrap();
    q.add_after("d", 2 * SEC).unwrap();
    assert!(try_get(&q).await.is_none());
    advance(SEC - MS).await;
    assert!(try_get(&q).await.is_none());
    assert_eq!(q.len(), 0);
    // Equal deadlines keep insertion order.
    for (key, at) in [("a", SEC), ("b", 2 * SEC), ("d", 2 * SEC), ("c", 3 * SEC)] {
        assert_eq!(get_key(&q).await, key);
        assert_eq!(t0.elapsed(), at, "{key}");
    }
    advance(10 * SEC).await;
    assert!(try_get(&q).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn add_after_zero_is_an_add() {
    let q = queue();
    q.add_after("a", Duration::ZERO).unwrap();
    assert_eq!(try_get(&q).await.unwrap().key(), &"a");
}

#[tokio::test(start_paused = true)]
async fn earliest_deadline_wins_either_way() {
    let q = queue();
    let t0 = Instant::now();
    q.add_after("a", 5 * SEC).unwrap();
    q.add_after("a", SEC).unwrap();
    assert_eq!(get_key(&q).await, "a");
    assert_eq!(t0.elapsed(), SEC);
    // The later deadline was replaced, not kept as a second run.
    advance(10 * SEC).await;
    assert!(try_get(&q).await.is_none());

    let t1 = Instant::now();
    q.add_after("b", SEC).unwrap();
    q.add_after("b", 5 * SEC).unwrap();
    assert_eq!(get_key(&q).await, "b");
    assert_eq!(t1.elapsed(), SEC);
    advance(10 * SEC).await;
    assert!(try_get(&q).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn immediate_add_supersedes_a_pending_delay() {
    let q = queue();
    q.add_after("a", 5 * SEC).unwrap();
    q.add("a").unwrap();
    assert_eq!(try_get(&q).await.unwrap().key(), &"a");
    advance(10 * SEC).await;
    assert!(try_get(&q).await.is_none());

    // A delay on a key that is waiting already changes nothing.
    q.add("b").unwrap();
    q.add_after("b", SEC).unwrap();
    assert_eq!(try_get(&q).await.unwrap().key(), &"b");
    advance(10 * SEC).await;
    assert!(try_get(&q).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn deadline_passing_while_held_waits_for_release() {
    let q = queue();
    q.add("a").unwrap();
    let lease = try_get(&q).await.unwrap();
    q.add_after("a", SEC).unwrap();
    advance(2 * SEC).await;
    assert_eq!(q.len(), 0);
    assert!(try_get(&q).await.is_none());
    drop(lease);
    assert_eq!(try_get(&q).await.unwrap().key(), &"a");

    // An add while held cancels the held key's pending delay.
    q.add("x").unwrap();
    let lease = try_get(&q).await.unwrap();
    q.add_after("x", 5 * SEC).unwrap();
    q.add("x").unwrap();
    drop(lease);
    assert_eq!(try_get(&q).await.unwrap().key(), &"x");
    advance(10 * SEC).await;
    assert!(try_get(&q).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn every_waiting_getter_is_woken() {
    let q = queue();
    let getters: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { get_key(&q).await })
        })
        .collect();
    // Let them all park, then add while they wait.
    tokio::task::yield_now().await;
    for k in ["a", "b", "c"] {
        q.add(k).unwrap();
    }
    let mut got = Vec::new();
    for g in getters {
        got.push(g.await.unwrap());
    }
    got.sort();
    assert_eq!(got, ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn sleeping_getter_wakes_for_an_earlier_deadline() {
    let q = queue();
    let t0 = Instant::now();
    q.add_after("late", 10 * SEC).unwrap();
    let getter = tokio::spawn({
        let q = q.clone();
        async move { get_key(&q).await }
    });
    tokio::task::yield_now().await;
    q.add_after("early", SEC).unwrap();
    assert_eq!(getter.await.unwrap(), "early");
    assert_eq!(t0.elapsed(), SEC);
}

#[tokio::test(start_paused = true)]
async fn run_never_exceeds_concurrency() {
    let q: WorkQueue<u32> = queue();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let high_water = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let last_done = Arc::new(Mutex::new(Instant::now()));
    let worker = {
        let (in_flight, high_water) = (in_flight.clone(), high_water.clone());
        let (done, last_done) = (done.clone(), last_done.clone());
        move |_k: u32| {
            let (in_flight, high_water) = (in_flight.clone(), high_water.clone());
            let (done, last_done) = (done.clone(), last_done.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                high_water.fetch_max(now, Ordering::SeqCst);
                sleep(10 * MS).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                *last_done.lock() = Instant::now();
                Outcome::<String>::Done
            }
        }
    };
    for k in 0..20 {
        q.add(k).unwrap();
    }
    let t0 = Instant::now();
    let driver = tokio::spawn({
        let q = q.clone();
        async move { q.run(workers(3), worker).await }
    });
    sleep(SEC).await;
    assert_eq!(done.load(Ordering::SeqCst), 20);
    assert_eq!(high_water.load(Ordering::SeqCst), 3);
    // 20 keys, 3 at a time, 10 ms each: a freed slot is refilled at once,
    // so all are done in 7 rounds.
    assert_eq!(*last_done.lock() - t0, 70 * MS);
    q.shutdown();
    driver.await.unwrap();
}

/// Calls of a worker, by key, as offsets from the test's start.
type Calls = Arc<Mutex<HashMap<&'static str, Vec<Duration>>>>;

#[tokio::test(start_paused = true)]
async fn run_applies_outcomes() {
    let q = queue();
    let t0 = Instant::now();
    let calls: Calls = Arc::default();
    let worker = {
        let calls = calls.clone();
        move |k: &'static str| {
            let n = {
                let mut calls = calls.lock();
                let c = calls.entry(k).or_default();
                c.push(t0.elapsed());
                c.len()
            };
            async move {
                match (k, n) {
                    ("flaky", 1..=3) => Outcome::Error(format!("attempt {n} failed")),
                    ("poll", 1) => Outcome::Requeue(30 * SEC),
                    _ => Outcome::Done,
                }
            }
        }
    };
    q.add("flaky").unwrap();
    q.add("poll").unwrap();
    let driver = tokio::spawn({
        let q = q.clone();
        async move { q.run(workers(2), worker).await }
    });
    sleep(60 * SEC).await;
    {
        let calls = calls.lock();
        // 5 ms, 10 ms, 20 ms apart: the backoff, then success.
        assert_eq!(calls["flaky"], [Duration::ZERO, 5 * MS, 15 * MS, 35 * MS]);
        assert_eq!(calls["poll"], [Duration::ZERO, 30 * SEC]);
    }
    // Success forgot the failures.
    assert_eq!(q.num_requeues(&"flaky"), 0);
    q.shutdown();
    driver.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn worker_panic_is_retried_with_backoff() {
    let q = queue();
    let t0 = Instant::now();
    let calls: Calls = Arc::default();
    let worker = {
        let calls = calls.clone();
        move |k: &'static str| {
            let n = {
                let mut calls = calls.lock();
                let c = calls.entry(k).or_default();
                c.push(t0.elapsed());
                c.len()
            };
            async move {
                if n == 1 {
                    panic!("plugin host bug");
                }
                Outcome::<String>::Done
            }
        }
    };
    q.add("a").unwrap();
    let driver = tokio::spawn({
        let q = q.clone();
        async move { q.run(workers(1), worker).await }
    });
    sleep(SEC).await;
    assert_eq!(calls.lock()["a"], [Duration::ZERO, 5 * MS]);
    assert_eq!(q.num_requeues(&"a"), 0);
    // The driver survived the panic and still takes work.
    q.add("b").unwrap();
    sleep(MS).await;
    assert_eq!(calls.lock()["b"].len(), 1);
    q.shutdown();
    driver.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_finish_and_starts_nothing_new() {
    let q = queue();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (started, finished) = (started.clone(), finished.clone());
        move |_k: &'static str| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                sleep(SEC).await;
                finished.fetch_add(1, Ordering::SeqCst);
                // Its retry must be dropped, not scheduled on a closed queue.
                Outcome::Error("failed during shutdown")
            }
        }
    };
    for k in ["a", "b", "c", "d", "e"] {
        q.add(k).unwrap();
    }
    let t0 = Instant::now();
    let driver = tokio::spawn({
        let q = q.clone();
        async move { q.run(workers(2), worker).await }
    });
    sleep(100 * MS).await;
    q.shutdown();
    q.shutdown(); // idempotent
    assert_eq!(started.load(Ordering::SeqCst), 2);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    driver.await.unwrap();
    // run returned only once both in-flight workers had finished.
    assert_eq!(t0.elapsed(), SEC);
    assert_eq!(finished.load(Ordering::SeqCst), 2);
    assert_eq!(started.load(Ordering::SeqCst), 2);

    let shut = QueueError::ShutDown {
        queue: "test".into(),
    };
    assert!(q.is_shut_down());
    assert_eq!(q.add("f"), Err(shut.clone()));
    assert_eq!(q.add_after("f", SEC), Err(shut.clone()));
    assert_eq!(q.add_rate_limited("f"), Err(shut.clone()));
    assert_eq!(shut.to_string(), "work queue test is shut down");
    assert!(q.get().await.is_none());
    assert_eq!(q.len(), 0);
    advance(2000 * SEC).await;
    assert_eq!(q.len(), 0);
    // A driver started on a shut-down queue returns at once.
    q.run(workers(1), |_k| async { Outcome::<String>::Done })
        .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_waiting_getters() {
    let q = queue();
    q.add_after("later", 10 * SEC).unwrap();
    let getters: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.get().await.map(|l| *l.key()) })
        })
        .collect();
    tokio::task::yield_now().await;
    let t0 = Instant::now();
    q.shutdown();
    for g in getters {
        assert_eq!(g.await.unwrap(), None);
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn lease_released_after_shutdown_is_not_requeued() {
    let q = queue();
    q.add("a").unwrap();
    let lease = try_get(&q).await.unwrap();
    q.add("a").unwrap(); // dirty while held
    q.shutdown();
    lease.finish(Outcome::<String>::Requeue(SEC));
    assert_eq!(q.len(), 0);
    assert!(q.get().await.is_none());
}

#[test]
fn invalid_config_is_rejected() {
    for qps in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY, 1e-320] {
        let config = QueueConfig {
            qps,
            ..QueueConfig::default()
        };
        let err = WorkQueue::<&str>::new("test", config, &QueueMetrics::new()).unwrap_err();
        assert!(
            matches!(err, QueueError::InvalidConfig(_)),
            "qps {qps}: {err:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn infinite_qps_disables_the_bucket() {
    let config = QueueConfig {
        qps: f64::INFINITY,
        ..QueueConfig::default()
    };
    let q: WorkQueue<u32> = WorkQueue::new("test", config, &QueueMetrics::new()).unwrap();
    for k in 0..1000 {
        assert_eq!(q.add_rate_limited(k).unwrap(), 5 * MS);
    }
}

#[tokio::test(start_paused = true)]
async fn huge_delays_do_not_overflow_the_clock() {
    let q = queue();
    q.add_after("a", Duration::MAX).unwrap();
    advance(1000 * SEC).await;
    assert!(try_get(&q).await.is_none());
    // An earlier deadline still wins over the far one.
    q.add_after("a", SEC).unwrap();
    assert_eq!(get_key(&q).await, "a");
}

#[tokio::test(start_paused = true)]
async fn owner_changes_enqueue_owners() {
    let q = queue();
    let mut owners: Owners<&str> = Owners::new();
    for owner in owners.update("deploy/web", ["app/x"]) {
        q.add(owner).unwrap();
    }
    assert_eq!(try_get(&q).await.unwrap().key(), &"app/x");
    // Re-parented: both the old and the new owner reconcile.
    for owner in owners.update("deploy/web", ["app/y"]) {
        q.add(owner).unwrap();
    }
    let mut got = vec![get_key(&q).await, get_key(&q).await];
    got.sort();
    assert_eq!(got, ["app/x", "app/y"]);
    for owner in owners.remove(&"deploy/web") {
        q.add(owner).unwrap();
    }
    assert_eq!(get_key(&q).await, "app/y");
    assert!(try_get(&q).await.is_none());
}

fn metric_lines(registry: &Registry) -> Vec<String> {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn assert_has(lines: &[String], want: &[&str]) {
    for w in want {
        assert!(
            lines.iter().any(|l| l == w),
            "missing {w:?} in\n{}",
            lines.join("\n")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_after_a_scenario() {
    let metrics = QueueMetrics::new();
    let mut registry = Registry::with_prefix("isobar");
    metrics.register(&mut registry);
    let q = WorkQueue::new("test", QueueConfig::default(), &metrics).unwrap();
    let other = WorkQueue::new("other", QueueConfig::default(), &metrics).unwrap();

    q.add("a").unwrap();
    q.add("a").unwrap(); // deduplicated: not an add
    q.add("b").unwrap();
    other.add("x").unwrap();
    advance(2 * SEC).await;
    let lease = try_get(&q).await.unwrap(); // waited 2 s
    advance(3 * SEC).await;
    lease.finish(Outcome::Error("boom")); // worked 3 s, retry in 5 ms

    let lines = metric_lines(&registry);
    assert_has(
        &lines,
        &[
            "# TYPE isobar_queue_depth gauge",
            r#"isobar_queue_depth{queue="test"} 1"#,
            r#"isobar_queue_depth{queue="other"} 1"#,
            "# TYPE isobar_queue_adds counter",
            r#"isobar_queue_adds_total{queue="test"} 2"#,
            r#"isobar_queue_adds_total{queue="other"} 1"#,
            r#"isobar_queue_retries_total{queue="test"} 1"#,
            r#"isobar_queue_retries_total{queue="other"} 0"#,
            "# TYPE isobar_queue_latency_seconds histogram",
            "# UNIT isobar_queue_latency_seconds seconds",
            r#"isobar_queue_latency_seconds_sum{queue="test"} 2.0"#,
            r#"isobar_queue_latency_seconds_count{queue="test"} 1"#,
            r#"isobar_queue_latency_seconds_bucket{le="1.6384",queue="test"} 0"#,
            r#"isobar_queue_latency_seconds_bucket{le="3.2768",queue="test"} 1"#,
            r#"isobar_queue_work_duration_seconds_sum{queue="test"} 3.0"#,
            r#"isobar_queue_work_duration_seconds_count{queue="test"} 1"#,
            r#"isobar_queue_latency_seconds_count{queue="other"} 0"#,
        ],
    );
    // One family per metric, however many queues.
    let types = lines
        .iter()
        .filter(|l| l.starts_with("# TYPE isobar_queue_depth "))
        .count();
    assert_eq!(types, 1);

    // The retry comes due: an add, and the depth grows.
    advance(5 * MS).await;
    assert_eq!(q.len(), 2);
    let lines = metric_lines(&registry);
    assert_has(
        &lines,
        &[
            r#"isobar_queue_adds_total{queue="test"} 3"#,
            r#"isobar_queue_depth{queue="test"} 2"#,
        ],
    );
    // b waited 5.005 s; the retried a, taken at once, waited 0.
    let b = try_get(&q).await.unwrap();
    let a = try_get(&q).await.unwrap();
    assert_eq!((b.key(), a.key()), (&"b", &"a"));
    drop((a, b));
    let lines = metric_lines(&registry);
    assert_has(
        &lines,
        &[
            r#"isobar_queue_latency_seconds_count{queue="test"} 3"#,
            r#"isobar_queue_latency_seconds_sum{queue="test"} 7.005"#,
            r#"isobar_queue_work_duration_seconds_count{queue="test"} 3"#,
            r#"isobar_queue_depth{queue="test"} 0"#,
        ],
    );

    // Shutdown drops what was waiting, and the gauge says so.
    q.add("c").unwrap();
    q.shutdown();
    assert_has(
        &metric_lines(&registry),
        &[r#"isobar_queue_depth{queue="test"} 0"#],
    );
}

/// Real threads, no virtual time and no sleeps: the invariants must hold
/// under any interleaving the scheduler picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_on_real_threads() {
    const KEYS: u32 = 16;
    const LIMIT: usize = 4;
    let q: WorkQueue<u32> = queue();
    let held: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let high_water = Arc::new(AtomicUsize::new(0));
    // Keys that started a run after the last round of adds.
    let fed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after_feed: Arc<Mutex<std::collections::HashSet<u32>>> = Arc::default();
    let worker = {
        let (held, overlaps) = (held.clone(), overlaps.clone());
        let (in_flight, high_water) = (in_flight.clone(), high_water.clone());
        let (fed, after_feed) = (fed.clone(), after_feed.clone());
        move |k: u32| {
            let (held, overlaps) = (held.clone(), overlaps.clone());
            let (in_flight, high_water) = (in_flight.clone(), high_water.clone());
            let (fed, after_feed) = (fed.clone(), after_feed.clone());
            async move {
                if fed.load(Ordering::SeqCst) {
                    after_feed.lock().insert(k);
                }
                {
                    let mut held = held.lock();
                    let n = held.entry(k).or_default();
                    *n += 1;
                    if *n > 1 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                high_water.fetch_max(now, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                *held.lock().get_mut(&k).unwrap() -= 1;
                // Some failures, retried after the (real) 5 ms+ backoff.
                if k.is_multiple_of(5) && now.is_multiple_of(2) {
                    Outcome::Error("flaky")
                } else {
                    Outcome::Done
                }
            }
        }
    };
    let driver = tokio::spawn({
        let q = q.clone();
        async move { q.run(workers(LIMIT), worker).await }
    });
    let feeders: Vec<_> = (0..2)
        .map(|f| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..2000u32 {
                    q.add((i * 7 + f) % KEYS).unwrap();
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for f in feeders {
        f.await.unwrap();
    }
    fed.store(true, Ordering::SeqCst);
    for k in 0..KEYS {
        q.add(k).unwrap();
    }
    // Every key added after the flag runs again; the timeout only guards
    // against a hang.
    timeout(Duration::from_secs(30), async {
        while after_feed.lock().len() < KEYS as usize {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every key ran after its last add");
    q.shutdown();
    driver.await.unwrap();
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert!(high_water.load(Ordering::SeqCst) <= LIMIT);
    assert_eq!(in_flight.load(Ordering::SeqCst), 0);
}
