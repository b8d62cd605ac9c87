//! The real gateway binary in Kubernetes mode against the test API server over loopback:
//! routes applied through the API serve traffic, status is written back (only by the
//! leader, only our entries, never in a loop), Secret rotation reaches new handshakes, a
//! standby takes over from a dead leader, and an API server that goes away and comes back
//! loses nothing.

mod support;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use cedille_echo::{Echo, EchoConfig};
use serde_json::{Value, json};
use support::{
    eventually, free_port, get,
    kube::{Cluster, Gateway, listener_condition, route_accepted},
    route,
    tls::{presented, tls_secret},
};

async fn echo(pod: &str) -> SocketAddr {
    let echo = Arc::new(Echo::new(EchoConfig {
        pod: pod.into(),
        namespace: "default".into(),
        service: "echo".into(),
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cedille_echo::serve(l, echo, None, std::future::pending()));
    addr
}

async fn setup() -> (Cluster, u16) {
    let cluster = Cluster::start(support::kube::crds(|_| {})).await;
    let port = free_port();
    cluster.apply_yaml(&support::kube::base(port, echo("echo-0").await));
    (cluster, port)
}

fn served_by(body: &[u8]) -> String {
    support::json(body)["pod"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_api_serve_traffic_and_get_status() {
    let (cluster, port) = setup().await;
    cluster.apply_yaml(&route("web", "/hello"));
    let gw = Gateway::start(&cluster, "gw-a", &[]).await;
    gw.wait_ready().await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (code, body) = get(addr, "/hello/x").await.unwrap();
    assert_eq!((code, served_by(&body).as_str()), (200, "echo-0"));

    // Status on the objects in the API server.
    eventually(Duration::from_secs(5), || async {
        route_accepted(&cluster.route("web"))
    })
    .await
    .expect("the route's status says Accepted for its generation");
    let gateway = cluster.get("gateway.networking.k8s.io/v1", "Gateway", "default", "gw");
    let programmed = gateway["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Programmed" && c["status"] == "True");
    assert!(programmed, "{gateway}");
    assert_eq!(gateway["status"]["addresses"][0]["value"], "127.0.0.1");
    let class = cluster.get(
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        "",
        "cedille",
    );
    let supported = class["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SupportedVersion")
        .cloned()
        .unwrap();
    assert_eq!(supported["status"], "True", "{class}");

    // A change through the API reaches traffic and the status' observedGeneration.
    cluster.apply_yaml(&route("web", "/changed"));
    eventually(Duration::from_secs(5), || async {
        get(addr, "/changed").await.is_ok_and(|(c, _)| c == 200)
    })
    .await
    .expect("the changed route serves");
    assert_eq!(get(addr, "/hello").await.unwrap().0, 404);
    eventually(Duration::from_secs(5), || async {
        let r = cluster.route("web");
        r["metadata"]["generation"] == 2 && route_accepted(&r)
    })
    .await
    .expect("status follows the new generation");

    // Our own writes do not make us write again: the resourceVersions stay put.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = gw.writes().await;
    let before = cluster.api.resource_version();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gw.writes().await,
        writes,
        "no status writes without a change"
    );
    let lease_renewals = cluster.api.resource_version() - before;
    // Only the Lease moves (renewed every 250 ms here).
    assert!(lease_renewals <= 8, "{lease_renewals} writes in 1.5 s");

    // An object the API server accepts but the gateway finds invalid keeps its last good
    // version, and /status says which object and field.
    cluster.apply_yaml(&route("web", "no-slash"));
    eventually(Duration::from_secs(5), || async {
        gw.status().await["invalidManifests"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["object"] == "HTTPRoute default/web"))
    })
    .await
    .expect("the invalid route is reported");
    let e = gw.status().await["invalidManifests"][0].clone();
    assert_eq!(e["file"], "kubernetes");
    assert_eq!(e["field"], "spec.rules[0].matches[0].path.value");
    assert_eq!(
        get(addr, "/changed").await.unwrap().0,
        200,
        "last good version serves"
    );
    let cluster_report = gw.status().await["cluster"].clone();
    assert_eq!(cluster_report["leader"], true);
    assert!(
        cluster_report["watches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "Secret" && w["fieldSelector"] == "type=kubernetes.io/tls"),
        "{cluster_report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_controllers_route_status_is_kept() {
    let (cluster, _) = setup().await;
    cluster.apply_yaml(&route("web", "/"));
    let other = json!({"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "theirs"},
        "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
    let mut r = cluster.route("web");
    r["status"] = json!({"parents": [other.clone()]});
    cluster.api.set_status(&r).unwrap();
    let gw = Gateway::start(&cluster, "gw-a", &[]).await;
    gw.wait_ready().await;
    eventually(Duration::from_secs(5), || async {
        route_accepted(&cluster.route("web"))
    })
    .await
    .expect("our entry is written");
    let parents = cluster.route("web")["status"]["parents"].clone();
    assert_eq!(parents.as_array().unwrap().len(), 2, "{parents}");
    assert_eq!(
        parents[0], other,
        "the other controller's entry is untouched"
    );

    // A route of another class never gets an entry of ours.
    cluster.apply_yaml(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: foreign, namespace: default}\nspec:\n  parentRefs: [{name: not-ours}]\n",
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(cluster.route("foreign").get("status").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_secret_reaches_the_next_handshake_within_a_second() {
    let (cluster, _) = setup().await;
    let tls_port = free_port();
    cluster.apply_yaml(&format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: secure, namespace: default}}
spec:
  gatewayClassName: cedille
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: a, port: {tls_port}, protocol: HTTPS, hostname: a.example.com, tls: {{certificateRefs: [{{name: cert-a}}]}}}}
  - {{name: b, port: {tls_port}, protocol: HTTPS, hostname: b.example.com, tls: {{certificateRefs: [{{name: cert-b}}]}}}}
"#
    ));
    let (first, first_der) = tls_secret("cert-a", "a.example.com");
    let (b, b_der) = tls_secret("cert-b", "b.example.com");
    cluster.apply_yaml(&first);
    cluster.apply_yaml(&b);
    // An Opaque Secret is never seen: only kubernetes.io/tls Secrets are watched.
    cluster.apply_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: unrelated, namespace: default}\nstringData: {password: hunter2}\n");
    let gw = Gateway::start(&cluster, "gw-a", &[]).await;
    gw.wait_ready().await;
    let addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    eventually(Duration::from_secs(5), || async {
        presented(addr, "a.example.com").await.as_deref() == Some(&first_der[..])
    })
    .await
    .expect("the first certificate is served");
    let secrets = gw.status().await["cluster"]["watches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "Secret")
        .cloned()
        .unwrap();
    assert_eq!(secrets["objects"], 2, "only the TLS Secrets: {secrets}");

    // An open TLS connection, made before the rotation.
    let open = support::tls::open_tls(addr, "a.example.com").await;

    let (second, second_der) = tls_secret("cert-a", "a.example.com");
    let rotated = Instant::now();
    cluster.apply_yaml(&second);
    eventually(Duration::from_secs(1), || async {
        presented(addr, "a.example.com").await.as_deref() == Some(&second_der[..])
    })
    .await
    .expect("the renewed certificate reaches new handshakes within a second");
    eprintln!("Secret rotation to handshake: {:?}", rotated.elapsed());
    assert_eq!(
        support::tls::still_open(open).await,
        Some(first_der.clone()),
        "the open connection keeps its session"
    );

    // A malformed Secret marks only its own listener.
    cluster.apply_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: cert-b, namespace: default}\ntype: kubernetes.io/tls\nstringData: {tls.crt: garbage, tls.key: garbage}\n");
    eventually(Duration::from_secs(5), || async {
        let g = cluster.get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "default",
            "secure",
        );
        listener_condition(&g, "b", "ResolvedRefs")
            .is_some_and(|c| c["status"] == "False" && c["reason"] == "InvalidCertificateRef")
    })
    .await
    .expect("listener b: ResolvedRefs False, InvalidCertificateRef");
    let g = cluster.get(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        "default",
        "secure",
    );
    assert_eq!(
        listener_condition(&g, "a", "ResolvedRefs").unwrap()["status"],
        "True"
    );
    assert_eq!(
        presented(addr, "a.example.com").await.as_deref(),
        Some(&second_der[..])
    );
    assert_ne!(
        presented(addr, "b.example.com").await.as_deref(),
        Some(&b_der[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let (cluster, port) = setup().await;
    cluster.apply_yaml(&route("web", "/"));
    let mut a = Gateway::start(&cluster, "gw-a", &[]).await;
    a.wait_ready().await;
    eventually(Duration::from_secs(5), || async {
        cluster.lease_holder().as_deref() == Some("gw-a")
    })
    .await
    .expect("the first replica leads");
    let b = Gateway::start(&cluster, "gw-b", &[]).await;
    b.wait_ready().await;
    // Both serve traffic; only the leader writes.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(get(addr, "/").await.unwrap().0, 200);
    cluster.apply_yaml(&route("web", "/v2"));
    eventually(Duration::from_secs(5), || async {
        let r = cluster.route("web");
        r["metadata"]["generation"] == 2 && route_accepted(&r)
    })
    .await
    .expect("the leader writes the new generation's status");
    assert!(a.writes().await > 0);
    assert_eq!(b.writes().await, 0, "the standby never writes");
    assert_eq!(b.status().await["cluster"]["leader"], false);

    // The leader dies without releasing the Lease: the standby takes over within lease
    // duration + retry period (2 s + 250 ms here), then writes.
    a.kill().await;
    let killed = Instant::now();
    eventually(Duration::from_secs(4), || async {
        cluster.lease_holder().as_deref() == Some("gw-b")
    })
    .await
    .expect("the standby takes the Lease");
    let failover = killed.elapsed();
    eprintln!("leader failover (SIGKILL to new holder): {failover:?}");
    assert!(
        failover < Duration::from_millis(2250 + 1000),
        "{failover:?}"
    );
    cluster.apply_yaml(&route("web", "/v3"));
    eventually(Duration::from_secs(5), || async {
        let r = cluster.route("web");
        r["metadata"]["generation"] == 3 && route_accepted(&r)
    })
    .await
    .expect("the new leader writes status");
    assert!(b.writes().await > 0);

    // A leader that shuts down releases the Lease: a new replica takes over at once.
    let mut b = b;
    let c = Gateway::start(&cluster, "gw-c", &[]).await;
    c.wait_ready().await;
    b.terminate().await;
    let released = Instant::now();
    eventually(Duration::from_secs(2), || async {
        cluster.lease_holder().as_deref() == Some("gw-c")
    })
    .await
    .expect("a released Lease is taken without waiting for expiry");
    eprintln!("handover after a graceful stop: {:?}", released.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_and_a_relist_lose_nothing() {
    let (cluster, port) = setup().await;
    cluster.apply_yaml(&route("one", "/one"));
    let gw = Gateway::start(&cluster, "gw-a", &[]).await;
    gw.wait_ready().await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(get(addr, "/one").await.unwrap().0, 200);

    eventually(Duration::from_secs(5), || async {
        gw.status().await["cluster"]["leader"] == true
    })
    .await
    .expect("the only replica leads");

    // The API server goes away; the gateway keeps serving, ready, on what it has. Unable
    // to renew its Lease for the renew deadline (1.5 s here), it stops acting as leader.
    cluster.api.pause();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(gw.ready().await, "ready on the last good snapshot");
    assert_eq!(get(addr, "/one").await.unwrap().0, 200);
    assert_eq!(
        gw.status().await["cluster"]["leader"],
        false,
        "a leader that cannot renew stops writing"
    );
    // Changes made meanwhile (as if by another client) are found once it is back.
    cluster.apply_yaml(&route("two", "/two"));
    cluster.api.resume().await.unwrap();
    eventually(Duration::from_secs(15), || async {
        get(addr, "/two").await.is_ok_and(|(c, _)| c == 200)
    })
    .await
    .expect("the change made during the outage arrives after it");
    eventually(Duration::from_secs(5), || async {
        gw.status().await["cluster"]["leader"] == true
    })
    .await
    .expect("leads again once the Lease can be renewed");

    // Compaction, then every watch is cut: the watches come back with 410 and relist.
    // Traffic never sees an empty snapshot in between.
    let probing = tokio::spawn(async move {
        let mut failures = 0;
        for _ in 0..60 {
            if !get(addr, "/one").await.is_ok_and(|(c, _)| c == 200) {
                failures += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        failures
    });
    cluster.apply_yaml(&route("three", "/three"));
    cluster.api.compact();
    cluster.api.drop_watches();
    cluster
        .api
        .delete(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "default",
            "two",
        )
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        get(addr, "/three").await.is_ok_and(|(c, _)| c == 200)
            && get(addr, "/two").await.is_ok_and(|(c, _)| c == 404)
    })
    .await
    .expect("after the relist: the new route serves, the deleted one is gone");
    assert_eq!(
        probing.await.unwrap(),
        0,
        "no request failed during the relist"
    );
    assert!(
        gw.log().contains("relisted"),
        "the watch relisted after 410:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_gateway_api_crds_are_detected_and_reported() {
    // An older release: no ListenerSet, ReferenceGrant only at v1beta1.
    let old = support::kube::crds(|c| {
        c.retain(|crd| crd["spec"]["names"]["kind"] != "ListenerSet");
        for crd in c.iter_mut() {
            if crd["spec"]["names"]["kind"] == "ReferenceGrant"
                && let Some(vs) = crd["spec"]["versions"].as_array_mut()
            {
                vs.retain(|v| v["name"] == "v1beta1");
                vs[0]["storage"] = json!(true);
            }
        }
    });
    let cluster = Cluster::start(old).await;
    let port = free_port();
    cluster.apply_yaml(&support::kube::base(port, echo("echo-0").await));
    cluster.apply_yaml(&route("web", "/"));
    let gw = Gateway::start(&cluster, "gw-a", &[]).await;
    gw.wait_ready().await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        get(addr, "/").await.unwrap().0,
        200,
        "works for what it has"
    );
    eventually(Duration::from_secs(5), || async {
        let class = cluster.get(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "",
            "cedille",
        );
        class["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "SupportedVersion" && c["status"] == "False")
    })
    .await
    .expect("GatewayClass SupportedVersion=False");
    let class = cluster.get(
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        "",
        "cedille",
    );
    let c: Vec<&Value> = class["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "SupportedVersion")
        .collect();
    let msg = c[0]["message"].as_str().unwrap();
    assert_eq!(c[0]["reason"], "UnsupportedVersion");
    assert!(msg.contains("ListenerSet is not served"), "{msg}");
    assert!(
        msg.contains("ReferenceGrant only at gateway.networking.k8s.io/v1beta1"),
        "{msg}"
    );
    assert!(gw.log().contains("older or incomplete"), "{}", gw.log());
}
