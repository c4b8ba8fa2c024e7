//! The HTTP/2 body of an ADS response stream: gRPC messages written as
//! chunks that borrow the snapshot's bytes.
//!
//! tonic's own encoder copies every message into one per-stream buffer, and
//! that buffer keeps the capacity of the largest message for as long as the
//! stream lives: at 1k Ingresses that was ~400 KiB held by every idle
//! stream. Here a message becomes a short run of chunks instead: small parts
//! copied into frames of at most [`CHUNK`] bytes, made fresh and freed once
//! written; a resource body of [`SHARE_MIN`] bytes or more is handed over as
//! the snapshot's own `Bytes` (a reference count, no copy), so a 6 MiB
//! RouteConfiguration pushed to 100 streams is never copied in this process.
//! The chunks are made as HTTP/2 asks for them, so a stream that is blocked
//! on flow control holds no encoded data of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tonic::Status;

use super::snapshot::Resource;
use super::wire::WireParts;

/// A resource body at least this long is sent as the snapshot's bytes;
/// shorter ones are cheaper to copy than to send as a frame of their own.
pub(crate) const SHARE_MIN: usize = 2048;
/// Size a chunk of copied parts is filled to: HTTP/2's default frame size.
pub(crate) const CHUNK: usize = 16 * 1024;

/// One message, turned into chunks on demand.
pub(crate) struct Chunks<M> {
    message: M,
    resources: std::vec::IntoIter<Arc<Resource>>,
    /// The resource whose body was sent as its own chunk: what follows the
    /// body starts the next chunk.
    after: Option<Arc<Resource>>,
    /// A body to send before anything else.
    shared: Option<Bytes>,
    started: bool,
    done: bool,
}

impl<M: WireParts> Chunks<M> {
    pub(crate) fn new(message: M) -> Self {
        let resources = message.parts().into_iter();
        Chunks {
            message,
            resources,
            after: None,
            shared: None,
            started: false,
            done: false,
        }
    }
}

impl<M: WireParts> Iterator for Chunks<M> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(body) = self.shared.take() {
            return Some(body);
        }
        if self.done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(CHUNK + 256);
        if !self.started {
            self.started = true;
            let len = self.message.message_len();
            buf.put_u8(0);
            buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
            self.message.put_head(&mut buf);
        }
        if let Some(r) = self.after.take() {
            self.message.put_after_body(&r, &mut buf);
        }
        while buf.len() < CHUNK {
            let Some(r) = self.resources.next() else {
                self.message.put_tail(&mut buf);
                self.done = true;
                break;
            };
            self.message.put_before_body(&r, &mut buf);
            if r.body.len() >= SHARE_MIN {
                self.shared = Some(r.body.clone());
                self.after = Some(r);
                break;
            }
            buf.put_slice(&r.body);
            self.message.put_after_body(&r, &mut buf);
        }
        if buf.is_empty() {
            // Nothing was left to write but what `shared` holds.
            return self.shared.take();
        }
        Some(buf.freeze())
    }
}

/// The response body of one ADS stream: every message the stream task sends,
/// then gRPC's trailers (`grpc-status` 0 when the task ends the stream, or
/// the error it ended with).
pub(crate) struct ResponseBody<M> {
    responses: mpsc::Receiver<Result<M, Status>>,
    current: Option<Chunks<M>>,
    ended: bool,
}

impl<M: WireParts> ResponseBody<M> {
    pub(crate) fn new(responses: mpsc::Receiver<Result<M, Status>>) -> Self {
        ResponseBody {
            responses,
            current: None,
            ended: false,
        }
    }

    fn trailers(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        match status.add_header(&mut trailers) {
            Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            // A message that cannot be a header value: end without it.
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

impl<M: WireParts> Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunks) = &mut this.current {
                if let Some(chunk) = chunks.next() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                this.current = None;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(this.responses.poll_recv(cx)) {
                Some(Ok(message)) => this.current = Some(Chunks::new(message)),
                Some(Err(status)) => return this.trailers(status),
                None => return this.trailers(Status::ok("")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.current.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::snapshot::{Snapshot, type_url};
    use crate::xds::wire::tests::clusters as snapshot;
    use crate::xds::wire::{DeltaResponse, Selection, SotwResponse};
    use prost::Message;

    fn sotw(snap: &Arc<Snapshot>) -> SotwResponse {
        SotwResponse {
            version_info: "3".into(),
            type_url: type_url::CLUSTER.into(),
            nonce: "9".into(),
            snapshot: snap.clone(),
            selection: Selection::All,
        }
    }

    fn delta(snap: &Arc<Snapshot>) -> DeltaResponse {
        DeltaResponse {
            system_version_info: "3".into(),
            type_url: type_url::CLUSTER.into(),
            nonce: "9".into(),
            resources: snap
                .of_type(type_url::CLUSTER)
                .unwrap()
                .values()
                .cloned()
                .collect(),
            removed: vec!["gone".into()],
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Large bodies, small ones, empty ones, and enough small ones to fill
    /// several chunks.
    fn mixed() -> Arc<Snapshot> {
        let mut bodies = vec![("big-a", 70_000), ("big-b", SHARE_MIN), ("empty", 0)];
        let names: Vec<String> = (0..200).map(|i| format!("small-{i:03}")).collect();
        bodies.extend(names.iter().map(|n| (n.as_str(), 300)));
        snapshot(&bodies)
    }

    #[test]
    fn chunks_are_the_grpc_frame_and_share_large_bodies() {
        let snap = mixed();
        for (chunks, whole) in [
            (
                Chunks::new(sotw(&snap)).collect::<Vec<_>>(),
                framed(&sotw(&snap)),
            ),
            (
                Chunks::new(delta(&snap)).collect::<Vec<_>>(),
                framed(&delta(&snap)),
            ),
        ] {
            assert_eq!(chunks.concat(), whole);
            // Both large bodies went out as the snapshot's own bytes.
            let of_type = snap.of_type(type_url::CLUSTER).unwrap();
            let shared: Vec<*const u8> = ["big-a", "big-b"]
                .iter()
                .map(|name| of_type[*name].body.as_ptr())
                .collect();
            for (name, ptr) in ["big-a", "big-b"].iter().zip(&shared) {
                assert!(
                    chunks.iter().any(|c| c.as_ptr() == *ptr),
                    "{name} was copied"
                );
            }
            // Copied chunks stay near the frame size.
            assert!(chunks.len() > 3, "{} chunks", chunks.len());
            for c in chunks.iter().filter(|c| !shared.contains(&c.as_ptr())) {
                assert!(c.len() <= CHUNK + SHARE_MIN + 256, "chunk of {}", c.len());
            }
        }
    }

    #[test]
    fn an_empty_response_is_one_chunk() {
        let snap = snapshot(&[]);
        let mut r = sotw(&snap);
        r.selection = Selection::Named(Arc::default());
        let chunks: Vec<_> = Chunks::new(r.clone()).collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks.concat(), framed(&r));
    }

    async fn trailers_of(body: &mut ResponseBody<SotwResponse>) -> http::HeaderMap {
        use http_body_util::BodyExt;
        let frame = body.frame().await.expect("a frame").expect("not an error");
        frame.into_trailers().expect("trailers")
    }

    #[tokio::test]
    async fn the_body_ends_with_grpc_trailers() {
        use http_body_util::BodyExt;
        let snap = snapshot(&[("a", 10)]);
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(sotw(&snap))).await.unwrap();
        tx.send(Err(Status::unavailable("shutting down")))
            .await
            .unwrap();
        let mut body = ResponseBody::new(rx);
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], &framed(&sotw(&snap))[..]);
        let trailers = trailers_of(&mut body).await;
        assert_eq!(trailers["grpc-status"], "14");
        // Percent-encoded, as gRPC specifies.
        assert_eq!(trailers["grpc-message"], "shutting%20down");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());

        // A stream the task simply ends closes with status 0.
        let (tx, rx) = mpsc::channel::<Result<SotwResponse, Status>>(1);
        drop(tx);
        let mut body = ResponseBody::new(rx);
        assert_eq!(trailers_of(&mut body).await["grpc-status"], "0");
    }
}
