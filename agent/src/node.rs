//! The agent on one node: the kernel side of enrollment (listeners inside the pod, eBPF
//! map entries and programs, transparent delivery set-up) behind [`crate::enroll::Host`],
//! and [`Node`], which ties enrollment, identities and the connection path together.
//!
//! Enrollment order keeps a pod from ever being half meshed: listeners first, then map
//! entries, then the programs; any failure undoes what was done. Un-enrollment goes the other
//! way. Between agent runs the pinned programs keep steering to listeners that no longer
//! exist, so connections fail (fail-closed) unless the map says fail-open.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    cgroups,
    datapath::{Datapath, DatapathError, SocketTarget},
    enroll::{Enroller, Host, PodReport},
    identity::{Identities, IdentityReport, verify},
    mesh::{Mesh, PodView},
    metrics::{Direction, Metrics},
    netns,
    proxy::{ConnRecord, HBONE_PORT, PodCtx, Proxy},
    routing,
};

pub use crate::proxy::AGENT_MARK;

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

pub struct Enrolled {
    id: String,
    cgroup: PathBuf,
    cookie: u64,
    slot: u32,
    addrs: Vec<IpAddr>,
    ctx: Arc<PodCtx>,
    tasks: Vec<JoinHandle<()>>,
    /// Duplicates of the listeners' descriptors, to stop them synchronously: the aborted
    /// accept tasks drop their listeners later, and a quick re-enrollment must be able to
    /// bind the same ports at once.
    listener_fds: Vec<std::os::fd::OwnedFd>,
}

impl Drop for Enrolled {
    fn drop(&mut self) {
        for fd in &self.listener_fds {
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                nix::sys::socket::Shutdown::Both,
            );
        }
        // Stops accepting; connections already carried keep going.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The kernel host: eBPF datapath, pod namespaces, the proxy's accept loops.
pub struct KernelHost {
    settings: Settings,
    datapath: Arc<RwLock<Datapath>>,
    proxy: Arc<Proxy>,
}

pub struct Node {
    enroller: Enroller<KernelHost>,
    proxy: Arc<Proxy>,
    datapath: Arc<RwLock<Datapath>>,
    metrics: Arc<Metrics>,
    identities: Option<Arc<Identities>>,
    manifest_errors: Mutex<Vec<crate::objects::ManifestError>>,
    /// Pods left waiting by the last reconcile.
    waiting: std::sync::atomic::AtomicUsize,
}

impl Node {
    /// Must run inside the tokio runtime. `identities` is `None` when the mesh runs without
    /// mutual TLS (`--plaintext`).
    pub fn new(
        settings: Settings,
        mut datapath: Datapath,
        metrics: Arc<Metrics>,
        identities: Option<Arc<Identities>>,
    ) -> Result<Self, DatapathError> {
        datapath.set_fail_open(settings.fail_open)?;
        let datapath = Arc::new(RwLock::new(datapath));
        let proxy = Proxy::new(
            crate::proxy::Settings {
                outbound_port: settings.outbound_port,
                inbound_port: settings.inbound_port,
            },
            metrics.clone(),
            identities.clone(),
            datapath.clone(),
        );
        Ok(Self {
            enroller: Enroller::new(KernelHost {
                settings,
                datapath: datapath.clone(),
                proxy: proxy.clone(),
            }),
            proxy,
            datapath,
            metrics,
            identities,
            manifest_errors: Mutex::new(Vec::new()),
            waiting: Default::default(),
        })
    }

    /// Makes the node match `mesh`: identities for the meshed pods' service accounts, then
    /// enrollment, then the connection path's view (which closes open connections that a
    /// changed policy now denies). Must run inside the tokio runtime.
    pub fn reconcile(&self, mesh: Mesh) {
        if let Some(ids) = &self.identities {
            ids.sync(
                mesh.pods
                    .iter()
                    .filter(|p| p.enroll.is_ok())
                    .map(|p| ids.id(&p.namespace, &p.service_account)),
            );
        }
        let mesh = Arc::new(mesh);
        self.proxy.set_mesh(mesh.clone());
        let counts = self.enroller.reconcile(&mesh);
        let mut pods = std::collections::HashMap::new();
        self.enroller.each_enrolled(|_, en| {
            for ip in &en.addrs {
                pods.insert(ip.to_canonical(), en.ctx.clone());
            }
        });
        self.proxy.pods.store(Arc::new(pods));
        self.proxy.reevaluate();
        self.metrics.enrolled_pods.set(counts.enrolled as i64);
        self.metrics.waiting_pods.set(counts.waiting as i64);
        self.waiting
            .store(counts.waiting, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the last reconcile left pods waiting (no cgroup or process yet).
    pub fn waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Un-enrolls every pod (used on uninstall); normal shutdown leaves pods enrolled.
    pub fn reset(&self) {
        self.enroller.reset();
    }

    pub fn report(&self) -> Vec<PodReport> {
        self.enroller.report()
    }

    pub fn identities(&self) -> Vec<IdentityReport> {
        self.identities
            .as_ref()
            .map(|i| i.report())
            .unwrap_or_default()
    }

    /// `/config`'s description of mutual TLS.
    pub fn mtls_report(&self) -> serde_json::Value {
        match &self.identities {
            None => serde_json::json!({"enabled": false}),
            Some(i) => serde_json::json!({
                "enabled": true,
                "trustDomain": i.trust_domain(),
                "source": i.source(),
                "pool": self.proxy.pool.report().into_iter().map(|(k, peer, streams)| serde_json::json!({
                    "sourceIdentity": k.source.to_string(),
                    "destinationIdentity": k.destination.to_string(),
                    "node": k.node,
                    "peer": peer,
                    "streams": streams,
                })).collect::<Vec<_>>(),
            }),
        }
    }

    pub fn set_manifest_errors(&self, errors: Vec<crate::objects::ManifestError>) {
        self.metrics.invalid_manifests.set(errors.len() as i64);
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
        self.proxy.recent()
    }

    /// Refreshes the kernel-sourced metrics and returns the exposition.
    pub fn metrics_text(&self) -> String {
        let dp = self.datapath.read().unwrap_or_else(|e| e.into_inner());
        let stats = dp.stats().unwrap_or_default();
        self.metrics
            .kernel(dp.map_counts(), stats, &dp.program_stats());
        drop(dp);
        self.metrics.encode()
    }

    pub fn map_counts(&self) -> crate::datapath::MapCounts {
        self.datapath
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map_counts()
    }
}

fn pod_name(v: &PodView) -> String {
    format!("{}/{}", v.namespace, v.name)
}

impl Host for KernelHost {
    type Enrollment = Enrolled;

    fn enroll(&self, view: &PodView) -> Result<Enrolled, String> {
        let s = &self.settings;
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
        let transparent = match routing::setup(&ns) {
            Ok(()) => true,
            Err(e) => {
                warn!(pod = %name, error = %e, "cannot set up transparent delivery; the application will see the pod's own address as the client");
                false
            }
        };
        let id = format!("pod-{}", view.uid);
        let slot = {
            let dp = self.datapath.read().unwrap_or_else(|e| e.into_inner());
            let used = dp.inbound_slots();
            (0..).find(|s| !used.contains(s)).unwrap_or(0)
        };
        let identity = self
            .proxy
            .identities
            .as_ref()
            .map(|i| i.id(&view.namespace, &view.service_account));
        let tls = self.proxy.identities.as_ref().and_then(|i| {
            let handle = i.handle(identity.as_ref()?)?;
            Some(verify::server_config(handle))
        });
        let ctx = Arc::new(PodCtx {
            name: name.clone(),
            view: view.clone(),
            netns: ns.clone(),
            id: identity,
            transparent,
            tls,
        });
        let mut en = Enrolled {
            id: id.clone(),
            cgroup: cgroup.clone(),
            cookie,
            slot,
            addrs: view.ips.clone(),
            ctx: ctx.clone(),
            tasks: Vec::new(),
            listener_fds: Vec::new(),
        };
        let attached = {
            let mut dp = self.datapath.write().unwrap_or_else(|e| e.into_inner());
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
        let keep_fd = |l: &TcpListener| {
            use std::os::fd::AsFd;
            l.as_fd().try_clone_to_owned().ok()
        };
        let inbound = TcpListener::from_std(listeners.inbound).map_err(|e| e.to_string())?;
        let mut all = vec![(inbound, Direction::Inbound)];
        all.extend(listeners.hbone.map(|l| (l, Direction::Inbound)));
        all.extend(
            listeners
                .outbound
                .into_iter()
                .map(|l| (l, Direction::Outbound)),
        );
        for (l, direction) in all {
            en.listener_fds.extend(keep_fd(&l));
            en.tasks.push(tokio::spawn(self.proxy.clone().accept(
                ctx.clone(),
                l,
                direction,
            )));
        }
        info!(pod = %name, cgroup = %cgroup.display(), netns_cookie = cookie, ips = ?view.ips, ?attached, transparent, identity = ?ctx.id.as_ref().map(|i| i.to_string()), "pod enrolled");
        Ok(en)
    }

    fn unenroll(&self, view: &PodView, en: Enrolled) {
        let mut dp = self.datapath.write().unwrap_or_else(|e| e.into_inner());
        undo(&mut dp, &en);
        drop(dp);
        info!(pod = %pod_name(view), "pod un-enrolled");
        drop(en);
    }

    fn intact(&self, en: &Enrolled) -> bool {
        en.cgroup.exists()
    }

    fn cleanup(&self, kept: &[&Enrolled]) {
        let mut ids = BTreeSet::new();
        let mut cookies = Vec::new();
        let mut addrs = Vec::new();
        for en in kept {
            ids.insert(en.id.clone());
            cookies.push(en.cookie);
            addrs.extend(&en.addrs);
        }
        let mut dp = self.datapath.write().unwrap_or_else(|e| e.into_inner());
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

    fn describe(&self, en: &Enrolled) -> (Option<PathBuf>, Option<u64>) {
        (Some(en.cgroup.clone()), Some(en.cookie))
    }
}

impl KernelHost {
    fn listen(&self, ns: &File) -> io::Result<Listeners> {
        let s = &self.settings;
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
            let any = |port| {
                bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), false)
                    .or_else(|_| bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), true))
            };
            let inbound = any(s.inbound_port)?;
            // The inbound program steers port 15008 to the inbound listener too; this one
            // serves HBONE when no eBPF is attached (the iptables comparison path).
            let hbone = if self.proxy.mtls() {
                Some(any(HBONE_PORT)?)
            } else {
                None
            };
            let outbound = outbound
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<io::Result<Vec<_>>>()?;
            let hbone = hbone.map(TcpListener::from_std).transpose()?;
            Ok(Listeners {
                outbound,
                inbound,
                hbone,
            })
        })
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
    hbone: Option<TcpListener>,
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
