//! What every ADS stream shares: the snapshot feed, per-snapshot digests
//! computed once for all streams, the event channel, and the task that runs
//! one stream (requests and snapshots in, responses out).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tonic::{Code, Status};
use tracing::{debug, warn};

use super::event::{Protocol, XdsEvent};
use super::limits::{MAX_NACK_MESSAGE, MAX_NODE_ID, MAX_TYPE_URL, XdsLimits};
use super::snapshot::{Resource, Snapshot, TypeChanges, type_url};
use super::staging::{Client, Staging};
use crate::store::ObjectKey;

/// Responses a stream may have queued before it stops reading requests.
const STREAM_QUEUE: usize = 16;

/// Unacknowledged delta responses remembered per type (for NACK reports).
pub(crate) const MAX_PENDING: usize = 32;

/// A snapshot as the streams see it: its version as text and, computed once
/// for every stream, what changed since the snapshot prepared before it, so
/// a stream that was up to date works in O(changes), not O(resources).
pub(crate) struct Prepared {
    pub snapshot: Arc<Snapshot>,
    pub version: Arc<str>,
    /// The snapshot `changes` start from (the previously prepared one).
    base: Option<Arc<Snapshot>>,
    changes: BTreeMap<String, Arc<TypeChanges>>,
}

impl Prepared {
    /// A stage of one stream's way to a snapshot (see `staging`): its own,
    /// so its changes are computed when asked.
    pub fn staged(snapshot: Snapshot) -> Self {
        Prepared {
            version: snapshot.version.to_string().into(),
            snapshot: Arc::new(snapshot),
            base: None,
            changes: BTreeMap::new(),
        }
    }

    fn new(snapshot: Arc<Snapshot>, previous: Option<&Prepared>) -> Self {
        let base = previous.map(|p| p.snapshot.clone());
        let changes = base
            .as_ref()
            .map(|b| {
                b.changes_to(&snapshot)
                    .into_iter()
                    .map(|(t, c)| (t, Arc::new(c)))
                    .collect()
            })
            .unwrap_or_default();
        Prepared {
            version: snapshot.version.to_string().into(),
            snapshot,
            base,
            changes,
        }
    }

    /// What changed in `type_url` from `from` (a snapshot a stream last
    /// brought its client to) to this one: shared when `from` is the
    /// previous snapshot, else computed (cheap within one pipeline's
    /// lineage, since the maps share structure).
    pub fn changes_since(&self, from: &Arc<Snapshot>, type_url: &str) -> Arc<TypeChanges> {
        static NONE: std::sync::LazyLock<Arc<TypeChanges>> = std::sync::LazyLock::new(Arc::default);
        if Arc::ptr_eq(from, &self.snapshot) {
            return NONE.clone();
        }
        if self.base.as_ref().is_some_and(|b| Arc::ptr_eq(b, from)) {
            return self
                .changes
                .get(type_url)
                .cloned()
                .unwrap_or_else(|| NONE.clone());
        }
        match (from.of_type(type_url), self.snapshot.of_type(type_url)) {
            (Some(a), Some(b)) if a.ptr_eq(b) => NONE.clone(),
            (a, b) => Arc::new(TypeChanges::between(a, b)),
        }
    }
}

pub(crate) struct Shared {
    pub limits: XdsLimits,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub events: Option<mpsc::Sender<XdsEvent>>,
    pub dropped_events: AtomicU64,
    pub next_stream: AtomicU64,
    pub active_streams: AtomicUsize,
    pub shutdown: watch::Sender<bool>,
    prepared: Mutex<Option<Arc<Prepared>>>,
}

impl Shared {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        events: Option<mpsc::Sender<XdsEvent>>,
        limits: XdsLimits,
    ) -> Self {
        Shared {
            limits,
            snapshots,
            events,
            dropped_events: AtomicU64::new(0),
            next_stream: AtomicU64::new(1),
            active_streams: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
            prepared: Mutex::new(None),
        }
    }

    /// Never blocks the serving path: when the host does not keep up the
    /// event is counted and dropped. Routine events (pushes, ACKs) give way
    /// first, keeping the last quarter of the queue for NACKs and stream
    /// opens and closes.
    pub fn emit(&self, event: XdsEvent) {
        let Some(tx) = &self.events else {
            return;
        };
        let routine = matches!(event, XdsEvent::Pushed(_) | XdsEvent::Ack(_));
        let full = if routine && tx.capacity() < tx.max_capacity() / 4 {
            true
        } else {
            matches!(tx.try_send(event), Err(mpsc::error::TrySendError::Full(_)))
        };
        if full {
            let dropped = self.dropped_events.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(dropped, "xDS event channel full, events dropped");
            }
        }
    }

    /// The prepared form of `snapshot`, built by the first stream that needs
    /// it and shared by all the others.
    pub fn prepare(&self, snapshot: Arc<Snapshot>) -> Arc<Prepared> {
        let mut cached = self.prepared.lock();
        if let Some(p) = cached.as_ref()
            && Arc::ptr_eq(&p.snapshot, &snapshot)
        {
            return p.clone();
        }
        let p = Arc::new(Prepared::new(snapshot, cached.as_deref()));
        *cached = Some(p.clone());
        p
    }
}

/// Per-stream identity and bookkeeping common to both protocols.
pub(crate) struct StreamCtx {
    pub shared: Arc<Shared>,
    pub id: u64,
    pub protocol: Protocol,
    node: Option<String>,
    nonces: u64,
}

impl StreamCtx {
    fn new(shared: Arc<Shared>, protocol: Protocol) -> Self {
        let id = shared.next_stream.fetch_add(1, Ordering::Relaxed);
        shared.active_streams.fetch_add(1, Ordering::Relaxed);
        StreamCtx {
            shared,
            id,
            protocol,
            node: None,
            nonces: 0,
        }
    }

    /// The node id (known from the first request on).
    pub fn node(&self) -> &str {
        self.node.as_deref().unwrap_or_default()
    }

    fn observe(&mut self, node: Option<&Node>) {
        if self.node.is_none() {
            // Client-chosen: bounded before it reaches logs and labels.
            let id = node
                .map(|n| super::truncate(&n.id, MAX_NODE_ID))
                .unwrap_or_default();
            debug!(stream = self.id, node = %id, protocol = self.protocol.as_str(), "xDS stream opened");
            self.shared.emit(XdsEvent::StreamOpened {
                stream: self.id,
                node: id.clone(),
                protocol: self.protocol,
            });
            self.node = Some(id);
        }
    }

    /// A nonce unique on this stream.
    pub fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    pub fn emit(&self, event: XdsEvent) {
        self.shared.emit(event)
    }

    pub fn limits(&self) -> &XdsLimits {
        &self.shared.limits
    }

    /// Refuses a type URL past the stream's limits: too long, or one more
    /// type than a stream may subscribe to (`known` types so far).
    pub fn check_type(&self, type_url: &str, known: usize, new: bool) -> Result<(), Status> {
        if type_url.len() > MAX_TYPE_URL {
            return Err(Status::invalid_argument(format!(
                "type_url is {} bytes; at most {MAX_TYPE_URL}",
                type_url.len()
            )));
        }
        if new && known >= self.limits().max_types_per_stream {
            return Err(Status::resource_exhausted(format!(
                "a stream may subscribe to at most {} type URLs",
                self.limits().max_types_per_stream
            )));
        }
        Ok(())
    }

    /// Refuses a subscription of more names than a type may hold.
    pub fn check_names(&self, type_url: &str, names: usize) -> Result<(), Status> {
        let max = self.limits().max_names_per_type;
        if names > max {
            return Err(Status::resource_exhausted(format!(
                "{names} resource names for {}; a subscription may hold at most {max}",
                super::truncate(type_url, MAX_TYPE_URL)
            )));
        }
        Ok(())
    }
}

/// A NACK's message as the host keeps it: bounded (a client chooses it).
pub(crate) fn nack_message(message: String) -> String {
    if message.len() <= MAX_NACK_MESSAGE {
        message
    } else {
        super::truncate(&message, MAX_NACK_MESSAGE)
    }
}

impl Drop for StreamCtx {
    fn drop(&mut self) {
        self.shared.active_streams.fetch_sub(1, Ordering::Relaxed);
        if let Some(node) = self.node.take() {
            self.shared.emit(XdsEvent::StreamClosed {
                stream: self.id,
                node,
                protocol: self.protocol,
            });
        }
    }
}

/// One protocol's per-stream state machine. Synchronous: it returns the
/// responses to write, in order; the driver writes them.
pub(crate) trait Handler: Client + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: Protocol;

    fn node(request: &Self::Request) -> Option<&Node>;

    /// A request arrived; `current` is the latest ready snapshot, if any.
    /// An error ends the stream with that status (a request past the
    /// stream's limits).
    fn on_request(
        &mut self,
        ctx: &mut StreamCtx,
        current: Option<&Arc<Prepared>>,
        request: Self::Request,
    ) -> Result<Vec<Self::Response>, Status>;

    /// A new snapshot is ready. Responses must come in push order.
    fn on_snapshot(&mut self, ctx: &mut StreamCtx, current: &Arc<Prepared>) -> Vec<Self::Response>;
}

/// Starts the task that serves one stream and returns its response queue.
pub(crate) fn spawn<H, S>(
    shared: Arc<Shared>,
    handler: H,
    requests: S,
) -> mpsc::Receiver<Result<H::Response, Status>>
where
    H: Handler,
    S: Stream<Item = Result<H::Request, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(drive(shared, handler, requests, tx));
    rx
}

enum End {
    ClientClosed,
    ClientGone,
    /// The request stream failed: malformed, too large, or reset.
    RequestError(Status),
    /// A request went past the stream's limits.
    Refused(Status),
    Shutdown,
}

async fn drive<H, S>(
    shared: Arc<Shared>,
    mut handler: H,
    requests: S,
    tx: mpsc::Sender<Result<H::Response, Status>>,
) where
    H: Handler,
    S: Stream<Item = Result<H::Request, Status>> + Send + 'static,
{
    let mut ctx = StreamCtx::new(shared.clone(), H::PROTOCOL);
    let mut snapshots = shared.snapshots.clone();
    let mut shutdown = shared.shutdown.subscribe();
    let mut staging = Staging::default();
    if let Some(p) = ready(&shared, snapshots.borrow_and_update().clone()) {
        staging.retarget(p, &handler, Instant::now(), ctx.id);
    }
    let mut watching = true;
    let mut requests = std::pin::pin!(requests);

    let end = 'stream: loop {
        if *shutdown.borrow_and_update() {
            break End::Shutdown;
        }
        let out = tokio::select! {
            biased;
            _ = shutdown.changed() => continue,
            _ = tx.closed() => break End::ClientGone,
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    ctx.observe(H::node(&request));
                    match handler.on_request(&mut ctx, staging.delivered(), request) {
                        Ok(mut out) => {
                            // An answer may end a stage's hold.
                            if let Some(next) = staging.step(&handler, Instant::now(), ctx.id) {
                                out.extend(handler.on_snapshot(&mut ctx, &next));
                            }
                            out
                        }
                        Err(status) => break End::Refused(status),
                    }
                }
                Some(Err(status)) => break End::RequestError(status),
                None => break End::ClientClosed,
            },
            _ = sleep_until(staging.deadline().unwrap_or_else(Instant::now)), if staging.deadline().is_some() => {
                match staging.step(&handler, Instant::now(), ctx.id) {
                    Some(next) => handler.on_snapshot(&mut ctx, &next),
                    None => continue,
                }
            }
            changed = snapshots.changed(), if watching => match changed {
                Ok(()) => {
                    let snapshot = snapshots.borrow_and_update().clone();
                    if staging.is_target(&snapshot) {
                        continue;
                    }
                    let Some(p) = ready(&shared, snapshot) else {
                        continue;
                    };
                    match staging.retarget(p, &handler, Instant::now(), ctx.id) {
                        Some(next) => handler.on_snapshot(&mut ctx, &next),
                        None => continue,
                    }
                }
                // The host dropped its sender: keep serving the last snapshot.
                Err(_) => {
                    watching = false;
                    continue;
                }
            },
        };
        for response in out {
            if tx.send(Ok(response)).await.is_err() {
                break 'stream End::ClientGone;
            }
        }
    };

    let node = ctx.node().to_string();
    match end {
        End::ClientClosed => debug!(stream = ctx.id, node = %node, "xDS client closed its stream"),
        End::ClientGone => debug!(stream = ctx.id, node = %node, "xDS client went away"),
        End::RequestError(status) => {
            let status = request_error(status);
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted
            ) {
                warn!(stream = ctx.id, node = %node, code = ?status.code(), error = %status.message(), "xDS stream ended on a bad request")
            } else {
                debug!(stream = ctx.id, node = %node, code = ?status.code(), error = %status.message(), "xDS client disconnected")
            }
            // The client learns why (a malformed request is not a clean
            // end, `grpc-status: 0`); a client already gone never reads it.
            let _ = tx.try_send(Err(status));
        }
        End::Refused(status) => {
            warn!(stream = ctx.id, node = %node, code = ?status.code(), error = %status.message(), "xDS stream ended: request past the stream's limits");
            let _ = tx.try_send(Err(status));
        }
        End::Shutdown => {
            debug!(stream = ctx.id, node = %node, "xDS stream ended by server shutdown");
            let _ = tx.try_send(Err(Status::unavailable("xDS server shutting down")));
        }
    }
}

/// The status a failed request stream ends with: a request that does not
/// decode is the client's error (`INVALID_ARGUMENT`), one over the size
/// limit `RESOURCE_EXHAUSTED`, as gRPC says of messages larger than allowed.
fn request_error(status: Status) -> Status {
    match status.code() {
        Code::Internal => Status::invalid_argument(format!(
            "malformed request: {}",
            super::truncate(status.message(), 512)
        )),
        Code::OutOfRange => Status::resource_exhausted(status.message().to_string()),
        _ => status,
    }
}

/// Version 0 (`Snapshot::default()`) means nothing has been built yet:
/// nothing is served until the first real snapshot, so a restarting server
/// never tells data planes to delete their configuration.
fn ready(shared: &Shared, snapshot: Arc<Snapshot>) -> Option<Arc<Prepared>> {
    (snapshot.version > 0).then(|| shared.prepare(snapshot))
}

/// Listener and Cluster: an initial request without names means "all".
pub(crate) fn legacy_wildcard(type_url: &str) -> bool {
    type_url == type_url::LISTENER || type_url == type_url::CLUSTER
}

/// Types whose SotW responses must carry every subscribed resource (a
/// resource left out is deleted). The spec says so of Listener and Cluster;
/// for the others a response may carry only what changed. Types the host
/// does not know (raw resources) are sent whole, to be safe.
pub(crate) fn full_state(type_url: &str) -> bool {
    !matches!(
        type_url,
        type_url::ROUTE | type_url::ENDPOINT | type_url::SECRET
    )
}

/// Sort key giving make-before-break order; types outside PUSH_ORDER (raw
/// resources) go last, by name.
pub(crate) fn push_rank(type_url: &str) -> (usize, &str) {
    let rank = type_url::PUSH_ORDER
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(type_url::PUSH_ORDER.len());
    (rank, type_url)
}

/// Which of the rejected resources a NACK is about, and the objects behind
/// them: the resources whose name the error message mentions, or all of
/// them when it mentions none.
///
/// One pass over the message for all names at once (Aho-Corasick): linear
/// in the message and the names, where a search per name was their product.
pub(crate) fn nack_subjects<'a>(
    message: &str,
    rejected: impl Iterator<Item = &'a Arc<Resource>>,
) -> (Vec<String>, Vec<ObjectKey>) {
    let rejected: Vec<&Arc<Resource>> = rejected.collect();
    let mentioned = mentioned(message, rejected.iter().map(|r| r.name.as_str()));
    let chosen: Vec<&Arc<Resource>> = if mentioned.is_empty() {
        rejected
    } else {
        rejected
            .iter()
            .enumerate()
            .filter(|(i, _)| mentioned.contains(i))
            .map(|(_, r)| *r)
            .collect()
    };
    let names = chosen.iter().map(|r| r.name.clone()).collect();
    let mut sources: Vec<ObjectKey> = chosen
        .iter()
        .flat_map(|r| r.sources.iter().cloned())
        .collect();
    sources.sort();
    sources.dedup();
    (names, sources)
}

/// The indexes of the `names` that occur in `message` as whole tokens.
fn mentioned<'a>(message: &str, names: impl Iterator<Item = &'a str>) -> HashSet<usize> {
    let names: Vec<&str> = names.collect();
    let mut found = HashSet::new();
    // Empty names match everywhere and mean nothing.
    let patterns: Vec<(usize, &str)> = names
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
        .collect();
    if patterns.is_empty() {
        return found;
    }
    let Ok(automaton) = aho_corasick::AhoCorasick::new(patterns.iter().map(|(_, n)| n)) else {
        return found;
    };
    let is_name_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    for m in automaton.find_overlapping_iter(message) {
        let before = message[..m.start()].chars().next_back();
        let after = message[m.end()..].chars().next();
        if !before.is_some_and(is_name_char) && !after.is_some_and(is_name_char) {
            found.insert(patterns[m.pattern().as_usize()].0);
        }
    }
    found
}

/// Whether `name` occurs in `message` as a whole token.
#[cfg(test)]
fn mentions(message: &str, name: &str) -> bool {
    !mentioned(message, std::iter::once(name)).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_whole_names_only() {
        assert!(mentions(
            "Error adding/updating listener(s) web: cannot bind",
            "web"
        ));
        assert!(mentions(
            "Unknown cluster 'default/shop:80'",
            "default/shop:80"
        ));
        assert!(!mentions(
            "Error adding/updating listener(s) web2: x",
            "web"
        ));
        assert!(!mentions("cluster web.internal rejected", "web"));
        assert!(!mentions("anything", ""));
    }

    fn snapshot(version: u64, endpoints: &[(&str, &'static [u8])]) -> Arc<Snapshot> {
        let mut s = Snapshot {
            version,
            ..Default::default()
        };
        for (name, body) in endpoints {
            s.resources
                .entry(type_url::ENDPOINT.to_string())
                .or_default()
                .insert(
                    name.to_string(),
                    Arc::new(Resource::new(
                        type_url::ENDPOINT,
                        name.to_string(),
                        bytes::Bytes::from_static(body),
                        vec![],
                    )),
                );
        }
        Arc::new(s)
    }

    #[test]
    fn changes_since_a_snapshot_missed_in_between() {
        let shared = Shared::new(
            tokio::sync::watch::channel(Arc::default()).1,
            None,
            XdsLimits::default(),
        );
        let s1 = snapshot(1, &[("a", b"1"), ("b", b"1"), ("c", b"1")]);
        let s2 = snapshot(2, &[("a", b"2"), ("b", b"1"), ("c", b"1")]);
        let s3 = snapshot(3, &[("a", b"2"), ("b", b"2")]);
        let p1 = shared.prepare(s1.clone());
        let p2 = shared.prepare(s2.clone());
        let p3 = shared.prepare(s3.clone());
        assert!(
            Arc::ptr_eq(&p3, &shared.prepare(s3.clone())),
            "prepared once"
        );
        let names = |c: &TypeChanges| {
            (
                c.updated.iter().cloned().collect::<Vec<_>>(),
                c.removed.iter().cloned().collect::<Vec<_>>(),
            )
        };
        // From the previous snapshot: the shared change set.
        let from2 = p3.changes_since(&s2, type_url::ENDPOINT);
        assert!(Arc::ptr_eq(
            &from2,
            &p3.changes_since(&s2, type_url::ENDPOINT)
        ));
        assert_eq!(names(&from2), (vec!["b".into()], vec!["c".into()]));
        // From further back (the stream missed 2): everything since 1.
        assert_eq!(
            names(&p3.changes_since(&s1, type_url::ENDPOINT)),
            (vec!["a".into(), "b".into()], vec!["c".into()])
        );
        assert_eq!(
            names(&p2.changes_since(&s1, type_url::ENDPOINT)).0,
            vec!["a".to_string()]
        );
        assert!(p1.changes_since(&s1, type_url::ENDPOINT).is_empty());
        assert!(p3.changes_since(&s2, type_url::CLUSTER).is_empty());
    }

    #[test]
    fn push_rank_is_make_before_break() {
        let mut types = vec![
            type_url::ROUTE,
            "type.googleapis.com/x.Raw",
            type_url::LISTENER,
            type_url::SECRET,
            type_url::ENDPOINT,
            type_url::CLUSTER,
        ];
        types.sort_by_key(|t| push_rank(t));
        assert_eq!(
            types,
            vec![
                type_url::CLUSTER,
                type_url::ENDPOINT,
                type_url::SECRET,
                type_url::LISTENER,
                type_url::ROUTE,
                "type.googleapis.com/x.Raw"
            ]
        );
    }

    /// Issue 17: NACK-to-object matching searched the message once per
    /// rejected resource; now one pass for all names.
    #[test]
    fn nack_subjects_among_many_resources() {
        let resources: Vec<Arc<Resource>> = (0..20_000)
            .map(|i| {
                Arc::new(Resource::new(
                    type_url::CLUSTER,
                    format!("ns/svc-{i}/80"),
                    bytes::Bytes::new(),
                    vec![ObjectKey::new(
                        crate::store::KindKey::new("v1", "Service"),
                        "ns",
                        format!("svc-{i}"),
                    )],
                ))
            })
            .collect();
        let message = format!(
            "cluster 'ns/svc-17/80' rejected; ns/svc-1 and ns/svc-17/800 are not names; {}",
            "y".repeat(MAX_NACK_MESSAGE)
        );
        let (names, sources) = nack_subjects(&message, resources.iter());
        assert_eq!(names, ["ns/svc-17/80"]);
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].name, "svc-17");
        let (names, _) = nack_subjects("nothing named", resources.iter());
        assert_eq!(names.len(), resources.len());
    }
}
