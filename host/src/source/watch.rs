//! Filesystem events (notify): which manifest paths changed, whether a
//! plugin file did, or "rescan everything" when the kernel's queue
//! overflowed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

/// What changed on disk.
#[derive(Debug)]
pub enum FsEvent {
    /// Paths changed, first seen at `at`.
    Paths { paths: Vec<PathBuf>, at: Instant },
    /// Events may have been lost: read everything again.
    Rescan { at: Instant },
}

/// Where the watched things are, as the kernel reports them (canonical).
#[derive(Clone, Debug)]
pub struct Watched {
    /// The manifest directory; none when objects come from the cluster.
    pub manifests: Option<PathBuf>,
    /// Translator then policy files, by index.
    pub plugins: Vec<PathBuf>,
    /// Configuration files, by the name of the plugin they configure: a
    /// change is a swap of that plugin.
    pub configs: Vec<(String, PathBuf)>,
    /// Reconciler plugin files, by index.
    pub reconcilers: Vec<PathBuf>,
}

impl Watched {
    /// The reconcilers a change at `p` may concern: the file itself, or
    /// anything in its directory (as for the translator).
    pub fn reconcilers_at(&self, p: &Path) -> Vec<usize> {
        self.reconcilers
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                p == r.as_path()
                    || (p.parent() == r.parent()
                        && !self.manifests.as_ref().is_some_and(|m| p.starts_with(m)))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The plugins a change at `p` may concern: the file itself, or
    /// anything else in its directory (outside the manifests): a ConfigMap
    /// volume swaps a hidden `..data` link and never names the file. A swap
    /// compares digests, so a false alarm costs a read.
    pub fn plugins_at(&self, p: &Path) -> Vec<usize> {
        self.plugins
            .iter()
            .enumerate()
            .filter(|(_, f)| self.near(p, f))
            .map(|(i, _)| i)
            .collect()
    }

    /// The plugins (by name) whose configuration a change at `p` may
    /// concern, as for [`plugins_at`](Self::plugins_at).
    pub fn configs_at(&self, p: &Path) -> Vec<String> {
        self.configs
            .iter()
            .filter(|(_, f)| self.near(p, f))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn near(&self, p: &Path, f: &Path) -> bool {
        p == f
            || (p.parent() == f.parent()
                && !self.manifests.as_ref().is_some_and(|m| p.starts_with(m)))
    }
}

fn relevant(kind: &EventKind) -> bool {
    match kind {
        // Reads, and opens or closes without writing, change nothing.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watches the manifest directory (recursively) and the plugin file's
/// directory (the file itself is usually replaced by a rename, which a
/// watch on the file would not survive).
pub fn start(
    watched: &Watched,
    sink: impl Fn(FsEvent) + Send + 'static,
) -> notify::Result<RecommendedWatcher> {
    let w = watched.clone();
    // Symlinked directories are not followed (a link to `.` would watch
    // the tree again and again); the manifest walk does not follow them
    // either.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| {
            let at = Instant::now();
            let input = match res {
                Ok(event) if event.need_rescan() => FsEvent::Rescan { at },
                Ok(event) if relevant(&event.kind) => {
                    let paths: Vec<PathBuf> = event
                        .paths
                        .into_iter()
                        .filter(|p| {
                            w.manifests.as_ref().is_some_and(|m| p.starts_with(m))
                                || !w.plugins_at(p).is_empty()
                                || !w.configs_at(p).is_empty()
                                || !w.reconcilers_at(p).is_empty()
                        })
                        .collect();
                    if paths.is_empty() {
                        return;
                    }
                    debug!(kind = ?event.kind, ?paths, "file event");
                    FsEvent::Paths { paths, at }
                }
                Ok(_) => return,
                Err(e) => {
                    warn!(error = %e, "file watch error; reading everything again");
                    FsEvent::Rescan { at }
                }
            };
            sink(input);
        },
        config,
    )?;
    if let Some(manifests) = &watched.manifests {
        watcher.watch(manifests, RecursiveMode::Recursive)?;
    }
    let mut dirs: Vec<&Path> = Vec::new();
    let configs = watched.configs.iter().map(|(_, f)| f);
    for file in watched
        .plugins
        .iter()
        .chain(configs)
        .chain(&watched.reconcilers)
    {
        let dir = file.parent().unwrap_or(Path::new("/"));
        let in_manifests = watched
            .manifests
            .as_ref()
            .is_some_and(|m| dir.starts_with(m));
        if !in_manifests && !dirs.contains(&dir) {
            dirs.push(dir);
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(watcher)
}
