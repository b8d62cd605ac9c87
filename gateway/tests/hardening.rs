//! What a client controls is bounded, and nothing it says about the connection reaches the
//! backend.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{Conn, Env, json, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes and returns what came back until the server closed or 3 s passed.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 9112 section 6.3: the framing is Transfer-Encoding's alone and the connection closes
/// after the response, so a request smuggled behind it is never read, let alone forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let reply = raw(
        env.addr(),
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(
        reply.matches("HTTP/1.1 ").count(),
        1,
        "one response, then the connection closes: {reply}"
    );
    let seen = env.echo.seen();
    assert!(!seen.iter().any(|p| p.starts_with("/smuggled")), "{seen:?}");
    if reply.starts_with("HTTP/1.1 200") {
        let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
        let echoed = json(body.as_bytes());
        assert!(
            echoed["headers"].get("Content-Length").is_none(),
            "{echoed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let mut c = Conn::open(env.addr()).await.unwrap();
    let headers = [
        ("connection", "x-private"),
        ("x-private", "secret"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("te", "trailers"),
        ("x-kept", "yes"),
    ];
    let (status, _, body) = c
        .request("GET", "/h", &headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let echoed = json(&body);
    let got = echoed["headers"].as_object().unwrap();
    for gone in [
        "Connection",
        "X-Private",
        "Keep-Alive",
        "Proxy-Authorization",
        "Te",
    ] {
        assert!(
            !got.contains_key(gone),
            "{gone} reached the backend: {got:?}"
        );
    }
    assert_eq!(echoed["headers"]["X-Kept"][0], "yes");
    assert_eq!(echoed["headers"]["X-Forwarded-For"][0], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_cut_off() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |s| {
        s.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // A connection that never sends a request.
    let start = Instant::now();
    let reply = raw(env.addr(), b"").await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "idle connection kept {:?}",
        start.elapsed()
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    // Headers trickling in slower than the limit.
    let mut s = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _ = s.write_all(b"X-Late: 1\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        !out.starts_with("HTTP/1.1 200"),
        "a request slower than the header timeout was served: {out}"
    );
    // A kept-alive connection idle after a response.
    let mut c = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "idle keep-alive connection kept {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |s| {
        s.limits.max_header_bytes = 16 * 1024
    })
    .await;
    let big = "a".repeat(64 * 1024);
    let reply = raw(
        env.addr(),
        format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431") || reply.starts_with("HTTP/1.1 400"),
        "{}",
        &reply[..reply.len().min(100)]
    );
    assert!(!env.echo.seen().iter().any(|p| p == "/big"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |s| s.max_connections = 2).await;
    let mut a = Conn::open(env.addr()).await.unwrap();
    let mut b = Conn::open(env.addr()).await.unwrap();
    assert_eq!(
        a.request("GET", "/", &[], Bytes::new()).await.unwrap().0,
        200
    );
    assert_eq!(
        b.request("GET", "/", &[], Bytes::new()).await.unwrap().0,
        200
    );
    let reply = raw(env.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.is_empty(), "a third connection was served: {reply}");
    assert!(
        env.metrics()
            .await
            .contains("cedille_gateway_connections_rejected_total 1")
    );
    drop(a);
    support::eventually(Duration::from_secs(3), || async {
        raw(
            env.addr(),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await
    .expect("a slot frees up when a connection closes");
}
