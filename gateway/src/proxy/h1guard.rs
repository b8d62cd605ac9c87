//! HTTP/1.1 request framing, checked as the bytes pass on their way to hyper's parser.
//!
//! hyper reads framing safely, but leniently where a proxy should refuse (RFC 9112): it
//! takes a bare LF as a line end, lets chunked win over a Content-Length (and drops the
//! latter before the request reaches the gateway), and skips chunk extensions without
//! looking at them. A request that two parsers could read two ways is how requests are
//! smuggled, so the guard refuses these outright, as Envoy and nginx do:
//!
//! - a line of the head, of a chunk size or of the trailers that ends in a bare LF;
//! - Content-Length together with Transfer-Encoding, or a Transfer-Encoding whose final
//!   coding is not chunked; a Content-Length that is not one decimal number;
//! - a chunk-size line that is not `hex-size *( BWS ";" BWS token [ BWS "=" BWS
//!   ( token / quoted-string ) ] )`, or chunk data not followed by CRLF.
//!
//! The guard follows message boundaries (head, Content-Length or chunked body, trailers)
//! without copying: bytes go straight into hyper's buffer and are scanned there; only a
//! line split across two reads is kept, and only until it ends. A refused head is answered
//! by hyper itself: the guard hands it a byte no request head may hold, so hyper writes its
//! `400 Bad Request`, in order after any response still going out, and closes. A refused
//! body fails the read, which the handler answers with 400.
//!
//! After a request that asks for a protocol switch (`Upgrade`, or `CONNECT`), the bytes
//! that follow are not HTTP if the switch happens, so the guard holds them until the
//! request's response is known ([`Link`]), then either stops looking or goes on.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, ReadBuf};
use tracing::debug;

use crate::metrics::{Failure, Metrics, Origin, Unmatched};

/// What makes hyper refuse the head it is reading: a control byte, which no request line,
/// header name or header value may hold.
const REFUSE: &[u8] = b"\x01\r\n\r\n";
/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request's framing was refused, as the debug log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    BareLf,
    ContentLengthWithTransferEncoding,
    TransferCodingNotChunked,
    BadContentLength,
    BadChunkSize,
    BadChunkExtension,
    ChunkLineTooLong,
    /// A line of the head or the trailers longer than the guard keeps. (hyper refuses a
    /// head over its limit first, with 431; the guard's limit is twice that, so this only
    /// catches a head hyper's buffer slack would otherwise let through unexamined.)
    LineTooLong,
    MissingChunkCrlf,
}

impl Violation {
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::BareLf => "a line ends in a bare LF",
            Violation::ContentLengthWithTransferEncoding => {
                "both Content-Length and Transfer-Encoding"
            }
            Violation::TransferCodingNotChunked => "chunked is not the final transfer coding",
            Violation::BadContentLength => "Content-Length is not one decimal number",
            Violation::BadChunkSize => "malformed chunk size",
            Violation::BadChunkExtension => "malformed chunk extension",
            Violation::ChunkLineTooLong => "chunk-size line too long",
            Violation::LineTooLong => "header or trailer line too long",
            Violation::MissingChunkCrlf => "chunk data not followed by CRLF",
        }
    }
}

/// What the request handler tells the guard: how many responses it has made, and the status
/// of the last one. A request asking for a protocol switch is the last one read until its
/// response says whether the switch happened.
#[derive(Default)]
pub struct Link {
    responses: AtomicU64,
    status: AtomicU16,
    waker: AtomicWaker,
}

impl Link {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A response to the connection's next request is ready.
    pub fn responded(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
        self.responses.fetch_add(1, Ordering::Release);
        self.waker.wake();
    }

    /// The status of response `n` (counted from 1), once it is made.
    fn status_of(&self, n: u64) -> Option<u16> {
        (self.responses.load(Ordering::Acquire) >= n).then(|| self.status.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    RequestLine,
    Headers,
    /// Content-Length bytes still to come.
    Body(u64),
    ChunkLine,
    ChunkData(u64),
    /// The CR, then the LF, after a chunk's data.
    ChunkCr,
    ChunkLf,
    Trailers,
    /// Request `n` asked for a protocol switch; nothing more is read until its response.
    AwaitVerdict {
        request: u64,
        connect: bool,
    },
    /// The protocol was switched: the bytes are not HTTP any more.
    Passthrough,
}

/// What a request's head says about its body and about switching protocols.
#[derive(Default)]
struct Head {
    content_length: Option<u64>,
    bad_length: bool,
    /// `Some(chunked is the final coding)` once a Transfer-Encoding field was seen.
    chunked: Option<bool>,
    upgrade: bool,
    connect: bool,
}

/// The outcome of scanning a run of bytes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// All of them are fine.
    Pass,
    /// The first `n` are fine and end a request that asked for a protocol switch; the rest
    /// must wait for the verdict.
    Hold(usize),
    /// The first `n` are fine; what follows is refused, in a body (`true`) or a head.
    Refuse(usize, Violation, bool),
}

/// Follows request boundaries through a byte stream.
struct Scanner {
    phase: Phase,
    /// A line begun in an earlier read (empty, unallocated, otherwise).
    line: Vec<u8>,
    /// The longest line kept whole; a longer one is refused, never examined in part.
    max_line: usize,
    head: Head,
    /// Request heads read so far.
    requests: u64,
}

impl Scanner {
    fn new(max_line: usize) -> Self {
        Self {
            phase: Phase::RequestLine,
            line: Vec::new(),
            max_line,
            head: Head::default(),
            requests: 0,
        }
    }

    /// Whether the head of the current request is behind (a refusal now is its body's).
    fn in_body(&self) -> bool {
        !matches!(self.phase, Phase::RequestLine | Phase::Headers)
    }

    fn line_phase(&self) -> bool {
        matches!(
            self.phase,
            Phase::RequestLine | Phase::Headers | Phase::ChunkLine | Phase::Trailers
        )
    }

    fn feed(&mut self, data: &[u8]) -> Step {
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            match self.phase {
                Phase::Body(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    if n == left {
                        if let Some(step) = self.message_done(at) {
                            return step;
                        }
                    } else {
                        self.phase = Phase::Body(left - n);
                    }
                }
                Phase::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.phase = if n == left {
                        Phase::ChunkCr
                    } else {
                        Phase::ChunkData(left - n)
                    };
                }
                Phase::ChunkCr | Phase::ChunkLf => {
                    let want = if self.phase == Phase::ChunkCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if rest[0] != want {
                        return Step::Refuse(at, Violation::MissingChunkCrlf, true);
                    }
                    at += 1;
                    self.phase = if want == b'\r' {
                        Phase::ChunkLf
                    } else {
                        Phase::ChunkLine
                    };
                }
                Phase::AwaitVerdict { .. } => return Step::Hold(at),
                Phase::Passthrough => return Step::Pass,
                _ => {
                    debug_assert!(self.line_phase());
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        let limit = if self.phase == Phase::ChunkLine {
                            MAX_CHUNK_LINE
                        } else {
                            self.max_line
                        };
                        if self.line.len() + rest.len() > limit {
                            let v = if self.phase == Phase::ChunkLine {
                                Violation::ChunkLineTooLong
                            } else {
                                Violation::LineTooLong
                            };
                            return Step::Refuse(at, v, self.in_body());
                        }
                        self.line.extend_from_slice(rest);
                        return Step::Pass;
                    };
                    let result = if self.line.is_empty() {
                        self.end_line(&rest[..lf])
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&rest[..lf]);
                        let r = self.end_line(&line);
                        if line.capacity() <= 1024 {
                            line.clear();
                            self.line = line;
                        }
                        r
                    };
                    if let Err(v) = result {
                        return Step::Refuse(at + lf, v, self.in_body());
                    }
                    at += lf + 1;
                    if !self.line_phase()
                        && let Some(step) = self.after_line(at)
                    {
                        return step;
                    }
                }
            }
        }
        Step::Pass
    }

    /// Right after a line moved the scanner out of the line phases: a head without a body
    /// may have ended a message.
    fn after_line(&mut self, at: usize) -> Option<Step> {
        match self.phase {
            Phase::Body(0) => self.message_done(at),
            _ => None,
        }
    }

    /// A message ended at `at`: the next request follows, unless this one asked to switch.
    fn message_done(&mut self, at: usize) -> Option<Step> {
        let head = std::mem::take(&mut self.head);
        if head.upgrade || head.connect {
            self.phase = Phase::AwaitVerdict {
                request: self.requests,
                connect: head.connect,
            };
            return Some(Step::Hold(at));
        }
        self.phase = Phase::RequestLine;
        None
    }

    /// One line, without its LF.
    fn end_line(&mut self, line: &[u8]) -> Result<(), Violation> {
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err(Violation::BareLf);
        };
        match self.phase {
            // Empty lines before a request line are ignored (RFC 9112 2.2).
            Phase::RequestLine if line.is_empty() => {}
            Phase::RequestLine => {
                self.head.connect = line.starts_with(b"CONNECT ");
                self.phase = Phase::Headers;
            }
            Phase::Headers if line.is_empty() => {
                self.requests += 1;
                self.phase = self.body()?;
            }
            Phase::Headers => self.header(line),
            Phase::ChunkLine => {
                if line.len() > MAX_CHUNK_LINE {
                    return Err(Violation::ChunkLineTooLong);
                }
                let size = chunk_size(line)?;
                self.phase = if size == 0 {
                    Phase::Trailers
                } else {
                    Phase::ChunkData(size)
                };
            }
            Phase::Trailers if line.is_empty() => {
                // The message is over; `after_line` sees `Body(0)`.
                self.phase = Phase::Body(0);
            }
            _ => {}
        }
        Ok(())
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let mut ok = !value.is_empty();
            for v in value.split(|&b| b == b',') {
                match parse_decimal(trim(v)) {
                    Some(n) if self.head.content_length.is_none_or(|c| c == n) => {
                        self.head.content_length = Some(n);
                    }
                    _ => ok = false,
                }
            }
            self.head.bad_length |= !ok;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value
                .rsplit(|&b| b == b',')
                .map(trim)
                .find(|c| !c.is_empty())
                .unwrap_or(b"");
            self.head.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        }
    }

    /// The body that follows the head just ended.
    fn body(&mut self) -> Result<Phase, Violation> {
        let h = &self.head;
        match (h.chunked, h.content_length) {
            (Some(_), Some(_)) => Err(Violation::ContentLengthWithTransferEncoding),
            (Some(_), None) if h.bad_length => Err(Violation::ContentLengthWithTransferEncoding),
            (Some(false), None) => Err(Violation::TransferCodingNotChunked),
            (Some(true), None) => Ok(Phase::ChunkLine),
            (None, _) if h.bad_length => Err(Violation::BadContentLength),
            (None, n) => Ok(Phase::Body(n.unwrap_or(0))),
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunk-size line (without CRLF): the size, then well-formed extensions (RFC 9112 7.1.1).
fn chunk_size(line: &[u8]) -> Result<u64, Violation> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Violation::BadChunkSize);
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = (d as char).to_digit(16).expect("a hex digit") as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .ok_or(Violation::BadChunkSize)?;
    }
    let mut rest = &line[digits..];
    let ws = |s: &mut &[u8]| *s = &s[s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    let token = |s: &mut &[u8]| -> bool {
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        *s = &s[n..];
        n > 0
    };
    let mut first = true;
    loop {
        // (Whitespace after the size without an extension is not in the grammar, but it
        // is unambiguous, and hyper and nginx take it.)
        ws(&mut rest);
        if rest.is_empty() {
            return Ok(size);
        }
        let Some(after) = rest.strip_prefix(b";") else {
            return Err(if first {
                Violation::BadChunkSize
            } else {
                Violation::BadChunkExtension
            });
        };
        first = false;
        rest = after;
        ws(&mut rest);
        if !token(&mut rest) {
            return Err(Violation::BadChunkExtension);
        }
        let mut look = rest;
        ws(&mut look);
        if let Some(after) = look.strip_prefix(b"=") {
            rest = after;
            ws(&mut rest);
            if let Some(quoted) = rest.strip_prefix(b"\"") {
                rest = quoted_string_rest(quoted).ok_or(Violation::BadChunkExtension)?;
            } else if !token(&mut rest) {
                return Err(Violation::BadChunkExtension);
            }
        }
    }
}

/// What follows a quoted string whose opening quote is already consumed.
fn quoted_string_rest(mut s: &[u8]) -> Option<&[u8]> {
    loop {
        match s {
            [b'"', rest @ ..] => return Some(rest),
            [b'\\', c, rest @ ..] if *c == b'\t' || (0x20..0x7f).contains(c) || *c >= 0x80 => {
                s = rest
            }
            [c, rest @ ..] if *c == b'\t' || (0x20..0x7f).contains(c) || *c >= 0x80 => s = rest,
            _ => return None,
        }
    }
}

enum State {
    Open,
    /// A head was refused: what hyper is still to read of [`REFUSE`]; after it, the end.
    Refusing(usize),
    /// A body was refused: the next read fails.
    Failed(Violation),
}

/// An HTTP/1.1 server connection's bytes, refused where their framing is ambiguous.
pub struct H1Guard<T> {
    inner: T,
    scanner: Scanner,
    state: State,
    /// Bytes read past a request that asked to switch protocols, held for the verdict.
    held: Vec<u8>,
    held_from: usize,
    link: Arc<Link>,
    metrics: Arc<Metrics>,
    peer: std::net::SocketAddr,
}

impl<T> H1Guard<T> {
    pub fn new(
        inner: T,
        link: Arc<Link>,
        metrics: Arc<Metrics>,
        peer: std::net::SocketAddr,
        max_line: usize,
    ) -> Self {
        Self {
            inner,
            scanner: Scanner::new(max_line),
            state: State::Open,
            held: Vec::new(),
            held_from: 0,
            link,
            metrics,
            peer,
        }
    }

    fn refused(&mut self, v: Violation, in_body: bool) {
        debug!(peer = %self.peer, reason = v.as_str(), "HTTP/1.1 framing refused");
        self.metrics.unmatched(0, Unmatched::BadFraming);
        if !in_body {
            // hyper's own 400 skips the handler, which counts the others.
            self.metrics
                .error(Failure::new(Origin::Client, Unmatched::BadFraming.as_str()));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H1Guard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Open => {}
                State::Refusing(sent) => {
                    let n = (REFUSE.len() - sent).min(buf.remaining());
                    buf.put_slice(&REFUSE[sent..sent + n]);
                    this.state = State::Refusing(sent + n);
                    return Poll::Ready(Ok(()));
                }
                State::Failed(v) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        v.as_str(),
                    )));
                }
            }
            if let Phase::AwaitVerdict { request, connect } = this.scanner.phase {
                let status = match this.link.status_of(request) {
                    Some(s) => s,
                    None => {
                        this.link.waker.register(cx.waker());
                        match this.link.status_of(request) {
                            Some(s) => s,
                            None => return Poll::Pending,
                        }
                    }
                };
                let switched = if connect {
                    (200..300).contains(&status)
                } else {
                    status == 101
                };
                this.scanner.phase = if switched {
                    Phase::Passthrough
                } else {
                    Phase::RequestLine
                };
            }
            let start = buf.filled().len();
            let from_held = this.held_from < this.held.len();
            if from_held {
                let n = (this.held.len() - this.held_from).min(buf.remaining());
                buf.put_slice(&this.held[this.held_from..this.held_from + n]);
            } else {
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            }
            let data = &buf.filled()[start..];
            if data.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let taken = data.len();
            let step = this.scanner.feed(data);
            let keep = match step {
                Step::Pass => taken,
                Step::Hold(n) | Step::Refuse(n, ..) => n,
            };
            if from_held {
                this.held_from += keep;
                if this.held_from == this.held.len() {
                    this.held = Vec::new();
                    this.held_from = 0;
                }
            } else if keep < taken {
                debug_assert!(this.held.is_empty());
                this.held = buf.filled()[start + keep..].to_vec();
                this.held_from = 0;
            }
            buf.set_filled(start + keep);
            if let Step::Refuse(_, v, in_body) = step {
                this.refused(v, in_body);
                this.held = Vec::new();
                this.held_from = 0;
                this.state = if in_body {
                    State::Failed(v)
                } else {
                    State::Refusing(0)
                };
                if keep == 0 {
                    continue;
                }
            }
            if keep > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

super::passthrough_write!(H1Guard);

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces cut at `cuts`; returns how many bytes passed and what stopped
    /// the scan (a refusal, or a hold for a protocol switch).
    fn scan(wire: &[u8], cuts: &[usize]) -> (usize, Option<Step>) {
        let mut s = Scanner::new(1024);
        let mut bounds = cuts.to_vec();
        bounds.push(wire.len());
        let mut from = 0;
        for to in bounds {
            match s.feed(&wire[from..to]) {
                Step::Pass => from = to,
                Step::Hold(n) => return (from + n, Some(Step::Hold(from + n))),
                Step::Refuse(n, v, b) => return (from + n, Some(Step::Refuse(from + n, v, b))),
            }
        }
        (from, None)
    }

    /// The outcome is the same however the bytes are split: whole, cut in two anywhere, and
    /// a byte at a time.
    fn check(wire: &str, expected: Option<Step>) {
        let wire = wire.as_bytes();
        let whole = scan(wire, &[]);
        assert_eq!(whole.1, expected, "{:?}", String::from_utf8_lossy(wire));
        for cut in 1..wire.len() {
            assert_eq!(scan(wire, &[cut]), whole, "cut at {cut}");
        }
        let every: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(scan(wire, &every), whole, "a byte at a time");
    }

    fn refused_at(wire: &str, marker: &str, v: Violation, in_body: bool) -> Option<Step> {
        Some(Step::Refuse(
            wire.rfind(marker).expect("marker in wire"),
            v,
            in_body,
        ))
    }

    #[test]
    fn well_framed_requests_pass() {
        check(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n\
             POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
             POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=value;flag ; q=\"a \\\" b\"\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n\
             \r\nGET /after-empty-line HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
            None,
        );
    }

    #[test]
    fn ambiguous_framing_is_refused_where_it_starts() {
        let w = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\r\n\r\n";
        check(
            w,
            refused_at(w, "\nHost: a\r\n\r\n", Violation::BareLf, false),
        );
        let w = "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
        check(w, refused_at(w, "\nX", Violation::BareLf, false));
        let w = "GET / HTTP/1.1\r\nHost: a\r\n\n";
        check(
            w,
            refused_at(w, "\n\n", Violation::BareLf, false).map(|s| match s {
                Step::Refuse(n, v, b) => Step::Refuse(n + 1, v, b),
                s => s,
            }),
        );
        let w =
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        check(
            w,
            refused_at(
                w,
                "\n0",
                Violation::ContentLengthWithTransferEncoding,
                false,
            ),
        );
        let w = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n";
        check(
            w,
            refused_at(w, "\n\r\n", Violation::BadContentLength, false).map(|s| match s {
                Step::Refuse(n, _, b) => {
                    Step::Refuse(n + 2, Violation::ContentLengthWithTransferEncoding, b)
                }
                s => s,
            }),
        );
        let w = "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello";
        check(
            w,
            refused_at(w, "\nhello", Violation::BadContentLength, false),
        );
        let w = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n";
        check(
            w,
            Some(Step::Refuse(
                w.len() - 1,
                Violation::TransferCodingNotChunked,
                false,
            )),
        );
    }

    #[test]
    fn malformed_chunks_are_refused_in_the_body() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (chunk, v) in [
            ("5;\r\nhello\r\n0\r\n\r\n", Violation::BadChunkExtension),
            ("5;a=\r\nhello\r\n0\r\n\r\n", Violation::BadChunkExtension),
            (
                "5;a=\"open\r\nhello\r\n0\r\n\r\n",
                Violation::BadChunkExtension,
            ),
            ("5;a b\r\nhello\r\n0\r\n\r\n", Violation::BadChunkExtension),
            (
                "5;a\x00\r\nhello\r\n0\r\n\r\n",
                Violation::BadChunkExtension,
            ),
            ("5x\r\nhello\r\n0\r\n\r\n", Violation::BadChunkSize),
            ("\r\nhello\r\n0\r\n\r\n", Violation::BadChunkSize),
            (
                "ffffffffffffffffff1\r\nx\r\n0\r\n\r\n",
                Violation::BadChunkSize,
            ),
            ("5\nhello\r\n0\r\n\r\n", Violation::BareLf),
        ] {
            let w = format!("{head}{chunk}");
            let lf = head.len() + chunk.find('\n').unwrap();
            check(&w, Some(Step::Refuse(lf, v, true)));
        }
        let w = format!("{head}5\r\nhelloX\r\n0\r\n\r\n");
        check(
            &w,
            refused_at(&w, "X\r\n0", Violation::MissingChunkCrlf, true),
        );
        let w = format!("{head}0\r\nX-T: 1\n\r\n");
        check(&w, refused_at(&w, "\n\r\n", Violation::BareLf, true));
        let long = format!(
            "{head}5;{}\r\nhello\r\n0\r\n\r\n",
            "a".repeat(MAX_CHUNK_LINE + 10)
        );
        for cuts in [
            &[][..],
            &[head.len() + 10],
            &[head.len() + 10, head.len() + 2000],
        ] {
            assert!(matches!(
                scan(long.as_bytes(), cuts).1,
                Some(Step::Refuse(_, Violation::ChunkLineTooLong, true))
            ));
        }
    }

    #[test]
    fn a_switch_request_holds_what_follows() {
        let w =
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x01\x05hello";
        check(w, Some(Step::Hold(w.find('\x01').unwrap())));
        let w = "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nbytes";
        check(w, Some(Step::Hold(w.len() - 5)));
        let mut s = Scanner::new(1024);
        assert_eq!(s.feed(w.as_bytes()), Step::Hold(w.len() - 5));
        assert_eq!(
            s.phase,
            Phase::AwaitVerdict {
                request: 1,
                connect: true
            }
        );
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_never_examined_in_part() {
        // Whole in one read, any length is examined (and passes here).
        let w = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(2000));
        assert_eq!(scan(w.as_bytes(), &[]), (w.len(), None));
        // Kept across reads, it is examined whole as long as it fits the limit (1024 here):
        // split so that its end comes with most of it, it passes.
        let w = format!(
            "GET / HTTP/1.1\r\nTransfer-Encoding:{} chunked\r\n\r\n",
            " ".repeat(2000)
        );
        assert_eq!(scan(w.as_bytes(), &[20, 40]).1, None);
        // Beyond the limit the same line is refused, never examined in part: its name
        // may be Transfer-Encoding.
        assert!(matches!(
            scan(w.as_bytes(), &[20, 1500]).1,
            Some(Step::Refuse(_, Violation::LineTooLong, false))
        ));
        let w = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {}\r\n\r\n",
            "t".repeat(2000)
        );
        assert!(matches!(
            scan(w.as_bytes(), &[60, 1500]).1,
            Some(Step::Refuse(_, Violation::LineTooLong, true))
        ));
    }
}
