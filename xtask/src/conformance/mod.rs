//! `cargo xtask conformance`: replays the upstream Gateway API conformance data
//! (GATEWAY-HTTP profile) against the real gateway binary, without a cluster.
//!
//! The gateway runs as a child process on a manifest directory that this harness rewrites
//! for each test (so the run also exercises live reloads). Echo "pods" run in this process,
//! each on its own loopback address, and every Gateway gets its own loopback address too.
//! For each test: apply base + test manifests, wait until the status expectations hold
//! (expectations.yaml), then replay the test's cases over HTTP/1.1, HTTP/2 and HTTP/3, each
//! until it passes three times in a row. HTTP/3 is TLS only: for its pass, the test's HTTP
//! listeners serve HTTPS (see [`plan::served_over_tls`]), then the test's own objects return
//! and their status must hold again.

mod certs;
mod client;
mod data;
mod plan;
mod status;
mod world;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use cedille_apiserver::ApiServer;
use serde_json::Value;

use crate::util::{cargo, in_ci, is_root, root};
use client::{Proto, Req};
use data::{Suite, TestInfo};
use world::World;

#[derive(clap::Args, Default)]
pub struct Args {
    /// Run only the tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// The conformance data directory (default: ../shared/conformance/gateway-api-*).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Exit non-zero unless every core test passes and at least this share (0-1) of the
    /// extended tests does.
    #[arg(long)]
    pub min_extended: Option<f64>,

    /// Print each failing case's reason.
    #[arg(long, short)]
    pub verbose: bool,

    /// Run the gateway in Kubernetes mode: objects are applied through the test API server
    /// (cedille-apiserver, with the data's CRDs) and statuses are read back from it.
    #[arg(long)]
    pub kubernetes: bool,
}

/// The conformance data directory beside the checkout.
pub fn data_dir() -> anyhow::Result<PathBuf> {
    data::locate(None)
}

/// How long a test's status may take to converge, and a case to pass three times in a row.
const STATUS_TIMEOUT: Duration = Duration::from_secs(20);
const CASE_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        let msg =
            "the conformance replay binds ports 80 and 443 on loopback addresses: run it as root";
        if in_ci() {
            bail!("{msg} (CI=true)");
        }
        bail!("{msg}");
    }
    cargo(&["build", "-p", "cedille-gateway"]).run()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(replay(args))
}

struct Gateway {
    child: tokio::process::Child,
    admin: SocketAddr,
    /// Kubernetes mode: the API server the gateway reads and writes status to.
    api: Option<Arc<ApiServer>>,
}

/// Where the gateway reads its objects.
enum Source<'a> {
    Dir(&'a std::path::Path),
    Api(Arc<ApiServer>, &'a std::path::Path),
}

impl Gateway {
    async fn start(source: Source<'_>, log: &std::path::Path) -> anyhow::Result<Self> {
        let admin: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let bin = root().join("target/debug/cedille-gateway");
        let log_file = std::fs::File::create(log)?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["--admin-addr", &admin.to_string(), "--drain-timeout", "1s"]);
        let api = match source {
            Source::Dir(dir) => {
                cmd.args(["--config-dir", dir.to_str().context("path")?]);
                None
            }
            Source::Api(api, kubeconfig) => {
                cmd.args([
                    "--kubernetes",
                    "--namespace",
                    "default",
                    "--pod-name",
                    "conformance",
                ])
                .env("KUBECONFIG", kubeconfig);
                Some(api)
            }
        };
        let child = cmd
            .env("RUST_LOG", "info")
            .env_remove("CEDILLE_CONFIG_DIR")
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let gw = Self { child, admin, api };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if gw.get("/readyz").await.is_ok_and(|(s, _)| s == 200) {
                return Ok(gw);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the gateway did not become ready; see {}", log.display())
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
        let t = client::Target {
            addr: self.admin,
            sni: None,
            h2: false,
            h3: false,
            client_cert: None,
        };
        let r = Req {
            method: "GET".into(),
            path: path.into(),
            host: self.admin.to_string(),
            headers: vec![],
        };
        let resp = client::send(&t, &r, &[])
            .await
            .map_err(anyhow::Error::msg)?;
        Ok((resp.status, resp.body))
    }

    /// Status in `/status`'s shape: from the admin endpoint, or in Kubernetes mode read
    /// back from the objects in the API server (what the gateway wrote there).
    async fn status(&self) -> anyhow::Result<Value> {
        match &self.api {
            None => {
                let (_, body) = self.get("/status").await?;
                Ok(serde_json::from_slice(&body)?)
            }
            Some(api) => Ok(status_from_api(api)),
        }
    }
}

/// The statuses the API server holds, keyed like `/status` (`name` or `namespace/name`).
fn status_from_api(api: &ApiServer) -> Value {
    let mut out = serde_json::Map::new();
    for (field, kind) in [
        ("gatewayClasses", "GatewayClass"),
        ("gateways", "Gateway"),
        ("listenerSets", "ListenerSet"),
        ("httpRoutes", "HTTPRoute"),
        ("backendTLSPolicies", "BackendTLSPolicy"),
    ] {
        let mut entries = serde_json::Map::new();
        for o in api
            .list("gateway.networking.k8s.io/v1", kind)
            .unwrap_or_default()
        {
            let ns = o
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = o
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let key = if ns.is_empty() {
                name.to_owned()
            } else {
                format!("{ns}/{name}")
            };
            entries.insert(
                key,
                serde_json::json!({"namespace": ns, "name": name,
                    "generation": o.pointer("/metadata/generation").cloned().unwrap_or(Value::Null),
                    "status": o.get("status").cloned().unwrap_or_else(|| serde_json::json!({}))}),
            );
        }
        out.insert(field.into(), Value::Object(entries));
    }
    Value::Object(out)
}

pub(crate) struct Ctx {
    gateway: Gateway,
    world: World,
    pinned: Vec<u8>,
    /// The pinned certificate and key (PEM), served by listeners converted for HTTP/3.
    listener_cert_pem: (String, String),
    client_certs: std::collections::HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// The client certificate a backend must see in GatewayTLSBackendClientCertificate.
    backend_client_pem: String,
    pub verbose: bool,
}

#[derive(Default)]
struct Outcome {
    failures: Vec<String>,
}

async fn replay(args: Args) -> anyhow::Result<()> {
    let data = data::locate(args.data.as_deref())?;
    let suite = Suite::load(&data)?;
    let generated = certs::generate()?;
    let work = root().join("target/conformance");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("config"))?;
    let backend_client_pem = generated.backend_client_pem.clone();
    let api = if args.kubernetes {
        let crds = cedille_apiserver::load_crds(&data.join("crds"))?;
        let server = ApiServer::start(
            "127.0.0.1:0".parse()?,
            cedille_apiserver::Options {
                crds,
                ..Default::default()
            },
        )
        .await?;
        server.write_kubeconfig(&work.join("kubeconfig"))?;
        Some(Arc::new(server))
    } else {
        None
    };
    let sink = match &api {
        None => world::Sink::File(work.join("config/conformance.yaml")),
        Some(server) => world::Sink::Api {
            server: server.clone(),
            applied: Default::default(),
        },
    };
    let mut world = World::new(sink, generated.secrets, generated.backend_tls.clone());
    world.backend_tls_client_auth = Some(generated.backend_tls_client_auth.clone());
    world.apply(&suite.base).await?;
    let source = match &api {
        None => Source::Dir(&work.join("config")),
        Some(server) => Source::Api(server.clone(), &work.join("kubeconfig")),
    };
    let gateway = Gateway::start(source, &work.join("gateway.log")).await?;
    let mut ctx = Ctx {
        gateway,
        world,
        pinned: generated.listener_cert_der,
        listener_cert_pem: generated.listener_cert_pem,
        client_certs: generated.client_certs,
        backend_client_pem,
        verbose: args.verbose,
    };
    eprintln!(
        "conformance: {} (gateway log: {})",
        data.display(),
        work.join("gateway.log").display()
    );

    let mut rows = Vec::new();
    for t in &suite.tests {
        if args
            .filter
            .as_ref()
            .is_some_and(|f| !t.name.contains(f.as_str()))
        {
            continue;
        }
        let start = Instant::now();
        let outcome =
            match tokio::time::timeout(Duration::from_secs(180), run_test(&mut ctx, &suite, t))
                .await
            {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => Outcome {
                    failures: vec![format!("harness: {e:#}")],
                },
                Err(_) => Outcome {
                    failures: vec!["timed out after 180 s".into()],
                },
            };
        let pass = outcome.failures.is_empty();
        let first = outcome.failures.first().cloned().unwrap_or_default();
        println!(
            "{} {:<8} {:<62} {:>5.1}s {}",
            if pass { "PASS" } else { "FAIL" },
            t.profile,
            t.name,
            start.elapsed().as_secs_f64(),
            first
        );
        if ctx.verbose {
            for f in outcome.failures.iter().skip(1).take(12) {
                println!("       {f}");
            }
        }
        rows.push((t, pass));
    }
    let _ = ctx.gateway.child.kill().await;
    summarize(&rows, args.min_extended, args.kubernetes)
}

fn summarize(
    rows: &[(&TestInfo, bool)],
    min_extended: Option<f64>,
    kubernetes: bool,
) -> anyhow::Result<()> {
    let count = |profile: &str| {
        let all: Vec<_> = rows.iter().filter(|(t, _)| t.profile == profile).collect();
        (all.iter().filter(|(_, p)| *p).count(), all.len())
    };
    let (cp, ct) = count("core");
    let (ep, et) = count("extended");
    println!();
    println!(
        "conformance (GATEWAY-HTTP, each test over HTTP/1.1, HTTP/2 and HTTP/3{}): core {cp}/{ct} passed, extended {ep}/{et} passed",
        if kubernetes { ", Kubernetes mode" } else { "" }
    );
    if let Some(min) = min_extended {
        let share = if et == 0 { 1.0 } else { ep as f64 / et as f64 };
        if cp < ct || share < min {
            bail!(
                "conformance below target: core {cp}/{ct}, extended {:.0}% (target 100% core, {:.0}% extended)",
                share * 100.0,
                min * 100.0
            );
        }
    }
    Ok(())
}

async fn run_test(ctx: &mut Ctx, suite: &Suite, t: &TestInfo) -> anyhow::Result<Outcome> {
    let mut docs = suite.base.clone();
    docs.extend(suite.manifests_of(t)?);
    let mut objects = ctx.world.apply(&docs).await?;
    let exp = suite
        .expectations
        .get(&t.name)
        .cloned()
        .unwrap_or(Value::Null);
    let mut out = Outcome::default();
    if let Err(f) = wait_status(ctx, &exp, &objects).await {
        out.failures.extend(f);
        return Ok(out);
    }
    let plan = match plan::plan(ctx, suite, t, &exp, &objects) {
        Ok(p) => p,
        Err(e) => {
            out.failures.push(e);
            return Ok(out);
        }
    };
    for proto in [Proto::H1, Proto::H2] {
        for c in plan.initial.iter() {
            if let Err(e) = plan::run_case(ctx, c, proto).await {
                out.failures
                    .push(format!("{} case {}: {e}", proto.name(), c.label));
            }
        }
    }
    if let Err(f) = h3_pass(ctx, &docs, &exp, &plan.initial).await {
        out.failures.extend(f);
        return Ok(out);
    }
    for (i, step) in exp
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        docs = plan::apply_step(ctx, &t.name, step, docs)?;
        objects = ctx.world.apply(&docs).await?;
        let then = step.get("then").cloned().unwrap_or(Value::Null);
        if let Err(f) = wait_status(ctx, &then, &objects).await {
            out.failures
                .extend(f.into_iter().map(|f| format!("after step {}: {f}", i + 1)));
            return Ok(out);
        }
        let cases: &[plan::Planned] = plan.after_step.get(&i).map_or(&[], Vec::as_slice);
        for c in cases {
            for proto in [Proto::H1, Proto::H2] {
                if let Err(e) = plan::run_case(ctx, c, proto).await {
                    out.failures.push(format!(
                        "after step {} case {} ({}): {e}",
                        i + 1,
                        c.label,
                        proto.name()
                    ));
                }
            }
        }
        if let Err(f) = h3_pass(ctx, &docs, &then, cases).await {
            out.failures
                .extend(f.into_iter().map(|f| format!("after step {}: {f}", i + 1)));
            return Ok(out);
        }
    }
    Ok(out)
}

/// The same cases over HTTP/3. HTTP/3 needs TLS: where the test's listeners are HTTP, they
/// are served as HTTPS for this pass (same names, ports and hostnames, so the same routes
/// attach; the certificate the client pins), then the test's own objects come back and
/// its status expectations must hold again before it goes on.
async fn h3_pass(
    ctx: &mut Ctx,
    docs: &[Value],
    exp: &Value,
    cases: &[plan::Planned],
) -> Result<(), Vec<String>> {
    if cases.is_empty() {
        return Ok(());
    }
    let converted = plan::served_over_tls(docs, &ctx.listener_cert_pem);
    if let Some(tls_docs) = &converted {
        ctx.world
            .apply(tls_docs)
            .await
            .map_err(|e| vec![format!("HTTP/3 pass: {e:#}")])?;
    }
    let mut failures = Vec::new();
    for c in cases {
        if let Err(e) = plan::run_case(ctx, c, Proto::H3).await {
            failures.push(format!("HTTP/3 case {}: {e}", c.label));
        }
    }
    if converted.is_some() {
        ctx.world
            .apply(docs)
            .await
            .map_err(|e| vec![format!("after the HTTP/3 pass: {e:#}")])?;
        if let Err(f) = wait_status(ctx, exp, docs).await {
            failures.extend(f.into_iter().map(|f| format!("after the HTTP/3 pass: {f}")));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Polls `/status` until `exp` holds, or returns what still does not.
async fn wait_status(ctx: &Ctx, exp: &Value, objects: &[Value]) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let fails = match ctx.gateway.status().await {
            Ok(st) => status::check(exp, &st, objects),
            Err(e) => vec![format!("GET /status: {e}")],
        };
        if fails.is_empty() {
            return Ok(());
        }
        // Kinds the gateway does not implement will not show up however long we wait.
        if Instant::now() > deadline
            || fails
                .iter()
                .any(|f| f.contains("not supported by cedille-gateway"))
        {
            return Err(fails.into_iter().map(|f| format!("status: {f}")).collect());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
