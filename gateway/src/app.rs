//! Wiring: the object source (manifest directory or Kubernetes), translation, the data
//! plane and the admin endpoint, and the control loop that reloads on change and drains on
//! shutdown. In Kubernetes mode it also runs leader election and the status writer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use cedille_objects::{Source, dir::DirSource};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminState},
    kube::{self, ClusterReport, lease::Elector, status},
    metrics::Metrics,
    model::{Kind, ObjKey, Object},
    proxy::{conn::Limits, runtime::DataPlane},
    store::{Store, rfc3339},
    translate::{self, Env, StatusReport},
};

/// Where the objects come from.
#[derive(Clone, Debug)]
pub enum Mode {
    /// A directory of manifests, watched (standalone mode).
    Dir(PathBuf),
    /// The Kubernetes API server.
    Kubernetes(kube::Settings),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    pub admin_addr: SocketAddr,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub limits: Limits,
    /// On shutdown, how long to keep serving after readiness turns false, so that load
    /// balancers stop sending before the listeners close.
    pub shutdown_delay: Duration,
    /// Full rescans of the directory, in case a change notification was missed; also how
    /// often sockets that could not be bound are retried.
    pub rescan_interval: Duration,
    /// Serve HTTP/3 (QUIC) on every HTTPS socket, and advertise it with `alt-svc`.
    pub http3: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("admin endpoint {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("config directory {}: {source}", dir.display())]
    ConfigDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A gateway running in this process.
pub struct Running {
    pub admin_addr: SocketAddr,
    pub state: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts draining and waits until the gateway has stopped.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

pub async fn start(settings: Settings) -> Result<Running, StartError> {
    if let Mode::Dir(dir) = &settings.mode
        && let Err(source) = std::fs::read_dir(dir)
    {
        return Err(StartError::ConfigDir {
            dir: dir.clone(),
            source,
        });
    }
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AdminState::new(metrics.clone()));
    let admin_listener = admin::bind(settings.admin_addr)
        .and_then(TcpListener::from_std)
        .map_err(|source| StartError::Admin {
            addr: settings.admin_addr,
            source,
        })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(settings.admin_addr);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    tokio::spawn(admin::serve(admin_listener, state.clone(), admin_stop_rx));
    match &settings.mode {
        Mode::Dir(dir) => {
            info!(%admin_addr, config_dir = %dir.display(), "cedille-gateway starting")
        }
        Mode::Kubernetes(k) => {
            info!(%admin_addr, identity = %k.pod_name, lease = %k.lease_name, "cedille-gateway starting in Kubernetes mode")
        }
    }
    let task = tokio::spawn(control_loop(
        settings,
        state.clone(),
        shutdown_rx,
        admin_stop,
    ));
    Ok(Running {
        admin_addr,
        state,
        shutdown,
        task,
    })
}

/// Kubernetes mode's moving parts besides the watches.
struct Cluster {
    versions: BTreeMap<Kind, String>,
    leader: watch::Receiver<bool>,
    jobs: watch::Sender<Option<Arc<status::Job>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    report: ClusterReport,
}

async fn control_loop(
    settings: Settings,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
    admin_stop: watch::Sender<bool>,
) {
    let dataplane = DataPlane::new(
        state.metrics.clone(),
        settings.limits.clone(),
        settings.max_connections,
        crate::telemetry::Tracer::from_env(),
        settings.http3,
    );
    let mut env = Env::default();
    let (mut source, mut cluster) = match &settings.mode {
        Mode::Dir(dir) => (
            Source::Dir(DirSource::new(dir, settings.rescan_interval)),
            None,
        ),
        Mode::Kubernetes(k) => {
            let Some(connected) = connect(k, &mut shutdown).await else {
                let _ = admin_stop.send(true);
                return;
            };
            env.api_gaps = connected.gaps.clone();
            env.gateway_service = k.gateway_service.clone();
            let (source, cluster) = start_cluster(k, connected, &state.metrics);
            (Source::Kube(source), Some(cluster))
        }
    };
    let mut store = Store::new();
    let mut prev: Option<Arc<StatusReport>> = None;
    let mut cache = translate::Cache::default();
    let mut tick = tokio::time::interval(settings.rescan_interval);
    let mut first = true;
    let mut status_dirty = false;
    let mut status_epoch = 0;
    loop {
        let t0 = std::time::Instant::now();
        let changed = source.sync(&mut store);
        let t_sync = t0.elapsed();
        if let (Source::Kube(k), Some(c)) = (&mut source, &cluster)
            && let Some(version) = c.versions.get(&Kind::ConfigMap)
        {
            k.set_targets(
                Kind::ConfigMap,
                version,
                &kube::referenced_config_maps(&store),
            );
        }
        // The first translation waits for every initial list: a partial store would serve
        // (and, as leader, write) wrong status.
        let can_translate = !first || source.synced();
        let retry_binds = !env.unusable.is_empty() || dataplane.quic_pending();
        if can_translate && (changed || first || retry_binds) {
            let now = rfc3339(std::time::SystemTime::now());
            let mut out =
                translate::translate_with(&mut cache, &store, prev.as_deref(), &now, &env);
            let t_translate = t0.elapsed();
            let failed = dataplane.apply(&out.snapshot).await;
            let t_apply = t0.elapsed();
            let failed_set: BTreeSet<SocketAddr> = failed.iter().map(|(a, _)| *a).collect();
            let binds_changed = failed_set != env.unusable;
            if binds_changed {
                for (addr, e) in &failed {
                    error!(%addr, error = %e, "cannot listen on a Gateway address; its Gateway is not Programmed");
                }
                env.unusable = failed_set;
                // Same sockets, so the data plane is current; only the status changes.
                out = translate::translate_with(&mut cache, &store, prev.as_deref(), &now, &env);
            }
            if changed || first || binds_changed {
                let status = Arc::new(out.status);
                let (sockets, invalid) = (out.snapshot.ports.len(), status.invalid_manifests.len());
                publish(&state, Arc::new(out.snapshot), &status);
                prev = Some(status);
                if first {
                    // The first pass parses and translates everything at once; what it
                    // freed (parse trees, serialised specs) goes back to the system now
                    // instead of staying with this thread's allocator. Not after later
                    // passes: they free little, and faulting pages back in costs latency.
                    release_freed_memory();
                }
                status_dirty = true;
                info!(
                    objects = store.len(),
                    sockets,
                    invalid_manifests = invalid,
                    read_ms = t_sync.as_secs_f64() * 1e3,
                    translate_ms = (t_translate - t_sync).as_secs_f64() * 1e3,
                    apply_ms = (t_apply - t_translate).as_secs_f64() * 1e3,
                    publish_ms = (t0.elapsed() - t_apply).as_secs_f64() * 1e3,
                    "configuration applied"
                );
            }
            if first {
                state.ready.store(true, Ordering::Relaxed);
                first = false;
            }
        }
        if let (Some(c), Some(report)) = (&mut cluster, &prev) {
            if status_dirty || store.status_epoch() != status_epoch {
                let job = status::Job {
                    report: report.clone(),
                    observed: observed(&store),
                };
                c.jobs.send_replace(Some(Arc::new(job)));
                status_dirty = false;
                status_epoch = store.status_epoch();
            }
            if let Source::Kube(k) = &source {
                c.report.watches = k.health();
            }
            c.report.leader = *c.leader.borrow();
            state.metrics.set_leader(c.report.leader);
            state.cluster.store(Arc::new(Some(c.report.clone())));
        }
        let leader_changed = async {
            match &mut cluster {
                Some(c) => {
                    if c.leader.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = source.changed() => {}
            _ = tick.tick() => {}
            _ = leader_changed => {}
            _ = shutdown.changed() => break,
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    if !settings.shutdown_delay.is_zero() {
        info!(delay = ?settings.shutdown_delay, "shutting down: not ready, still serving while load balancers catch up");
        tokio::time::sleep(settings.shutdown_delay).await;
    }
    if let Some(c) = cluster {
        // Releases the Lease so that another replica takes over at once.
        let _ = c.stop.send(true);
        for t in c.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
    info!(deadline = ?settings.drain_timeout, "shutting down: listeners closed, draining connections");
    if !dataplane.drain(settings.drain_timeout).await {
        warn!("drain deadline passed with connections still open; closing them");
    }
    let _ = admin_stop.send(true);
    info!("stopped");
}

/// Connects to the cluster, retrying with backoff; `None` if shut down meanwhile.
async fn connect(
    settings: &kube::Settings,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<kube::Connected> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match kube::connect(settings).await {
            Ok(c) => return Some(c),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot start Kubernetes mode; not ready until it can");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn start_cluster(
    settings: &kube::Settings,
    connected: kube::Connected,
    metrics: &Arc<Metrics>,
) -> (cedille_objects::kube::KubeSource<Object>, Cluster) {
    let (stop, stop_rx) = watch::channel(false);
    let (elector, leader) = Elector::new(
        connected.client.clone(),
        &connected.namespace,
        &settings.lease_name,
        &settings.pod_name,
        settings.lease.clone(),
    );
    let (jobs, jobs_rx) = watch::channel(None);
    let writer = status::Writer::new(
        connected.client.clone(),
        connected.versions.clone(),
        metrics.clone(),
    );
    let tasks = vec![
        tokio::spawn(elector.run(stop_rx.clone())),
        tokio::spawn(writer.run(jobs_rx, leader.clone(), stop_rx)),
    ];
    let report = ClusterReport {
        leader: false,
        identity: settings.pod_name.clone(),
        lease: format!("{}/{}", connected.namespace, settings.lease_name),
        api_gaps: connected.gaps.clone(),
        watches: Vec::new(),
    };
    (
        connected.source,
        Cluster {
            versions: connected.versions,
            leader,
            jobs,
            stop,
            tasks,
            report,
        },
    )
}

/// What the server holds of every object whose status the gateway writes.
fn observed(store: &Store) -> BTreeMap<ObjKey, status::Observed> {
    let mut out = BTreeMap::new();
    for kind in [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::ListenerSet,
        Kind::HttpRoute,
        Kind::BackendTlsPolicy,
    ] {
        for s in store.kind(kind) {
            let m = s.object.meta();
            out.insert(
                ObjKey::new(kind, m.ns(), &m.name),
                status::Observed {
                    status: s.status().cloned(),
                    resource_version: s.resource_version().map(str::to_owned),
                },
            );
        }
    }
    out
}

/// Makes a translation visible: `/status`, `/config` and the reload metrics.
/// What the admin endpoint serves and the metrics count, after a translation. `/config`
/// describes the snapshot when asked, not here.
fn publish(state: &AdminState, snapshot: Arc<crate::ir::Snapshot>, status: &Arc<StatusReport>) {
    state.metrics.reloaded(status.invalid_manifests.len());
    state.metrics.set_backend_endpoints(snapshot.clone());
    state.config.store(Some(snapshot));
    state.status.store(status.clone());
}

/// Returns memory the allocator holds free to the system (mimalloc keeps freed pages of a
/// thread for reuse; a reload frees a snapshot's worth at once).
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks the allocator's own bookkeeping; it is safe to call
    // at any time, from any thread, whichever allocator the binary uses.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
