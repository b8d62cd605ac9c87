//! Reading an HBONE connection's socket in large pieces, below rustls.
//!
//! rustls asks its transport for at most 4 KiB per read, so a bulk stream would cost a
//! system call per 4 KiB. [`ReadAhead`] reads up to [`READ_AHEAD`] bytes at once and hands
//! them out from its buffer. It passes reads straight through until [`ReadAhead::enable`]
//! is called (after the TLS handshake), so a connection that has not authenticated holds
//! no buffer; once enabled it keeps one per connection (a pooled connection carries up to
//! 100 streams). Writes always pass straight through.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once.
pub const READ_AHEAD: usize = 64 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    /// Empty until enabled.
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Box::default(),
            pos: 0,
            end: 0,
        }
    }

    /// From now on, read ahead.
    pub fn enable(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; READ_AHEAD].into_boxed_slice();
        }
    }

    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.end - self.pos
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.end {
            // Nothing buffered: not enabled, or the caller takes at least a buffer's worth.
            if this.buf.is_empty() || out.remaining() >= this.buf.len() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.pos = 0;
            this.end = rb.filled().len();
            if this.end == 0 {
                // End of stream.
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
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
        bufs: &[IoSlice<'_>],
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn reads_through_then_ahead_in_order_to_the_end() {
        let (mut peer, near) = duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        peer.write_all(&data).await.unwrap();
        peer.shutdown().await.unwrap();
        let mut r = ReadAhead::new(near);
        // Before `enable`, a read takes only what was asked for: nothing is held.
        let mut got = vec![0u8; 100];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(r.buffered(), 0);
        assert!(r.buf.is_empty());
        r.enable();
        // Small reads, as rustls makes them: the first fills the buffer.
        let mut small = [0u8; 4096];
        let n = r.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
        assert_eq!(n, 4096);
        assert_eq!(r.buffered(), READ_AHEAD - 4096);
        loop {
            let n = r.read(&mut small[..3000]).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut peer, near) = duplex(1024);
        let mut w = ReadAhead::new(near);
        w.enable();
        w.write_all(b"hello").await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }
}
