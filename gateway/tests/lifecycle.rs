//! Shutdown, certificate rotation, backends without endpoints, and metrics.

mod support;

use std::time::Duration;

use support::{
    Env, eventually, get, route,
    tls::{presented, tls_secret},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_inflight_requests_then_stops_listening() {
    let mut env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let addr = env.addr();
    let slow = tokio::spawn(async move { get(addr, "/slow?delay=700ms").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let gateway = env.gateway.take().unwrap();
    let admin = gateway.admin_addr;
    let stopping = tokio::spawn(gateway.shutdown());
    // Readiness fails at once, while the request is still in flight.
    eventually(Duration::from_millis(400), || async {
        get(admin, "/readyz")
            .await
            .map(|(s, _)| s == 503)
            .unwrap_or(false)
    })
    .await
    .expect("readiness fails during the drain");
    // No new connections are accepted.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting while draining"
    );
    let (status, _) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200, "the in-flight request completed");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("stopped within the drain deadline")
        .unwrap();
}

/// With a shutdown delay, readiness fails first while new requests are still served, so
/// load balancers can stop sending before the listeners close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_delay_keeps_serving_while_not_ready() {
    let mut env = Env::start(&[("r.yaml", &route("r", "/"))], |s| {
        s.shutdown_delay = Duration::from_millis(800);
    })
    .await;
    let addr = env.addr();
    let gateway = env.gateway.take().unwrap();
    let admin = gateway.admin_addr;
    let stopping = tokio::spawn(gateway.shutdown());
    eventually(Duration::from_millis(300), || async {
        get(admin, "/readyz").await.is_ok_and(|(s, _)| s == 503)
    })
    .await
    .expect("not ready at once");
    assert_eq!(
        get(addr, "/").await.unwrap().0,
        200,
        "still serving new connections"
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("stopped after the delay and the drain")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_ready_endpoints_answers_503() {
    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let not_ready = support::service("dead", dead).replace(
        "addresses: [\"127.0.0.1\"]",
        "addresses: [\"127.0.0.1\"], conditions: {ready: false}",
    );
    assert!(not_ready.contains("ready: false"));
    let to_dead = route("r", "/").replace("name: echo, port: 80", "name: dead, port: 80");
    let env = Env::start(&[("r.yaml", &to_dead), ("svc.yaml", &not_ready)], |_| {}).await;

    eventually(Duration::from_secs(5), || async {
        get(env.addr(), "/").await.unwrap().0 == 503
    })
    .await
    .expect("503 without ready endpoints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_route_identity_and_status_class() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    for _ in 0..3 {
        assert_eq!(get(env.addr(), "/x").await.unwrap().0, 200);
    }
    assert_eq!(get(env.addr(), "/status/503").await.unwrap().0, 503);
    let m = env.metrics().await;
    let ok = r#"cedille_gateway_requests_total{parent_namespace="default",parent_name="gw",route_namespace="default",route_name="r",protocol="h1",status_class="2xx"} 3"#;
    let err = r#"cedille_gateway_requests_total{parent_namespace="default",parent_name="gw",route_namespace="default",route_name="r",protocol="h1",status_class="5xx"} 1"#;
    assert!(m.contains(ok), "{m}");
    assert!(m.contains(err), "{m}");
    assert!(
        m.contains("cedille_gateway_request_duration_seconds_bucket{"),
        "{m}"
    );
    assert!(
        m.contains(r#"cedille_gateway_config_reloads_total{result="success"}"#),
        "{m}"
    );
}

/// The series the dashboards read: unmatched requests, upstream errors by kind, retries,
/// body bytes, connections by protocol and backend endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_metrics_count_what_the_dashboards_show() {
    let closed = support::free_port();
    let routes = format!(
        "{}---\n{}---\n{}",
        route("app", "/app"),
        support::service("dead", ([127, 0, 0, 1], closed).into()),
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: dead, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /dead}}]
    backendRefs: [{name: dead, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /status}}]
    backendRefs: [{name: echo, port: 80}]
    retry: {attempts: 2, backoff: 1ms, codes: [503]}
"#
    );
    let env = Env::start(&[("r.yaml", &routes)], |_| {}).await;
    let mut conn = support::Conn::open(env.addr()).await.unwrap();
    let (code, _, body) = conn
        .request(
            "POST",
            "/app/x",
            &[],
            bytes::Bytes::from_static(b"hello world"),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(get(env.addr(), "/nothing").await.unwrap().0, 404);
    assert_eq!(get(env.addr(), "/dead").await.unwrap().0, 503);
    assert_eq!(get(env.addr(), "/status/503").await.unwrap().0, 503);
    let m = env.metrics().await;
    let app =
        r#"parent_namespace="default",parent_name="gw",route_namespace="default",route_name="app""#;
    let dead = r#"parent_namespace="default",parent_name="gw",route_namespace="default",route_name="dead""#;
    let value = |series: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{m}"))
    };
    assert_eq!(
        value(&format!(
            "cedille_gateway_request_body_bytes_total{{{app}}}"
        )),
        11
    );
    assert_eq!(
        value(&format!(
            "cedille_gateway_response_body_bytes_total{{{app}}}"
        )),
        body.len() as u64
    );
    assert_eq!(
        value(r#"cedille_gateway_unmatched_requests_total{protocol="h1",reason="no_match"}"#),
        1
    );
    assert_eq!(
        value(&format!(
            "cedille_gateway_upstream_errors_total{{{dead},error=\"connect\"}}"
        )),
        1
    );
    assert_eq!(
        value(&format!(
            "cedille_gateway_upstream_retries_total{{{}}}",
            dead
        )),
        1
    );
    assert!(value(r#"cedille_gateway_connections_total{protocol="h1"}"#) >= 4);
    assert_eq!(
        value(r#"cedille_gateway_backend_endpoints{namespace="default",service="echo",port="80"}"#),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_reaches_new_handshakes() {
    let tls_port = support::free_port();
    let https = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: secure, namespace: default}}
spec:
  gatewayClassName: cedille
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - name: https
    port: {tls_port}
    protocol: HTTPS
    hostname: "*.example.com"
    tls: {{certificateRefs: [{{name: site}}]}}
"#
    );
    let (first, first_der) = tls_secret("site", "*.example.com");
    let env = Env::start(&[("https.yaml", &https), ("secret.yaml", &first)], |_| {}).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], tls_port).into();
    eventually(Duration::from_secs(5), || async {
        presented(addr, "a.example.com").await.as_deref() == Some(&first_der[..])
    })
    .await
    .expect("the first certificate is served");
    // A name no listener claims gets no certificate at all.
    assert_eq!(presented(addr, "other.org").await, None);

    let (second, second_der) = tls_secret("site", "*.example.com");
    env.write("secret.yaml", &second);
    eventually(Duration::from_secs(5), || async {
        presented(addr, "b.example.com").await.as_deref() == Some(&second_der[..])
    })
    .await
    .expect("the rotated certificate is served to new handshakes");
    let failures = env.metrics().await;
    assert!(
        failures.contains("cedille_gateway_tls_handshake_failures_total 1"),
        "{failures}"
    );
}
