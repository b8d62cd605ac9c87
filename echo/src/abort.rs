//! A TCP stream that can be made to end with a reset (RST) instead of a clean close.
//!
//! The retry simulation fails an attempt without `responseCode` by aborting the
//! connection, as a crashed backend would. The request handler raises the connection's
//! [`AbortFlag`] and returns an error; hyper then drops the connection, and dropping an
//! [`AbortableStream`] whose flag is raised sets `SO_LINGER` to zero first, so the kernel
//! sends RST rather than FIN.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared between a connection's stream and its request handler.
#[derive(Clone, Debug, Default)]
pub(crate) struct AbortFlag(Arc<AtomicBool>);

impl AbortFlag {
    /// Have the connection reset when it is dropped.
    pub(crate) fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A [`TcpStream`] that is reset on drop once its [`AbortFlag`] is raised.
#[derive(Debug)]
pub(crate) struct AbortableStream {
    inner: TcpStream,
    abort: AbortFlag,
}

impl AbortableStream {
    pub(crate) fn new(inner: TcpStream) -> (Self, AbortFlag) {
        let abort = AbortFlag::default();
        let stream = Self {
            inner,
            abort: abort.clone(),
        };
        (stream, abort)
    }
}

impl Drop for AbortableStream {
    fn drop(&mut self) {
        if self.abort.is_raised() {
            // Best effort: without it the peer sees a FIN, still a failed attempt.
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for AbortableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AbortableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
