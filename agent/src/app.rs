//! The running agent: the manifest directory watched, the node reconciled, the admin
//! endpoint served.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header};
use tokio::sync::mpsc;
use tracing::info;

use crate::{
    manifest::{Mesh, Store},
    node::Node,
};

/// How often pods that cannot be enrolled yet (no cgroup, no process) are retried, and the
/// directory rescanned in case a change notification was missed.
const RETRY: Duration = Duration::from_secs(1);

pub struct Running {
    pub node: Arc<Node>,
    pub admin_addr: SocketAddr,
}

/// Starts the control loop and the admin endpoint. Returns once the first reconcile is done.
pub async fn start(
    config_dir: PathBuf,
    node_name: String,
    node: Node,
    admin: SocketAddr,
) -> anyhow::Result<Running> {
    let node = Arc::new(node);
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = cedille_common::watch_dir(&config_dir, tx);
    let mut store = Store::default();
    store.sync(&config_dir);
    node.set_manifest_errors(store.errors());
    node.reconcile(Mesh::build(&store, &node_name));
    let listener = tokio::net::TcpListener::bind(admin).await?;
    let admin_addr = listener.local_addr()?;
    tokio::spawn(serve_admin(listener, node.clone()));
    let loop_node = node.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = rx.recv() => {
                    // Let a burst of writes settle into one pass.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(RETRY) => {}
            }
            if store.sync(&config_dir) {
                loop_node.set_manifest_errors(store.errors());
            }
            loop_node.reconcile(Mesh::build(&store, &node_name));
        }
    });
    info!(%admin_addr, "agent running");
    Ok(Running { node, admin_addr })
}

async fn serve_admin(listener: tokio::net::TcpListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&node, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn admin(node: &Node, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            node.metrics_text(),
        ),
        "/livez" | "/readyz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/config" => {
            let v = serde_json::json!({
                "pods": node.report(),
                "recentConnections": node.recent_connections(),
                "invalidManifests": node.invalid_manifests(),
            });
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics /readyz /livez /config\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}
