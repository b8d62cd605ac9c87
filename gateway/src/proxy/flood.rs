//! HTTP/2 control-frame floods: a client sending SETTINGS or PING frames (each one makes the
//! server answer) faster than any real client does. The h2 library keeps one pending answer
//! and stops reading until it is written, so such a flood costs no memory, but it holds a
//! connection and CPU; the guard ends it as Envoy does: GOAWAY with ENHANCE_YOUR_CALM.
//!
//! The guard sits between the socket and the HTTP/2 server and only watches frame headers
//! go by (9 bytes each, both ways). The GOAWAY is written at a frame boundary of the
//! server's own output, and the connection then reads as ended.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::idle::Activity;

/// Control frames (SETTINGS and PING, not their acknowledgements) a client may send in
/// [`WINDOW`].
pub const LIMIT: u32 = 100;
pub const WINDOW: Duration = Duration::from_secs(1);

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PREFACE: usize = 24;

/// Follows frame boundaries in a byte stream.
#[derive(Default)]
struct Scanner {
    skip: usize,
    header: [u8; 9],
    have: usize,
    body_left: usize,
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8], mut frame: impl FnMut(u8, u8, u32)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 9 {
                let h = &self.header;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                frame(h[3], h[4], stream);
                self.body_left = len;
                self.have = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0 && self.body_left == 0
    }
}

enum State {
    Open,
    /// A flood was seen: the GOAWAY, and how much of it is written.
    Tripped(Vec<u8>, usize),
    /// The GOAWAY is out; the connection reads as ended.
    Done,
}

pub struct FloodGuard<T> {
    inner: T,
    incoming: Scanner,
    outgoing: Scanner,
    window: Instant,
    control: u32,
    last_stream: u32,
    state: State,
    /// Touched by every HEADERS or DATA frame, either way: the connection is in use.
    activity: Arc<Activity>,
}

impl<T> FloodGuard<T> {
    /// `preface`: whether the client's connection preface is still to come on this stream.
    pub fn new(inner: T, preface: bool, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            incoming: Scanner {
                skip: if preface { PREFACE } else { 0 },
                ..Scanner::default()
            },
            outgoing: Scanner::default(),
            window: Instant::now(),
            control: 0,
            last_stream: 0,
            state: State::Open,
            activity,
        }
    }

    fn goaway(&self) -> Vec<u8> {
        let mut f = vec![0, 0, 8, 0x7, 0, 0, 0, 0, 0];
        f.extend_from_slice(&self.last_stream.to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(Ok(())),
                State::Tripped(frame, written) => {
                    if !this.outgoing.at_boundary() {
                        // In the middle of one of the server's frames: no clean place for
                        // the GOAWAY; just end the connection.
                        this.state = State::Done;
                        return Poll::Ready(Err(io::Error::other("HTTP/2 control frame flood")));
                    }
                    while *written < frame.len() {
                        let n =
                            ready!(Pin::new(&mut this.inner).poll_write(cx, &frame[*written..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *written += n;
                    }
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    this.state = State::Done;
                }
                State::Open => break,
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let now = Instant::now();
        if now.duration_since(this.window) > WINDOW {
            this.window = now;
            this.control = 0;
        }
        let (mut control, mut last, mut used) = (this.control, this.last_stream, false);
        this.incoming
            .feed(&buf.filled()[before..], |ty, flags, stream| {
                if (ty == SETTINGS || ty == PING) && flags & ACK == 0 {
                    control += 1;
                }
                if ty == HEADERS {
                    last = last.max(stream);
                }
                used |= ty == HEADERS || ty == DATA;
            });
        this.control = control;
        this.last_stream = last;
        if used {
            this.activity.touch();
        }
        if this.control > LIMIT {
            tracing::info!(
                control_frames = this.control,
                "HTTP/2 SETTINGS/PING flood: GOAWAY ENHANCE_YOUR_CALM"
            );
            this.state = State::Tripped(this.goaway(), 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FloodGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.state {
            // After the GOAWAY nothing more goes out.
            State::Done => Poll::Ready(Ok(buf.len())),
            // Before it, only up to the end of the frame being written.
            State::Tripped(..) if this.outgoing.at_boundary() => Poll::Ready(Ok(buf.len())),
            _ => {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                let mut used = false;
                this.outgoing
                    .feed(&buf[..n], |ty, _, _| used |= ty == HEADERS || ty == DATA);
                if used {
                    this.activity.touch();
                }
                Poll::Ready(Ok(n))
            }
        }
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
    use super::*;

    #[test]
    fn the_scanner_follows_frames_split_anywhere() {
        // Preface, SETTINGS (6 bytes), PING, HEADERS on stream 3 (2 bytes).
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        wire.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        wire.extend_from_slice(&[0, 0, 2, 0x1, 0x4, 0, 0, 0, 3, 0x82, 0x84]);
        for split in 1..wire.len() {
            let mut s = Scanner {
                skip: PREFACE,
                ..Scanner::default()
            };
            let mut seen = Vec::new();
            for chunk in wire.chunks(split) {
                s.feed(chunk, |ty, flags, stream| seen.push((ty, flags, stream)));
            }
            assert_eq!(
                seen,
                vec![(0x4, 0, 0), (0x6, 0, 0), (0x1, 0x4, 3)],
                "split {split}"
            );
            assert!(s.at_boundary());
        }
    }
}
