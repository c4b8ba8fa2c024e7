//! What every ADS stream shares: the snapshot feed, per-snapshot digests
//! computed once for all streams, the event channel, and the task that runs
//! one stream (requests and snapshots in, responses out).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status};
use tracing::{debug, warn};

use super::event::{Protocol, XdsEvent};
use super::snapshot::{Resource, Snapshot, type_url};
use crate::store::ObjectKey;

/// Responses a stream may have queued before it stops reading requests.
const STREAM_QUEUE: usize = 16;

/// Unacknowledged delta responses remembered per type (for NACK reports).
pub(crate) const MAX_PENDING: usize = 32;

/// A snapshot as the streams see it: its version as text and a digest of
/// every type's (name, version) set, computed once and shared, so a stream
/// tells "nothing of this type changed" in O(1).
pub(crate) struct Prepared {
    pub snapshot: Arc<Snapshot>,
    pub version: Arc<str>,
    digests: HashMap<String, [u8; 16]>,
    /// The same, leaving out `named_only` resources: what a wildcard
    /// subscription sees (present only for types that have such resources).
    wildcard_digests: HashMap<String, [u8; 16]>,
}

const EMPTY_DIGEST: [u8; 16] = [0; 16];

impl Prepared {
    fn new(snapshot: Arc<Snapshot>) -> Self {
        fn digest<'a>(resources: impl Iterator<Item = &'a Arc<Resource>>) -> [u8; 16] {
            let mut h = Sha256::new();
            let mut any = false;
            for r in resources {
                any = true;
                h.update((r.name.len() as u64).to_le_bytes());
                h.update(r.name.as_bytes());
                h.update((r.version.len() as u64).to_le_bytes());
                h.update(r.version.as_bytes());
            }
            if !any {
                return EMPTY_DIGEST;
            }
            let mut d = [0u8; 16];
            d.copy_from_slice(&h.finalize()[..16]);
            d
        }
        let mut digests = HashMap::new();
        let mut wildcard_digests = HashMap::new();
        for (type_url, resources) in &snapshot.resources {
            if resources.is_empty() {
                continue;
            }
            digests.insert(type_url.clone(), digest(resources.values()));
            if resources.values().any(|r| r.named_only) {
                wildcard_digests.insert(
                    type_url.clone(),
                    digest(resources.values().filter(|r| !r.named_only)),
                );
            }
        }
        Prepared {
            version: snapshot.version.to_string().into(),
            snapshot,
            digests,
            wildcard_digests,
        }
    }

    /// Digest of the type's resources; the same for "absent" and "empty".
    pub fn digest(&self, type_url: &str) -> [u8; 16] {
        self.digests.get(type_url).copied().unwrap_or(EMPTY_DIGEST)
    }

    /// Digest of the resources a wildcard subscription sees (every resource
    /// of the type but the `named_only` ones).
    pub fn wildcard_digest(&self, type_url: &str) -> [u8; 16] {
        match self.wildcard_digests.get(type_url) {
            Some(d) => *d,
            None => self.digest(type_url),
        }
    }
}

pub(crate) struct Shared {
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
    ) -> Self {
        Shared {
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
        let p = Arc::new(Prepared::new(snapshot));
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
            let id = node.map(|n| n.id.clone()).unwrap_or_default();
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
pub(crate) trait Handler: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: Protocol;

    fn node(request: &Self::Request) -> Option<&Node>;

    /// A request arrived; `current` is the latest ready snapshot, if any.
    fn on_request(
        &mut self,
        ctx: &mut StreamCtx,
        current: Option<&Arc<Prepared>>,
        request: Self::Request,
    ) -> Vec<Self::Response>;

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
    RequestError(Status),
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
    let mut current = ready(&shared, snapshots.borrow_and_update().clone());
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
                    handler.on_request(&mut ctx, current.as_ref(), request)
                }
                Some(Err(status)) => break End::RequestError(status),
                None => break End::ClientClosed,
            },
            changed = snapshots.changed(), if watching => match changed {
                Ok(()) => {
                    let snapshot = snapshots.borrow_and_update().clone();
                    if current.as_ref().is_some_and(|c| Arc::ptr_eq(&c.snapshot, &snapshot)) {
                        continue;
                    }
                    match ready(&shared, snapshot) {
                        Some(p) => {
                            current = Some(p.clone());
                            handler.on_snapshot(&mut ctx, &p)
                        }
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
        End::RequestError(status) if status.code() == Code::Internal => {
            warn!(stream = ctx.id, node = %node, error = %status.message(), "xDS stream ended on a bad request")
        }
        End::RequestError(status) => debug!(
            stream = ctx.id,
            node = %node,
            code = ?status.code(),
            error = %status.message(),
            "xDS client disconnected"
        ),
        End::Shutdown => {
            debug!(stream = ctx.id, node = %node, "xDS stream ended by server shutdown");
            let _ = tx.try_send(Err(Status::unavailable("xDS server shutting down")));
        }
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
pub(crate) fn nack_subjects<'a>(
    message: &str,
    rejected: impl Iterator<Item = &'a Arc<Resource>>,
) -> (Vec<String>, Vec<ObjectKey>) {
    let rejected: Vec<&Arc<Resource>> = rejected.collect();
    let mentioned: Vec<&Arc<Resource>> = rejected
        .iter()
        .copied()
        .filter(|r| mentions(message, &r.name))
        .collect();
    let chosen = if mentioned.is_empty() {
        rejected
    } else {
        mentioned
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

/// Whether `name` occurs in `message` as a whole token.
fn mentions(message: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let is_name_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    message.match_indices(name).any(|(i, _)| {
        let before = message[..i].chars().next_back();
        let after = message[i + name.len()..].chars().next();
        !before.is_some_and(is_name_char) && !after.is_some_and(is_name_char)
    })
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
}
