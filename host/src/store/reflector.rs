//! A store kept from a stream of events, as kube-runtime's `reflector`
//! keeps one from a watcher: for a reconciler running on its own (tests,
//! benchmarks, an API server of its own), where no controller thread is the
//! writer.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Change, Event, Store, Writer};

/// Applies `events` to a new store as they come and passes on what changed;
/// ends when `events` closes.
pub fn reflect(
    mut events: mpsc::UnboundedReceiver<Event>,
) -> (Store, mpsc::UnboundedReceiver<Change>, JoinHandle<()>) {
    let mut writer = Writer::new();
    let store = writer.store();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(first) = events.recv().await {
            // Everything already waiting goes in at once: one write lock.
            let mut batch = vec![first];
            while let Ok(e) = events.try_recv() {
                batch.push(e);
            }
            for change in writer.apply_all(batch) {
                if tx.send(change).is_err() {
                    return;
                }
            }
        }
    });
    (store, rx, task)
}
