//! The agent on one node: enrolls this node's meshed pods (eBPF attached to their cgroup and
//! network namespace, listeners inside the pod), un-enrolls the rest, and carries captured
//! connections.
//!
//! Enrollment order keeps a pod from ever being half meshed: listeners first, then map
//! entries, then the programs; any failure undoes what was done. Un-enrollment goes the other
//! way. Between agent runs the pinned programs keep steering to listeners that no longer
//! exist, so connections fail (fail-closed) unless the map says fail-open.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{net::TcpListener, net::TcpStream, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    cgroups,
    datapath::{Datapath, DatapathError, SocketTarget},
    mesh::{Mesh, PodView},
    metrics::{Direction, Metrics},
    netns,
};

/// The mark on the agent's own upstream sockets, so that an iptables capture rule (the
/// sidecar-style path the benchmark compares with) can leave them alone.
pub const AGENT_MARK: u32 = 0x539;
/// How long an onward connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections remembered for `/config`.
const RECENT: usize = 64;

#[derive(Clone, Debug)]
pub struct Settings {
    pub cgroup_root: PathBuf,
    pub fail_open: bool,
    /// The outbound listener's port inside each pod (on its loopback).
    pub outbound_port: u16,
    /// The inbound listener's port inside each pod.
    pub inbound_port: u16,
    /// Only open listeners (and read `SO_ORIGINAL_DST`); attach no eBPF. For comparing with
    /// an iptables `REDIRECT` capture.
    pub no_ebpf: bool,
}

/// What the agent knows of one pod, for `/config`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ips: Vec<IpAddr>,
    /// `enrolled`, `waiting` (should be, cannot be yet) or `not-enrolled`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub cgroup: Option<PathBuf>,
    pub netns_cookie: Option<u64>,
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
    pub error: Option<String>,
    pub at_unix_ms: u128,
}

struct Enrolled {
    id: String,
    cgroup: PathBuf,
    cookie: u64,
    slot: u32,
    addrs: Vec<IpAddr>,
    tasks: Vec<JoinHandle<()>>,
    /// Duplicates of the listeners' descriptors, to stop them synchronously: the aborted
    /// accept tasks drop their listeners later, and a quick re-enrollment must be able to
    /// bind the same ports at once.
    listener_fds: Vec<std::os::fd::OwnedFd>,
}

impl Drop for Enrolled {
    fn drop(&mut self) {
        for fd in &self.listener_fds {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown on a descriptor we own (a duplicate of the listener's).
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        // Stops accepting; connections already carried keep going.
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum State {
    Enrolled(Enrolled),
    Waiting(String),
    NotEnrolled(String),
}

struct Entry {
    view: PodView,
    state: State,
}

/// Shared by the accept loops.
struct Shared {
    settings: Settings,
    datapath: RwLock<Datapath>,
    metrics: Arc<Metrics>,
    mesh: RwLock<Arc<Mesh>>,
    recent: Mutex<VecDeque<ConnRecord>>,
}

pub struct Node {
    shared: Arc<Shared>,
    pods: Mutex<BTreeMap<String, Entry>>,
    manifest_errors: Mutex<Vec<crate::objects::ManifestError>>,
}

fn pod_name(v: &PodView) -> String {
    format!("{}/{}", v.namespace, v.name)
}

impl Node {
    pub fn new(
        settings: Settings,
        mut datapath: Datapath,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DatapathError> {
        datapath.set_fail_open(settings.fail_open)?;
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                datapath: RwLock::new(datapath),
                metrics,
                mesh: RwLock::new(Arc::default()),
                recent: Mutex::new(VecDeque::new()),
            }),
            pods: Mutex::new(BTreeMap::new()),
            manifest_errors: Mutex::new(Vec::new()),
        })
    }

    /// Makes the enrolled set match `mesh`; retries pods that could not be enrolled before.
    /// Must run inside the tokio runtime (it starts the accept loops).
    pub fn reconcile(&self, mesh: Mesh) {
        let wanted: BTreeMap<String, PodView> = mesh
            .pods
            .iter()
            .map(|p| (p.uid.clone(), p.clone()))
            .collect();
        *self.shared.mesh.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(mesh);
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());

        // Un-enroll first: pods gone, no longer meshed, re-addressed, or whose cgroup vanished.
        let uids: Vec<String> = pods.keys().cloned().collect();
        for uid in uids {
            let keep = match (wanted.get(&uid), pods.get(&uid)) {
                (Some(v), Some(e)) => match &e.state {
                    State::Enrolled(en) => {
                        v.enroll.is_ok() && v.ips == e.view.ips && en.cgroup.exists()
                    }
                    _ => true,
                },
                _ => false,
            };
            if !keep
                && let Some(e) = pods.remove(&uid)
                && let State::Enrolled(en) = e.state
            {
                self.unenroll(&pod_name(&e.view), en);
            }
        }
        for (uid, view) in wanted {
            let current = pods.remove(&uid);
            let state = match (view.enroll.clone(), current.map(|e| e.state)) {
                (Err(why), _) => State::NotEnrolled(why),
                (Ok(()), Some(State::Enrolled(en))) => State::Enrolled(en),
                (Ok(()), _) => match self.enroll(&view) {
                    Ok(en) => State::Enrolled(en),
                    Err(why) => State::Waiting(why),
                },
            };
            pods.insert(uid, Entry { view, state });
        }
        self.cleanup(&pods);
        let enrolled = pods
            .values()
            .filter(|e| matches!(e.state, State::Enrolled(_)))
            .count();
        let waiting = pods
            .values()
            .filter(|e| matches!(e.state, State::Waiting(_)))
            .count();
        self.shared.metrics.enrolled_pods.set(enrolled as i64);
        self.shared.metrics.waiting_pods.set(waiting as i64);
    }

    /// Removes what an earlier run (or a failed step) left for pods not enrolled now.
    fn cleanup(&self, pods: &BTreeMap<String, Entry>) {
        let mut ids = BTreeSet::new();
        let mut cookies = Vec::new();
        let mut addrs = Vec::new();
        for e in pods.values() {
            if let State::Enrolled(en) = &e.state {
                ids.insert(en.id.clone());
                cookies.push(en.cookie);
                addrs.extend(&en.addrs);
            }
        }
        let mut dp = self
            .shared
            .datapath
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for id in dp.pinned_ids().unwrap_or_default() {
            if !ids.contains(&id) {
                match dp.detach(&id) {
                    Ok(_) => info!(id, "detached an attachment no enrolled pod owns"),
                    Err(e) => warn!(id, error = %e, "cannot detach a stale attachment"),
                }
            }
        }
        let t = dp.retain_targets(&cookies);
        let a = dp.retain_inbound(&addrs).unwrap_or(0);
        if t + a > 0 {
            info!(targets = t, inbound_addrs = a, "removed stale map entries");
        }
    }

    fn enroll(&self, view: &PodView) -> Result<Enrolled, String> {
        let s = &self.shared.settings;
        let name = pod_name(view);
        let cgroup = cgroups::find_pod_cgroup(&s.cgroup_root, &view.uid).ok_or_else(|| {
            format!(
                "no cgroup for pod UID {} under {} yet",
                view.uid,
                s.cgroup_root.display()
            )
        })?;
        let ns = cgroups::pod_netns(&cgroup).map_err(|e| format!("network namespace: {e}"))?;
        let ns = Arc::new(ns);
        let listeners = self
            .listen(&ns)
            .map_err(|e| format!("listening inside the pod: {e}"))?;
        let cookie = netns::netns_cookie(listeners.inbound.as_fd())
            .map_err(|e| format!("netns cookie: {e}"))?;
        let id = format!("pod-{}", view.uid);
        let slot = {
            let pods = self.pods_slots();
            (0..).find(|s| !pods.contains(s)).unwrap_or(0)
        };
        let mut en = Enrolled {
            id: id.clone(),
            cgroup: cgroup.clone(),
            cookie,
            slot,
            addrs: view.ips.clone(),
            tasks: Vec::new(),
            listener_fds: Vec::new(),
        };
        let attached = {
            let mut dp = self
                .shared
                .datapath
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let r = (|| {
                dp.set_target(cookie, SocketTarget::loopback(s.outbound_port))?;
                dp.set_inbound(slot, &listeners.inbound, &view.ips)?;
                if s.no_ebpf {
                    return Ok(None);
                }
                let a = dp.attach(&id, &cgroup)?;
                dp.attach_netns(&id, &ns)?;
                Ok::<_, DatapathError>(Some(a))
            })();
            if r.is_err() {
                undo(&mut dp, &en);
            }
            r.map_err(|e| e.to_string())?
        };
        let ctx = Arc::new(PodCtx {
            name: name.clone(),
            netns: ns,
            shared: self.shared.clone(),
        });
        for l in listeners.outbound {
            en.tasks
                .push(tokio::spawn(ctx.clone().accept(l, Direction::Outbound)));
        }
        let inbound = TcpListener::from_std(listeners.inbound).map_err(|e| e.to_string())?;
        en.tasks
            .push(tokio::spawn(ctx.accept(inbound, Direction::Inbound)));
        info!(pod = %name, cgroup = %cgroup.display(), netns_cookie = cookie, ips = ?view.ips, ?attached, "pod enrolled");
        Ok(en)
    }

    fn pods_slots(&self) -> BTreeSet<u32> {
        // Called with `pods` locked by reconcile: read the datapath's own record instead.
        self.shared
            .datapath
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .inbound_slots()
    }

    fn unenroll(&self, name: &str, en: Enrolled) {
        let mut dp = self
            .shared
            .datapath
            .write()
            .unwrap_or_else(|e| e.into_inner());
        undo(&mut dp, &en);
        drop(dp);
        info!(pod = %name, "pod un-enrolled");
        drop(en);
    }

    fn listen(&self, ns: &File) -> io::Result<Listeners> {
        let s = &self.shared.settings;
        netns::with_netns(ns, || {
            let mut outbound = Vec::new();
            outbound.push(bind(
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), s.outbound_port),
                true,
            )?);
            // IPv6 may be off in the pod; its v6 connections then fail (closed), as they would
            // without the mesh.
            match bind(
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), s.outbound_port),
                true,
            ) {
                Ok(l) => outbound.push(l),
                Err(e) => debug!(error = %e, "no IPv6 outbound listener"),
            }
            let inbound = bind(
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), s.inbound_port),
                false,
            )
            .or_else(|_| {
                bind(
                    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), s.inbound_port),
                    true,
                )
            })?;
            let outbound = outbound
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<io::Result<Vec<_>>>()?;
            Ok(Listeners { outbound, inbound })
        })
    }

    /// Un-enrolls every pod (used on uninstall); normal shutdown leaves pods enrolled.
    pub fn reset(&self) {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for (_, e) in std::mem::take(&mut *pods) {
            if let State::Enrolled(en) = e.state {
                self.unenroll(&pod_name(&e.view), en);
            }
        }
    }

    pub fn report(&self) -> Vec<PodReport> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.values()
            .map(|e| {
                let (state, reason, cgroup, cookie) = match &e.state {
                    State::Enrolled(en) => {
                        ("enrolled", None, Some(en.cgroup.clone()), Some(en.cookie))
                    }
                    State::Waiting(w) => ("waiting", Some(w.clone()), None, None),
                    State::NotEnrolled(w) => ("not-enrolled", Some(w.clone()), None, None),
                };
                PodReport {
                    namespace: e.view.namespace.clone(),
                    name: e.view.name.clone(),
                    uid: e.view.uid.clone(),
                    ips: e.view.ips.clone(),
                    state,
                    reason,
                    cgroup,
                    netns_cookie: cookie,
                }
            })
            .collect()
    }

    pub fn set_manifest_errors(&self, errors: Vec<crate::objects::ManifestError>) {
        self.shared
            .metrics
            .invalid_manifests
            .set(errors.len() as i64);
        *self
            .manifest_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = errors;
    }

    pub fn invalid_manifests(&self) -> Vec<crate::objects::ManifestError> {
        self.manifest_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn recent_connections(&self) -> Vec<ConnRecord> {
        self.shared
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Refreshes the kernel-sourced metrics and returns the exposition.
    pub fn metrics_text(&self) -> String {
        let dp = self
            .shared
            .datapath
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let stats = dp.stats().unwrap_or_default();
        self.shared
            .metrics
            .kernel(dp.map_counts(), stats, &dp.program_stats());
        drop(dp);
        self.shared.metrics.encode()
    }

    pub fn map_counts(&self) -> crate::datapath::MapCounts {
        self.shared
            .datapath
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map_counts()
    }
}

/// Removes an enrollment's programs and map entries; errors are logged, not fatal, so that a
/// pod is never left half attached by a failing step.
fn undo(dp: &mut Datapath, en: &Enrolled) {
    if let Err(e) = dp.detach(&en.id) {
        warn!(id = %en.id, error = %e, "detaching");
    }
    if let Err(e) = dp.remove_target(en.cookie) {
        warn!(id = %en.id, error = %e, "removing redirect target");
    }
    if let Err(e) = dp.remove_inbound(en.slot, &en.addrs) {
        warn!(id = %en.id, error = %e, "removing inbound entries");
    }
    dp.purge_netns(en.cookie);
}

struct Listeners {
    outbound: Vec<TcpListener>,
    inbound: std::net::TcpListener,
}

fn bind(addr: SocketAddr, v6_only: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(v6_only)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .and_then(|()| s.listen(1024))
        .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    Ok(s.into())
}

/// One enrolled pod, as its accept loops see it.
struct PodCtx {
    name: String,
    netns: Arc<File>,
    shared: Arc<Shared>,
}

impl PodCtx {
    async fn accept(self: Arc<Self>, listener: TcpListener, direction: Direction) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let this = self.clone();
                    tokio::spawn(async move { this.carry(stream, peer, direction).await });
                }
                // The listener was shut down: the pod is being un-enrolled.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => {
                    warn!(pod = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Where a captured connection was going.
    fn original_dst(&self, stream: &TcpStream, direction: Direction) -> io::Result<SocketAddr> {
        match direction {
            // The inbound program hands over the connection as addressed: its local end is
            // the original destination. A connection that arrived on the listener's own port
            // was sent by a netfilter REDIRECT rule (the `--no-ebpf` comparison path).
            Direction::Inbound => {
                let local = canonical(stream.local_addr()?);
                if local.port() == self.shared.settings.inbound_port {
                    netns::original_dst_netfilter(stream.as_fd(), local.is_ipv6()).map(canonical)
                } else {
                    Ok(local)
                }
            }
            Direction::Outbound => {
                let dp = self
                    .shared
                    .datapath
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                if let Some(dst) = dp.take_original_dst(stream).map_err(io::Error::other)? {
                    return Ok(dst);
                }
                drop(dp);
                let v6 = stream.local_addr()?.is_ipv6();
                netns::original_dst_netfilter(stream.as_fd(), v6).map(canonical)
            }
        }
    }

    async fn carry(&self, mut client: TcpStream, peer: SocketAddr, direction: Direction) {
        let metrics = &self.shared.metrics;
        let _active = metrics.connection(direction);
        let s = &self.shared.settings;
        let orig = match self.original_dst(&client, direction) {
            Ok(o) => o,
            Err(e) => {
                debug!(pod = %self.name, %peer, error = %e, "no original destination; closing");
                return;
            }
        };
        // Connections addressed to the agent's own ports would loop.
        if [s.outbound_port, s.inbound_port].contains(&orig.port()) {
            debug!(pod = %self.name, %peer, %orig, "connection to an agent port; closing");
            return;
        }
        // Outbound: Service addresses go to one of their endpoints. Mutual TLS to the
        // destination pod's agent slots in here (the destination is known to be meshed).
        let target = match direction {
            Direction::Outbound => self
                .shared
                .mesh
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .resolve(orig),
            Direction::Inbound => Some(orig),
        };
        let mut record = ConnRecord {
            pod: self.name.clone(),
            direction,
            client: canonical(peer),
            original_dst: orig,
            upstream: target,
            error: None,
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
        };
        let upstream = match target {
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the Service has no ready endpoint",
            )),
            Some(t) => self.connect(t).await,
        };
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                metrics.connect_error(direction);
                debug!(pod = %self.name, %peer, %orig, error = %e, "onward connect failed");
                record.error = Some(e.to_string());
                self.remember(record);
                return;
            }
        };
        self.remember(record);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => metrics.bytes(direction, sent, received),
            Err(e) => {
                debug!(pod = %self.name, %peer, %orig, error = %e, "connection ended with an error")
            }
        }
    }

    fn remember(&self, r: ConnRecord) {
        let mut recent = self.shared.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(r);
    }

    /// Connects to `dst` from inside the pod's network namespace (so the pod's address is
    /// the source, and the pod's routes apply).
    async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        use socket2::{Domain, Socket, Type};
        let socket = netns::with_netns(&self.netns, || {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            s.set_tcp_nodelay(true)?;
            s.set_mark(AGENT_MARK)?;
            Ok(s)
        })?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
