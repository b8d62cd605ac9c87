//! `cargo xtask bench kubernetes`: Kubernetes mode against the test API server (loopback).
//!
//! - Route propagation: one HTTPRoute changed `--changes` times through the API (each
//!   change sets a new response header value); the time from the write to the first
//!   response that carries the new value, polled on a kept-alive connection.
//! - Leader failover: two replicas with the default Lease timings (15 s lease, 10 s renew
//!   deadline, 2 s retry); the leader is killed with SIGKILL (no release) and the time
//!   until the other holds the Lease and has written a status change is measured; then a
//!   graceful stop (the Lease is released) of the new leader, with a third replica waiting.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use cedille_apiserver::ApiServer;
use serde_json::{Value, json};

use super::VersionClient;
use crate::{
    manifests::free_port,
    util::{cargo, root},
};

/// The Host the benchmark's requests name.
const HOST: &str = "bench.example.com";

pub fn run(changes: usize) -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "cedille-gateway"]).run()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(changes))
}

struct Replica {
    child: tokio::process::Child,
}

async fn replica(kubeconfig: &Path, name: &str, work: &Path) -> anyhow::Result<Replica> {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let bin = root().join("target/release/cedille-gateway");
    let child = tokio::process::Command::new(&bin)
        .args(["--kubernetes", "--namespace", "default", "--pod-name", name])
        .args(["--admin-addr", &admin.to_string(), "--drain-timeout", "1s"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .env_remove("CEDILLE_CONFIG_DIR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join(format!("{name}.log")))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let r = Replica { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if request(admin, "/readyz").await.is_ok_and(|(s, _)| s == 200) {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("replica {name} not ready; see {}", work.display())
}

/// One GET on a new connection: status and the `x-bench-version` header.
async fn request(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut c = VersionClient::open(addr).await?;
    c.get(HOST, path).await
}

fn route(version: usize) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{
            "filters": [{"type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"set": [{"name": "x-bench-version", "value": version.to_string()}]}}],
            "backendRefs": [{"name": "echo", "port": 80}]}]}})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lease_holder(api: &ApiServer) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        "default",
        "cedille-gateway",
    )
    .ok()?
    .pointer("/spec/holderIdentity")?
    .as_str()
    .filter(|h| !h.is_empty())
    .map(str::to_owned)
}

/// True once the route's status carries our Accepted condition for `generation`.
fn route_status_at(api: &ApiServer, generation: i64) -> bool {
    api.get(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "default",
        "bench",
    )
    .ok()
    .and_then(|r| r.pointer("/status/parents").cloned())
    .and_then(|p| p.as_array().cloned())
    .into_iter()
    .flatten()
    .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
    .any(|c| c["type"] == "Accepted" && c["observedGeneration"] == generation)
}

async fn wait(
    what: &str,
    within: Duration,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if ok() {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{what}: not within {within:?}")
}

async fn bench(changes: usize) -> anyhow::Result<()> {
    let work = root().join("target/bench-kubernetes");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let api = crate::cluster::api_server(&work).await?;
    let kubeconfig = work.join("kubeconfig");
    let backend = crate::cluster::echo().await?;
    let port = free_port()?;
    for obj in [
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "cedille"}, "spec": {"controllerName": "cedille.io/gateway-controller"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {"gatewayClassName": "cedille", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                     "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": backend.port()}],
            "endpoints": [{"addresses": [backend.ip().to_string()]}]}),
        route(0),
    ] {
        api.apply(obj)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    let mut a = replica(&kubeconfig, "gw-a", &work).await?;
    let gw: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut client = VersionClient::open(gw).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(HOST, "/").await?.1 != "0" {
        if Instant::now() > deadline {
            bail!("the route does not serve");
        }
    }

    // Propagation: API write to the first response showing it.
    let mut samples = Vec::with_capacity(changes);
    for i in 1..=changes {
        let want = i.to_string();
        let t0 = Instant::now();
        api.apply(route(i))
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        loop {
            let (_, v) = client.get(HOST, "/").await?;
            if v == want {
                samples.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("change {i} did not propagate within 10 s");
            }
        }
        // Spread the changes out, as edits are.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "route propagation through the API ({changes} changes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap())
    );

    // Failover with the default Lease timings.
    wait("gw-a leads", Duration::from_secs(20), || {
        lease_holder(&api).as_deref() == Some("gw-a")
    })
    .await?;
    let mut b = replica(&kubeconfig, "gw-b", &work).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.child.kill().await?;
    let killed = Instant::now();
    // A change right after the crash: the new leader must write its status.
    let generation = api
        .apply(route(changes + 1))
        .map_err(|e| anyhow::anyhow!("{}", e.message))?["metadata"]["generation"]
        .as_i64()
        .unwrap_or(0);
    wait("gw-b takes the Lease", Duration::from_secs(40), || {
        lease_holder(&api).as_deref() == Some("gw-b")
    })
    .await?;
    let to_lease = killed.elapsed();
    wait("gw-b writes status", Duration::from_secs(10), || {
        route_status_at(&api, generation)
    })
    .await?;
    let to_status = killed.elapsed();
    println!(
        "leader failover after SIGKILL (lease 15 s, renew deadline 10 s, retry 2 s): new holder after {:.2} s, status written after {:.2} s",
        to_lease.as_secs_f64(),
        to_status.as_secs_f64()
    );
    // Traffic was never interrupted: the surviving replica served all along.
    let c = replica(&kubeconfig, "gw-c", &work).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(pid) = b.child.id() {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
    }
    let stopped = Instant::now();
    wait(
        "gw-c takes the released Lease",
        Duration::from_secs(30),
        || lease_holder(&api).as_deref() == Some("gw-c"),
    )
    .await?;
    println!(
        "handover after a graceful stop (Lease released): {:.2} s",
        stopped.elapsed().as_secs_f64()
    );
    let _ = b.child.wait().await;
    drop(c);
    Ok(())
}
