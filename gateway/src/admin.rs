//! The admin endpoint: `/metrics`, `/readyz`, `/livez`, `/status`, `/config`. It runs on its
//! own socket so that probes and scrapes keep working when the data plane is saturated.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, warn};

use crate::{
    metrics::Metrics,
    proxy::{Body, full},
    translate::StatusReport,
};

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub status: ArcSwap<StatusReport>,
    /// The snapshot the data plane serves, described on request.
    pub config: arc_swap::ArcSwapOption<crate::ir::Snapshot>,
    /// Kubernetes mode: leadership and the watches.
    pub cluster: ArcSwap<Option<crate::kube::ClusterReport>>,
    /// True once the first configuration is applied, false again when draining.
    pub ready: AtomicBool,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            status: ArcSwap::from_pointee(StatusReport::default()),
            config: arc_swap::ArcSwapOption::empty(),
            cluster: ArcSwap::from_pointee(None),
            ready: AtomicBool::new(false),
        }
    }
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(v: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => reply(StatusCode::OK, "application/json", b),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/livez" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/status" => {
            let mut v = serde_json::to_value(state.status.load().as_ref())
                .unwrap_or(serde_json::Value::Null);
            if let (Some(c), Some(m)) = (state.cluster.load().as_ref(), v.as_object_mut()) {
                m.insert(
                    "cluster".into(),
                    serde_json::to_value(c).unwrap_or_default(),
                );
            }
            json(&v)
        }
        "/config" => json(
            &state
                .config
                .load()
                .as_ref()
                .map_or(serde_json::Value::Null, |s| s.describe()),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /readyz, /livez, /status or /config\n",
        ),
    }
}

pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}
