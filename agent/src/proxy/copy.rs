//! Copying a connection both ways without a buffer per idle connection.
//!
//! Bytes are read into a scratch buffer that belongs to the thread, not the connection, and
//! written on at once. Only what the other side cannot take right away is kept, in a
//! buffer of the connection's own until it drains; so an idle connection holds no copy
//! buffer at all, while a bulk stream still moves 64 KiB per read.

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The scratch buffer's size: one read's worth.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// One direction: from a reader to a writer.
#[derive(Default)]
struct Half {
    /// Read but not yet written (the writer pushed back).
    pending: Vec<u8>,
    at: usize,
    /// The reader ended; the writer is being shut down.
    eof: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                self.total += n as u64;
            }
            if !self.pending.is_empty() {
                // Drained: give the memory back.
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let step = SCRATCH_BUF.with(|scratch| -> Poll<io::Result<bool>> {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(false));
                }
                // Write what the other side takes now; keep only the rest.
                let mut at = 0;
                while at < n {
                    match Pin::new(&mut *w).poll_write(cx, &scratch[at..n]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(m)) => {
                            at += m;
                            self.total += m as u64;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                if at < n {
                    self.pending = scratch[at..n].to_vec();
                    self.at = 0;
                }
                Poll::Ready(Ok(true))
            });
            match ready!(step)? {
                true => {
                    // Flushing is the writer's business for sockets; for stream types that
                    // buffer (TLS, HTTP/2), it pushes the bytes out now.
                    if self.pending.is_empty() {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                    }
                }
                false => self.eof = true,
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended (each end's reader
/// finished and the other's writer shut down); returns the bytes each way (a to b, b to a).
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Half::default();
    let mut ba = Half::default();
    poll_fn(|cx| {
        let x = ab.poll(cx, a, b)?;
        let y = ba.poll(cx, b, a)?;
        if x.is_ready() && y.is_ready() {
            Poll::Ready(Ok((ab.total, ba.total)))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn both_ways_with_backpressure_and_half_close() {
        // Small pipes: the writer pushes back often, so bytes wait in `pending`.
        let (mut client, mut a) = duplex(1000);
        let (mut b, mut server) = duplex(777);
        let relay = tokio::spawn(async move { bidirectional(&mut a, &mut b).await });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_task = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut r, mut w) = tokio::io::split(&mut server);
            let write = async {
                w.write_all(&down2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let read = async { r.read_to_end(&mut got).await.unwrap() };
            tokio::join!(write, read);
            assert_eq!(got, up2);
        });
        let (mut r, mut w) = tokio::io::split(&mut client);
        let mut got = Vec::new();
        let write = async {
            w.write_all(&up).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let read = async { r.read_to_end(&mut got).await.unwrap() };
        tokio::join!(write, read);
        assert_eq!(got, down);
        server_task.await.unwrap();
        let (sent, received) = relay.await.unwrap().unwrap();
        assert_eq!((sent, received), (300_000, 200_000));
    }
}
