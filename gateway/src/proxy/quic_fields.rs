//! What h3 (0.0.8) does not check in a request's header section: a pseudo-header sent twice
//! (RFC 9114 4.3: exactly one `:method`, `:scheme`, `:path`; a repeated one makes the request
//! malformed). h3 keeps the last value silently. So the QUIC connection handed to h3 is
//! wrapped: each request stream's first HEADERS frame is looked at as it passes (its bytes
//! are not changed), its field lines counted, and the handler compares that count with
//! what h3 decoded. The count needs no QPACK decoding: every field line says its own length.
//! The gateway's QPACK dynamic table has no capacity, so the section refers to the static
//! table only, where `:authority` is index 0.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use http::Request;

/// Counts kept per connection at most (well above its concurrent stream limit).
const MAX_COUNTED: usize = 1024;

/// How many field lines each request stream's header section had, until the handler asks.
#[derive(Default)]
pub(crate) struct FieldCounts(Mutex<HashMap<StreamId, Lines>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lines {
    /// All field lines.
    total: usize,
    /// Those naming `:authority` (static index 0, or the literal name).
    authority: usize,
}

impl FieldCounts {
    /// Whether `req` (as h3 decoded it from stream `id`) lost field lines on the way: a
    /// repeated pseudo-header. `false` when the stream's lines were not counted.
    pub fn repeated_pseudo_header<T>(&self, id: StreamId, req: &Request<T>) -> bool {
        let Some(lines) = self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) else {
            return false;
        };
        // h3 builds the URI's authority from `host` when there is one, whether or not
        // `:authority` came too; without `host`, only from `:authority`.
        let authority = if req.headers().contains_key(http::header::HOST) {
            lines.authority.min(1)
        } else {
            usize::from(req.uri().authority().is_some())
        };
        let decoded = req.headers().len()
            + 1
            + usize::from(req.uri().scheme().is_some())
            + usize::from(req.uri().path_and_query().is_some())
            + usize::from(req.extensions().get::<h3::ext::Protocol>().is_some())
            + authority;
        lines.total != decoded
    }

    fn record(&self, id: StreamId, lines: Lines) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Requests h3 refused after they were counted are never asked about: past a bound,
        // the oldest stream's count goes (live streams are the newest).
        if map.len() >= MAX_COUNTED
            && let Some(&oldest) = map.keys().min()
        {
            map.remove(&oldest);
        }
        map.insert(id, lines);
    }
}

/// A QPACK prefixed integer (RFC 7541 5.1) at the start of `s`: value and length.
fn prefixed_int(s: &[u8], bits: u8) -> Option<(u64, usize)> {
    let mask = ((1u16 << bits) - 1) as u8;
    let first = *s.first()? & mask;
    if first < mask {
        return Some((u64::from(first), 1));
    }
    let mut value = u64::from(mask);
    let mut shift = 0u32;
    for (i, b) in s.iter().enumerate().skip(1) {
        if shift > 56 {
            return None;
        }
        value = value.checked_add(u64::from(b & 0x7f) << shift)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A string literal with a length prefix of `bits` bits: the literal's bytes (still
/// Huffman-coded if so) and the rest.
fn string(s: &[u8], bits: u8) -> Option<(&[u8], &[u8])> {
    let (len, n) = prefixed_int(s, bits)?;
    let end = n.checked_add(usize::try_from(len).ok()?)?;
    Some((s.get(n..end)?, s.get(end..)?))
}

/// The field lines of an encoded field section (RFC 9204 4.5); `None` if it does not parse
/// (h3 then refuses it itself).
fn count_lines(section: &[u8]) -> Option<Lines> {
    let (_, n) = prefixed_int(section, 8)?; // Required Insert Count
    let mut s = section.get(n..)?;
    let (_, n) = prefixed_int(s, 7)?; // Sign and Delta Base
    s = s.get(n..)?;
    let mut lines = Lines {
        total: 0,
        authority: 0,
    };
    while let Some(&b) = s.first() {
        let authority;
        if b & 0x80 != 0 {
            // Indexed field line: 1 T index(6).
            let (index, n) = prefixed_int(s, 6)?;
            authority = b & 0x40 != 0 && index == 0;
            s = s.get(n..)?;
        } else if b & 0x40 != 0 {
            // Literal with name reference: 01 N T index(4), value.
            let (index, n) = prefixed_int(s, 4)?;
            authority = b & 0x10 != 0 && index == 0;
            s = string(s.get(n..)?, 7)?.1;
        } else if b & 0x20 != 0 {
            // Literal with literal name: 001 N H length(3) name, value.
            let (name, rest) = string(s, 3)?;
            authority = b & 0x08 == 0 && name == b":authority";
            s = string(rest, 7)?.1;
        } else if b & 0x10 != 0 {
            // Indexed field line with post-base index: 0001 index(4).
            let (_, n) = prefixed_int(s, 4)?;
            authority = false;
            s = s.get(n..)?;
        } else {
            // Literal with post-base name reference: 0000 N index(3), value.
            let (_, n) = prefixed_int(s, 3)?;
            authority = false;
            s = string(s.get(n..)?, 7)?.1;
        }
        lines.total += 1;
        lines.authority += usize::from(authority);
    }
    Some(lines)
}

/// A QUIC variable-length integer (RFC 9000 16): value and length.
fn varint(s: &[u8]) -> Option<(u64, usize)> {
    let first = *s.first()?;
    let len = 1usize << (first >> 6);
    let bytes = s.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// What the bytes seen so far on a request stream say: more needed, the first HEADERS
/// frame's field lines, or nothing to count (not parseable, or too long to hold).
enum Seen {
    More,
    Counted(Lines),
    Unknown,
}

fn first_headers(buf: &[u8]) -> Seen {
    let mut p = 0;
    loop {
        let Some((kind, n)) = varint(&buf[p..]) else {
            return Seen::More;
        };
        let Some((len, m)) = buf.get(p + n..).and_then(varint) else {
            return Seen::More;
        };
        let start = p + n + m;
        let Some(end) = usize::try_from(len).ok().and_then(|l| start.checked_add(l)) else {
            return Seen::Unknown;
        };
        if end > buf.len() {
            return Seen::More;
        }
        match kind {
            0x01 => {
                return count_lines(&buf[start..end]).map_or(Seen::Unknown, Seen::Counted);
            }
            // DATA before HEADERS is an error h3 reports.
            0x00 => return Seen::Unknown,
            // Reserved and unknown frame types, which h3 skips.
            _ => p = end,
        }
    }
}

/// Looks at a request stream's first bytes.
struct Inspect {
    id: StreamId,
    counts: Arc<FieldCounts>,
    /// Bytes seen so far, while the first HEADERS frame is incomplete; `None` once done.
    buf: Option<Vec<u8>>,
    limit: usize,
}

impl Inspect {
    fn new(id: StreamId, counts: Arc<FieldCounts>, limit: usize) -> Self {
        Self {
            id,
            counts,
            buf: Some(Vec::new()),
            limit,
        }
    }

    fn see(&mut self, data: &Bytes) {
        let Some(buf) = self.buf.as_mut() else {
            return;
        };
        // The common case, a whole HEADERS frame in the first chunk, copies nothing.
        let seen = if buf.is_empty() {
            first_headers(data)
        } else {
            buf.extend_from_slice(data);
            first_headers(buf)
        };
        match seen {
            Seen::Counted(lines) => {
                self.counts.record(self.id, lines);
                self.buf = None;
            }
            Seen::Unknown => self.buf = None,
            Seen::More => {
                if buf.is_empty() {
                    buf.extend_from_slice(data);
                }
                if buf.len() > self.limit {
                    self.buf = None;
                }
            }
        }
    }
}

/// The QUIC connection h3 serves, with request streams looked at on the way.
pub(crate) struct Connection {
    inner: h3_quinn::Connection,
    counts: Arc<FieldCounts>,
    limit: usize,
}

impl Connection {
    /// `limit`: the most bytes held while a HEADERS frame is incomplete (beyond it, the
    /// stream is not counted: h3 refuses a section that large anyway).
    pub fn new(conn: quinn::Connection, counts: Arc<FieldCounts>, limit: usize) -> Self {
        Self {
            inner: h3_quinn::Connection::new(conn),
            counts,
            limit,
        }
    }
}

pub(crate) struct BidiStream<B: Buf> {
    inner: h3_quinn::BidiStream<B>,
    inspect: Option<Inspect>,
}

pub(crate) struct RecvStream {
    inner: h3_quinn::RecvStream,
    inspect: Option<Inspect>,
}

pub(crate) struct OpenStreams(h3_quinn::OpenStreams);

fn poll_inspected<R: quic::RecvStream<Buf = Bytes>>(
    inner: &mut R,
    inspect: &mut Option<Inspect>,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
    let polled = inner.poll_data(cx);
    if let (Poll::Ready(Ok(Some(data))), Some(i)) = (&polled, inspect.as_mut()) {
        i.see(data);
        if i.buf.is_none() {
            *inspect = None;
        }
    }
    polled
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_recv(&mut self.inner, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let stream =
            std::task::ready!(quic::Connection::<B>::poll_accept_bidi(&mut self.inner, cx))?;
        let id = quic::RecvStream::recv_id(&stream);
        Poll::Ready(Ok(BidiStream {
            inner: stream,
            inspect: Some(Inspect::new(id, self.counts.clone(), self.limit)),
        }))
    }

    fn opener(&self) -> Self::OpenStreams {
        OpenStreams(quic::Connection::<B>::opener(&self.inner))
    }
}

/// Opening streams is the inner connection's; bidirectional ones (which the server never
/// opens) are wrapped only so that their type is the one accepted streams have.
macro_rules! open_streams {
    ($ty:ty, $inner:tt) => {
        impl<B: Buf> quic::OpenStreams<B> for $ty {
            type BidiStream = BidiStream<B>;
            type SendStream = h3_quinn::SendStream<B>;

            fn poll_open_bidi(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
                quic::OpenStreams::<B>::poll_open_bidi(&mut self.$inner, cx).map_ok(|inner| {
                    BidiStream {
                        inner,
                        inspect: None,
                    }
                })
            }

            fn poll_open_send(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
                quic::OpenStreams::<B>::poll_open_send(&mut self.$inner, cx)
            }

            fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
                quic::OpenStreams::<B>::close(&mut self.$inner, code, reason);
            }
        }
    };
}

open_streams!(Connection, inner);
open_streams!(OpenStreams, 0);

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        poll_inspected(&mut self.inner, &mut self.inspect, cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = h3_quinn::SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            RecvStream {
                inner: recv,
                inspect: self.inspect,
            },
        )
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        poll_inspected(&mut self.inner, &mut self.inspect, cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HEADERS frame around `section`.
    fn frame(section: &[u8]) -> Vec<u8> {
        let mut f = vec![0x01, section.len() as u8];
        f.extend_from_slice(section);
        f
    }

    #[test]
    fn field_lines_are_counted_in_every_representation() {
        let section = [
            0x00, 0x00, // Required Insert Count 0, Delta Base 0
            0xd1, // indexed, static 17: :method GET
            0xd7, // indexed, static 23: :scheme https
            0xc1, // indexed, static 1: :path /
            0x50, 0x01, b'a', // literal, static name ref 0 (:authority) = "a"
            0x5f, 0x1d, 0x01, b'x', // literal, static name ref 44 (4-bit prefix continued)
            0x23, b'x', b'-', b'y', 0x01, b'z', // literal name "x-y" = "z"
            0x27, 0x03, b':', b'a', b'u', b't', b'h', b'o', b'r', b'i', b't', b'y', 0x01, b'b',
        ];
        let lines = count_lines(&section).unwrap();
        assert_eq!(
            lines,
            Lines {
                total: 7,
                authority: 2
            }
        );
        // Split anywhere, the frame is counted once it is whole.
        let f = frame(&section);
        for cut in 0..f.len() {
            let counts = Arc::new(FieldCounts::default());
            let id = StreamId::try_from(0).unwrap();
            let mut i = Inspect::new(id, counts.clone(), 1024);
            i.see(&Bytes::copy_from_slice(&f[..cut]));
            i.see(&Bytes::copy_from_slice(&f[cut..]));
            assert_eq!(
                counts.0.lock().unwrap().get(&id),
                Some(&lines),
                "cut at {cut}"
            );
        }
        // A reserved frame type before HEADERS is skipped.
        let mut g = vec![0x21, 0x02, 0xaa, 0xbb];
        g.extend_from_slice(&f);
        assert!(matches!(first_headers(&g), Seen::Counted(l) if l == lines));
        // Truncated sections do not parse.
        assert_eq!(count_lines(&section[..section.len() - 1]), None);
    }

    #[test]
    fn a_repeated_pseudo_header_shows_in_the_count() {
        let counts = FieldCounts::default();
        let id = StreamId::try_from(4).unwrap();
        let req = Request::get("https://a.example/x").body(()).unwrap();
        // :method :scheme :path :authority: nothing lost.
        counts.record(
            id,
            Lines {
                total: 4,
                authority: 1,
            },
        );
        assert!(!counts.repeated_pseudo_header(id, &req));
        // A fifth line that h3 did not keep.
        counts.record(
            id,
            Lines {
                total: 5,
                authority: 1,
            },
        );
        assert!(counts.repeated_pseudo_header(id, &req));
        // Not counted: no verdict.
        assert!(!counts.repeated_pseudo_header(id, &req));
        // `host` instead of `:authority`: h3 builds the authority from it.
        let mut with_host = Request::get("https://a.example/x").body(()).unwrap();
        with_host
            .headers_mut()
            .insert(http::header::HOST, "a.example".parse().unwrap());
        counts.record(
            id,
            Lines {
                total: 4,
                authority: 0,
            },
        );
        assert!(!counts.repeated_pseudo_header(id, &with_host));
        counts.record(
            id,
            Lines {
                total: 6,
                authority: 2,
            },
        );
        assert!(counts.repeated_pseudo_header(id, &with_host));
    }
}
