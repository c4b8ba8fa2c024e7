//! Accepted connections, bounded: at most so many at once, and each must
//! send its first request (after the TLS handshake and the HTTP/2
//! preface) within a deadline or be closed. Without this an idle TCP
//! connection was held forever, and a client could open thousands.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;
use tracing::warn;

/// What a request learns of its connection (through the request's
/// extensions): the flag its first request sets.
#[derive(Clone, Debug)]
pub struct Connection {
    first_request: Arc<AtomicBool>,
}

impl Connection {
    /// Called for every request: the connection has said something.
    pub(crate) fn requested(&self) {
        self.first_request.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection that holds one of the server's connection permits and
/// fails its reads once `deadline` passes without a request.
pub struct Guarded {
    io: TcpStream,
    info: Connection,
    deadline: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    /// Whether the deadline has passed with no request: the error to fail
    /// the connection with. Polling the timer also wakes the connection's
    /// task when it fires, so an idle connection is closed on time.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let sleep = self.deadline.as_mut()?;
        if self.info.first_request.load(Ordering::Relaxed) {
            self.deadline = None;
            return None;
        }
        sleep.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the first-request deadline",
            )
        })
    }
}

use std::future::Future;

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Guarded {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        self.info.clone()
    }
}

/// Connections refused because the server was full (for logs: the first,
/// then every power of two).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Wraps accepted TCP connections: over `max` at once are closed as soon
/// as they are accepted; the rest get `first_request` to ask something.
pub fn guard<S>(
    incoming: S,
    max: usize,
    first_request: Duration,
) -> impl Stream<Item = io::Result<Guarded>> + Send
where
    S: Stream<Item = io::Result<TcpStream>> + Send,
{
    let permits = Arc::new(Semaphore::new(max));
    incoming.filter_map(move |accepted| {
        let permits = permits.clone();
        async move {
            let io = match accepted {
                Ok(io) => io,
                Err(e) => return Some(Err(e)),
            };
            let Ok(permit) = permits.try_acquire_owned() else {
                let refused = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    warn!(
                        max_connections = max,
                        refused,
                        peer = ?io.peer_addr().ok(),
                        "xDS connection limit reached; closing new connections"
                    );
                }
                return None;
            };
            Some(Ok(Guarded {
                io,
                info: Connection {
                    first_request: Arc::new(AtomicBool::new(false)),
                },
                deadline: Some(Box::pin(tokio::time::sleep(first_request))),
                _permit: permit,
            }))
        }
    })
}
