//! What the xDS streams report, turned into metrics, the live stream table,
//! and diagnostics: a NACK becomes a diagnostic on the Kubernetes objects
//! behind the rejected resources, logged and shown under /debug, until that
//! client acknowledges a later version of the type or goes away.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tracing::warn;

use super::metrics::{labels2, secs, short_type};
use super::{NackRecord, Report, rfc3339};
use crate::xds::{XdsEvent, XdsServer};

/// Follows what the streams report until the server is gone.
pub async fn consume(mut events: mpsc::Receiver<XdsEvent>, status: Arc<Report>, server: XdsServer) {
    while let Some(event) = events.recv().await {
        handle(&status, event);
        status
            .metrics
            .xds_dropped_events
            .set(server.dropped_events() as i64);
    }
}

fn handle(status: &Report, event: XdsEvent) {
    let m = &status.metrics;
    match event {
        XdsEvent::StreamOpened {
            stream,
            node,
            protocol,
        } => {
            let label = m.node_label_opened(stream, &node);
            m.xds_streams
                .get_or_create(&labels2("node", label, "protocol", protocol.as_str()))
                .inc();
            status.stream_opened(stream, &node, protocol);
        }
        XdsEvent::StreamClosed {
            stream,
            node,
            protocol,
        } => {
            let label = m.node_label_closed(stream).unwrap_or(node);
            let labels = labels2("node", label, "protocol", protocol.as_str());
            let left = m.xds_streams.get_or_create(&labels).dec() - 1;
            if left <= 0 {
                // Nodes come and go: do not keep a series per departed node.
                m.xds_streams.remove(&labels);
            }
            status.stream_closed(stream);
        }
        XdsEvent::Pushed(push) => {
            let labels = labels2(
                "protocol",
                push.protocol.as_str(),
                "type",
                short_type(&push.type_url),
            );
            m.xds_pushes.get_or_create(&labels).inc();
            if let Some(p) = push.version.parse().ok().and_then(|v| status.published(v)) {
                m.snapshot_to_push
                    .get_or_create(&labels)
                    .observe(secs(p.at.elapsed()));
            }
            status.stream_pushed(push.stream, &push.type_url, &push.version);
        }
        XdsEvent::Ack(ack) => {
            if let Some(p) = ack.version.parse().ok().and_then(|v| status.published(v)) {
                let labels = labels2(
                    "protocol",
                    ack.protocol.as_str(),
                    "type",
                    short_type(&ack.type_url),
                );
                m.snapshot_to_ack
                    .get_or_create(&labels)
                    .observe(secs(p.at.elapsed()));
                if let Some(change) = p.change_at {
                    m.change_to_ack
                        .get_or_create(&labels)
                        .observe(secs(change.elapsed()));
                }
            }
            status.stream_acked(ack.stream, &ack.type_url, &ack.version);
        }
        XdsEvent::Nack(nack) => {
            m.xds_nacks
                .get_or_create(&labels2(
                    "protocol",
                    nack.protocol.as_str(),
                    "type",
                    short_type(&nack.type_url),
                ))
                .inc();
            // Logged once per NACK (the stream does not repeat it), its
            // message already cut to MAX_NACK_MESSAGE; long lists shortened.
            const LOGGED: usize = 10;
            let objects: Vec<String> = nack
                .sources
                .iter()
                .take(LOGGED)
                .map(|k| k.to_string())
                .collect();
            warn!(
                node = %nack.node,
                stream = nack.stream,
                type_url = %nack.type_url,
                version = %nack.version,
                resources = ?&nack.resource_names[..nack.resource_names.len().min(LOGGED)],
                rejected = nack.resource_names.len(),
                objects = ?objects,
                error = %nack.message,
                "data plane rejected configuration built from these objects"
            );
            status.record_nack(NackRecord {
                stream: nack.stream,
                node: nack.node,
                protocol: nack.protocol.as_str(),
                type_url: nack.type_url,
                version: nack.version,
                message: nack.message,
                resources: nack.resource_names,
                objects: nack.sources,
                at: rfc3339(SystemTime::now()),
            });
        }
    }
}
