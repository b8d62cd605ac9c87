//! An echo HTTP backend that speaks the protocol of the Kubernetes Gateway API
//! conformance suite's echo server.
//!
//! Every request, whatever its method and path, is answered with a JSON description of
//! what the server received ([`EchoedRequest`]): request target, host, method, protocol
//! version, headers, the identity the server was started with (pod, namespace, service),
//! the local port that accepted the connection and, on TLS listeners, the TLS parameters.
//! The suite steers the backend through the request:
//!
//! - `X-Echo-Set-Header: k:v,k2:v2` adds those headers to the response;
//! - `?delay=1s` (a Go duration, at most 60 s) waits before answering;
//! - `/status/NNN` answers with status NNN (200 to 599; anything else is a 400);
//! - `/retry/...?uuid=U&succeedAfter=N[&responseCode=C][&delayRetry=D]` fails the first N
//!   requests carrying `uuid` U, with status C, or, without `responseCode`, by resetting
//!   the connection; later ones are echoed.
//!
//! Cleartext listeners serve HTTP/1.1 and HTTP/2 with prior knowledge (h2c); TLS
//! listeners offer `h2` and `http/1.1` through ALPN.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use cedille_echo::{Echo, EchoConfig};
//!
//! let echo = Arc::new(Echo::new(EchoConfig {
//!     pod: "infra-backend-v1-0".into(),
//!     namespace: "gateway-conformance-infra".into(),
//!     service: "infra-backend-v1".into(),
//! }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! cedille_echo::serve(listener, echo, None, std::future::pending()).await
//! # }
//! ```

mod abort;
mod duration;
mod handler;
mod retry;
mod tls;
mod websocket;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::abort::AbortableStream;
pub use crate::duration::parse_go_duration;
pub use crate::handler::{EchoedRequest, TlsDetails};
use crate::retry::RetryTracker;
pub use crate::tls::{TlsConfigError, load_tls_server_config, tls_server_config};

/// The identity an echo server reports in every response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoConfig {
    /// Reported as `pod`; the suite identifies the backend that served a request by it.
    pub pod: String,
    /// Reported as `namespace`.
    pub namespace: String,
    /// Reported as `service`.
    pub service: String,
}

/// One echo backend: its identity and the state its listeners share (the retry
/// simulation's attempt counters). Serve several listeners from one `Arc<Echo>` to make
/// them behave as one pod.
#[derive(Debug)]
pub struct Echo {
    config: EchoConfig,
    retries: RetryTracker,
    /// Request targets (path and query) of the most recent requests, oldest first.
    seen: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// How many request targets [`Echo::seen`] remembers.
const SEEN_CAPACITY: usize = 4096;

impl Echo {
    /// A backend reporting `config`, with no retry attempts counted yet.
    pub fn new(config: EchoConfig) -> Self {
        Self {
            config,
            retries: RetryTracker::default(),
            seen: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The request targets (path with query) this backend received most recently, oldest
    /// first, at most a few thousand. The suite checks mirrored traffic this way (it reads
    /// the pods' logs for the same information).
    pub fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn record(&self, target: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() == SEEN_CAPACITY {
            seen.pop_front();
        }
        seen.push_back(target.to_owned());
    }

    /// The identity this backend reports.
    pub fn config(&self) -> &EchoConfig {
        &self.config
    }
}

/// How long a TLS client may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long open connections get to finish their requests before they are
/// dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request handler knows about the connection it arrived on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// Local port of the listener that accepted the connection.
    pub(crate) port: u16,
    /// Set when the connection is TLS.
    pub(crate) tls: Option<TlsDetails>,
    /// Raised by the handler to have the connection reset (retry simulation).
    pub(crate) abort: abort::AbortFlag,
}

/// Serves the echo protocol on `listener` until `shutdown` completes.
///
/// With `tls`, each connection is a TLS connection (see [`tls_server_config`] for a
/// suitable configuration); without it, cleartext HTTP/1.1 or HTTP/2 (prior knowledge).
/// Connections are handled on their own tasks. When `shutdown` completes the listener is
/// closed, open connections are asked to finish (HTTP/2 GOAWAY, HTTP/1.1 close after the
/// current response) and are dropped if they have not within a few seconds.
///
/// Errors accepting a connection are logged and do not stop the server; the only error
/// returned is failing to read the listener's local address.
pub async fn serve(
    listener: TcpListener,
    echo: Arc<Echo>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    info!(%local, scheme, pod = %echo.config.pod, "echo server listening");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually transient (a connection reset before accept, or out of
                        // file descriptors): back off briefly rather than spin.
                        warn!(%local, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (stream, abort) = AbortableStream::new(stream);
                let watcher = graceful.watcher();
                let builder = Arc::clone(&builder);
                let echo = Arc::clone(&echo);
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let port = local.port();
                    let result = match acceptor {
                        None => {
                            let info = Arc::new(ConnInfo { port, tls: None, abort });
                            let service = service_fn(move |req| {
                                handler::handle(Arc::clone(&echo), Arc::clone(&info), req)
                            });
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            let stream = match handshake.await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let tls = tls::details(stream.get_ref().1);
                            let info = Arc::new(ConnInfo { port, tls: Some(tls), abort });
                            let service = service_fn(move |req| {
                                handler::handle(Arc::clone(&echo), Arc::clone(&info), req)
                            });
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                    };
                    if let Err(error) = result {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
        }
    }

    drop(listener);
    debug!(%local, open = connections.len(), "echo server shutting down");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(%local, open = connections.len(), "connections still open after the drain timeout; dropping them");
    }
    connections.shutdown().await;
    info!(%local, "echo server stopped");
    Ok(())
}
