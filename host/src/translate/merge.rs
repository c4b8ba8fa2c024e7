//! Merging root fragments: routes within a virtual host are ordered most
//! specific first; a conflicting claim goes to the oldest root (then
//! namespace/name) and the loser gets a diagnostic.
//!
//! Merging is per unit (a virtual host, a listener, a raw resource) so that
//! a change to one root re-merges only the units it touches.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use super::{OutputChange, RootOrder, RootOutput};
use crate::ir;
use crate::store::ObjectKey;

/// A virtual host: one domain on one listener.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VhostKey {
    pub listener: String,
    pub domain: String,
}

impl VhostKey {
    pub fn new(listener: impl Into<String>, domain: impl Into<String>) -> Self {
        VhostKey {
            listener: listener.into(),
            domain: domain.into(),
        }
    }

    /// Every key on `listener`, in a map ordered by key, starts here.
    pub fn first_on(listener: &str) -> Self {
        VhostKey::new(listener, String::new())
    }
}

/// A raw resource: its type URL and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawKey {
    pub type_url: String,
    pub name: String,
}

type Contributors = BTreeSet<(RootOrder, ObjectKey)>;

#[derive(Clone, Debug, PartialEq)]
pub struct MergedRoute {
    pub route: ir::Route,
    pub root: ObjectKey,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MergedVhost {
    pub listener: String,
    pub domain: String,
    pub tls: Option<ir::SecretRef>,
    /// Most specific first.
    pub routes: Vec<MergedRoute>,
    /// Roots that contributed, oldest first.
    pub roots: Vec<ObjectKey>,
    /// Lost conflicts, on the losing roots.
    pub diagnostics: Vec<ir::Diagnostic>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MergedListener {
    pub listener: ir::Listener,
    pub roots: Vec<ObjectKey>,
    pub diagnostics: Vec<ir::Diagnostic>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MergedRaw {
    pub raw: ir::RawResource,
    pub root: ObjectKey,
    pub diagnostics: Vec<ir::Diagnostic>,
}

/// Units whose merge must be recomputed.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    pub vhosts: BTreeSet<VhostKey>,
    pub listeners: BTreeSet<String>,
    pub raw: BTreeSet<RawKey>,
}

/// Who contributes to which unit.
#[derive(Default)]
pub struct Merger {
    vhosts: HashMap<VhostKey, Contributors>,
    listeners: HashMap<String, Contributors>,
    raw: HashMap<RawKey, Contributors>,
}

/// A fragment's units with their content, so a change dirties only the
/// units whose content (or whose root's age) changed.
struct Units<'a> {
    vhosts: HashMap<VhostKey, Vec<&'a ir::VirtualHost>>,
    listeners: HashMap<String, Vec<&'a ir::Listener>>,
    raw: HashMap<RawKey, Vec<&'a ir::RawResource>>,
}

fn units(f: &ir::Fragment) -> Units<'_> {
    let mut u = Units {
        vhosts: HashMap::new(),
        listeners: HashMap::new(),
        raw: HashMap::new(),
    };
    for v in &f.virtual_hosts {
        u.vhosts
            .entry(VhostKey::new(v.listener.clone(), v.domain.clone()))
            .or_default()
            .push(v);
    }
    for l in &f.listeners {
        u.listeners.entry(l.name.clone()).or_default().push(l);
    }
    for r in &f.raw {
        u.raw
            .entry(RawKey {
                type_url: r.type_url.clone(),
                name: r.name.clone(),
            })
            .or_default()
            .push(r);
    }
    u
}

/// Moves one root's contribution to the units of one kind from `old` to
/// `new`; returns the units whose merge may change.
fn diff_units<K, T>(
    index: &mut HashMap<K, Contributors>,
    old: Option<(&(RootOrder, ObjectKey), &HashMap<K, Vec<&T>>)>,
    new: Option<(&(RootOrder, ObjectKey), &HashMap<K, Vec<&T>>)>,
    dirty: &mut BTreeSet<K>,
) where
    K: std::hash::Hash + Eq + Ord + Clone,
    T: PartialEq,
{
    let same_order = matches!((old, new), (Some((a, _)), Some((b, _))) if a == b);
    if let Some((id, units)) = old {
        for (k, content) in units {
            let unchanged = same_order
                && new
                    .and_then(|(_, n)| n.get(k))
                    .is_some_and(|c| c == content);
            if !unchanged {
                remove(index, k, id);
                dirty.insert(k.clone());
            }
        }
    }
    if let Some((id, units)) = new {
        for (k, content) in units {
            let unchanged = same_order
                && old
                    .and_then(|(_, o)| o.get(k))
                    .is_some_and(|c| c == content);
            if !unchanged {
                index.entry(k.clone()).or_default().insert(id.clone());
                dirty.insert(k.clone());
            }
        }
    }
}

impl Merger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Updates who contributes where; returns the units to merge again.
    pub fn apply(&mut self, changes: &[OutputChange]) -> Dirty {
        let mut dirty = Dirty::default();
        for change in changes {
            let old_id = change
                .old
                .as_ref()
                .map(|o| (o.order.clone(), change.root.clone()));
            let new_id = change
                .new
                .as_ref()
                .map(|n| (n.order.clone(), change.root.clone()));
            let old_units = change.old.as_ref().map(|o| units(&o.fragment));
            let new_units = change.new.as_ref().map(|n| units(&n.fragment));
            let old = old_id.as_ref().zip(old_units.as_ref());
            let new = new_id.as_ref().zip(new_units.as_ref());
            diff_units(
                &mut self.vhosts,
                old.map(|(i, u)| (i, &u.vhosts)),
                new.map(|(i, u)| (i, &u.vhosts)),
                &mut dirty.vhosts,
            );
            diff_units(
                &mut self.listeners,
                old.map(|(i, u)| (i, &u.listeners)),
                new.map(|(i, u)| (i, &u.listeners)),
                &mut dirty.listeners,
            );
            diff_units(
                &mut self.raw,
                old.map(|(i, u)| (i, &u.raw)),
                new.map(|(i, u)| (i, &u.raw)),
                &mut dirty.raw,
            );
        }
        dirty
    }

    /// Contributors of a virtual host, oldest first.
    pub fn vhost_roots(&self, key: &VhostKey) -> impl Iterator<Item = &ObjectKey> {
        self.vhosts.get(key).into_iter().flatten().map(|(_, k)| k)
    }

    pub fn listener_roots(&self, name: &str) -> impl Iterator<Item = &ObjectKey> {
        self.listeners
            .get(name)
            .into_iter()
            .flatten()
            .map(|(_, k)| k)
    }

    pub fn raw_roots(&self, key: &RawKey) -> impl Iterator<Item = &ObjectKey> {
        self.raw.get(key).into_iter().flatten().map(|(_, k)| k)
    }

    pub fn all_vhosts(&self) -> impl Iterator<Item = &VhostKey> {
        self.vhosts.keys()
    }
}

fn remove<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Contributors>,
    key: &K,
    id: &(RootOrder, ObjectKey),
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

fn describe(key: &ObjectKey) -> String {
    if key.namespace.is_empty() {
        format!("{} {}", key.kind.kind, key.name)
    } else {
        format!("{} {}/{}", key.kind.kind, key.namespace, key.name)
    }
}

fn conflict(loser: &ObjectKey, winner: &ObjectKey, reason: &str, what: String) -> ir::Diagnostic {
    ir::Diagnostic::warning(
        ir::ObjectRef::of(loser),
        reason,
        format!(
            "{what} is already claimed by {} (older, or first by namespace/name)",
            describe(winner)
        ),
    )
}

fn normalize_prefix(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// A lost conflict between roots of two translators is news to both: the
/// winner's plugin never saw the other object, so it is told too.
fn conflicts(
    out: &mut Vec<ir::Diagnostic>,
    loser: (&ObjectKey, &str),
    winner: (&ObjectKey, &str),
    reason: &str,
    what: String,
) {
    if loser.1 != winner.1 {
        out.push(ir::Diagnostic::warning(
            ir::ObjectRef::of(winner.0),
            reason,
            format!(
                "{what} is also claimed by {} (translated by {}, not {}); this object's claim wins as the older",
                describe(loser.0),
                loser.1,
                winner.1
            ),
        ));
    }
    out.push(conflict(loser.0, winner.0, reason, what));
}

/// Two routes conflict when they match the same requests.
fn match_key(m: &ir::RouteMatch) -> ir::RouteMatch {
    let mut k = m.clone();
    if let ir::PathMatch::Prefix(p) = &k.path {
        k.path = ir::PathMatch::Prefix(normalize_prefix(p).to_string());
    }
    k.headers.sort_by(|a, b| a.name.cmp(&b.name));
    k.query.sort_by(|a, b| a.name.cmp(&b.name));
    k
}

fn path_text(m: &ir::PathMatch) -> String {
    match m {
        ir::PathMatch::Exact(p) => format!("exact path {p}"),
        ir::PathMatch::Prefix(p) => format!("prefix {p}"),
        ir::PathMatch::Regex(p) => format!("regex {p}"),
    }
}

/// Most specific first: exact, then regex, then prefix; longer paths
/// first; then a method, more headers and more query matches first. Ties
/// keep root order (the sort is stable).
type Specificity = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
);

fn specificity(r: &ir::Route) -> Specificity {
    let m = &r.matches;
    let (class, len) = match &m.path {
        ir::PathMatch::Exact(p) => (0u8, p.len()),
        ir::PathMatch::Regex(p) => (1, p.len()),
        ir::PathMatch::Prefix(p) => (2, normalize_prefix(p).len()),
    };
    (
        class,
        Reverse(len),
        Reverse(m.method.is_some()),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
    )
}

/// Merges one virtual host from its contributors, given oldest first.
pub fn merge_vhost<'a>(
    key: &VhostKey,
    contributors: impl IntoIterator<Item = (&'a ObjectKey, &'a RootOutput)>,
) -> MergedVhost {
    let mut merged = MergedVhost {
        listener: key.listener.clone(),
        domain: key.domain.clone(),
        tls: None,
        routes: vec![],
        roots: vec![],
        diagnostics: vec![],
    };
    let mut tls_owner: Option<(ObjectKey, &str)> = None;
    let mut claimed: HashMap<ir::RouteMatch, (ObjectKey, &str)> = HashMap::new();
    for (root, output) in contributors {
        merged.roots.push(root.clone());
        let plugin: &str = &output.plugin;
        for vh in output
            .fragment
            .virtual_hosts
            .iter()
            .filter(|v| v.listener == key.listener && v.domain == key.domain)
        {
            if let Some(tls) = &vh.tls {
                match (&merged.tls, &tls_owner) {
                    (None, _) => {
                        merged.tls = Some(tls.clone());
                        tls_owner = Some((root.clone(), plugin));
                    }
                    (Some(existing), Some(owner)) if existing != tls && &owner.0 != root => {
                        conflicts(
                            &mut merged.diagnostics,
                            (root, plugin),
                            (&owner.0, owner.1),
                            "TLSConflict",
                            format!("TLS for {} on {}", key.domain, key.listener),
                        )
                    }
                    _ => {}
                }
            }
            for route in &vh.routes {
                let mk = match_key(&route.matches);
                match claimed.get(&mk) {
                    None => {
                        claimed.insert(mk, (root.clone(), plugin));
                        merged.routes.push(MergedRoute {
                            route: route.clone(),
                            root: root.clone(),
                        });
                    }
                    Some(owner) if &owner.0 != root => conflicts(
                        &mut merged.diagnostics,
                        (root, plugin),
                        (&owner.0, owner.1),
                        "RouteConflict",
                        format!(
                            "{} on {} ({})",
                            path_text(&route.matches.path),
                            key.domain,
                            key.listener
                        ),
                    ),
                    // A root repeating its own match: the first one wins,
                    // as it would in Envoy.
                    Some(_) => {}
                }
            }
        }
    }
    merged.routes.sort_by_key(|r| specificity(&r.route));
    merged
}

/// Merges one listener: the oldest definition wins.
pub fn merge_listener<'a>(
    name: &str,
    contributors: impl IntoIterator<Item = (&'a ObjectKey, &'a RootOutput)>,
) -> Option<MergedListener> {
    let mut merged: Option<(MergedListener, ObjectKey, &str)> = None;
    for (root, output) in contributors {
        let plugin: &str = &output.plugin;
        for l in output.fragment.listeners.iter().filter(|l| l.name == name) {
            match &mut merged {
                None => {
                    merged = Some((
                        MergedListener {
                            listener: l.clone(),
                            roots: vec![root.clone()],
                            diagnostics: vec![],
                        },
                        root.clone(),
                        plugin,
                    ))
                }
                Some((m, owner, owner_plugin)) => {
                    // Contributors come root by root: only the last can repeat.
                    if m.roots.last() != Some(root) {
                        m.roots.push(root.clone());
                    }
                    if &m.listener != l {
                        conflicts(
                            &mut m.diagnostics,
                            (root, plugin),
                            (owner, owner_plugin),
                            "ListenerConflict",
                            format!("listener {name} (port {}, {:?})", l.port, l.protocol),
                        );
                    }
                }
            }
        }
    }
    merged.map(|(m, _, _)| m)
}

/// Merges one raw resource: the oldest root's wins.
pub fn merge_raw<'a>(
    key: &RawKey,
    contributors: impl IntoIterator<Item = (&'a ObjectKey, &'a RootOutput)>,
) -> Option<MergedRaw> {
    let mut merged: Option<MergedRaw> = None;
    let mut owner_plugin: &str = "";
    for (root, output) in contributors {
        let plugin: &str = &output.plugin;
        for r in output
            .fragment
            .raw
            .iter()
            .filter(|r| r.type_url == key.type_url && r.name == key.name)
        {
            match &mut merged {
                None => {
                    owner_plugin = plugin;
                    merged = Some(MergedRaw {
                        raw: r.clone(),
                        root: root.clone(),
                        diagnostics: vec![],
                    })
                }
                Some(m) if &m.root != root => {
                    let owner = m.root.clone();
                    conflicts(
                        &mut m.diagnostics,
                        (root, plugin),
                        (&owner, owner_plugin),
                        "RawResourceConflict",
                        format!("raw resource {} {}", key.type_url, key.name),
                    )
                }
                Some(_) => {}
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KindKey;
    use std::sync::Arc;

    fn root(name: &str, created: &str, vhosts: Vec<ir::VirtualHost>) -> (ObjectKey, RootOutput) {
        let key = ObjectKey::new(KindKey::new("networking.k8s.io/v1", "Ingress"), "ns", name);
        let out = RootOutput {
            order: RootOrder::new(created, key.clone()),
            plugin: std::sync::Arc::from("test"),
            fragment: Arc::new(ir::Fragment {
                virtual_hosts: vhosts,
                ..Default::default()
            }),
            error: None,
        };
        (key, out)
    }

    fn route(path: ir::PathMatch, status: u16) -> ir::Route {
        ir::Route::direct_response(ir::RouteMatch::new(path), ir::DirectResponse::new(status))
    }

    fn vh(routes: Vec<ir::Route>, tls: Option<&str>) -> ir::VirtualHost {
        let mut vh = ir::VirtualHost::new("http", "a.com");
        vh.tls = tls.map(|n| ir::SecretRef::new("ns", n));
        vh.routes = routes;
        vh
    }

    fn key() -> VhostKey {
        VhostKey::new("http", "a.com")
    }

    fn sorted<'a>(roots: &'a [(ObjectKey, RootOutput)]) -> Vec<(&'a ObjectKey, &'a RootOutput)> {
        let mut v: Vec<_> = roots.iter().map(|(k, o)| (k, o)).collect();
        v.sort_by(|a, b| (&a.1.order, a.0).cmp(&(&b.1.order, b.0)));
        v
    }

    #[test]
    fn routes_are_ordered_most_specific_first() {
        use ir::PathMatch::*;
        let r = root(
            "a",
            "",
            vec![vh(
                vec![
                    route(Prefix("/".into()), 1),
                    route(Prefix("/foo".into()), 2),
                    route(Regex("/x.*".into()), 3),
                    route(Exact("/foo".into()), 4),
                    route(Prefix("/foo/bar".into()), 5),
                    route(Exact("/foo/bar".into()), 6),
                ],
                None,
            )],
        );
        let m = merge_vhost(&key(), sorted(&[r]));
        let order: Vec<u16> = m
            .routes
            .iter()
            .map(|r| match &r.route.action {
                ir::RouteAction::DirectResponse(d) => d.status,
                _ => 0,
            })
            .collect();
        assert_eq!(order, [6, 4, 3, 5, 2, 1]);
        assert!(m.diagnostics.is_empty());
    }

    #[test]
    fn oldest_root_wins_a_conflict_and_the_loser_is_told() {
        use ir::PathMatch::*;
        let old = root(
            "zz-old",
            "2020-01-01T00:00:00Z",
            vec![vh(vec![route(Prefix("/foo/".into()), 1)], Some("old-cert"))],
        );
        let young = root(
            "aa-young",
            "2024-01-01T00:00:00Z",
            vec![vh(
                vec![
                    route(Prefix("/foo".into()), 2),
                    route(Exact("/x".into()), 3),
                ],
                Some("young-cert"),
            )],
        );
        let m = merge_vhost(&key(), sorted(&[young.clone(), old.clone()]));
        assert_eq!(m.routes.len(), 2);
        assert_eq!(
            m.routes
                .iter()
                .find(|r| matches!(r.route.matches.path, Prefix(_)))
                .unwrap()
                .root
                .name,
            "zz-old"
        );
        assert_eq!(m.tls.as_ref().unwrap().name, "old-cert");
        let reasons: Vec<_> = m
            .diagnostics
            .iter()
            .map(|d| (d.object.name.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [("aa-young", "TLSConflict"), ("aa-young", "RouteConflict")]
        );
        assert_eq!(m.roots[0].name, "zz-old");
    }

    #[test]
    fn same_age_falls_back_to_namespace_and_name() {
        let a = root(
            "a",
            "",
            vec![vh(vec![route(ir::PathMatch::Exact("/".into()), 1)], None)],
        );
        let b = root(
            "b",
            "",
            vec![vh(vec![route(ir::PathMatch::Exact("/".into()), 2)], None)],
        );
        let m = merge_vhost(&key(), sorted(&[b, a]));
        assert_eq!(m.routes[0].root.name, "a");
        assert_eq!(m.diagnostics[0].object.name, "b");
    }

    #[test]
    fn merger_tracks_contributors_and_dirty_units() {
        let (k1, o1) = root(
            "a",
            "",
            vec![vh(vec![route(ir::PathMatch::Exact("/".into()), 1)], None)],
        );
        let mut merger = Merger::new();
        let dirty = merger.apply(&[OutputChange {
            root: k1.clone(),
            old: None,
            new: Some(o1.clone()),
        }]);
        assert_eq!(dirty.vhosts.into_iter().collect::<Vec<_>>(), [key()]);
        assert_eq!(merger.vhost_roots(&key()).count(), 1);
        let dirty = merger.apply(&[OutputChange {
            root: k1,
            old: Some(o1),
            new: None,
        }]);
        assert_eq!(dirty.vhosts.len(), 1);
        assert_eq!(merger.vhost_roots(&key()).count(), 0);
        assert_eq!(merger.all_vhosts().count(), 0);
    }
}
