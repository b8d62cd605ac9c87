//! The sockets the snapshot asks for. Applying a snapshot binds new sockets, swaps the
//! listener table of existing ones (in-flight requests keep the table they started with) and
//! stops accepting on sockets no longer wanted; open connections on those finish normally.

use std::{collections::BTreeMap, io, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::{
    conn::{Acceptor, Limits},
    handler::Shared,
    quic::QuicListener,
    tls,
    upstream::Upstreams,
};
use crate::{
    ir::{Protocol, Snapshot},
    metrics::Metrics,
};

struct Bound {
    config: Arc<ArcSwap<crate::ir::PortConfig>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The QUIC side of an HTTPS socket (HTTP/3), when on and bound.
    quic: Option<QuicListener>,
    /// What the TCP side advertises while `quic` is up.
    alt_svc: Arc<ArcSwapOption<HeaderValue>>,
    /// The QUIC side is wanted but its UDP socket could not be bound (logged once).
    quic_failed: bool,
}

pub struct DataPlane {
    shared: Arc<Shared>,
    limits: Limits,
    connections: Arc<Semaphore>,
    /// Set to true when draining starts; every connection watches it.
    drain: watch::Sender<bool>,
    ports: tokio::sync::Mutex<BTreeMap<SocketAddr, Bound>>,
    max_connections: usize,
    /// Serve HTTP/3 on HTTPS sockets.
    http3: bool,
    /// Some HTTPS socket's QUIC side could not be bound: [`Self::apply`] tries again.
    quic_pending: std::sync::atomic::AtomicBool,
}

impl DataPlane {
    pub fn new(
        metrics: Arc<Metrics>,
        limits: Limits,
        max_connections: usize,
        tracer: Option<Arc<crate::telemetry::Tracer>>,
        http3: bool,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                upstreams: Upstreams::new(),
                metrics,
                tracer,
                idle_timeout: limits.idle_timeout,
            }),
            limits,
            connections: Arc::new(Semaphore::new(max_connections)),
            drain: watch::channel(false).0,
            ports: tokio::sync::Mutex::new(BTreeMap::new()),
            max_connections,
            http3,
            quic_pending: false.into(),
        }
    }

    /// Makes the bound sockets match `snap`. Returns the sockets that could not be bound.
    pub async fn apply(&self, snap: &Snapshot) -> Vec<(SocketAddr, io::Error)> {
        let mut ports = self.ports.lock().await;
        let mut failed = Vec::new();
        let gone: Vec<SocketAddr> = ports
            .keys()
            .filter(|a| !snap.ports.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(b) = ports.remove(&addr) {
                let _ = b.stop.send(true);
                let _ = b.task.await;
                if let Some(q) = b.quic {
                    q.stop().await;
                }
                info!(%addr, "stopped listening");
            }
        }
        for (addr, cfg) in &snap.ports {
            if let Some(b) = ports.get_mut(addr) {
                b.config.store(cfg.clone());
                self.sync_quic(*addr, b).await;
                continue;
            }
            let listener = match bind(*addr) {
                Ok(l) => l,
                Err(e) => {
                    warn!(%addr, error = %e, "cannot listen; the Gateway listeners on this address do not serve");
                    failed.push((*addr, e));
                    continue;
                }
            };
            let config = Arc::new(ArcSwap::new(cfg.clone()));
            let alt_svc = Arc::new(ArcSwapOption::empty());
            let acceptor = Arc::new(Acceptor {
                port: config.clone(),
                shared: self.shared.clone(),
                tls: std::sync::Mutex::new((
                    cfg.client_auth.clone(),
                    tls::server_config(config.clone(), cfg.client_auth.as_deref()).into(),
                )),
                limits: self.limits.clone(),
                connections: self.connections.clone(),
                drain: self.drain.subscribe(),
                alt_svc: alt_svc.clone(),
            });
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(acceptor.run(listener, stop_rx));
            info!(%addr, protocol = ?cfg.protocol, "listening");
            let mut bound = Bound {
                config,
                stop,
                task,
                quic: None,
                alt_svc,
                quic_failed: false,
            };
            self.sync_quic(*addr, &mut bound).await;
            ports.insert(*addr, bound);
        }
        self.shared.metrics.set_bound_sockets(ports.len());
        let pending = ports.values().any(|b| b.quic_failed);
        self.quic_pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
        failed
    }

    /// Whether an HTTPS socket still lacks its QUIC side because UDP could not be bound
    /// (a socket of a listener just removed may linger while its connections finish):
    /// calling [`Self::apply`] again retries.
    pub fn quic_pending(&self) -> bool {
        self.quic_pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting, asks every connection to finish (HTTP/2 GOAWAY, HTTP/1.1
    /// `Connection: close` after the current response) and waits up to `deadline`. Returns
    /// whether every connection finished in time.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let mut ports = self.ports.lock().await;
        let mut quic = Vec::new();
        for (_, b) in std::mem::take(&mut *ports) {
            let _ = b.stop.send(true);
            let _ = b.task.await;
            quic.extend(b.quic);
        }
        // QUIC connections see the drain signal below and send GOAWAY themselves; the
        // listeners only stop accepting.
        for q in quic {
            q.stop_accepting();
        }
        if self.drain.send_replace(true) {
            return true;
        }
        let open = self.max_connections - self.connections.available_permits();
        info!(open_connections = open, ?deadline, "draining");
        // Every connection holds a permit until it ends: all permits back means all done.
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(deadline, self.connections.acquire_many(all))
            .await
            .is_ok()
    }
}

impl DataPlane {
    /// Gives an HTTPS socket its QUIC side (HTTP/3) or takes it away, as the socket's
    /// protocol and `--http3` want; keeps the QUIC TLS configuration current.
    async fn sync_quic(&self, addr: SocketAddr, b: &mut Bound) {
        let wanted = self.http3 && b.config.load().protocol == Protocol::Https;
        if !wanted {
            b.quic_failed = false;
        }
        match (&b.quic, wanted) {
            (Some(q), true) => q.refresh(),
            (None, false) => {}
            (Some(_), false) => {
                b.alt_svc.store(None);
                if let Some(q) = b.quic.take() {
                    q.stop().await;
                }
                info!(%addr, "stopped serving HTTP/3");
            }
            (None, true) => match QuicListener::bind(
                addr,
                b.config.clone(),
                self.shared.clone(),
                self.limits.clone(),
                self.connections.clone(),
                self.drain.subscribe(),
            ) {
                Ok(q) => {
                    let v = format!("h3=\":{}\"; ma=86400", addr.port());
                    b.alt_svc
                        .store(HeaderValue::from_str(&v).ok().map(Arc::new));
                    b.quic = Some(q);
                    b.quic_failed = false;
                    info!(%addr, "serving HTTP/3 (QUIC over UDP)");
                }
                Err(e) if !b.quic_failed => {
                    b.quic_failed = true;
                    warn!(%addr, error = %e, "cannot serve HTTP/3 on this address (UDP); HTTPS over TCP goes on, without alt-svc; retrying");
                }
                Err(e) => debug!(%addr, error = %e, "HTTP/3 still cannot bind UDP"),
            },
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
