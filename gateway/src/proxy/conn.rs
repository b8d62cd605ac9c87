//! Accepting and serving connections on one socket.

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::h1guard::{H1Guard, Link};
use super::handler::{ConnInfo, Shared, handle};
use super::idle::Activity;
use crate::ir::{PortConfig, Protocol};

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<hyper::Response<super::Body>, Infallible>> + Send>>;

/// Limits on what a client controls.
#[derive(Clone, Debug)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_keepalive_interval: Duration,
    /// An HTTP/2 connection that carries no request or response (HEADERS or DATA frames,
    /// either way) for this long gets a GOAWAY; an upgraded connection (WebSocket) that
    /// carries no bytes for this long is closed. (HTTP/1.1 keep-alive connections are bound
    /// by `header_read_timeout`.)
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 256,
            h2_keepalive_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

pub(crate) struct Acceptor {
    pub port: Arc<ArcSwap<PortConfig>>,
    pub shared: Arc<Shared>,
    /// The TLS acceptor for the port's current client validation (rebuilt when it changes).
    pub tls: std::sync::Mutex<(Option<Arc<crate::ir::ClientAuth>>, TlsAcceptor)>,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    /// Becomes true when draining starts.
    pub drain: watch::Receiver<bool>,
    /// `h3=":<port>"; ma=86400` while the socket's QUIC side is up.
    pub alt_svc: Arc<arc_swap::ArcSwapOption<http::HeaderValue>>,
}

impl Acceptor {
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.shared.metrics.connection_rejected();
                debug!(%peer, "connection limit reached; closing");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                this.serve(stream, peer).await;
            });
        }
    }

    async fn serve(&self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let metrics = self.shared.metrics.clone();
        let _active = metrics.connection_opened();
        let _ = stream.set_nodelay(true);
        if self.port.load().protocol == Protocol::Https {
            // Boxed, so that a plain connection's task does not reserve room for TLS state.
            Box::pin(self.serve_tls(stream, peer)).await;
            return;
        }
        // The client gets the header read timeout to show which HTTP version it speaks.
        let h2 =
            match tokio::time::timeout(self.limits.header_read_timeout, sniff_h2_preface(&stream))
                .await
            {
                Ok(Ok(h2)) => h2,
                _ => return,
            };
        let info = Arc::new(ConnInfo::new(peer, None));
        metrics.connection(usize::from(h2));
        if h2 {
            let activity = Activity::new();
            let guarded = super::flood::FloodGuard::new(stream, true, activity.clone());
            Box::pin(self.serve_h2(TokioIo::new(guarded), info, activity)).await;
        } else {
            self.serve_h1(stream, info).await;
        }
    }

    async fn serve_tls(&self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let metrics = &self.shared.metrics;
        let acceptor = self.acceptor();
        let tls =
            match tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.tls_handshake_failed();
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.tls_handshake_failed();
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
        metrics.tls_handshake_done();
        let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        metrics.connection(usize::from(h2));
        let mut info = ConnInfo::new(peer, Some(sni));
        info.alt_svc = self.alt_svc.load().as_deref().cloned();
        let info = Arc::new(info);
        // Boxed: the stream (rustls's connection state is most of a kilobyte) is then moved
        // as a pointer into the connection's future, not copied into each of its states.
        let tls = Box::new(tls);
        // ALPN decided the protocol.
        if h2 {
            let activity = Activity::new();
            let guarded = super::flood::FloodGuard::new(tls, true, activity.clone());
            self.serve_h2(TokioIo::new(guarded), info, activity).await;
        } else {
            self.serve_h1(tls, info).await;
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let cfg = self.port.load();
        let mut cached = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (&cached.0, &cfg.client_auth) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            let config = super::tls::server_config(self.port.clone(), cfg.client_auth.as_deref());
            *cached = (cfg.client_auth.clone(), TlsAcceptor::from(config));
        }
        cached.1.clone()
    }

    async fn serve_h1<T>(&self, stream: T, info: Arc<ConnInfo>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let link = Link::new();
        let io = H1Guard::new(
            stream,
            link.clone(),
            self.shared.metrics.clone(),
            info.peer,
            guard_line_limit(&self.limits),
        );
        let svc = service(self.port.clone(), self.shared.clone(), info, Some(link));
        let conn = h1_builder(&self.limits)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        self.until_drained(conn, |c| c.graceful_shutdown()).await;
    }

    async fn serve_h2<I>(&self, io: I, info: Arc<ConnInfo>, activity: Arc<Activity>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let conn = h2_builder(&self.limits).serve_connection(
            io,
            service(self.port.clone(), self.shared.clone(), info, None),
        );
        let idle = self.limits.idle_timeout;
        self.until_drained_or_idle(conn, |c| c.graceful_shutdown(), Some((&activity, idle)))
            .await;
    }

    /// Runs a connection; when draining starts, asks it to finish gracefully (HTTP/2
    /// GOAWAY, HTTP/1.1 `Connection: close` after the current response) and lets it.
    async fn until_drained<C, E>(&self, conn: C, graceful: impl FnOnce(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        self.until_drained_or_idle(conn, graceful, None).await;
    }

    /// [`Self::until_drained`], and the same graceful end once `activity` shows nothing
    /// carried for `idle` (streams still open may finish).
    async fn until_drained_or_idle<C, E>(
        &self,
        conn: C,
        graceful: impl FnOnce(Pin<&mut C>),
        idle: Option<(&Activity, Duration)>,
    ) where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut conn = std::pin::pin!(conn);
        let mut drain = self.drain.clone();
        let idle_wait = async {
            let Some((activity, idle)) = idle else {
                return std::future::pending().await;
            };
            activity.idle_for(idle).await;
            debug!(?idle, "idle connection: closing gracefully");
        };
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => {
                graceful(conn.as_mut());
                conn.await
            }
            _ = idle_wait => {
                graceful(conn.as_mut());
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection ended with an error");
        }
    }
}

/// What serves a connection's requests: the handler, with the port's configuration as it
/// is when each request arrives. An HTTP/1.1 connection's framing guard learns of each
/// response through `link`.
pub(crate) fn service(
    port: Arc<ArcSwap<PortConfig>>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    link: Option<Arc<Link>>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<super::Body>,
    Error = Infallible,
    Future = ResponseFuture,
> + Clone
+ use<> {
    service_fn(move |req| {
        let cfg = port.load_full();
        let shared = shared.clone();
        let info = info.clone();
        let link = link.clone();
        // Boxed: hyper keeps a connection's request future slot for the connection's
        // life, so an unboxed one would hold the handler's whole state while idle.
        Box::pin(async move {
            let resp = handle(shared, cfg, info, req).await;
            if let Some(link) = link {
                link.responded(resp.status().as_u16());
            }
            Ok::<_, Infallible>(resp)
        }) as ResponseFuture
    })
}

/// The longest line the HTTP/1.1 framing guard keeps whole: twice what hyper's buffer may
/// hold, so that hyper's own 431 comes first for heads over the limit.
pub(crate) fn guard_line_limit(limits: &Limits) -> usize {
    2 * limits.max_header_bytes.max(8192)
}

/// The HTTP/1.1 server settings every connection gets.
pub(crate) fn h1_builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b
}

/// The HTTP/2 server settings every connection gets.
pub(crate) fn h2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext client opens with the HTTP/2 preface (prior knowledge), looking
/// without consuming; an error if the connection ends first.
async fn sniff_h2_preface(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface so far: wait for more (peek returns at once while
        // anything is buffered).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
