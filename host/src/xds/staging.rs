//! Make-before-break on one stream. Envoy applies a RouteConfiguration that
//! names a cluster it is still warming (no endpoints yet) and answers 503
//! `no_cluster` until the cluster is ready; and it drops a cluster the moment
//! a CDS response leaves it out, before the routes that pointed at it have
//! moved. Pushing in type order (clusters first) does not prevent either:
//! warming waits on an EDS round trip the server cannot hurry. So a snapshot
//! that adds clusters the stream sees, or removes leaf resources (clusters,
//! endpoints, secrets), reaches the client in stages:
//!
//! 1. **warming**: the new snapshot's leaves with the old ones kept, and the
//!    old listeners, routes and raw resources. Held until the client has
//!    answered the CDS response and has subscribed to, and answered, the
//!    endpoints of every new cluster (the cluster is warm then).
//! 2. **retiring**: the new listeners, routes and raw resources, the old
//!    leaves still kept. Held until the client has answered those.
//! 3. the snapshot itself, which removes what nothing refers to any more.
//!
//! Each hold is bounded by [`STAGE_DEADLINE`]: a client that never answers
//! gets the snapshot anyway. A stage carries the version of the snapshot it
//! delivers (a NACK of its clusters is about that snapshot). A proxyless
//! gRPC client subscribes to clusters by name as its routes name them, so
//! new clusters are outside its subscription and never hold it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::snapshot::{Resource, Resources, Snapshot, TypeChanges, type_url};
use super::stream::Prepared;

/// The longest a stage holds back the rest of a snapshot.
pub(crate) const STAGE_DEADLINE: Duration = Duration::from_secs(5);

/// What other resources point at: kept while anything may still name them.
const LEAVES: [&str; 3] = [type_url::CLUSTER, type_url::ENDPOINT, type_url::SECRET];

fn is_leaf(type_url: &str) -> bool {
    LEAVES.contains(&type_url)
}

/// How the client answered the latest response of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Nothing was sent (or the type is not subscribed).
    Nothing,
    Pending,
    Acked,
    Nacked,
}

/// What staging needs to know of a stream's client.
pub(crate) trait Client {
    /// The fate of the latest response of `type_url`.
    fn answer(&self, type_url: &str) -> Answer;
    /// Whether the subscription to `type_url` covers `resource`.
    fn sees(&self, type_url: &str, resource: &Resource) -> bool;
}

enum Hold {
    /// New clusters sent, not yet known to be warm.
    Warming { clusters: BTreeSet<String> },
    /// New referrers sent (these types changed), old leaves kept.
    Retiring { types: Vec<String> },
}

/// One stream's way from what it was given to the latest snapshot.
#[derive(Default)]
pub(crate) struct Staging {
    /// The latest ready snapshot.
    target: Option<Arc<Prepared>>,
    /// What the stream's handler was last given: a stage or a snapshot.
    delivered: Option<Arc<Prepared>>,
    hold: Option<(Hold, Instant)>,
    /// The snapshot the held stage was built for.
    staged_for: Option<Arc<Snapshot>>,
}

impl Staging {
    /// What the handler works from (answers to requests come from it).
    pub fn delivered(&self) -> Option<&Arc<Prepared>> {
        self.delivered.as_ref()
    }

    /// When the current hold gives up waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.hold.as_ref().map(|(_, at)| *at)
    }

    pub fn is_target(&self, snapshot: &Arc<Snapshot>) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.snapshot, snapshot))
    }

    /// A new snapshot is ready: what to give the handler now, if anything.
    pub fn retarget(
        &mut self,
        target: Arc<Prepared>,
        client: &impl Client,
        now: Instant,
        stream: u64,
    ) -> Option<Arc<Prepared>> {
        self.target = Some(target);
        self.step(client, now, stream)
    }

    /// After a request, a new snapshot or the deadline: the next stage to
    /// give the handler, once the hold (if any) is over.
    pub fn step(
        &mut self,
        client: &impl Client,
        now: Instant,
        stream: u64,
    ) -> Option<Arc<Prepared>> {
        let target = self.target.clone()?;
        let Some(delivered) = self.delivered.clone() else {
            // A new stream: the client initialises (warms) on its own.
            return self.deliver(target);
        };
        if Arc::ptr_eq(&delivered.snapshot, &target.snapshot) {
            self.hold = None;
            return None;
        }
        let retargeted = !self
            .staged_for
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &target.snapshot));
        let mut warming = BTreeSet::new();
        let mut deadline = None;
        match self.hold.take() {
            Some((Hold::Warming { clusters }, at)) => {
                let warm = warmed(client, &clusters, &delivered.snapshot);
                if !warm && now >= at {
                    warn!(
                        stream,
                        clusters = clusters.len(),
                        "xDS client did not warm new clusters in time; sending the routes that name them"
                    );
                } else if !warm {
                    if !retargeted {
                        self.hold = Some((Hold::Warming { clusters }, at));
                        return None;
                    }
                    // Still warming: the new target's stage keeps waiting.
                    warming = clusters;
                    deadline = Some(at);
                }
            }
            Some((Hold::Retiring { types }, at)) => {
                let answered = types.iter().all(|t| client.answer(t) != Answer::Pending);
                if !retargeted {
                    if answered || now >= at {
                        if !answered {
                            warn!(
                                stream,
                                "xDS client did not answer new routes in time; removing the clusters they no longer name"
                            );
                        }
                        return self.deliver(target);
                    }
                    self.hold = Some((Hold::Retiring { types }, at));
                    return None;
                }
            }
            None => {}
        }
        self.plan(delivered, target, warming, deadline, client, now)
    }

    fn plan(
        &mut self,
        delivered: Arc<Prepared>,
        target: Arc<Prepared>,
        mut warming: BTreeSet<String>,
        deadline: Option<Instant>,
        client: &impl Client,
        now: Instant,
    ) -> Option<Arc<Prepared>> {
        let (from, to) = (&delivered.snapshot, &target.snapshot);
        let clusters = to.of_type(type_url::CLUSTER);
        warming.retain(|c| clusters.is_some_and(|m| m.contains_key(c)));
        // From the previous snapshot (the common case) these are the change
        // sets computed once for every stream.
        let changes = |t: &str| target.changes_since(from, t);
        let added: Vec<String> = changes(type_url::CLUSTER)
            .updated
            .iter()
            .cloned()
            .filter(|name| from.get(type_url::CLUSTER, name).is_none())
            .filter(|name| {
                to.get(type_url::CLUSTER, name)
                    .is_some_and(|r| client.sees(type_url::CLUSTER, r))
            })
            .collect();
        let deadline = match (added.is_empty(), deadline) {
            (true, Some(at)) => at,
            _ => now + STAGE_DEADLINE,
        };
        warming.extend(added);
        if !warming.is_empty() {
            debug!(
                clusters = warming.len(),
                version = to.version,
                "xDS stage: new clusters first, routes once they are warm"
            );
            let stage = stage(from, to, false);
            self.hold = Some((Hold::Warming { clusters: warming }, deadline));
            self.staged_for = Some(to.clone());
            return self.deliver(Arc::new(Prepared::staged(stage)));
        }
        let removes = LEAVES.iter().any(|t| !changes(t).removed.is_empty());
        let referrers: Vec<String> = from
            .resources
            .keys()
            .chain(to.resources.keys())
            .filter(|t| !is_leaf(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|t| !changes(t).is_empty())
            .cloned()
            .collect();
        if removes && !referrers.is_empty() {
            debug!(
                version = to.version,
                "xDS stage: new routes first, then the clusters they no longer name go"
            );
            let stage = stage(from, to, true);
            self.hold = Some((Hold::Retiring { types: referrers }, now + STAGE_DEADLINE));
            self.staged_for = Some(to.clone());
            return self.deliver(Arc::new(Prepared::staged(stage)));
        }
        self.deliver(target)
    }

    fn deliver(&mut self, p: Arc<Prepared>) -> Option<Arc<Prepared>> {
        if self
            .target
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.snapshot, &p.snapshot))
        {
            self.hold = None;
            self.staged_for = None;
        }
        self.delivered = Some(p.clone());
        Some(p)
    }
}

/// Whether every one of `clusters` is warm on the client: CDS answered (a
/// rejected CDS warms nothing: no point waiting), and each cluster's
/// endpoints subscribed and answered.
fn warmed(client: &impl Client, clusters: &BTreeSet<String>, delivered: &Snapshot) -> bool {
    match client.answer(type_url::CLUSTER) {
        Answer::Pending => return false,
        Answer::Nacked => return true,
        Answer::Acked | Answer::Nothing => {}
    }
    let endpoints = delivered.of_type(type_url::ENDPOINT);
    let subscribed = clusters.iter().all(|c| {
        endpoints
            .and_then(|m| m.get(c))
            .is_none_or(|cla| client.sees(type_url::ENDPOINT, cla))
    });
    subscribed && client.answer(type_url::ENDPOINT) != Answer::Pending
}

fn changes(from: &Snapshot, to: &Snapshot, type_url: &str) -> TypeChanges {
    match (from.of_type(type_url), to.of_type(type_url)) {
        (Some(a), Some(b)) if a.ptr_eq(b) => TypeChanges::default(),
        (a, b) => TypeChanges::between(a, b),
    }
}

/// `to`'s leaves plus those of `from` that `to` no longer has; referrers
/// (listeners, routes, raw resources) from `to` or from `from`. It carries
/// `to`'s version: it is a step of delivering `to`.
fn stage(from: &Snapshot, to: &Snapshot, new_referrers: bool) -> Snapshot {
    let types: BTreeSet<&String> = from.resources.keys().chain(to.resources.keys()).collect();
    let mut resources: BTreeMap<String, Resources> = BTreeMap::new();
    for t in types {
        if is_leaf(t) {
            let mut kept = to.of_type(t).cloned().unwrap_or_default();
            for name in changes(from, to, t).removed {
                if let Some(r) = from.get(t, &name) {
                    kept.insert(name, r.clone());
                }
            }
            resources.insert(t.clone(), kept);
        } else if let Some(m) = if new_referrers { to } else { from }.of_type(t) {
            resources.insert(t.clone(), m.clone());
        }
    }
    Snapshot {
        version: to.version,
        resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn res(t: &str, name: &str, body: &str) -> Arc<Resource> {
        Arc::new(Resource::new(
            t,
            name.to_string(),
            bytes::Bytes::from(body.to_string()),
            vec![],
        ))
    }

    /// A snapshot of clusters (each with its endpoints) and one route
    /// configuration naming them.
    fn snapshot(version: u64, clusters: &[&str], route: &str) -> Arc<Prepared> {
        let mut s = Snapshot {
            version,
            ..Default::default()
        };
        for c in clusters {
            for t in [type_url::CLUSTER, type_url::ENDPOINT] {
                s.resources
                    .entry(t.to_string())
                    .or_default()
                    .insert(c.to_string(), res(t, c, c));
            }
        }
        s.resources
            .entry(type_url::ROUTE.to_string())
            .or_default()
            .insert("r".into(), res(type_url::ROUTE, "r", route));
        Arc::new(Prepared::staged(s))
    }

    /// A client like Envoy: wildcard clusters and routes, endpoints by name.
    #[derive(Default)]
    struct Envoy {
        answers: HashMap<&'static str, Answer>,
        endpoints: BTreeSet<String>,
        wildcard_clusters: bool,
    }

    impl Client for Envoy {
        fn answer(&self, t: &str) -> Answer {
            self.answers.get(t).copied().unwrap_or(Answer::Nothing)
        }
        fn sees(&self, t: &str, r: &Resource) -> bool {
            match t {
                type_url::CLUSTER => self.wildcard_clusters,
                type_url::ENDPOINT => self.endpoints.contains(&r.name),
                _ => true,
            }
        }
    }

    fn names(p: &Prepared, t: &str) -> Vec<String> {
        p.snapshot
            .of_type(t)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn route(p: &Prepared) -> String {
        String::from_utf8(p.snapshot.get(type_url::ROUTE, "r").unwrap().body.to_vec()).unwrap()
    }

    #[test]
    fn routes_to_a_new_cluster_wait_until_it_is_warm() {
        let now = Instant::now();
        let mut envoy = Envoy {
            wildcard_clusters: true,
            endpoints: ["web".to_string()].into(),
            ..Default::default()
        };
        let mut s = Staging::default();
        let v1 = snapshot(1, &["web"], "to web");
        assert!(Arc::ptr_eq(
            &s.retarget(v1.clone(), &envoy, now, 1).unwrap(),
            &v1
        ));
        envoy.answers.insert(type_url::CLUSTER, Answer::Acked);
        envoy.answers.insert(type_url::ENDPOINT, Answer::Acked);

        let v2 = snapshot(2, &["web", "canary"], "split web canary");
        let stage = s.retarget(v2.clone(), &envoy, now, 1).unwrap();
        assert_eq!(names(&stage, type_url::CLUSTER), ["canary", "web"]);
        assert_eq!(route(&stage), "to web", "routes wait");
        assert_eq!(stage.snapshot.version, 2);
        envoy.answers.insert(type_url::CLUSTER, Answer::Pending);
        assert!(s.step(&envoy, now, 1).is_none());
        // CDS ACKed, but the endpoints of the new cluster not yet asked for.
        envoy.answers.insert(type_url::CLUSTER, Answer::Acked);
        assert!(s.step(&envoy, now, 1).is_none());
        envoy.endpoints.insert("canary".into());
        envoy.answers.insert(type_url::ENDPOINT, Answer::Pending);
        assert!(s.step(&envoy, now, 1).is_none());
        envoy.answers.insert(type_url::ENDPOINT, Answer::Acked);
        let next = s.step(&envoy, now, 1).unwrap();
        assert!(
            Arc::ptr_eq(&next, &v2),
            "nothing removed: the snapshot itself"
        );
        assert!(s.deadline().is_none());
        assert!(s.step(&envoy, now, 1).is_none());
    }

    #[test]
    fn removed_clusters_go_after_the_routes_that_named_them() {
        let now = Instant::now();
        let mut envoy = Envoy {
            wildcard_clusters: true,
            endpoints: ["web".to_string(), "canary".to_string()].into(),
            ..Default::default()
        };
        let mut s = Staging::default();
        s.retarget(snapshot(1, &["web", "canary"], "split"), &envoy, now, 1);
        let v2 = snapshot(2, &["web"], "to web");
        let stage = s.retarget(v2.clone(), &envoy, now, 1).unwrap();
        assert_eq!(route(&stage), "to web");
        assert_eq!(names(&stage, type_url::CLUSTER), ["canary", "web"], "kept");
        assert_eq!(names(&stage, type_url::ENDPOINT), ["canary", "web"], "kept");
        envoy.answers.insert(type_url::ROUTE, Answer::Pending);
        assert!(s.step(&envoy, now, 1).is_none());
        envoy.answers.insert(type_url::ROUTE, Answer::Acked);
        assert!(Arc::ptr_eq(&s.step(&envoy, now, 1).unwrap(), &v2));
    }

    #[test]
    fn a_hold_ends_at_its_deadline_and_a_nacked_cds_does_not_hold() {
        let now = Instant::now();
        let mut envoy = Envoy {
            wildcard_clusters: true,
            ..Default::default()
        };
        let mut s = Staging::default();
        s.retarget(snapshot(1, &["web"], "to web"), &envoy, now, 1);
        let v2 = snapshot(2, &["web", "canary"], "split");
        s.retarget(v2.clone(), &envoy, now, 1).unwrap();
        envoy.answers.insert(type_url::CLUSTER, Answer::Acked);
        assert!(s.step(&envoy, now + STAGE_DEADLINE / 2, 1).is_none());
        assert!(Arc::ptr_eq(
            &s.step(&envoy, now + STAGE_DEADLINE, 1).unwrap(),
            &v2
        ));

        let v3 = snapshot(3, &["web", "canary", "blue"], "three");
        s.retarget(v3.clone(), &envoy, now, 1).unwrap();
        envoy.answers.insert(type_url::CLUSTER, Answer::Nacked);
        assert!(Arc::ptr_eq(&s.step(&envoy, now, 1).unwrap(), &v3));
    }

    #[test]
    fn a_newer_snapshot_while_warming_keeps_waiting_for_the_first_clusters() {
        let now = Instant::now();
        let mut envoy = Envoy {
            wildcard_clusters: true,
            endpoints: ["web".to_string()].into(),
            ..Default::default()
        };
        envoy.answers.insert(type_url::CLUSTER, Answer::Acked);
        let mut s = Staging::default();
        s.retarget(snapshot(1, &["web"], "to web"), &envoy, now, 1);
        s.retarget(snapshot(2, &["web", "canary"], "split"), &envoy, now, 1);
        // A route edit arrives before `canary` is warm: it waits too.
        let v3 = snapshot(3, &["web", "canary"], "split, edited");
        let stage = s.retarget(v3.clone(), &envoy, now, 1).unwrap();
        assert_eq!(route(&stage), "to web");
        envoy.endpoints.insert("canary".into());
        envoy.answers.insert(type_url::ENDPOINT, Answer::Acked);
        assert!(Arc::ptr_eq(&s.step(&envoy, now, 1).unwrap(), &v3));
    }

    #[test]
    fn a_client_that_names_its_clusters_is_not_held() {
        let now = Instant::now();
        let envoy = Envoy::default(); // proxyless gRPC: clusters by name
        let mut s = Staging::default();
        s.retarget(snapshot(1, &["web"], "to web"), &envoy, now, 1);
        let v2 = snapshot(2, &["web", "canary"], "split");
        assert!(Arc::ptr_eq(
            &s.retarget(v2.clone(), &envoy, now, 1).unwrap(),
            &v2
        ));
    }
}
