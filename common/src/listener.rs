//! A TCP listener that keeps at most a given number of connections open. Past the limit it
//! accepts nothing until a connection closes, so new clients wait in the kernel's accept queue
//! and no client, however many connections it opens, makes a service hold unbounded sockets
//! and memory. A connection on which nothing is read or written for the idle timeout is closed,
//! so connections opened and left silent do not keep their slots (the HTTP server itself has no
//! such timeout).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Duration, Instant, Sleep};

/// Accepts connections while fewer than the limit are open.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize, idle_timeout: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            idle_timeout,
        }
    }
}

/// An accepted connection; its slot is free again once it is dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    /// When the connection counts as idle; pushed back by every byte read or written.
    idle: Pin<Box<Sleep>>,
}

impl LimitedStream {
    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        // axum's own accept retries on errors (a full descriptor table, say) with a pause.
        let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
        // Without TCP_NODELAY, a response written in two segments can wait for the client's
        // delayed ACK (up to 40 ms on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let idle = Box::pin(tokio::time::sleep(self.idle_timeout));
        (
            LimitedStream {
                stream,
                _slot: slot,
                idle_timeout: self.idle_timeout,
                idle,
            },
            address,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                Poll::Ready(result)
            }
            Poll::Pending if this.idle.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        if written.is_ready() {
            this.active();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if written.is_ready() {
            this.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
