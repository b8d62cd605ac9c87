//! Entry points for the fuzz targets (`gateway/fuzz`) and for the regression test that
//! replays their seeds and past findings (`tests/fuzz_regressions.rs`). Not an API.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    ir::PortConfig,
    manifest,
    metrics::Metrics,
    proxy::{
        conn::{Limits, h1_builder, h2_builder, service},
        flood::FloodGuard,
        h1guard::{H1Guard, Link},
        handler::{ConnInfo, Shared},
        idle::Activity,
        upstream::Upstreams,
    },
    store::Store,
    translate::{Env, translate},
};

/// A class, a Gateway and a Service the fuzzed manifests can attach to.
const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: cedille}
spec: {controllerName: cedille.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: cedille
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: a, port: 80, protocol: HTTP, hostname: "*.example.com"}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-1, namespace: default, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{name: http, port: 9}]
endpoints: [{addresses: ["127.0.0.1"]}]
"#;

/// Routes with every kind of match and the filters that answer or rewrite without a
/// backend; the backend (the discard port on loopback) refuses connections.
const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matches, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [a.example.com, "*.example.com"]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /a}
      headers: [{name: x-v, value: "1"}, {type: RegularExpression, name: x-r, value: "^[a-z]+$"}]
      queryParams: [{name: q, value: "1"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-add, value: a}]
        set: [{name: host, value: set.example.com}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-resp, value: r}]}
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+/.*"}}]
    backendRefs: [{name: svc, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Exact, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: r.example.com, port: 8443, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: w.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: nowhere, port: 80}]
"#;

fn store_of(docs: &[(&str, &str)]) -> Store {
    let mut store = Store::new();
    for (name, text) in docs {
        store.apply_source(name, manifest::parse(Path::new(name), text));
    }
    store
}

/// Manifest text (any bytes) parsed, validated and translated beside a base that its
/// objects can attach to; the status must serialise.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let store = store_of(&[("base.yaml", BASE), ("fuzz.yaml", text)]);
    let out = translate(&store, None, "2026-01-01T00:00:00Z", &Env::default());
    serde_json::to_vec(&out.status).expect("the status serialises");
}

struct Harness {
    rt: tokio::runtime::Runtime,
    port: Arc<ArcSwap<PortConfig>>,
    shared: Arc<Shared>,
    limits: Limits,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let store = store_of(&[("base.yaml", BASE), ("routes.yaml", ROUTES)]);
        let out = translate(&store, None, "2026-01-01T00:00:00Z", &Env::default());
        let port = out
            .snapshot
            .ports
            .values()
            .next()
            .expect("the base Gateway has a port")
            .clone();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        Harness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            port: Arc::new(ArcSwap::new(port)),
            shared: Arc::new(Shared {
                upstreams: Upstreams::new(),
                metrics: Arc::new(Metrics::new()),
                tracer: None,
                idle_timeout: limits.idle_timeout,
            }),
            limits,
        }
    })
}

/// One connection's bytes (the first byte picks HTTP/1.1 or HTTP/2 with prior knowledge;
/// the rest is what the client sends) served by the gateway's own server settings and
/// request handler; what comes back must be HTTP. Returns what came back.
///
/// The client sends everything, then waits for the server to close; after 50 ms without
/// an answer it closes its side. (HTTP/1.1 is served with half-close allowed, so that a
/// request followed at once by the end of the stream is still answered: hyper otherwise
/// takes the end as the client giving up.)
pub fn request(data: &[u8]) -> Vec<u8> {
    let Some((&pick, wire)) = data.split_first() else {
        return Vec::new();
    };
    let h = harness();
    let h2 = pick & 1 == 1;
    let out = h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let info = Arc::new(ConnInfo::new(
            SocketAddr::from(([127, 0, 0, 1], 40000)),
            None,
        ));
        let link = (!h2).then(Link::new);
        let svc = service(h.port.clone(), h.shared.clone(), info, link.clone());
        let serve = async {
            if h2 {
                let io = FloodGuard::new(server, true, Activity::new());
                let conn =
                    h2_builder(&h.limits).serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                let _ = conn.await;
            } else {
                let io = H1Guard::new(
                    server,
                    link.expect("made for HTTP/1.1"),
                    h.shared.metrics.clone(),
                    SocketAddr::from(([127, 0, 0, 1], 40000)),
                    crate::proxy::conn::guard_line_limit(&h.limits),
                );
                let conn = h1_builder(&h.limits)
                    .half_close(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .with_upgrades();
                let _ = conn.await;
            }
        };
        let talk = async {
            let _ = client.write_all(wire).await;
            if !h2 {
                let _ = client.shutdown().await;
            }
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let mut shut = !h2;
            loop {
                let read = client.read(&mut buf);
                let n = if shut {
                    read.await
                } else {
                    match tokio::time::timeout(Duration::from_millis(50), read).await {
                        Ok(r) => r,
                        Err(_) => {
                            shut = true;
                            let _ = client.shutdown().await;
                            continue;
                        }
                    }
                };
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
            out
        };
        let (out, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(talk, serve) })
                .await
                .expect("a connection whose client has finished sending ends");
        out
    });
    // (An HTTP/1.0 request is answered in HTTP/1.0: hyper's choice.)
    if !h2 && !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x response: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(100)])
        );
    }
    out
}
