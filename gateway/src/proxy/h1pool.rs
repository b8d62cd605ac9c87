//! Plain HTTP/1.1 connections to backends, kept per endpoint for reuse. The most common
//! upstream (a Service's pods over cleartext HTTP/1.1) takes this path rather than
//! hyper-util's general pool: a checkout is one lock and one hash of a socket address, and
//! a connection goes back when its response body has been read to the end, without a task
//! of its own.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    Response,
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
};
use hyper_util::rt::TokioIo;

use super::{Body, BoxError};

/// How long a connection may wait in the pool for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed when they come back.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pooled connection may take to become ready for a request. One whose last
/// exchange is over is ready at once; one still sending a request body to a backend that
/// stopped reading it is not, and is given up for another.
const READY_WAIT: Duration = Duration::from_millis(100);

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
pub struct H1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
}

/// Why a request did not get a response.
pub enum Failed {
    Connect(BoxError),
    Request(BoxError),
}

impl H1Pool {
    /// Sends `req` (its URI in origin form) to `addr` on a pooled connection, or on a new
    /// one. A pooled connection that turns out closed before the request went out is
    /// replaced, so a backend closing an idle connection is never seen as a failure.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: hyper::Request<Body>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        // The connection is reusable once the request body, too, is all sent (a backend
        // may answer before reading it all). A request without a body has nothing to track.
        let sent = (!req.body().is_end_stream()).then(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let body = std::mem::replace(req.body_mut(), super::empty());
            *req.body_mut() = http_body_util::BodyExt::boxed(SentBody {
                inner: body,
                sent: flag.clone(),
            });
            flag
        });
        loop {
            let (mut tx, pooled) = match self.checkout(addr) {
                Some(tx) => (tx, true),
                None => (connect(addr).await?, false),
            };
            // A pooled connection may still be finishing its previous exchange.
            let ready = std::future::poll_fn(|cx| tx.poll_ready(cx));
            match tokio::time::timeout(READY_WAIT, ready).await {
                Ok(Ok(())) => {}
                // Closed, or busy: another one (the request has not gone out).
                _ if pooled => continue,
                _ => return Err(Failed::Connect("the new connection closed at once".into())),
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let keep = resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, body) = resp.into_parts();
                    let body = UpstreamBody {
                        inner: body,
                        done: false,
                        back: keep.then(|| Back {
                            pool: self.clone(),
                            addr,
                            tx,
                            sent: sent.clone(),
                        }),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closed by the backend meanwhile.
                    Some(r) if pooled => req = r,
                    // A new connection that closed before the request went out: a
                    // connection failure, which may be retried elsewhere.
                    Some(_) => return Err(Failed::Connect(Box::new(e.into_error()))),
                    None => return Err(Failed::Request(Box::new(e.into_error()))),
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.tx);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Endpoints come from configuration; a bound on what departed ones leave behind
        // (looked at only when a new endpoint would grow the map).
        if idle.len() > 4096 && !idle.contains_key(&addr) {
            idle.retain(|_, l| l.iter().any(|c| !c.tx.is_closed()));
        }
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] (dropping the last handle
    /// of an idle HTTP/1.1 connection ends it).
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, l| {
            l.retain(|c| !c.tx.is_closed() && c.since.elapsed() < IDLE_TIMEOUT);
            !l.is_empty()
        });
    }

    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get(&addr).map_or(0, Vec::len)
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, Failed> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failed::Connect(Box::new(e))),
            Err(_) => {
                return Err(Failed::Connect(Box::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ))));
            }
        };
    let _ = stream.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failed::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        // Errors reach the request that was on the connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(tx)
}

/// A backend's response body; read to its end, it returns its connection to the pool.
pub struct UpstreamBody {
    inner: Incoming,
    done: bool,
    back: Option<Back>,
}

/// Where a connection goes back to, and whether its request body was all sent (`None`:
/// the request had none).
struct Back {
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    tx: SendRequest<Body>,
    sent: Option<Arc<AtomicBool>>,
}

/// A request body that says when it has given its last frame.
struct SentBody {
    inner: Body,
    sent: Arc<AtomicBool>,
}

impl hyper::body::Body for SentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.sent.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.sent.store(true, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl UpstreamBody {
    /// A body from elsewhere (hyper-util's client): nothing to return.
    pub fn plain(inner: Incoming) -> Self {
        Self {
            inner,
            done: false,
            back: None,
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Only an exchange over both ways (the response read to its end, the request
        // body all given) leaves the connection ready for another request.
        if let Some(back) = self.back.take()
            && (self.done || self.inner.is_end_stream())
            && back.sent.as_ref().is_none_or(|s| s.load(Ordering::Relaxed))
        {
            back.pool.checkin(back.addr, back.tx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that counts the connections it accepts and answers each request with
    /// `reply` (raw HTTP/1.1), keeping the connection open unless the reply closes it.
    async fn backend(reply: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                            if reply.contains("Connection: close") {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> hyper::Request<Body> {
        hyper::Request::builder()
            .uri("/x")
            .header("host", "b")
            .body(super::super::empty())
            .unwrap()
    }

    async fn read_all(r: Response<UpstreamBody>) -> (u16, Bytes) {
        use http_body_util::BodyExt;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        let (addr, accepted) = backend(OK).await;
        let pool = Arc::new(H1Pool::default());
        for _ in 0..5 {
            let r = pool.send(addr, get()).await.ok().unwrap();
            assert_eq!(read_all(r).await, (200, Bytes::from_static(b"ok")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(addr), 1);
    }

    #[tokio::test]
    async fn a_body_left_unread_does_not_come_back() {
        let (addr, accepted) = backend(OK).await;
        let pool = Arc::new(H1Pool::default());
        let r = pool.send(addr, get()).await.ok().unwrap();
        drop(r);
        assert_eq!(pool.idle_count(addr), 0);
        let r = pool.send(addr, get()).await.ok().unwrap();
        assert_eq!(read_all(r).await.0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced_without_an_error() {
        let (addr, accepted) =
            backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
        let pool = Arc::new(H1Pool::default());
        for _ in 0..3 {
            let r = pool.send(addr, get()).await.ok().unwrap();
            assert_eq!(read_all(r).await.0, 200);
            // Let the connection's task see the close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// Without a pause, the next request often finds the closed connection before its task
    /// has noticed the close: the request is moved to a new connection, never failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_racing_the_backend_close_moves_to_a_new_connection() {
        let (addr, accepted) =
            backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
        let pool = Arc::new(H1Pool::default());
        for i in 0..50 {
            let r = pool.send(addr, get()).await;
            let r = r.unwrap_or_else(|_| panic!("request {i} failed"));
            assert_eq!(read_all(r).await.0, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 50);
    }

    /// A backend that answers before reading the request body (413, say) leaves the
    /// connection busy sending it: it is not pooled, and the next request is not held up.
    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_pooled() {
        let (addr, accepted) = backend(OK).await;
        let pool = Arc::new(H1Pool::default());
        let endless = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/upload")
            .header("host", "b")
            .header("transfer-encoding", "chunked")
            .body(http_body_util::BodyExt::boxed(endless))
            .unwrap();
        let r = pool.send(addr, req).await.ok().unwrap();
        assert_eq!(read_all(r).await.0, 200);
        assert_eq!(pool.idle_count(addr), 0);
        let r = tokio::time::timeout(Duration::from_secs(1), pool.send(addr, get()))
            .await
            .expect("the next request is not held up")
            .ok()
            .unwrap();
        assert_eq!(read_all(r).await.0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_switched_connection_is_not_pooled() {
        let (addr, _) = backend(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        )
        .await;
        let pool = Arc::new(H1Pool::default());
        let mut req = get();
        req.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        req.headers_mut().insert("upgrade", "x".parse().unwrap());
        let r = pool.send(addr, req).await.ok().unwrap();
        assert_eq!(r.status(), 101);
        drop(r);
        assert_eq!(pool.idle_count(addr), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let pool = Arc::new(H1Pool::default());
        assert!(matches!(
            pool.send(addr, get()).await,
            Err(Failed::Connect(_))
        ));
    }
}
