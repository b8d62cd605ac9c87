//! The connection path: what happens to a connection the eBPF programs hand to the agent.
//!
//! - **Outbound** (a pod's connect, redirected to the agent's in-pod loopback listener): a
//!   Service address is resolved to an endpoint; a destination that is a meshed pod (on any
//!   node) is reached over HBONE, as the source pod's identity, verifying that the server
//!   holds the destination pod's identity; anything else is connected to directly.
//! - **Inbound plaintext** (a connection from outside the mesh to an enrolled pod): refused
//!   in a `strict` namespace, else authorized as a client without identity and delivered.
//! - **Inbound HBONE** (port 15008): mutual TLS, then one HTTP/2 `CONNECT` per connection
//!   carried; see [`hbone`].
//!
//! Delivery to the application keeps the client's address as the source (see
//! [`crate::routing`]). The path reads the cluster view from lock-free snapshots; it never
//! takes the enrollment lock.

pub mod copy;
pub mod hbone;
pub mod pool;
pub mod readahead;

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tracing::{debug, info, warn};

use crate::{
    datapath::Datapath,
    identity::{Identities, SpiffeId},
    mesh::{Mesh, PodView},
    metrics::{Direction, Metrics},
    netns,
    policy::Request,
    routing,
};

/// The mark on the agent's own upstream sockets, so that an iptables capture rule (the
/// sidecar-style path the benchmark compares with) can leave them alone.
pub const AGENT_MARK: u32 = 0x539;
/// The HBONE port on every enrolled pod's addresses.
pub const HBONE_PORT: u16 = 15008;
/// How long an onward connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an outbound connection waits for its pod's first certificate.
const IDENTITY_WAIT: Duration = Duration::from_secs(10);
/// Connections remembered for `/config`.
const RECENT: usize = 64;
/// `identity` label value for a peer without one.
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug)]
pub struct Settings {
    /// The outbound listener's port inside each pod (on its loopback).
    pub outbound_port: u16,
    /// The inbound (plaintext capture) listener's port inside each pod.
    pub inbound_port: u16,
}

/// One enrolled pod, as the connection path sees it.
pub struct PodCtx {
    /// `namespace/name`.
    pub name: String,
    pub view: PodView,
    pub netns: Arc<File>,
    /// Its workload identity (when the mesh runs with mutual TLS).
    pub id: Option<SpiffeId>,
    /// Whether transparent delivery is set up in its namespace.
    pub transparent: bool,
    /// The TLS side of its HBONE listener (serving its identity's current certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A captured connection, for `/config`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnRecord {
    pub pod: String,
    pub direction: Direction,
    pub client: SocketAddr,
    pub original_dst: SocketAddr,
    pub upstream: Option<SocketAddr>,
    /// `hbone` (mutual TLS) or `plaintext`.
    pub protocol: &'static str,
    pub source_identity: Option<String>,
    pub destination_identity: Option<String>,
    pub traceparent: Option<String>,
    pub error: Option<String>,
    pub at_unix_ms: u128,
}

/// An authorized inbound connection, re-checked when policy changes.
struct Open {
    pod_ip: IpAddr,
    port: u16,
    source: Option<SpiffeId>,
    close: Option<oneshot::Sender<String>>,
}

pub struct Proxy {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub identities: Option<Arc<Identities>>,
    pub mesh: ArcSwap<Mesh>,
    /// Enrolled pods on this node, by address.
    pub pods: ArcSwap<HashMap<IpAddr, Arc<PodCtx>>>,
    pub pool: pool::Pool,
    datapath: Arc<RwLock<Datapath>>,
    recent: Mutex<VecDeque<ConnRecord>>,
    open: Mutex<HashMap<u64, Open>>,
    next_id: AtomicU64,
}

/// The task carrying one captured outbound connection. What it holds lives as long as the
/// connection: see the size test.
async fn outbound_task(this: Arc<Proxy>, pod: Arc<PodCtx>, stream: TcpStream, peer: SocketAddr) {
    this.outbound(&pod, stream, peer).await
}

/// The task carrying one inbound connection (plaintext capture or HBONE).
async fn inbound_task(this: Arc<Proxy>, pod: Arc<PodCtx>, stream: TcpStream, peer: SocketAddr) {
    this.inbound(pod, stream, peer).await
}

impl Proxy {
    pub fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        identities: Option<Arc<Identities>>,
        datapath: Arc<RwLock<Datapath>>,
    ) -> Arc<Self> {
        let proxy = Arc::new(Self {
            settings,
            metrics,
            identities,
            mesh: ArcSwap::default(),
            pods: ArcSwap::default(),
            pool: pool::Pool::default(),
            datapath,
            recent: Mutex::new(VecDeque::new()),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(p) = weak.upgrade() else { return };
                let open = p.pool.sweep(pool::IDLE);
                p.metrics.hbone_pool_connections.set(open as i64);
            }
        });
        proxy
    }

    pub fn mtls(&self) -> bool {
        self.identities.is_some()
    }

    /// Installs a new cluster view; then [`Proxy::reevaluate`] once the enrolled pods are
    /// in place.
    pub fn set_mesh(&self, mesh: Arc<Mesh>) {
        self.mesh.store(mesh);
    }

    /// Closes the open inbound connections the current policies deny.
    pub fn reevaluate(&self) {
        let mesh = self.mesh.load();
        let pods = self.pods.load();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for o in open.values_mut() {
            // Already told to close: not counted again.
            if o.close.is_none() {
                continue;
            }
            let Some(pod) = pods.get(&o.pod_ip) else {
                continue;
            };
            if let Err(policy) = self.verdict(&mesh, pod, o.port, o.source.as_ref())
                && let Some(tx) = o.close.take()
            {
                let _ = tx.send(policy);
            }
        }
    }

    /// Authorizes a new inbound connection to `pod` on `port` from `source`.
    fn authorize(&self, pod: &PodCtx, port: u16, source: Option<&SpiffeId>) -> Result<(), String> {
        self.verdict(&self.mesh.load(), pod, port, source)
    }

    /// What `mesh`'s policies say of a connection to `pod` (its labels as the view has them
    /// now); a denial is counted under the policy that made it.
    fn verdict(
        &self,
        mesh: &Mesh,
        pod: &PodCtx,
        port: u16,
        source: Option<&SpiffeId>,
    ) -> Result<(), String> {
        let view = mesh
            .pods
            .iter()
            .find(|p| p.uid == pod.view.uid)
            .unwrap_or(&pod.view);
        mesh.policies
            .check(&Request {
                namespace: &view.namespace,
                labels: &view.labels,
                port,
                source,
            })
            .inspect_err(|policy| self.metrics.policy_denial(policy))
    }

    /// Registers an authorized inbound connection; the receiver fires (with the policy's
    /// name) if a policy change denies it.
    fn track(
        &self,
        pod_ip: IpAddr,
        port: u16,
        source: Option<SpiffeId>,
    ) -> (u64, oneshot::Receiver<String>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Open {
                pod_ip,
                port,
                source,
                close: Some(tx),
            },
        );
        (id, rx)
    }

    fn untrack(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn remember(&self, r: ConnRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(r);
    }

    pub fn recent(&self) -> Vec<ConnRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Accepts on one of `pod`'s listeners until it is shut down.
    pub async fn accept(
        self: Arc<Self>,
        pod: Arc<PodCtx>,
        listener: TcpListener,
        direction: Direction,
    ) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // Request/response traffic (and TLS records on HBONE) must not wait
                    // for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    let this = self.clone();
                    let pod = pod.clone();
                    // One task type per direction: a task is as large as its future,
                    // and an outbound connection should not carry the size of the HBONE
                    // server's.
                    match direction {
                        Direction::Outbound => tokio::spawn(outbound_task(this, pod, stream, peer)),
                        Direction::Inbound => tokio::spawn(inbound_task(this, pod, stream, peer)),
                    };
                }
                // The listener was shut down: the pod is being un-enrolled.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => {
                    warn!(pod = %pod.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Where an outbound connection was going.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let dp = self.datapath.read().unwrap_or_else(|e| e.into_inner());
        if let Some(dst) = dp.take_original_dst(stream).map_err(io::Error::other)? {
            return Ok(dst);
        }
        drop(dp);
        let v6 = stream.local_addr()?.is_ipv6();
        netns::original_dst_netfilter(stream.as_fd(), v6).map(canonical)
    }

    fn agent_port(&self, port: u16) -> bool {
        [
            self.settings.outbound_port,
            self.settings.inbound_port,
            HBONE_PORT,
        ]
        .contains(&port)
    }

    async fn outbound(&self, pod: &PodCtx, mut client: TcpStream, peer: SocketAddr) {
        let metrics = &self.metrics;
        let _active = metrics.connection(Direction::Outbound);
        let orig = match self.original_dst(&client) {
            Ok(o) => o,
            Err(e) => {
                debug!(pod = %pod.name, %peer, error = %e, "no original destination; closing");
                return;
            }
        };
        // Connections addressed to the agent's own ports would loop.
        if orig.port() != HBONE_PORT && self.agent_port(orig.port()) {
            debug!(pod = %pod.name, %peer, %orig, "connection to an agent port; closing");
            return;
        }
        let mesh = self.mesh.load_full();
        let target = mesh.resolve(orig);
        let workload = target.and_then(|t| mesh.workloads.get(&t.ip()).cloned());
        let mut record = ConnRecord {
            pod: pod.name.clone(),
            direction: Direction::Outbound,
            client: canonical(peer),
            original_dst: orig,
            upstream: target,
            protocol: "plaintext",
            source_identity: pod.id.as_ref().map(|i| i.to_string()),
            destination_identity: None,
            traceparent: None,
            error: None,
            at_unix_ms: now_ms(),
        };
        let (Some(target), Some(identities)) = (target, &self.identities) else {
            // Plaintext: no mutual TLS configured, or a Service without endpoints.
            let upstream = match target {
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the Service has no ready endpoint",
                )),
                Some(t) => connect_in(&pod.netns, None, t, AGENT_MARK).await,
            };
            return self.relay(record, client, upstream.map(Box::new)).await;
        };
        let (Some(w), Some(src_id)) = (workload, pod.id.clone()) else {
            // Outside the mesh: straight there, from the pod's address.
            let upstream = connect_in(&pod.netns, None, target, AGENT_MARK).await;
            return self.relay(record, client, upstream.map(Box::new)).await;
        };
        let dst_id = identities.id(&w.namespace, &w.service_account);
        record.protocol = "hbone";
        record.destination_identity = Some(dst_id.to_string());
        // Boxed: setting up the tunnel (a TLS and HTTP/2 handshake when no pooled
        // connection is free) takes far more room than carrying it, and the task keeps
        // its largest state for as long as the connection lives.
        let tunnel = Box::pin(async {
            let svid = identities
                .wait(&src_id, IDENTITY_WAIT)
                .await
                .map_err(io::Error::other)?;
            // The client's address as the destination will see it: the pod's address of
            // the destination's family (the client itself connected over loopback).
            let source_ip = pod
                .view
                .ips
                .iter()
                .find(|ip| ip.is_ipv4() == target.is_ipv4())
                .or(pod.view.ips.first())
                .copied()
                .unwrap_or_else(|| canonical(peer).ip());
            hbone::connect(self, pod, &svid, dst_id.clone(), &w.node, target, source_ip).await
        })
        .await;
        match tunnel {
            Ok(t) => {
                metrics.workload_connection(
                    Direction::Outbound,
                    &src_id.to_string(),
                    &dst_id.to_string(),
                );
                self.remember(record);
                let (sent, received) = copy(&mut client, &mut { t }).await;
                metrics.bytes(Direction::Outbound, sent, received);
                metrics.workload_bytes(
                    Direction::Outbound,
                    &src_id.to_string(),
                    &dst_id.to_string(),
                    sent,
                    received,
                );
            }
            Err(e) => {
                metrics.connect_error(Direction::Outbound);
                info!(pod = %pod.name, %peer, %orig, destination = %dst_id, error = %e, "HBONE connection failed; closing the client's connection");
                record.error = Some(e.to_string());
                self.remember(record);
            }
        }
    }

    /// Carries a plaintext connection to `upstream` (or records why it could not).
    async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut record: ConnRecord,
        mut client: TcpStream,
        upstream: io::Result<Box<S>>,
    ) {
        let direction = record.direction;
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                self.metrics.connect_error(direction);
                debug!(pod = %record.pod, client = %record.client, dst = %record.original_dst, error = %e, "onward connect failed");
                record.error = Some(e.to_string());
                self.remember(record);
                return;
            }
        };
        let src = record
            .source_identity
            .clone()
            .unwrap_or_else(|| UNKNOWN.into());
        let dst = record
            .destination_identity
            .clone()
            .unwrap_or_else(|| UNKNOWN.into());
        self.metrics.workload_connection(direction, &src, &dst);
        self.remember(record);
        let (sent, received) = copy(&mut client, &mut upstream).await;
        self.metrics.bytes(direction, sent, received);
        self.metrics
            .workload_bytes(direction, &src, &dst, sent, received);
    }

    async fn inbound(self: Arc<Self>, pod: Arc<PodCtx>, client: TcpStream, peer: SocketAddr) {
        let local = match client.local_addr() {
            Ok(l) => canonical(l),
            Err(_) => return,
        };
        if local.port() == HBONE_PORT {
            if self.mtls() {
                // Boxed: the TLS and HTTP/2 server states would otherwise size every
                // plaintext inbound connection's task.
                Box::pin(hbone::serve(self, pod, client, peer)).await;
            } else {
                debug!(pod = %pod.name, %peer, "HBONE connection while mutual TLS is off; closing");
            }
            return;
        }
        let _active = self.metrics.connection(Direction::Inbound);
        // A connection that arrived on the listener's own port was sent by a netfilter
        // REDIRECT rule (the `--no-ebpf` comparison path); else its local end is where it
        // was going.
        let orig = if local.port() == self.settings.inbound_port {
            match netns::original_dst_netfilter(client.as_fd(), local.is_ipv6()) {
                Ok(o) => canonical(o),
                Err(_) => return,
            }
        } else {
            local
        };
        let peer = canonical(peer);
        let record = ConnRecord {
            pod: pod.name.clone(),
            direction: Direction::Inbound,
            client: peer,
            original_dst: orig,
            upstream: Some(orig),
            protocol: "plaintext",
            source_identity: None,
            destination_identity: pod.id.as_ref().map(|i| i.to_string()),
            traceparent: None,
            error: None,
            at_unix_ms: now_ms(),
        };
        if self.mtls() && pod.view.strict {
            self.metrics.policy_denial("strict-mtls");
            info!(pod = %pod.name, client = %peer, dst = %orig, "plaintext refused: the namespace is labelled cedille.io/mtls=strict");
            return;
        }
        if let Err(policy) = self.authorize(&pod, orig.port(), None) {
            info!(pod = %pod.name, client = %peer, dst = %orig, %policy, "plaintext connection denied by policy");
            return;
        }
        let source = pod.transparent.then_some(peer.ip());
        let upstream = connect_in(&pod.netns, source, orig, routing::DELIVER_MARK).await;
        let (id, closed) = self.track(orig.ip(), orig.port(), None);
        tokio::select! {
            _ = self.relay(record, client, upstream.map(Box::new)) => {}
            Ok(policy) = closed => {
                info!(pod = %pod.name, client = %peer, dst = %orig, %policy, "open connection closed: policy now denies it");
            }
        }
        self.untrack(id);
    }
}

/// Copies both ways until both sides are done; returns bytes (client to server, back).
pub async fn copy<A, B>(a: &mut A, b: &mut B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    match copy::bidirectional(a, b).await {
        Ok(n) => n,
        Err(e) => {
            debug!(error = %e, "connection ended with an error");
            (0, 0)
        }
    }
}

/// Connects to `dst` from inside the network namespace `ns`, from `source` when given
/// (transparently: the address need not be local), with `mark` on the socket.
pub async fn connect_in(
    ns: &File,
    source: Option<IpAddr>,
    dst: SocketAddr,
    mark: u32,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    // A source of the other family cannot be kept: the pod's own address is used.
    let source = source.filter(|s| s.is_ipv4() == dst.is_ipv4());
    let socket = netns::with_netns(ns, || {
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        s.set_tcp_nodelay(true)?;
        s.set_mark(mark)?;
        if let Some(src) = source {
            if dst.is_ipv6() {
                s.set_ip_transparent_v6(true)?;
            } else {
                s.set_ip_transparent_v4(true)?;
            }
            // Through the delivery table's `local default dev lo`: the connection then
            // arrives on loopback, which the inbound program leaves alone (delivered over
            // the pod's own interface route, it would be captured again, in a loop).
            s.bind_device(Some(b"lo"))?;
            s.bind(&SocketAddr::new(src, 0).into())?;
        }
        Ok(s)
    })?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F: Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each open connection holds its task for as long as it lives, and a task is as large
    /// as its future's largest state. Setting up a tunnel (TLS and HTTP/2 handshakes) and
    /// serving HBONE are boxed so that they do not size the tasks of the connections
    /// carried: with one task type for both directions and the handshakes inline, every
    /// connection held 9.5 KB (`cargo xtask bench mesh`: 10.1 KB per open connection for
    /// both agents then, 2.4 KB since).
    #[test]
    fn connection_tasks_stay_small() {
        let outbound = future_size(outbound_task);
        let inbound = future_size(inbound_task);
        assert!(outbound <= 2048, "the outbound task takes {outbound} bytes");
        assert!(inbound <= 2048, "the inbound task takes {inbound} bytes");
    }
}
