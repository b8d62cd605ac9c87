//! Traces: the real gateway binary exports one server span per request over OTLP/HTTP to a
//! receiver built on the official OpenTelemetry protobuf definitions (PyPI
//! opentelemetry-proto, installed by scripts/setup.sh), continues incoming traces, and
//! propagates W3C `traceparent` to backends with its own span as the parent.

mod support;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use support::{base, eventually, free_port, json};

struct Receiver {
    child: Child,
    port: u16,
    spans: mpsc::Receiver<Value>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start() -> Receiver {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = root.join("target/tools/venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh (it installs opentelemetry-proto)",
            python.display()
        );
        let mut child = Command::new(python)
            .arg(root.join("gateway/tests/otlp/receiver.py"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
        let (tx, spans) = mpsc::channel();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if tx.send(serde_json::from_str::<Value>(&l).unwrap()).is_err() {
                    return;
                }
            }
        });
        Receiver { child, port, spans }
    }

    fn next(&self, within: Duration) -> Option<Value> {
        self.spans.recv_timeout(within).ok()
    }
}

struct Gateway {
    /// Killed when the test drops it.
    _child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

async fn gateway(receiver: &Receiver, sampler: &[(&str, &str)]) -> Gateway {
    let echo = std::sync::Arc::new(cedille_echo::Echo::new(cedille_echo::EchoConfig {
        pod: "echo-0".into(),
        namespace: "default".into(),
        service: "echo".into(),
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = l.local_addr().unwrap();
    tokio::spawn(cedille_echo::serve(l, echo, None, std::future::pending()));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("base.yaml"), base(port, echo_addr)).unwrap();
    std::fs::write(dir.path().join("route.yaml"), support::route("r", "/")).unwrap();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cedille-gateway"));
    cmd.arg("--config-dir")
        .arg(dir.path())
        .args(["--admin-addr", &admin.to_string()])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        )
        .env("OTEL_SERVICE_NAME", "edge")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in sampler {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    eventually(Duration::from_secs(10), || async {
        support::get(admin, "/readyz")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await
    .expect("gateway ready");
    Gateway {
        _child: child,
        port,
        _dir: dir,
    }
}

/// A GET through the gateway; the `traceparent` the backend received.
async fn traced(port: u16, path: &str, traceparent: Option<&str>) -> (u16, Option<String>) {
    let mut c = support::Conn::open(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    let headers: Vec<(&str, &str)> = traceparent
        .map(|t| ("traceparent", t))
        .into_iter()
        .collect();
    let (code, _, body) = c
        .request("GET", path, &headers, bytes::Bytes::new())
        .await
        .unwrap();
    let seen = json(&body)["headers"]["Traceparent"][0]
        .as_str()
        .map(str::to_owned);
    (code, seen)
}

fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_span_per_request_with_trace_context_in_and_out() {
    let receiver = Receiver::start();
    let gw = gateway(&receiver, &[]).await;

    // A new trace: the backend's parent is the gateway's span.
    let (code, seen) = traced(gw.port, "/hello", None).await;
    assert_eq!(code, 200);
    let (trace, parent, flags) = parts(&seen.expect("the backend got a traceparent"));
    assert_eq!(flags, "01");
    let span = receiver.next(Duration::from_secs(5)).expect("a span");
    assert_eq!(span["trace_id"], trace);
    assert_eq!(
        span["span_id"], parent,
        "the backend's parent is the gateway's span"
    );
    assert_eq!(span["parent_span_id"], "", "a root span");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(span["name"], "GET");
    let a = &span["attributes"];
    assert_eq!(a["cedille.route"], "default/r");
    assert_eq!(a["cedille.gateway"], "default/gw");
    assert_eq!(a["cedille.backend"], "default/echo:80");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/hello");
    assert_eq!(a["network.protocol.version"], "1.1");
    assert_eq!(span["resource"]["service.name"], "edge");
    assert_eq!(span["resource"]["deployment.environment"], "test");
    assert!(span["end"].as_u64() >= span["start"].as_u64());
    assert_eq!(span["status_code"], 0, "UNSET for a 2xx");

    // An incoming trace is continued.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, seen) = traced(gw.port, "/continued", Some(incoming)).await;
    let (trace, parent, _) = parts(&seen.unwrap());
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    let span = receiver.next(Duration::from_secs(5)).expect("a span");
    assert_eq!(span["trace_id"], trace);
    assert_eq!(
        span["parent_span_id"], "00f067aa0ba902b7",
        "child of the caller's span"
    );
    assert_eq!(span["span_id"], parent);
    assert_ne!(parent, "00f067aa0ba902b7");

    // An unsampled caller: no span, the context still propagated as unsampled.
    let (_, seen) = traced(
        gw.port,
        "/quiet",
        Some("00-11111111111111111111111111111111-2222222222222222-00"),
    )
    .await;
    let (trace, _, flags) = parts(&seen.unwrap());
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("11111111111111111111111111111111", "00")
    );

    // A 5xx is an error span.
    let (code, _) = traced(gw.port, "/status/503", None).await;
    assert_eq!(code, 503);
    let span = receiver.next(Duration::from_secs(5)).expect("a span");
    assert_eq!(
        span["attributes"]["url.path"], "/status/503",
        "the unsampled request left no span"
    );
    assert_eq!(span["status_code"], 2, "STATUS_CODE_ERROR");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_ratio_applies_to_new_traces() {
    let receiver = Receiver::start();
    let gw = gateway(
        &receiver,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    )
    .await;
    for _ in 0..20 {
        let (_, seen) = traced(gw.port, "/", None).await;
        assert!(seen.unwrap().ends_with("-00"), "propagated, not sampled");
    }
    // A sampled caller is still followed.
    let (_, seen) = traced(
        gw.port,
        "/",
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )
    .await;
    assert!(seen.unwrap().ends_with("-01"));
    let span = receiver
        .next(Duration::from_secs(5))
        .expect("the parent-sampled span");
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        receiver.next(Duration::from_millis(1500)).is_none(),
        "ratio 0 exports no new traces"
    );
    drop(gw);
}
