//! The running agent: the object source (manifest directory or Kubernetes API) watched, the
//! node reconciled, the admin endpoint served.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use cedille_objects::{
    Source,
    dir::DirSource,
    kube::{KubeSource, WatchSpec},
};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header};
use tracing::{info, warn};

use crate::{
    mesh::Mesh,
    node::Node,
    objects::{Kind, Object, Store},
};

/// How often pods that cannot be enrolled yet (no cgroup, no process) are retried, and the
/// directory rescanned in case a change notification was missed.
const RETRY: Duration = Duration::from_secs(1);
/// How often everything is reconciled when nothing changed.
const FULL_RECONCILE: Duration = Duration::from_secs(10);

/// Where the agent's objects come from.
#[derive(Clone, Debug)]
pub enum Mode {
    /// A directory of manifests, watched (standalone mode).
    Dir(PathBuf),
    /// The Kubernetes API server: this node's pods, and every Namespace, Service and
    /// EndpointSlice.
    Kubernetes,
}

pub struct Running {
    pub node: Arc<Node>,
    pub admin_addr: SocketAddr,
    /// True once the first reconcile ran on a complete view (every initial list).
    pub ready: Arc<AtomicBool>,
}

/// Starts the control loop and the admin endpoint. In directory mode, returns once the
/// first reconcile is done; in Kubernetes mode at once (`/readyz` tells when the initial
/// lists are in and the first reconcile ran).
pub async fn start(
    mode: Mode,
    node_name: String,
    node: Node,
    admin: SocketAddr,
) -> anyhow::Result<Running> {
    let node = Arc::new(node);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(admin).await?;
    let admin_addr = listener.local_addr()?;
    tokio::spawn(serve_admin(listener, node.clone(), ready.clone()));
    let mut store = Store::default();
    let source = match mode {
        Mode::Dir(dir) => {
            let mut source = DirSource::new(dir, RETRY);
            source.sync(&mut store);
            node.set_manifest_errors(store.errors());
            node.reconcile(Mesh::build(&store, &node_name));
            ready.store(true, Ordering::Relaxed);
            Some(Source::Dir(source))
        }
        Mode::Kubernetes => None,
    };
    let loop_node = node.clone();
    let loop_ready = ready.clone();
    tokio::spawn(async move {
        let mut source = match source {
            Some(s) => s,
            None => Source::Kube(connect(&node_name).await),
        };
        let mut retry = tokio::time::interval(RETRY);
        let mut last_full = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = source.changed() => {}
                _ = retry.tick() => {}
            }
            let changed = source.sync(&mut store);
            if changed {
                loop_node.set_manifest_errors(store.errors());
            }
            let ready = loop_ready.load(Ordering::Relaxed);
            // Enrolling from a partial view would un-enroll pods that are merely not
            // listed yet.
            if !source.synced() && !ready {
                continue;
            }
            // Nothing new: only pods waiting to be enrolled are retried every second, and
            // everything (vanished cgroups, stale pins) every FULL_RECONCILE.
            if ready && !changed && !loop_node.waiting() && last_full.elapsed() < FULL_RECONCILE {
                continue;
            }
            last_full = std::time::Instant::now();
            let mesh = Mesh::build(&store, &node_name);
            // Off the connection path's threads: enrollment makes system calls (eBPF maps,
            // namespaces) that must not stall connections in flight.
            let node = loop_node.clone();
            let _ = tokio::task::spawn_blocking(move || node.reconcile(mesh)).await;
            loop_ready.store(true, Ordering::Relaxed);
        }
    });
    info!(%admin_addr, "agent running");
    Ok(Running {
        node,
        admin_addr,
        ready,
    })
}

/// Connects to the API server (retrying with backoff) and watches this node's pods,
/// Namespaces, Services and EndpointSlices.
async fn connect(node_name: &str) -> KubeSource<Object> {
    let mut backoff = Duration::from_millis(500);
    let client = loop {
        match cedille_objects::kube::client().await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot reach the Kubernetes API; enrolled pods stay as pinned");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let policies = loop {
        match cedille_objects::discovery::served_versions::<Object>(&client).await {
            Ok(v) => break v.contains_key(&Kind::AuthorizationPolicy),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "API discovery failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    if !policies {
        warn!(
            "the API server does not serve cedille.io/v1alpha1 AuthorizationPolicy (is the chart's CRD installed?): no authorization policy applies; restart the agent once it is"
        );
    }
    info!(node = %node_name, policies, "watching Pods, Namespaces, Services, EndpointSlices and AuthorizationPolicies");
    watch(client, policies)
}

/// The agent's watches: every Pod (this node's are enrolled; the others say where HBONE goes
/// and which identity a destination must prove), Namespace, Service and EndpointSlice, and
/// AuthorizationPolicy when the cluster serves it.
pub fn watch(client: kube::Client, policies: bool) -> KubeSource<Object> {
    let mut source = KubeSource::new(client);
    for kind in Kind::ALL {
        if kind == Kind::AuthorizationPolicy && !policies {
            continue;
        }
        source.watch(WatchSpec::new(kind, kind.info().versions[0]));
    }
    source
}

/// The permissions Kubernetes mode needs: get/list/watch on every kind the agent watches,
/// and, in its own namespace, the CertificateRequests of the cert-manager identity source.
pub fn permissions() -> cedille_objects::rbac::Permissions {
    cedille_objects::rbac::Permissions {
        cluster: cedille_objects::rbac::watching(Kind::ALL.iter().map(|k| k.info())),
        namespace: cedille_objects::rbac::rules(
            [("cert-manager.io", "certificaterequests".to_owned())],
            &["create", "get", "delete"],
        ),
    }
}

async fn serve_admin(listener: tokio::net::TcpListener, node: Arc<Node>, ready: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let node = node.clone();
                let ready = ready.load(Ordering::Relaxed);
                async move { Ok::<_, std::convert::Infallible>(admin(&node, ready, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn admin(node: &Node, ready: bool, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            node.metrics_text(),
        ),
        "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if ready => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: waiting for the first complete view of the cluster\n".to_owned(),
        ),
        "/config" => {
            let v = serde_json::json!({
                "pods": node.report(),
                "identities": node.identities(),
                "mtls": node.mtls_report(),
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

#[cfg(test)]
mod tests {
    //! The exact requests of the agent's pod watch, against kube's `tower-test` mock.

    use std::collections::BTreeMap;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    fn query(uri: &http::Uri) -> BTreeMap<String, String> {
        uri.query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn the_watches_list_then_watch_every_kind() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut source = watch(kube::Client::new(svc, "default"), true);
        let mut pods = None;
        // Five watches list first; answer each, keep the pod one.
        for _ in 0..5 {
            let (req, send) = handle.next_request().await.unwrap();
            let path = req.uri().path().to_owned();
            let list_kind = match path.as_str() {
                "/api/v1/pods" => "PodList",
                "/api/v1/namespaces" => "NamespaceList",
                "/api/v1/services" => "ServiceList",
                "/apis/discovery.k8s.io/v1/endpointslices" => "EndpointSliceList",
                "/apis/cedille.io/v1alpha1/authorizationpolicies" => "AuthorizationPolicyList",
                other => panic!("unexpected request {other}"),
            };
            if path == "/api/v1/pods" {
                assert_eq!(query(req.uri()), map(&[("limit", "500")]));
                pods = Some(());
            }
            let items = if path == "/api/v1/pods" {
                json!([{"metadata": {"name": "a", "namespace": "shop", "uid": "aaaa-1"},
                        "spec": {"nodeName": "node-1"}, "status": {"podIP": "10.0.0.5"}}])
            } else {
                json!([])
            };
            let body = json!({"kind": list_kind, "apiVersion": "v1",
                "metadata": {"resourceVersion": "12"}, "items": items});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
        assert!(pods.is_some(), "the pods were listed");
        // Then each watches from the list's resourceVersion; the pod watch keeps the selector.
        let mut saw_pod_watch = false;
        for _ in 0..5 {
            let (req, _send) = handle.next_request().await.unwrap();
            if req.uri().path() == "/api/v1/pods" {
                assert_eq!(
                    query(req.uri()),
                    map(&[
                        ("watch", "true"),
                        ("timeoutSeconds", "290"),
                        ("allowWatchBookmarks", "true"),
                        ("resourceVersion", "12"),
                    ])
                );
                saw_pod_watch = true;
            }
        }
        assert!(saw_pod_watch);
        let mut store = Store::default();
        source.sync(&mut store);
        assert!(source.synced(), "every initial list is in");
        assert_eq!(store.len(), 1);
    }
}
