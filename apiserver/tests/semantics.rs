//! The API server's semantics over HTTP, for what kubectl does not show: watch replay from
//! a resourceVersion, bookmarks, in-stream 410 after compaction, pagination, preconditions
//! in patches, and the update rules of custom resources.

use std::time::Duration;

use bytes::Bytes;
use cedille_apiserver::{ApiServer, Options};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Api {
    base: String,
    http: HttpClient,
}

impl Api {
    async fn new(server: &ApiServer) -> Self {
        Self {
            base: server.url(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(&self, method: &str, path: &str, ctype: &str, body: Value) -> (u16, Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(if body.is_null() {
                String::new()
            } else {
                body.to_string()
            })))
            .unwrap();
        let resp = self.http.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, "application/json", Value::Null)
            .await
    }

    /// Opens a watch and returns its events as they come.
    async fn watch(&self, path: &str) -> tokio::sync::mpsc::Receiver<Value> {
        let req = http::Request::get(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.http.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (tx, rx) = tokio::sync::mpsc::channel(100);
        tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    buf.extend_from_slice(&d);
                    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        if let Ok(v) = serde_json::from_slice(&line)
                            && tx.send(v).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        rx
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a watch event within 5 s")
        .expect("the stream is open")
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": labels}, "data": {"k": "v"}})
}

const CM: &str = "/api/v1/namespaces/default/configmaps";

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_and_follows_selectors() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap(), Options::default())
        .await
        .unwrap();
    let api = Api::new(&server).await;
    let (code, a) = api
        .call("POST", CM, "application/json", cm("a", json!({"x": "1"})))
        .await;
    assert_eq!(code, 201);
    let start = rv(&a);
    api.call("POST", CM, "application/json", cm("b", json!({})))
        .await;
    // From `start`: the events after it, replayed.
    let mut w = api
        .watch(&format!(
            "{CM}?watch=true&resourceVersion={start}&labelSelector=x%3D1"
        ))
        .await;
    // b does not match; moving b into the selector is ADDED, out of it DELETED.
    api.call(
        "PATCH",
        &format!("{CM}/b"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"x": "1"}}}),
    )
    .await;
    let e = next(&mut w).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );
    api.call(
        "PATCH",
        &format!("{CM}/b"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"x": "2"}}}),
    )
    .await;
    let e = next(&mut w).await;
    assert_eq!(e["type"], "DELETED");
    assert_eq!(
        e["object"]["metadata"]["labels"]["x"], "1",
        "the last content that matched"
    );
    api.call(
        "DELETE",
        &format!("{CM}/a"),
        "application/json",
        Value::Null,
    )
    .await;
    let e = next(&mut w).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("a"))
    );

    // Without a resourceVersion the watch starts with the current objects as ADDED.
    let mut w = api
        .watch(&format!("{CM}?watch=1&allowWatchBookmarks=true"))
        .await;
    let e = next(&mut w).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );
    // Idle: a bookmark with the current resourceVersion.
    let e = next(&mut w).await;
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(rv(&e["object"]), server.resource_version());
    assert_eq!(e["object"]["kind"], "ConfigMap");

    // After compaction, a watch from an old version gets 410 Expired in the stream.
    server.compact();
    let mut w = api
        .watch(&format!("{CM}?watch=true&resourceVersion={start}"))
        .await;
    let e = next(&mut w).await;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        e["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("too old resource version: {start} ("))
    );
}

#[tokio::test]
async fn lists_paginate_with_continue_tokens() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap(), Options::default())
        .await
        .unwrap();
    let api = Api::new(&server).await;
    for i in 0..5 {
        api.call(
            "POST",
            CM,
            "application/json",
            cm(&format!("c{i}"), json!({})),
        )
        .await;
    }
    let (_, page) = api.get(&format!("{CM}?limit=2")).await;
    assert_eq!(page["kind"], "ConfigMapList");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, rest) = api.get(&format!("{CM}?limit=10&continue={token}")).await;
    let names: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c2", "c3", "c4"]);
    assert!(rest["metadata"].get("continue").is_none());
    // Once the version the token was cut at is compacted away, it is Expired.
    api.call("POST", CM, "application/json", cm("later", json!({})))
        .await;
    server.compact();
    let (code, e) = api.get(&format!("{CM}?limit=2&continue={token}")).await;
    assert_eq!((code, e["reason"].as_str()), (410, Some("Expired")));
}

#[tokio::test]
async fn custom_resources_follow_the_update_rules() {
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                {"name": "v1beta1", "served": true, "storage": false}]}});
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap(), Options::default())
        .await
        .unwrap();
    let api = Api::new(&server).await;
    // A CRD created through the API is served at once, at every served version.
    let (code, _) = api
        .call(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            crd,
        )
        .await;
    assert_eq!(code, 201);
    let (_, group) = api.get("/apis/example.com").await;
    assert_eq!(group["preferredVersion"]["version"], "v1");
    let base = "/apis/example.com/v1/namespaces/default/widgets";
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"ready": true}});
    let (code, created) = api.call("POST", base, "application/json", w.clone()).await;
    assert_eq!(code, 201);
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        created.get("status").is_none(),
        "status is not set on create"
    );
    let (_, beta) = api
        .get("/apis/example.com/v1beta1/namespaces/default/widgets/w")
        .await;
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");

    // A PUT of a custom resource needs a resourceVersion.
    let (code, e) = api
        .call("PUT", &format!("{base}/w"), "application/json", w.clone())
        .await;
    assert_eq!(code, 422);
    assert_eq!(
        e["message"],
        "Widget.example.com \"w\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );

    // /status writes change only status and never generation; a no-op write keeps the
    // resourceVersion.
    let mut s = created.clone();
    s["status"] = json!({"ready": true});
    s["spec"] = json!({"size": 99});
    let (code, after) = api
        .call(
            "PUT",
            &format!("{base}/w/status"),
            "application/json",
            s.clone(),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            after["spec"]["size"].as_i64(),
            after["metadata"]["generation"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(after["status"]["ready"], true);
    s["metadata"]["resourceVersion"] = after["metadata"]["resourceVersion"].clone();
    let (_, again) = api
        .call("PUT", &format!("{base}/w/status"), "application/json", s)
        .await;
    assert_eq!(rv(&again), rv(&after), "a no-op write is not a new version");

    // A merge patch carrying a stale resourceVersion is a Conflict; a current one applies.
    let stale = rv(&created).to_string();
    let (code, e) = api
        .call(
            "PATCH",
            &format!("{base}/w/status"),
            "application/merge-patch+json",
            json!({"metadata": {"resourceVersion": stale}, "status": {"ready": false}}),
        )
        .await;
    assert_eq!((code, e["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(e["details"]["kind"], "widgets");
    let (code, _) = api.call("PATCH", &format!("{base}/w/status"), "application/merge-patch+json",
        json!({"metadata": {"resourceVersion": rv(&after).to_string()}, "status": {"ready": false}})).await;
    assert_eq!(code, 200);

    // Spec changes bump generation; JSON patch works; metadata-only changes do not bump.
    let (_, p) = api
        .call(
            "PATCH",
            &format!("{base}/w"),
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/spec/size", "value": 2}]),
        )
        .await;
    assert_eq!(p["metadata"]["generation"], 2);
    let (_, p) = api
        .call(
            "PATCH",
            &format!("{base}/w"),
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .await;
    assert_eq!(p["metadata"]["generation"], 2);
    assert_eq!(
        p["status"]["ready"], false,
        "a write to the object keeps its status"
    );

    // Server-side apply needs a field manager.
    let (code, e) = api
        .call(
            "PATCH",
            &format!("{base}/x"),
            "application/apply-patch+yaml",
            w.clone(),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("fieldManager is required")
    );

    // Deleting the CRD removes its objects and its discovery.
    api.call(
        "DELETE",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
        "application/json",
        Value::Null,
    )
    .await;
    let (code, _) = api.get(base).await;
    assert_eq!(code, 404);
}
