//! Accepting and serving connections on one socket.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::handler::{ConnInfo, Shared, handle};
use crate::ir::{PortConfig, Protocol};

/// Limits on what a client controls.
#[derive(Clone, Debug)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_keepalive_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 256,
            h2_keepalive_interval: Duration::from_secs(30),
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
    /// Taken (set to `None`) when draining starts: new connections are then refused.
    pub graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
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
        let builder = self.builder();
        if self.port.load().protocol == Protocol::Https {
            let acceptor = self.acceptor();
            let tls = match tokio::time::timeout(
                self.limits.tls_handshake_timeout,
                acceptor.accept(stream),
            )
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
            let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let info = Arc::new(ConnInfo {
                peer,
                tls: true,
                sni,
            });
            // ALPN decided the protocol: no preface sniffing, which has no timeout.
            let builder = if h2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            self.serve_http(builder, TokioIo::new(tls), info).await;
        } else {
            // The HTTP/1-or-2 detection waits for bytes without a deadline; a client gets
            // the header read timeout to send its first one.
            let mut first = [0u8; 1];
            match tokio::time::timeout(self.limits.header_read_timeout, stream.peek(&mut first))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }

            let info = Arc::new(ConnInfo {
                peer,
                tls: false,
                sni: None,
            });
            self.serve_http(builder, TokioIo::new(stream), info).await;
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

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.limits.max_header_bytes as u32)
            .max_concurrent_streams(self.limits.h2_max_concurrent_streams)
            .keep_alive_interval(self.limits.h2_keepalive_interval)
            .keep_alive_timeout(Duration::from_secs(20));
        b
    }

    async fn serve_http<I>(&self, builder: auto::Builder<TokioExecutor>, io: I, info: Arc<ConnInfo>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let port = self.port.clone();
        let shared = self.shared.clone();
        let svc = service_fn(move |req| {
            let cfg = port.load_full();
            let shared = shared.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(handle(shared, cfg, info, req).await) }
        });
        let watcher = {
            let g = self.graceful.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref().map(GracefulShutdown::watcher)
        };
        let Some(watcher) = watcher else {
            return;
        };
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        if let Err(e) = watcher.watch(conn).await {
            debug!(error = %e, "connection ended with an error");
        }
    }
}
