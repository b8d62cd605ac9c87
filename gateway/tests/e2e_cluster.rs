//! The real-cluster tier: the gateway binary, run on this machine in Kubernetes mode,
//! against a real cluster (kind, say) whose kubeconfig is in `CEDILLE_E2E_KUBECONFIG`, with
//! the Gateway API CRDs installed (see the README). Never run by the test command: it needs
//! a cluster, and `cargo xtask e2e` runs it (and fails loudly without the variable).
//!
//! It creates a namespace `cedille-e2e-<pid>` and a GatewayClass of the same name, a Gateway
//! listening on 127.0.0.1 (the gateway runs here, not in the cluster) and an HTTPRoute with
//! a redirect (no backend needed); checks traffic, the statuses written back and the Lease;
//! then deletes what it created.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery::ApiResource,
};
use serde_json::{Value, json};

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

async fn create(client: &Client, ar: &ApiResource, ns: Option<&str>, v: Value) {
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let obj: DynamicObject = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", ar.kind));
}

async fn get(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

fn accepted(v: &Value, path: &str) -> bool {
    v.pointer(path)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Accepted" && c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real cluster: `CEDILLE_E2E_KUBECONFIG=... cargo xtask e2e`"]
async fn e2e_gateway_in_a_real_cluster() {
    let path = std::env::var("CEDILLE_E2E_KUBECONFIG")
        .expect("CEDILLE_E2E_KUBECONFIG must name the kubeconfig of a test cluster");
    let kc = Kubeconfig::read_from(&path).expect("reading the kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let name = format!("cedille-e2e-{}", std::process::id());
    let gw_group = "gateway.networking.k8s.io";
    let ns_ar = resource("", "v1", "Namespace", "namespaces");
    let class_ar = resource(gw_group, "v1", "GatewayClass", "gatewayclasses");
    let gw_ar = resource(gw_group, "v1", "Gateway", "gateways");
    let route_ar = resource(gw_group, "v1", "HTTPRoute", "httproutes");
    let lease_ar = resource("coordination.k8s.io", "v1", "Lease", "leases");

    create(
        &client,
        &ns_ar,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
    create(
        &client,
        &class_ar,
        None,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name}, "spec": {"controllerName": "cedille.io/gateway-controller"}}),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    create(
        &client,
        &gw_ar,
        Some(&name),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw"}, "spec": {"gatewayClassName": name,
            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
            "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}}),
    )
    .await;
    create(
        &client,
        &route_ar,
        Some(&name),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "redirect"}, "spec": {"parentRefs": [{"name": "gw"}],
            "rules": [{"filters": [{"type": "RequestRedirect",
                "requestRedirect": {"hostname": "example.org", "statusCode": 302}}]}]}}),
    )
    .await;

    let admin: SocketAddr = (
        [127, 0, 0, 1],
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    )
        .into();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_cedille-gateway"))
        .args([
            "--kubernetes",
            "--namespace",
            &name,
            "--pod-name",
            "e2e",
            "--lease-name",
            &name,
        ])
        .args(["--admin-addr", &admin.to_string()])
        .env("KUBECONFIG", &path)
        .env_remove("CEDILLE_CONFIG_DIR")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut result = Err("nothing checked".to_owned());
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let route = get(&client, &route_ar, &name, "redirect").await;
        let gw = get(&client, &gw_ar, &name, "gw").await;
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        let req = http::Request::get("/x")
            .header("host", "e2e.example.com")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let Ok(resp) = send.send_request(req).await else {
            continue;
        };
        let redirected = resp.status() == 302;
        let routed = accepted(&route, "/status/parents/0/conditions");
        let gateway_ok = accepted(&gw, "/status/conditions");
        result = if redirected && routed && gateway_ok {
            Ok(())
        } else {
            Err(format!(
                "redirect {redirected}, route status {routed}, gateway status {gateway_ok}"
            ))
        };
        if result.is_ok() {
            break;
        }
    }
    let lease = get(&client, &lease_ar, &name, &name).await;
    let _ = gateway.kill().await;
    // Clean up whatever happened.
    let classes: Api<DynamicObject> = Api::all_with(client.clone(), &class_ar);
    let _ = classes.delete(&name, &DeleteParams::default()).await;
    let namespaces: Api<DynamicObject> = Api::all_with(client.clone(), &ns_ar);
    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
    result.expect("traffic and status through a real API server");
    assert_eq!(lease["spec"]["holderIdentity"], "e2e");
}
