//! HTTP/3: the gateway's HTTPS listeners also serve QUIC on the same UDP port. The clients
//! are independent HTTP/3 implementations run from the tools virtualenv
//! (`scripts/setup.sh`): curl_cffi's libcurl (ngtcp2/nghttp3) for ordinary requests, aioquic
//! for requests no well-behaved client sends.

mod support;

use std::{net::SocketAddr, path::Path, process::Stdio, sync::Arc, time::Duration};

use cedille_echo::{Echo, EchoConfig};

use serde_json::{Value, json};
use support::{Env, eventually, service, tls::tls_secret_pem};

fn python() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs curl_cffi and aioquic)",
        p.display()
    );
    p
}

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/h3")
        .join(name)
}

/// Runs a helper script with `input` on stdin; its JSON output.
async fn run(args: Vec<String>, input: Value) -> Vec<Value> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(python())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    })
    .await
    .unwrap()
}

/// Requests with curl (see `tests/h3/client.py` for the fields); one outcome each.
async fn curl(requests: Vec<Value>) -> Vec<Value> {
    run(
        vec![script("client.py").display().to_string()],
        Value::Array(requests),
    )
    .await
}

/// A request for `https://host:port/path` resolved to 127.0.0.1, trusting `ca` (PEM file).
fn req(port: u16, host: &str, path: &str, ca: &Path, http: &str) -> Value {
    json!({
        "url": format!("https://{host}:{port}{path}"),
        "resolve": format!("{host}:{port}:127.0.0.1"),
        "verify": ca.display().to_string(),
        "http": http,
    })
}

/// Header lists sent verbatim with aioquic over one connection; what happened to each.
async fn raw(addr: SocketAddr, sni: &str, requests: Value) -> Vec<Value> {
    run(
        vec![
            script("raw.py").display().to_string(),
            addr.ip().to_string(),
            addr.port().to_string(),
            sni.to_owned(),
        ],
        requests,
    )
    .await
}

/// A Gateway `gw` with HTTPS listeners for a.example.com and b.example.com on `port`, their
/// Secrets, and Service `echo`. `tls_extra` is added under the Gateway's `spec`.
fn https_base(port: u16, echo: SocketAddr, secrets: &str, tls_extra: &str) -> String {
    let listeners = format!(
        "  - {{name: a, port: {port}, protocol: HTTPS, hostname: a.example.com, tls: {{certificateRefs: [{{name: cert-a}}]}}}}\n  \
         - {{name: b, port: {port}, protocol: HTTPS, hostname: b.example.com, tls: {{certificateRefs: [{{name: cert-b}}]}}}}\n"
    );
    format!(
        "{}\n---\n{secrets}\n---\n{}",
        support::gateway(&listeners, tls_extra),
        service("echo", echo)
    )
}

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-added, value: h3}]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-answered, value: gateway}]}}
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {hostname: new.example.com, statusCode: 301}}
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: echo, port: 80}]
"#;

const MIRROR_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirrored, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}
    backendRefs: [{name: echo, port: 80}]
"#;

struct Certs {
    dir: tempfile::TempDir,
    secrets: String,
}

impl Certs {
    /// Secrets cert-a and cert-b, and their certificates as CA files `a.pem` and `b.pem`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut secrets = Vec::new();
        for host in ["a", "b"] {
            let (yaml, pem) =
                tls_secret_pem(&format!("cert-{host}"), &format!("{host}.example.com"));
            std::fs::write(dir.path().join(format!("{host}.pem")), pem).unwrap();
            secrets.push(yaml);
        }
        Self {
            dir,
            secrets: secrets.join("---\n"),
        }
    }

    fn pem(&self, host: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{host}.pem"))
    }
}

async fn start(
    certs: &Certs,
    tls_extra: &str,
    tweak: impl FnOnce(&mut cedille_gateway::app::Settings),
) -> Env {
    let env = Env::start(&[("r.yaml", ROUTES)], tweak).await;
    let base = https_base(env.port, env.echo_addr, &certs.secrets, tls_extra);
    env.write("base.yaml", &base);
    let port = env.port;
    let ca = certs.pem("a");
    eventually(Duration::from_secs(10), || {
        let r = req(port, "a.example.com", "/ready", &ca, "2");
        async move { curl(vec![r]).await[0]["status"] == 200 }
    })
    .await
    .expect("the HTTPS listeners serve");
    env
}

fn body(outcome: &Value) -> Value {
    serde_json::from_str(outcome["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_serves_routes_filters_mirrors_redirects_timeouts_and_sni() {
    let certs = Certs::new();
    let env = start(&certs, "", |_| {}).await;
    let port = env.port;
    let (a, b) = (certs.pem("a"), certs.pem("b"));
    let out = curl(vec![
        req(port, "a.example.com", "/x", &a, "3"),
        req(port, "a.example.com", "/old/page", &a, "3"),
        req(port, "b.example.com", "/y", &b, "3"),
        json!({
            "url": format!("https://a.example.com:{port}/post"),
            "resolve": format!("a.example.com:{port}:127.0.0.1"),
            "verify": a.display().to_string(), "http": "3",
            "method": "POST", "body": "x".repeat(100_000),
        }),
        req(port, "a.example.com", "/slow?delay=2s", &a, "3"),
        // The certificate for a.example.com is not b's: verification fails.
        req(port, "a.example.com", "/z", &b, "3"),
        // The TCP side advertises HTTP/3.
        req(port, "a.example.com", "/tcp", &a, "2"),
    ])
    .await;

    let ok = &out[0];
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["version"], "3", "{ok}");
    assert_eq!(ok["headers"]["x-answered"], "gateway", "{ok}");
    let seen = body(ok);
    assert_eq!(seen["path"], "/x");
    assert_eq!(seen["headers"]["X-Added"][0], "h3", "{seen}");
    assert_eq!(seen["headers"]["X-Forwarded-Proto"][0], "https", "{seen}");
    assert!(
        ok["headers"].get("alt-svc").is_none(),
        "alt-svc is for the TCP side: {ok}"
    );

    let redirect = &out[1];
    assert_eq!(redirect["status"], 301, "{redirect}");
    assert_eq!(
        redirect["headers"]["location"],
        format!("https://new.example.com:{port}/old/page"),
        "{redirect}"
    );

    assert_eq!(
        out[2]["status"], 200,
        "SNI b.example.com gets b's certificate: {}",
        out[2]
    );
    assert_eq!(body(&out[2])["path"], "/y");

    let post = &out[3];
    assert_eq!(post["status"], 200, "{post}");
    assert_eq!(
        body(post)["headers"]["Content-Length"][0],
        "100000",
        "the whole body went upstream: {post}"
    );

    assert_eq!(
        out[4]["status"], 504,
        "the route's request timeout: {}",
        out[4]
    );
    assert!(
        out[5].get("error").is_some(),
        "a.example.com must not verify with b's certificate: {}",
        out[5]
    );
    let tcp = &out[6];
    assert_eq!(tcp["version"], "2", "{tcp}");
    assert_eq!(
        tcp["headers"]["alt-svc"],
        format!("h3=\":{port}\"; ma=86400"),
        "{tcp}"
    );

    // A mirror filter copies the HTTP/3 request to a second backend.
    let mirror = Arc::new(Echo::new(EchoConfig {
        pod: "mirror-0".into(),
        namespace: "default".into(),
        service: "mirror".into(),
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror_addr = l.local_addr().unwrap();
    tokio::spawn(cedille_echo::serve(
        l,
        mirror.clone(),
        None,
        std::future::pending(),
    ));
    env.write(
        "mirror.yaml",
        &format!("{}---\n{MIRROR_ROUTE}", service("mirror", mirror_addr)),
    );
    let path = "/mirror/over-h3";
    eventually(Duration::from_secs(10), || {
        let r = req(port, "a.example.com", path, &a, "3");
        let mirror = mirror.clone();
        async move {
            let out = curl(vec![r]).await;
            out[0]["status"] == 200 && body(&out[0])["pod"] == "echo-0" && {
                tokio::time::sleep(Duration::from_millis(100)).await;
                mirror.seen().iter().any(|p| p == path)
            }
        }
    })
    .await
    .expect("the mirror backend received the HTTP/3 request, the client the main backend's answer");

    // A name no listener serves gets no certificate: the QUIC handshake fails, and counts.
    let unknown = curl(vec![req(port, "c.example.com", "/", &a, "3")]).await;
    assert!(unknown[0].get("error").is_some(), "{}", unknown[0]);

    // curl keeps one QUIC connection per host name (a, b); every request counts as h3.
    let m = env.metrics().await;
    let h3 = ["protocol=\"h3\""];
    assert!(
        metric(&m, "cedille_gateway_connections_total", &h3) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "cedille_gateway_quic_handshakes_total", &[]) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "cedille_gateway_requests_total", &h3) >= 6.0,
        "{m}"
    );
    assert!(
        metric(&m, "cedille_gateway_quic_handshake_failures_total", &[]) >= 1.0,
        "{m}"
    );
}

fn headers(pairs: &[(&str, &str)]) -> Value {
    Value::Array(pairs.iter().map(|(k, v)| json!([k, v])).collect())
}

const H3_MESSAGE_ERROR: u64 = 0x10e;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http3_requests_are_stream_errors() {
    let certs = Certs::new();
    let env = start(&certs, "", |s| s.limits.max_header_bytes = 8192).await;
    let good = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "a.example.com"),
        (":path", "/"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = good.to_vec();
        h.extend_from_slice(extra);
        headers(&h)
    };
    let big = "v".repeat(20_000);
    let big: &'static str = Box::leak(big.into_boxed_str());
    let cases = json!([
        headers(&good),
        with(&[("connection", "close")]),
        with(&[("transfer-encoding", "chunked")]),
        with(&[("te", "gzip")]),
        with(&[("X-Upper", "1")]),
        headers(&good[..3]),
        with(&[("x-big", big)]),
        with(&[("te", "trailers")]),
        // The request's stream stays open: the response comes anyway, and the body the
        // gateway no longer needs is drained without upsetting anything.
        json!({"headers": headers(&good), "end": false}),
        headers(&good),
        with(&[(":path", "/elsewhere")]),
        with(&[(":method", "POST")]),
        headers(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/"),
            ("host", "a.example.com"),
        ]),
    ]);
    let out = raw(env.addr(), "a.example.com", cases).await;
    assert_eq!(out[0]["status"], 200, "{out:?}");
    for (i, what) in [
        (1, "connection"),
        (2, "transfer-encoding"),
        (3, "te other than trailers"),
        (4, "uppercase name"),
        (5, "no :path"),
    ] {
        assert_eq!(
            out[i]["reset"], H3_MESSAGE_ERROR,
            "{what}: a stream error H3_MESSAGE_ERROR, got {}",
            out[i]
        );
    }
    assert_eq!(
        out[6]["status"], 431,
        "a header block over the limit: {}",
        out[6]
    );
    assert_eq!(
        out[7]["status"], 200,
        "te: trailers is allowed, and the connection outlived the errors: {}",
        out[7]
    );
    assert_eq!(out[8]["status"], 200, "a request still open: {}", out[8]);
    assert_eq!(out[9]["status"], 200, "{}", out[9]);
    for (i, what) in [(10, ":path twice"), (11, ":method twice")] {
        assert_eq!(
            out[i]["reset"], H3_MESSAGE_ERROR,
            "{what}: a stream error H3_MESSAGE_ERROR, got {}",
            out[i]
        );
    }
    assert_eq!(
        out[12]["status"], 200,
        "host instead of :authority: {}",
        out[12]
    );
}

/// A CA, and a client certificate it signed: (ConfigMap with the CA, client cert PEM, key PEM).
fn client_ca() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client.example.com".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let configmap = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: client-ca, namespace: default}}\ndata:\n  ca.crt: |\n{}",
        ca_cert
            .pem()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    (configmap, cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requires_client_certificates_where_tcp_does() {
    let certs = Certs::new();
    let (configmap, cert, key) = client_ca();
    let tls = "  tls:\n    frontend:\n      default:\n        validation: {caCertificateRefs: [{kind: ConfigMap, group: \"\", name: client-ca}]}\n";
    let mut env = Env::start(&[("r.yaml", ROUTES), ("ca.yaml", &configmap)], |_| {}).await;
    let base = https_base(env.port, env.echo_addr, &certs.secrets, tls);
    env.write("base.yaml", &base);
    let port = env.port;
    std::fs::write(certs.dir.path().join("client.crt"), cert).unwrap();
    std::fs::write(certs.dir.path().join("client.key"), key).unwrap();
    let with_cert = |http: &str| {
        let mut r = req(port, "a.example.com", "/c", &certs.pem("a"), http);
        r["cert"] = json!([
            certs.dir.path().join("client.crt").display().to_string(),
            certs.dir.path().join("client.key").display().to_string()
        ]);
        r["fresh"] = json!(true);
        r
    };
    let h3 = with_cert("3");
    eventually(Duration::from_secs(10), || {
        let r = h3.clone();
        async move { curl(vec![r]).await[0]["status"] == 200 }
    })
    .await
    .expect("HTTP/3 with a client certificate the CA signed is served");
    let out = curl(vec![
        req(port, "a.example.com", "/none", &certs.pem("a"), "3"),
        req(port, "a.example.com", "/none", &certs.pem("a"), "2"),
        with_cert("2"),
    ])
    .await;
    assert!(
        out[0].get("error").is_some(),
        "HTTP/3 without a client certificate: {}",
        out[0]
    );
    assert!(
        out[1].get("error").is_some(),
        "HTTP/2 without a client certificate: {}",
        out[1]
    );
    assert_eq!(out[2]["status"], 200, "{}", out[2]);
    env.gateway.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_and_listener_removal_reach_quic() {
    let certs = Certs::new();
    let env = start(&certs, "", |_| {}).await;
    let port = env.port;
    let udp = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        std::net::UdpSocket::bind(udp).is_err(),
        "the HTTPS socket's UDP port is held by the gateway"
    );

    // A new certificate for a.example.com: new QUIC handshakes get it.
    let (yaml, pem) = tls_secret_pem("cert-a", "a.example.com");
    let rotated = certs.dir.path().join("a2.pem");
    std::fs::write(&rotated, pem).unwrap();
    let b_secret = certs.secrets.split("---\n").nth(1).unwrap().to_owned();
    let secrets = format!("{yaml}---\n{b_secret}");
    env.write("base.yaml", &https_base(port, env.echo_addr, &secrets, ""));
    let fresh = {
        let mut r = req(port, "a.example.com", "/rotated", &rotated, "3");
        r["fresh"] = json!(true);
        r
    };
    eventually(Duration::from_secs(10), || {
        let r = fresh.clone();
        async move { curl(vec![r]).await[0]["status"] == 200 }
    })
    .await
    .expect("a new QUIC handshake gets the rotated certificate");
    let old = curl(vec![req(
        port,
        "a.example.com",
        "/old-cert",
        &certs.pem("a"),
        "3",
    )])
    .await;
    assert!(
        old[0].get("error").is_some(),
        "the old certificate is gone: {}",
        old[0]
    );

    // The listeners go and come back while an HTTP/3 request is in flight: the request
    // finishes on the old socket (GOAWAY, then drained), which holds the UDP port a while;
    // the new QUIC side binds once it is free.
    let https = https_base(port, env.echo_addr, &secrets, "");
    let in_flight = tokio::spawn(curl(vec![req(
        port,
        "a.example.com",
        "/linger?delay=1500ms",
        &rotated,
        "3",
    )]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.write("base.yaml", &support::base(port, env.echo_addr));
    tokio::time::sleep(Duration::from_millis(400)).await;
    env.write("base.yaml", &https);
    let again = {
        let mut r = req(port, "a.example.com", "/again", &rotated, "3");
        r["fresh"] = json!(true);
        r
    };
    eventually(Duration::from_secs(10), || {
        let r = again.clone();
        async move { curl(vec![r]).await[0]["status"] == 200 }
    })
    .await
    .expect("HTTP/3 serves again once the old socket let go of the port");
    let in_flight = in_flight.await.unwrap();
    assert_eq!(
        in_flight[0]["status"], 200,
        "the request in flight when its listener went finished: {}",
        in_flight[0]
    );

    // Without HTTPS listeners on the port, its UDP socket closes.
    env.write("base.yaml", &support::base(port, env.echo_addr));
    eventually(Duration::from_secs(10), || async move {
        std::net::UdpSocket::bind(udp).is_ok()
    })
    .await
    .expect("the UDP socket closes once the HTTPS listeners are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_http3_requests_and_http3_can_be_turned_off() {
    let certs = Certs::new();
    let mut env = start(&certs, "", |_| {}).await;
    let port = env.port;
    let a = certs.pem("a");
    let slow = tokio::spawn(curl(vec![req(
        port,
        "a.example.com",
        "/drain?delay=800ms",
        &a,
        "3",
    )]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopping = tokio::spawn(env.gateway.take().unwrap().shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = curl(vec![req(port, "a.example.com", "/after", &a, "3")]).await;
    assert!(
        after[0].get("error").is_some(),
        "no new HTTP/3 requests while draining: {}",
        after[0]
    );
    let slow = slow.await.unwrap();
    assert_eq!(
        slow[0]["status"], 200,
        "the in-flight HTTP/3 request finished: {}",
        slow[0]
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("stopped within the drain deadline")
        .unwrap();

    // --http3=false: no QUIC, no alt-svc.
    let env = start(&certs, "", |s| s.http3 = false).await;
    let port = env.port;
    let out = curl(vec![
        req(port, "a.example.com", "/", &a, "2"),
        req(port, "a.example.com", "/", &a, "3"),
    ])
    .await;
    assert_eq!(out[0]["status"], 200, "{}", out[0]);
    assert!(out[0]["headers"].get("alt-svc").is_none(), "{}", out[0]);
    assert!(out[1].get("error").is_some(), "{}", out[1]);
    assert!(std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok());
}
