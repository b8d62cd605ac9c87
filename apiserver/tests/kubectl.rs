//! The real `kubectl` against the test API server: every answer it prints must be what it
//! prints against kube-apiserver (messages as kube-apiserver words them). This keeps the
//! server honest for everything Cedille relies on.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use cedille_apiserver::{ApiServer, Options, load_crds};

fn crds() -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/gateway-api-v1.6.1/crds");
    load_crds(&dir).unwrap_or_else(|e| panic!("Gateway API CRDs in {}: {e}", dir.display()))
}

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap_or_else(|e| {
            panic!("kubectl is required for this test (the machines have it installed): {e}")
        })
    }

    /// Runs kubectl and returns stdout, failing on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} succeeded unexpectedly"
        );
        String::from_utf8_lossy(&o.stderr).trim().to_owned()
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  hostnames: [a.example.com]
  rules:
  - backendRefs: [{name: svc, port: 80}]
";

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: default}
spec: {nodeName: n2, containers: [{name: c, image: x}]}
";

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_sees_a_real_api_server() {
    let server = ApiServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Options {
            crds: crds(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let k = Kubectl {
        kubeconfig: tmp.path().join("kubeconfig"),
        cache: tmp.path().join("cache"),
        dir: tmp.path().to_owned(),
    };
    server.write_kubeconfig(&k.kubeconfig).unwrap();
    let k = std::sync::Arc::new(k);
    let k2 = k.clone();
    // kubectl blocks; run it off the runtime's worker threads.
    tokio::task::spawn_blocking(move || scenario(&k2))
        .await
        .unwrap();
    drop(k);
}

fn scenario(k: &Kubectl) {
    // Discovery: kubectl finds the CRD kinds and their short names.
    let resources = k.ok(&[
        "api-resources",
        "--api-group=gateway.networking.k8s.io",
        "-o",
        "name",
    ]);
    assert!(
        resources.contains("httproutes.gateway.networking.k8s.io"),
        "{resources}"
    );
    assert_eq!(
        k.ok(&["get", "ns", "default", "-o", "name"]),
        "namespace/default"
    );

    // create, and create again.
    let route = k.file("route.yaml", ROUTE);
    assert_eq!(
        k.ok(&["create", "-f", &route]),
        "httproute.gateway.networking.k8s.io/web created"
    );
    assert_eq!(
        k.fails(&["create", "-f", &route]),
        format!(
            "Error from server (AlreadyExists): error when creating \"{route}\": httproutes.gateway.networking.k8s.io \"web\" already exists"
        )
    );
    let elsewhere = k.file(
        "elsewhere.yaml",
        &ROUTE.replace("namespace: default", "namespace: missing"),
    );
    assert_eq!(
        k.fails(&["create", "-f", &elsewhere]),
        format!(
            "Error from server (NotFound): error when creating \"{elsewhere}\": namespaces \"missing\" not found"
        )
    );
    assert_eq!(
        k.fails(&["get", "httproute", "nope"]),
        "Error from server (NotFound): httproutes.gateway.networking.k8s.io \"nope\" not found"
    );

    // Label selectors.
    assert_eq!(
        k.ok(&["get", "httproutes", "-l", "app=web", "-o", "name"]),
        "httproute.gateway.networking.k8s.io/web"
    );
    assert_eq!(
        k.ok(&["get", "httproutes", "-l", "app in (x,y)", "-o", "name"]),
        ""
    );
    // The default (table) output, with the CRD's printer columns.
    let table = k.ok(&["get", "httproutes"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("HOSTNAMES") && table.contains("[\"a.example.com\"]"),
        "{table}"
    );

    // Field selectors, and the error for a field the resource does not index.
    let pods = k.file("pods.yaml", PODS);
    k.ok(&["create", "-f", &pods]);
    assert_eq!(
        k.ok(&[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name"
        ]),
        "pod/p1"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName!=n1,metadata.name=p2",
            "-o",
            "name"
        ]),
        "pod/p2"
    );
    let e = k.fails(&["get", "pods", "--field-selector", "spec.bogus=1"]);
    assert!(e.ends_with("field label not supported: spec.bogus"), "{e}");

    // Watch: an object moving into the selector is ADDED, moving out is DELETED.
    let mut watch = k
        .cmd(&[
            "get",
            "pods",
            "-l",
            "app=watched",
            "-w",
            "--output-watch-events",
            "--request-timeout=20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(800));
    k.ok(&["label", "pod", "p2", "app=watched", "--overwrite"]);
    k.ok(&["label", "pod", "p1", "unrelated=yes"]);
    k.ok(&["label", "pod", "p2", "app=gone", "--overwrite"]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 3 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => seen.push(l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
            _ => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        seen,
        ["EVENT NAME", "ADDED p2", "DELETED p2"],
        "watch output"
    );

    // Optimistic concurrency: a replace with a stale resourceVersion is a Conflict.
    let stale = k.ok(&["get", "httproute", "web", "-o", "json"]);
    let stale = k.file("stale.json", &stale);
    k.ok(&[
        "patch",
        "httproute",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"hostnames":["b.example.com"]}}"#,
    ]);
    assert_eq!(
        k.fails(&["replace", "-f", &stale]),
        format!(
            "Error from server (Conflict): error when replacing \"{stale}\": Operation cannot be fulfilled on httproutes.gateway.networking.k8s.io \"web\": the object has been modified; please apply your changes to the latest version and try again"
        )
    );
    assert_eq!(
        k.ok(&[
            "get",
            "httproute",
            "web",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "2"
    );

    // The status subresource: status changes do not bump generation, spec in the same
    // patch is ignored; a spec write leaves status alone.
    assert_eq!(
        k.ok(&[
            "patch", "httproute", "web", "--subresource=status", "--type=merge", "-p",
            r#"{"status":{"parents":[{"parentRef":{"name":"gw"},"controllerName":"example.com/c","conditions":[]}]},"spec":{"hostnames":["ignored.example.com"]}}"#,
        ]),
        "httproute.gateway.networking.k8s.io/web patched"
    );
    assert_eq!(
        k.ok(&["get", "httproute", "web", "-o", "jsonpath={.metadata.generation} {.spec.hostnames[0]} {.status.parents[0].controllerName}"]),
        "2 b.example.com example.com/c"
    );
    k.ok(&[
        "patch",
        "httproute",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"parents":[]},"spec":{"hostnames":["c.example.com"]}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "httproute",
            "web",
            "-o",
            "jsonpath={.metadata.generation} {.status.parents[0].controllerName}"
        ]),
        "3 example.com/c"
    );
    // Strategic merge patch is for built-in kinds only.
    let e = k.fails(&["patch", "httproute", "web", "--type=strategic", "-p", "{}"]);
    assert!(
        e.contains("UnsupportedMediaType") || e.contains("unknown format"),
        "{e}"
    );

    // Server-side apply creates and updates.
    let applied = k.file("applied.yaml", &ROUTE.replace("name: web", "name: applied"));
    assert_eq!(
        k.ok(&["apply", "--server-side", "-f", &applied]),
        "httproute.gateway.networking.k8s.io/applied serverside-applied"
    );
    std::fs::write(
        &applied,
        ROUTE
            .replace("name: web", "name: applied")
            .replace("a.example.com", "d.example.com"),
    )
    .unwrap();
    k.ok(&["apply", "--server-side", "-f", &applied]);
    assert_eq!(
        k.ok(&[
            "get",
            "httproute",
            "applied",
            "-o",
            "jsonpath={.metadata.generation} {.spec.hostnames[0]}"
        ]),
        "2 d.example.com"
    );

    // Invalid names are refused with the API server's validation message.
    let bad = k.file(
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n",
    );
    let e = k.fails(&["create", "-f", &bad]);
    assert!(
        e.contains("The Namespace \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label"),
        "{e}"
    );

    assert_eq!(
        k.ok(&["delete", "httproute", "web"]),
        "httproute.gateway.networking.k8s.io \"web\" deleted"
    );
    assert_eq!(
        k.fails(&["get", "httproute", "web"]),
        "Error from server (NotFound): httproutes.gateway.networking.k8s.io \"web\" not found"
    );
}
