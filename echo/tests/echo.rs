//! The echo server over real sockets, with real HTTP/1.1, h2c and TLS clients.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cedille_echo::{EchoedRequest, load_tls_server_config, tls_server_config};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use support::{NAMESPACE, POD, SERVICE, Server, TestCert, connect, get, http1, http2};

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test]
async fn http1_request_is_described() {
    let server = Server::start(None).await;
    let req = get("/some/path?x=1&y=two")
        .header("x-forwarded-for", "10.0.0.1")
        .header("user-agent", "echo-test")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .body(empty())
        .unwrap();
    let answer = http1(connect(server.addr).await, req).await.unwrap();

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["path"], "/some/path?x=1&y=two");
    assert_eq!(body["host"], "echo.example");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["proto"], "HTTP/1.1");
    assert_eq!(body["namespace"], NAMESPACE);
    assert_eq!(body["pod"], POD);
    assert_eq!(body["service"], SERVICE);
    assert_eq!(body["httpPort"], server.addr.port().to_string());
    assert!(body.get("tls").is_none(), "no tls object on cleartext");
    let headers = &body["headers"];
    assert_eq!(headers["X-Forwarded-For"], json!(["10.0.0.1"]));
    assert_eq!(headers["User-Agent"], json!(["echo-test"]));
    assert_eq!(headers["X-Multi"], json!(["a", "b"]));
    assert!(headers.get("Host").is_none() && headers.get("host").is_none());
    // The public type reads the same JSON.
    let typed: EchoedRequest = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(typed.http_port, server.addr.port().to_string());
    server.stop().await;
}

#[tokio::test]
async fn h2c_request_is_described() {
    let server = Server::start(None).await;
    let req = Request::post("http://h2.example:8080/p/q?z=1")
        .header("x-custom-header", "v")
        .body(Full::new(Bytes::from_static(b"some body")))
        .unwrap();
    let answer = http2(connect(server.addr).await, req).await.unwrap();

    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["proto"], "HTTP/2.0");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/p/q?z=1");
    assert_eq!(body["host"], "h2.example:8080");
    assert_eq!(body["pod"], POD);
    assert_eq!(body["httpPort"], server.addr.port().to_string());
    assert_eq!(body["headers"]["X-Custom-Header"], json!(["v"]));
    server.stop().await;
}

#[tokio::test]
async fn echo_set_header_sets_response_headers() {
    let server = Server::start(None).await;
    let req = get("/")
        .header("x-echo-set-header", "X-Foo:bar, X-Baz: qux quux")
        .header("x-echo-set-header", "x-foo:again")
        .body(empty())
        .unwrap();
    let answer = http1(connect(server.addr).await, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-foo"], "bar,again");
    assert_eq!(answer.headers["x-baz"], "qux quux");
    assert_eq!(
        answer.json()["headers"]["X-Echo-Set-Header"],
        json!(["X-Foo:bar, X-Baz: qux quux", "x-foo:again"])
    );
    server.stop().await;
}

#[tokio::test]
async fn status_path_sets_the_status() {
    let server = Server::start(None).await;
    let answer = http1(
        connect(server.addr).await,
        get("/status/418").body(empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(answer.json()["path"], "/status/418");

    for bad in ["/status/abc", "/status/99", "/status/600", "/status/"] {
        let answer = http1(connect(server.addr).await, get(bad).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    server.stop().await;
}

#[tokio::test]
async fn delay_waits_before_answering() {
    let server = Server::start(None).await;
    let started = Instant::now();
    let answer = http1(
        connect(server.addr).await,
        get("/slow?delay=200ms").body(empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.json()["path"], "/slow?delay=200ms");

    let answer = http1(
        connect(server.addr).await,
        get("/?delay=soon").body(empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn retry_fails_the_first_attempts() {
    let server = Server::start(None).await;
    let statuses = |target: &'static str, n: usize| {
        let addr = server.addr;
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let req = get(target).body(empty()).unwrap();
                out.push(
                    http1(connect(addr).await, req)
                        .await
                        .unwrap()
                        .status
                        .as_u16(),
                );
            }
            out
        }
    };
    // succeedAfter=N: the first N attempts of a uuid fail with responseCode.
    assert_eq!(
        statuses("/retry/a?responseCode=500&succeedAfter=2&uuid=one", 4).await,
        [500, 500, 200, 200]
    );
    assert_eq!(
        statuses("/retry/a?responseCode=503&succeedAfter=3&uuid=two", 4).await,
        [503, 503, 503, 200]
    );
    // Counters are per uuid.
    assert_eq!(
        statuses("/retry/b?responseCode=502&succeedAfter=1&uuid=three", 2).await,
        [502, 200]
    );
    assert_eq!(
        statuses("/retry/b?succeedAfter=0&uuid=four", 1).await,
        [200]
    );
    // Without a uuid the whole target is the key.
    assert_eq!(
        statuses("/retry/c?succeedAfter=2&responseCode=500", 3).await,
        [500, 500, 200]
    );
    assert_eq!(statuses("/retry/d?uuid=five", 1).await, [400]);

    // A successful attempt is an ordinary echo.
    let answer = http1(
        connect(server.addr).await,
        get("/retry/a?responseCode=500&succeedAfter=2&uuid=one")
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.json()["path"],
        "/retry/a?responseCode=500&succeedAfter=2&uuid=one"
    );
    server.stop().await;
}

#[tokio::test]
async fn retry_without_response_code_aborts_the_connection() {
    let server = Server::start(None).await;
    let target = "/retry/reset?succeedAfter=1&uuid=reset";
    let failed = http1(
        connect(server.addr).await,
        get(target).body(empty()).unwrap(),
    )
    .await;
    assert!(failed.is_err(), "the first attempt must not get a response");
    let answer = http1(
        connect(server.addr).await,
        get(target).body(empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    // Over HTTP/2 the stream is reset; the connection stays usable.
    let target = "http://echo.example/retry/reset?succeedAfter=1&uuid=reset-h2";
    let req = Request::get(target).body(empty()).unwrap();
    assert!(http2(connect(server.addr).await, req).await.is_err());
    let req = Request::get(target).body(empty()).unwrap();
    let answer = http2(connect(server.addr).await, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let server = Server::start(None).await;
    let req = Request::post("http://echo.example/upload")
        .body(Full::new(Bytes::from(vec![b'x'; (1 << 20) + 1])))
        .unwrap();
    let answer = http2(connect(server.addr).await, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    let req = Request::post("http://echo.example/upload")
        .body(Full::new(Bytes::from(vec![b'x'; 1 << 20])))
        .unwrap();
    let answer = http2(connect(server.addr).await, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn tls_reports_sni_and_alpn() {
    let cert = TestCert::new("echo.example.com");
    let config = tls_server_config(vec![cert.cert.clone()], cert.key.clone_key()).unwrap();
    let server = Server::start(Some(config)).await;

    let io = cert
        .connect(server.addr, "echo.example.com", &[b"h2", b"http/1.1"])
        .await;
    let req = Request::get("https://echo.example.com/tls?x=1")
        .body(empty())
        .unwrap();
    let answer = http2(io, req).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["proto"], "HTTP/2.0");
    assert_eq!(body["path"], "/tls?x=1");
    assert_eq!(body["httpPort"], server.addr.port().to_string());
    let tls = &body["tls"];
    assert_eq!(tls["serverName"], "echo.example.com");
    assert_eq!(tls["negotiatedProtocol"], "h2");
    assert_eq!(tls["version"], "TLSv1.3");
    assert!(
        tls["cipherSuite"].as_str().unwrap().starts_with("TLS_"),
        "{tls}"
    );
    assert_eq!(tls["peerCertificates"], json!([]));

    let io = cert
        .connect(server.addr, "echo.example.com", &[b"http/1.1"])
        .await;
    let req = Request::get("/h1")
        .header("host", "echo.example.com")
        .body(empty())
        .unwrap();
    let body = http1(io, req).await.unwrap().json();
    assert_eq!(body["proto"], "HTTP/1.1");
    assert_eq!(body["tls"]["negotiatedProtocol"], "http/1.1");
    assert_eq!(body["tls"]["serverName"], "echo.example.com");
    server.stop().await;
}

#[tokio::test]
async fn tls_config_loads_from_pem_files() {
    let cert = TestCert::new("files.example.com");
    let dir = std::env::temp_dir().join(format!("cedille-echo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let loaded = load_tls_server_config(&cert_path, &key_path);
    let missing = load_tls_server_config(&dir.join("absent.crt"), &key_path);
    let swapped = load_tls_server_config(&key_path, &cert_path);
    std::fs::remove_dir_all(&dir).unwrap();

    let server = Server::start(Some(loaded.unwrap())).await;
    let io = cert
        .connect(server.addr, "files.example.com", &[b"h2"])
        .await;
    let req = Request::get("https://files.example.com/")
        .body(empty())
        .unwrap();
    let body = http2(io, req).await.unwrap().json();
    assert_eq!(body["tls"]["serverName"], "files.example.com");
    server.stop().await;

    assert!(missing.unwrap_err().to_string().contains("absent.crt"));
    assert!(swapped.is_err());
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let server = Server::start(None).await;
    let addr = server.addr;
    // An idle keep-alive connection must not hold shutdown up.
    let (mut sender, conn) = hyper::client::conn::http1::handshake(connect(addr).await)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(get("/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);

    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    conn.await.unwrap().unwrap();
}
