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

/// HTTP/1.1 requests whose framing or target a proxy must refuse rather than interpret
/// (request smuggling: CL.TE, TE.CL, TE obfuscations, duplicate Content-Length, bad chunks,
/// bare LF, obs-fold, control bytes; RFC 9112 sections 2.2, 3.2, 5.2, 6.1, 6.3, 7.1). Each
/// gets a clear status (or the connection closed before anything is parsed), nothing is
/// forwarded, and a request smuggled behind it is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_framing_that_could_smuggle_is_refused() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "CL.TE",
            "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "TE.CL",
            "POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "TE identity, chunked",
            "POST /te-identity HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            &["501"],
        ),
        (
            "TE chunked, identity",
            "POST /te-last HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "TE xchunked",
            "POST /te-x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "two Transfer-Encoding fields",
            "POST /te-twice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "two Content-Length values",
            "POST /cl-twice HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            &["400"],
        ),
        (
            "two Host fields",
            "GET /two-hosts HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            &["400"],
        ),
        (
            "chunk size overflow",
            "POST /chunk-overflow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nx\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "malformed chunk extension",
            "POST /chunk-ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"open\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "chunk extension without a name",
            "POST /chunk-ext-empty HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "chunk size followed by junk",
            "POST /chunk-junk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "chunk data not followed by CRLF",
            "POST /chunk-crlf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n",
            &["400"],
        ),
        (
            "bare LF ending a chunk-size line",
            "POST /chunk-lf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
        (
            "bare LF ending the request line",
            "GET /lf-request-line HTTP/1.1\nHost: x\r\n\r\n",
            &["400"],
        ),
        (
            "bare LF ending a header line",
            "GET /lf-header HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",
            &["400"],
        ),
        (
            "bare LF ending the head",
            "GET /lf-head HTTP/1.1\r\nHost: x\r\n\n",
            &["400"],
        ),
        (
            "obs-fold",
            "GET /obs-fold HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
            &["400", ""],
        ),
        (
            "NUL in a header value",
            "GET /nul HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
            &["400", ""],
        ),
        (
            "control byte in the request line",
            "GET /ctl\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            &["400", ""],
        ),
        (
            "space before the colon",
            "GET /space HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
            &["400", ""],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, request, allowed) in cases {
        let reply = raw(env.addr(), format!("{request}{smuggled}").as_bytes()).await;
        let status = reply
            .strip_prefix("HTTP/1.1 ")
            .map(|r| &r[..3])
            .unwrap_or("");
        if !allowed.contains(&status) {
            wrong.push(format!(
                "{name}: answered {status:?}, expected one of {allowed:?}"
            ));
        }
        if reply.matches("HTTP/1.1 ").count() > 1 {
            wrong.push(format!(
                "{name}: a second response, for the smuggled request"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // A route without retries or mirrors streams the request body, so a request whose
    // chunked body turns out malformed after its first chunk (`/chunk-crlf`) has been
    // started toward the backend; that upstream request is aborted before its last chunk,
    // so it never arrives whole. Every other refusal happens before anything is forwarded,
    // and the smuggled request is never forwarded.
    let seen: Vec<String> = env
        .echo
        .seen()
        .into_iter()
        .filter(|p| p != "/chunk-crlf")
        .collect();
    assert!(seen.is_empty(), "requests reached the backend: {seen:?}");
    // Every refusal of the gateway's is counted, those hyper answers for the framing guard
    // included (hyper's own, the cases that allow no answer, are not).
    let metrics = env.metrics().await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("cedille_gateway_unmatched_requests_total{") && l.contains("bad_framing")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let refused = cases.iter().filter(|c| !c.2.contains(&"")).count();
    assert!(
        counted >= refused as f64,
        "{counted} of {refused} refusals counted:\n{metrics}"
    );
}

/// A request that asks for a protocol switch the backend does not grant leaves the
/// connection speaking HTTP/1.1, still checked: what follows is served, or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_not_granted_keeps_the_connection_checked() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let reply = raw(
        env.addr(),
        b"GET /no-switch HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: other\r\n\r\n\
          GET /next HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /bare-lf HTTP/1.1\nHost: x\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = reply
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &reply[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{reply}");
    assert_eq!(env.echo.seen(), ["/no-switch", "/next"]);
}

/// An absolute-form request-target is routed by its authority, and the backend gets that
/// authority as Host, not the client's Host field (RFC 9112 3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_replaces_the_host_field() {
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |_| {}).await;
    let reply = raw(
        env.addr(),
        b"GET http://target.example/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let echoed = json(body.as_bytes());
    assert_eq!(echoed["host"], "target.example", "{echoed}");
}

/// A backend that answers in HTTP/1.0: the client still gets an HTTP/1.1 status line and
/// keeps its connection (RFC 9110 6.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_backend_is_answered_in_http11() {
    let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_addr = old.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = old.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nold")
                    .await;
            });
        }
    });
    let old_route = route("old", "/old").replace("name: echo", "name: old");
    let env = Env::start(
        &[
            ("r.yaml", &old_route),
            ("old.yaml", &support::service("old", old_addr)),
        ],
        |_| {},
    )
    .await;
    let mut c = Conn::open(env.addr()).await.unwrap();
    for _ in 0..2 {
        let (status, _, body) = c.request("GET", "/old", &[], Bytes::new()).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"old"[..]));
    }
    let reply = raw(
        env.addr(),
        b"GET /old HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
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
