//! Error responses the gateway makes itself are classified by origin (client,
//! configuration, upstream connect, upstream protocol, timeout, internal): each has its
//! status, is counted in `cedille_gateway_errors_total{origin, reason}` and names its class
//! in the access log's `error` field.

mod support;

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use support::{Conn, Env, route, route_to, service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The access log, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A backend that reads a request head, then closes without answering.
async fn hang_up_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

/// A backend that accepts and never answers.
async fn silent_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_names_its_origin_in_the_metric_and_the_access_log() {
    let log = Captured::default();
    let writer = log.clone();
    // Global: the gateway's tasks run on the runtime's threads. (This file holds one test.)
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter("access=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    // A closed port: bound, then released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let no_endpoints = "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec: {ports: [{name: http, port: 80}]}\n";
    let files = [
        ("ok.yaml", route("ok", "/ok")),
        (
            "closed.yaml",
            format!(
                "{}---\n{}",
                service("closed", closed),
                route_to("closed", "/closed", "closed")
            ),
        ),
        (
            "hangup.yaml",
            format!(
                "{}---\n{}",
                service("hangup", hang_up_backend().await),
                route_to("hangup", "/hangup", "hangup")
            ),
        ),
        (
            "silent.yaml",
            format!(
                "{}---\n{}",
                service("silent", silent_backend().await),
                route_to("silent", "/silent", "silent") + "    timeouts: {backendRequest: 200ms}\n"
            ),
        ),
        (
            "empty.yaml",
            format!(
                "{no_endpoints}---\n{}",
                route_to("empty", "/empty", "empty")
            ),
        ),
        ("missing.yaml", route_to("missing", "/missing", "nowhere")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let env = Env::start(&files, |_| {}).await;
    let mut c = Conn::open(env.addr()).await.unwrap();
    let cases = [
        ("/ok", 200, None),
        ("/nothing-here", 404, Some(("client", "no_match"))),
        ("/closed", 503, Some(("upstream_connect", "connect"))),
        ("/hangup", 502, Some(("upstream_protocol", "reset"))),
        ("/silent", 504, Some(("timeout", "backend_timeout"))),
        ("/empty", 503, Some(("upstream_connect", "no_endpoint"))),
        ("/missing", 500, Some(("configuration", "invalid_backend"))),
    ];
    for (path, status, _) in &cases {
        let (got, _, _) = c.request("GET", path, &[], Bytes::new()).await.unwrap();
        assert_eq!(got, *status, "{path}");
    }
    // A request without Host (HTTP/1.0 allows it), on a raw connection.
    let mut raw = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).contains(" 400 "),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let metrics = env.metrics().await;
    let mut expected: Vec<(&str, &str)> = cases.iter().filter_map(|c| c.2).collect();
    expected.push(("client", "missing_host"));
    for (origin, reason) in &expected {
        let line =
            format!("cedille_gateway_errors_total{{origin=\"{origin}\",reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
    let counted = metrics
        .lines()
        .filter(|l| l.starts_with("cedille_gateway_errors_total{"))
        .count();
    assert_eq!(
        counted,
        expected.len(),
        "only these errors are counted:\n{metrics}"
    );

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    for (path, status, class) in &cases {
        let line = log
            .lines()
            .find(|l| {
                l.contains(&format!("path=\"{path}\"")) || l.contains(&format!("path={path} "))
            })
            .unwrap_or_else(|| panic!("no access log line for {path}:\n{log}"));
        assert!(line.contains(&format!("status={status}")), "{line}");
        match class {
            Some((origin, reason)) => {
                assert!(line.contains(&format!("error={origin}/{reason}")), "{line}")
            }
            None => assert!(!line.contains("error="), "{line}"),
        }
    }
}
