//! Clients that hold connections without using them: slowloris, a reader that does not
//! read, idle HTTP/2 connections and idle WebSockets. Each is bounded by a configurable
//! time or by backpressure, and a normal client is served meanwhile.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Conn, Env, route, service};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Reads until the peer closes (true) or `within` passes (false).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Sequential GETs on one kept-alive connection for `span`: requests per second and the
/// slowest answer.
async fn normal_client(addr: SocketAddr, span: Duration) -> (f64, Duration) {
    let mut c = Conn::open(addr).await.unwrap();
    let start = Instant::now();
    let (mut n, mut worst) = (0u32, Duration::ZERO);
    while start.elapsed() < span {
        let t = Instant::now();
        let (status, _, _) = c.request("GET", "/", &[], Bytes::new()).await.unwrap();
        assert_eq!(status, 200);
        worst = worst.max(t.elapsed());
        n += 1;
    }
    (f64::from(n) / start.elapsed().as_secs_f64(), worst)
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 4096,
        "the test needs 4096 open files, the hard limit is {hard}"
    );
}

/// 1,000 slowloris connections (a request head trickled a byte every 500 ms) are each
/// closed within the header timeout + 1 s of opening, and a normal client keeps its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout() {
    raise_fd_limit();
    let timeout = Duration::from_secs(2);
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |s| {
        s.limits.header_read_timeout = timeout;
        s.max_connections = 5000;
    })
    .await;
    let addr = env.addr();
    let (before, _) = normal_client(addr, Duration::from_secs(1)).await;

    let mut attackers = Vec::new();
    for i in 0..1000 {
        attackers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let opened = Instant::now();
            let head = format!("GET /{i} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        // Closed (or answered: the timeout may come with a 408).
                        if matches!(r, Ok(0) | Err(_)) {
                            return opened.elapsed();
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if s.write_all(b"a").await.is_err() {
                            return opened.elapsed();
                        }
                    }
                }
                if opened.elapsed() > Duration::from_secs(30) {
                    return opened.elapsed();
                }
            }
        }));
    }
    // Let the attack build up, then measure the normal client under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (during, worst) = normal_client(addr, Duration::from_millis(1200)).await;
    let mut longest = Duration::ZERO;
    for a in attackers {
        longest = longest.max(a.await.unwrap());
    }
    assert!(
        longest <= timeout + Duration::from_secs(1),
        "a slowloris connection lived {longest:?} (header timeout {timeout:?})"
    );
    assert!(
        during >= before * 0.5,
        "normal client: {during:.0} requests/s under attack, {before:.0} before"
    );
    assert!(
        worst < Duration::from_millis(500),
        "slowest answer {worst:?}"
    );
}

/// A backend that answers any request with `len` zero bytes, written as fast as the
/// socket takes them (it buffers nothing itself).
async fn zeros_backend(len: u64) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        static CHUNK: [u8; 65536] = [0; 65536];
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK.len() as u64) as usize;
                    if s.write_all(&CHUNK[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    addr
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A client that stops reading a 256 MiB response: the gateway holds a bounded amount of
/// it (backpressure to the backend), and the client, once it reads again, gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_make_the_gateway_buffer_the_response() {
    const LEN: u64 = 256 << 20;
    let backend = zeros_backend(LEN).await;
    let big = format!(
        "{}---\n{}",
        service("zeros", backend),
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: big, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /big}}]
    backendRefs: [{name: zeros, port: 80}]
"#
    );
    let env = Env::start(&[("big.yaml", &big)], |_| {}).await;
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..got]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..got.min(200)])
    );
    let base = rss_bytes();
    // The client stops reading; whatever the gateway buffers grows now, if anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_bytes().saturating_sub(base);
    assert!(
        grown < 16 << 20,
        "the process grew {} MiB while the client did not read",
        grown >> 20
    );
    // Reading again: the whole response arrives.
    let head_end = buf[..got]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    got -= head_end;
    let mut body = got as u64;
    while body < LEN {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response stalled")
            .unwrap();
        assert!(n > 0, "closed after {body} of {LEN} bytes");
        body += n as u64;
    }
    assert_eq!(body, LEN);
}

/// An HTTP/2 connection in use stays open past the idle timeout; once it carries no
/// request for the timeout, it gets a GOAWAY and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let idle = Duration::from_secs(1);
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |s| {
        s.limits.idle_timeout = idle;
    })
    .await;
    let tcp = TcpStream::connect(env.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let start = Instant::now();
    // In use for twice the idle timeout: never closed.
    while start.elapsed() < idle * 2 {
        let req = http::Request::get("http://example.com/")
            .body(Empty::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("a busy connection stays open");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Idle: closed within the timeout and a second.
    let idle_from = Instant::now();
    tokio::time::timeout(idle + Duration::from_secs(1), conn)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .expect("closed with a GOAWAY, not an error");
    assert!(idle_from.elapsed() >= idle - Duration::from_millis(350));
}

/// An upgraded WebSocket connection that carries messages stays open past the idle
/// timeout; once quiet for the timeout, it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed() {
    let idle = Duration::from_secs(1);
    let env = Env::start(&[("r.yaml", &route("r", "/"))], |s| {
        s.limits.idle_timeout = idle;
    })
    .await;
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed during the upgrade"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A masked text frame "ping" (RFC 6455 5.3), echoed back unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 4];
    frame.extend_from_slice(&mask);
    frame.extend(b"ping".iter().zip(mask.iter().cycle()).map(|(c, m)| c ^ m));
    let start = Instant::now();
    while start.elapsed() < idle * 2 {
        s.write_all(&frame).await.unwrap();
        let mut echo = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut echo))
            .await
            .expect("a busy WebSocket stays open")
            .unwrap();
        assert_eq!(&echo, b"\x81\x04ping");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut s, idle + Duration::from_secs(1)).await,
        "the idle WebSocket is still open"
    );
    assert!(idle_from.elapsed() >= idle - Duration::from_millis(350));
}
