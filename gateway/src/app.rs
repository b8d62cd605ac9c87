//! Wiring: the manifest provider, translation, the data plane and the admin endpoint, and
//! the control loop that reloads on change and drains on shutdown.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch};
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminState},
    metrics::Metrics,
    provider::FileProvider,
    proxy::{conn::Limits, runtime::DataPlane},
    store::{Store, rfc3339},
    translate::{self, StatusReport},
};

#[derive(Clone, Debug)]
pub struct Settings {
    pub config_dir: PathBuf,
    pub admin_addr: SocketAddr,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub limits: Limits,
    /// Full rescans of the directory, in case a change notification was missed.
    pub rescan_interval: Duration,
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
    if let Err(source) = std::fs::read_dir(&settings.config_dir) {
        return Err(StartError::ConfigDir {
            dir: settings.config_dir.clone(),
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
    info!(%admin_addr, config_dir = %settings.config_dir.display(), "cedille-gateway starting");
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
    );
    let mut provider = FileProvider::new(&settings.config_dir);
    let mut store = Store::new();
    let (events_tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let _watcher = cedille_common::watch_dir(&settings.config_dir, events_tx);
    let mut prev: Option<StatusReport> = None;
    let mut tick = tokio::time::interval(settings.rescan_interval);
    let mut first = true;
    // Sockets that could not be bound; retried on every tick until they can.
    let mut unusable: BTreeSet<SocketAddr> = BTreeSet::new();
    loop {
        let changed = provider.sync(&mut store);
        if changed || first || !unusable.is_empty() {
            let now = rfc3339(std::time::SystemTime::now());
            let mut out = translate::translate(&store, prev.as_ref(), &now, &unusable);
            let failed = dataplane.apply(&out.snapshot).await;
            let failed_set: BTreeSet<SocketAddr> = failed.iter().map(|(a, _)| *a).collect();
            let binds_changed = failed_set != unusable;
            if binds_changed {
                for (addr, e) in &failed {
                    error!(%addr, error = %e, "cannot listen on a Gateway address; its Gateway is not Programmed");
                }
                unusable = failed_set;
                // Same sockets, so the data plane is current; only the status changes.
                out = translate::translate(&store, prev.as_ref(), &now, &unusable);
            }
            if changed || first || binds_changed {
                publish(&state, &out, store.len());
                prev = Some(out.status);
            }
            if first {
                state.ready.store(true, Ordering::Relaxed);
                first = false;
            }
        }
        tokio::select! {
            Some(()) = events.recv() => {
                // Let a burst of writes settle before reading.
                tokio::time::sleep(Duration::from_millis(30)).await;
                while events.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    info!(deadline = ?settings.drain_timeout, "shutting down: readiness off, draining connections");
    if !dataplane.drain(settings.drain_timeout).await {
        warn!("drain deadline passed with connections still open; closing them");
    }
    let _ = admin_stop.send(true);
    info!("stopped");
}

/// Makes a translation visible: `/status`, `/config` and the reload metrics.
fn publish(state: &AdminState, out: &translate::Output, objects: usize) {
    state.config.store(Arc::new(out.snapshot.describe()));
    state.metrics.reloaded(out.status.invalid_manifests.len());
    state.status.store(Arc::new(out.status.clone()));
    info!(
        objects,
        sockets = out.snapshot.ports.len(),
        invalid_manifests = out.status.invalid_manifests.len(),
        "configuration applied"
    );
}
