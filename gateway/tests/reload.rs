//! Live reloads: a new route goes from 404 straight to 200, in-flight requests and open
//! connections survive, and bad input is rejected on its own.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{Conn, Env, eventually, get, json, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_route_goes_from_404_to_200_without_disturbing_inflight_requests() {
    let env = Env::start(&[("a.yaml", &route("a", "/a"))], |_| {}).await;
    let mut kept = Conn::open(env.addr()).await.unwrap();
    assert_eq!(
        kept.request("GET", "/a", &[], Bytes::new())
            .await
            .unwrap()
            .0,
        200
    );

    // A slow request is in flight while the configuration changes.
    let addr = env.addr();
    let slow = tokio::spawn(async move { get(addr, "/a/slow?delay=800ms").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(env.addr(), "/b").await.unwrap().0, 404);
    env.write("b.yaml", &route("b", "/b"));

    // Every answer for /b is a 404 until the route is live, then 200: never an error.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.last() != Some(&200) {
        assert!(
            std::time::Instant::now() < deadline,
            "/b never became routable: {seen:?}"
        );
        seen.push(get(env.addr(), "/b").await.unwrap().0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.iter().all(|s| *s == 404 || *s == 200), "{seen:?}");

    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!(
        status, 200,
        "the in-flight request finished across the reload"
    );
    assert_eq!(json(&body)["path"], "/a/slow?delay=800ms");
    // The connection opened before the reload serves the new route too.
    assert_eq!(
        kept.request("GET", "/b", &[], Bytes::new())
            .await
            .unwrap()
            .0,
        200
    );

    // Removing the file removes the route.
    std::fs::remove_file(env.path("b.yaml")).unwrap();
    eventually(Duration::from_secs(5), || async {
        get(env.addr(), "/b").await.unwrap().0 == 404
    })
    .await
    .expect("/b gone");
    assert_eq!(get(env.addr(), "/a").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_update_is_reported_and_the_last_good_version_keeps_serving() {
    let env = Env::start(&[("a.yaml", &route("a", "/a"))], |_| {}).await;
    assert_eq!(get(env.addr(), "/a").await.unwrap().0, 200);

    // Break route a (a path must be absolute) and add route c in another file.
    env.write("a.yaml", &route("a", "a-without-slash"));
    env.write("c.yaml", &route("c", "/c"));
    eventually(Duration::from_secs(5), || async {
        get(env.addr(), "/c").await.unwrap().0 == 200
    })
    .await
    .expect("c serves");
    assert_eq!(
        get(env.addr(), "/a").await.unwrap().0,
        200,
        "a keeps its last good version"
    );

    let status = env.status().await;
    let errors = status["invalidManifests"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(e["file"].as_str().unwrap().ends_with("a.yaml"), "{e}");
    assert_eq!(e["object"], "HTTPRoute default/a");
    assert_eq!(e["field"], "spec.rules[0].matches[0].path.value");
    assert!(
        env.metrics()
            .await
            .contains("cedille_gateway_invalid_manifests 1")
    );

    // A file that is not YAML at all keeps what it defined.
    env.write("c.yaml", "kind: [this is not yaml");
    eventually(Duration::from_secs(5), || async {
        env.status().await["invalidManifests"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await
    .expect("the broken file is reported");
    assert_eq!(get(env.addr(), "/c").await.unwrap().0, 200);

    // Fixing both clears the reports.
    env.write("a.yaml", &route("a", "/a"));
    env.write("c.yaml", &route("c", "/c"));
    eventually(Duration::from_secs(5), || async {
        env.status().await["invalidManifests"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await
    .expect("errors cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_status_follows_its_references() {
    let missing = route("m", "/m").replace("name: echo, port: 80", "name: nowhere, port: 80");
    let env = Env::start(&[("m.yaml", &missing)], |_| {}).await;
    let status = env.status().await;
    let parent = &status["httpRoutes"]["default/m"]["status"]["parents"][0];
    let conds = parent["conditions"].as_array().unwrap();
    let cond = |t: &str| conds.iter().find(|c| c["type"] == t).cloned().unwrap();
    assert_eq!(cond("Accepted")["status"], "True");
    assert_eq!(cond("ResolvedRefs")["status"], "False");
    assert_eq!(cond("ResolvedRefs")["reason"], "BackendNotFound");
    assert_eq!(parent["parentRef"]["kind"], "Gateway");
    assert_eq!(
        get(env.addr(), "/m").await.unwrap().0,
        500,
        "the spec's answer for an invalid backend"
    );

    // The Service appears: the same route resolves and serves, with a new status.
    env.write("svc.yaml", &support::service("nowhere", env.echo_addr));
    eventually(Duration::from_secs(5), || async {
        get(env.addr(), "/m").await.unwrap().0 == 200
    })
    .await
    .expect("route resolves");
}
