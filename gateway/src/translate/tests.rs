//! Translation from YAML fixtures: precedence, listener selection and status, and a property
//! check of route selection against a brute-force reference.

use std::{path::Path, sync::Arc};

use super::{Env, translate};
use crate::{ir, manifest, store::Store};

const CLASS_AND_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: cedille}
spec: {controllerName: cedille.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: cedille
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: foo, port: 80, protocol: HTTP, hostname: foo.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: ns}
spec: {ports: [{port: 80}]}
"#;

fn store(docs: &[&str]) -> Store {
    let mut s = Store::new();
    for (i, d) in docs.iter().enumerate() {
        let name = format!("f{i}.yaml");
        let parsed = manifest::parse(Path::new(&name), d);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        s.apply_source(&name, parsed);
    }
    s
}

fn port(snap: &ir::Snapshot) -> Arc<ir::PortConfig> {
    snap.ports.values().next().expect("one socket").clone()
}

/// The route name and rule index that `host` + `path` selects, if any.
fn pick(p: &ir::PortConfig, host: &str, path: &str, method: &str) -> Option<(String, usize)> {
    let l = p.listener_for(Some(host))?;
    let v = l.vhosts.find(host)?;
    let method: http::Method = method.parse().unwrap();
    v.entries
        .iter()
        .find(|e| {
            e.matcher.path.matches(path) && e.matcher.method.as_deref().is_none_or(|m| *m == method)
        })
        .map(|e| (e.rule.route.name().to_string(), e.rule.index))
}

fn route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n{rules}"
    )
}

#[test]
fn precedence_exact_then_longest_prefix_then_method_then_age() {
    let r1 = route(
        "older",
        "  - matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: svc, port: 80}]\n",
    );
    let r2 = route(
        "newer",
        "  - matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: svc, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /a/b}}]\n    backendRefs: [{name: svc, port: 80}]\n  - matches: [{path: {type: Exact, value: /a/b/c}}]\n    backendRefs: [{name: svc, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /a/b}, method: POST}]\n    backendRefs: [{name: svc, port: 80}]\n",
    );
    let s = store(&[CLASS_AND_GATEWAY, &r1, &r2]);
    let out = translate(&s, None, "t", &Env::default());
    let p = port(&out.snapshot);
    let cases = [
        ("/a", "GET", ("older", 0)), // equal prefixes: the older route
        ("/a/x", "GET", ("older", 0)),
        ("/a/b/x", "GET", ("newer", 1)),  // longest prefix
        ("/a/b/c", "GET", ("newer", 2)),  // exact beats every prefix
        ("/a/b/x", "POST", ("newer", 3)), // a method match beats none at the same prefix
    ];
    for (path, method, (route, rule)) in cases {
        assert_eq!(
            pick(&p, "x.org", path, method),
            Some((route.to_owned(), rule)),
            "{method} {path}"
        );
    }
    assert_eq!(pick(&p, "x.org", "/b", "GET"), None);
}

#[test]
fn the_most_specific_listener_isolates_its_routes() {
    let general = route("general", "  - backendRefs: [{name: svc, port: 80}]\n")
        .replace("[{name: gw}]", "[{name: gw, sectionName: http}]");
    let foo = route("foo", "  - matches: [{path: {type: Exact, value: /only}}]\n    backendRefs: [{name: svc, port: 80}]\n").replace("[{name: gw}]", "[{name: gw, sectionName: foo}]");
    let s = store(&[CLASS_AND_GATEWAY, &general, &foo]);
    let out = translate(&s, None, "t", &Env::default());
    let p = port(&out.snapshot);
    assert_eq!(pick(&p, "bar.org", "/any", "GET").unwrap().0, "general");
    assert_eq!(
        pick(&p, "foo.example.com", "/only", "GET").unwrap().0,
        "foo"
    );
    // foo.example.com belongs to listener foo: the general route does not catch it.
    assert_eq!(pick(&p, "foo.example.com", "/any", "GET"), None);
    let gw = &out.status.gateways["ns/gw"].status;
    let attached: Vec<i32> = gw.listeners.iter().map(|l| l.attached_routes).collect();
    assert_eq!(attached, vec![1, 1]);
}

#[test]
fn unknown_gateway_class_is_left_alone_and_bad_refs_are_reported() {
    let other = CLASS_AND_GATEWAY.replace("cedille.io/gateway-controller", "example.com/other");
    let r = route("r", "  - backendRefs: [{name: missing, port: 80}]\n");
    let s = store(&[&other, &r]);
    let out = translate(&s, None, "t", &Env::default());
    assert!(out.snapshot.ports.is_empty());
    assert!(out.status.gateway_classes.is_empty() && out.status.gateways.is_empty());
    assert!(
        out.status.http_routes.is_empty(),
        "no status for parents that are not ours"
    );

    let s = store(&[CLASS_AND_GATEWAY, &r]);
    let out = translate(&s, None, "t", &Env::default());
    let conds = &out
        .status
        .http_routes
        .get("ns", "r")
        .unwrap()
        .status
        .parents[0]
        .conditions;
    let resolved = conds.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
    assert_eq!(
        (resolved.status, resolved.reason),
        ("False", "BackendNotFound")
    );
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let r = route("r", "  - backendRefs: [{name: svc, port: 80}]\n");
    let s = store(&[CLASS_AND_GATEWAY, &r]);
    let first = translate(&s, None, "T1", &Env::default());
    let second = translate(&s, Some(&first.status), "T2", &Env::default());
    let times = |o: &super::Output| {
        o.status.http_routes.get("ns", "r").unwrap().status.parents[0]
            .conditions
            .iter()
            .map(|c| c.last_transition_time.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(times(&second), vec!["T1".to_owned(), "T1".to_owned()]);
}

/// Random routes and requests: the first matching entry of the sorted virtual host must be
/// the match a direct reading of the spec's precedence rules picks.
#[test]
fn selection_agrees_with_a_brute_force_reading_of_the_spec() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(7);
    let segments = ["a", "b", "c"];
    let rand_path = |rng: &mut StdRng| -> String {
        let n = rng.random_range(0..4);
        let mut p = String::new();
        for _ in 0..n {
            p.push('/');
            p.push_str(segments[rng.random_range(0..segments.len())]);
        }
        if p.is_empty() { "/".into() } else { p }
    };
    for round in 0..60 {
        // (route index, rule index, exact?, path, method)
        let mut specs = Vec::new();
        let mut docs = vec![CLASS_AND_GATEWAY.to_owned()];
        for r in 0..rng.random_range(1..4) {
            let mut rules = String::new();
            for rule in 0..rng.random_range(1..4) {
                let exact = rng.random_bool(0.3);
                let path = rand_path(&mut rng);
                let method = if rng.random_bool(0.3) {
                    Some("POST")
                } else {
                    None
                };
                let m = method.map(|m| format!(", method: {m}")).unwrap_or_default();
                let t = if exact { "Exact" } else { "PathPrefix" };
                rules.push_str(&format!("  - matches: [{{path: {{type: {t}, value: \"{path}\"}}{m}}}]\n    backendRefs: [{{name: svc, port: 80}}]\n"));
                specs.push((r, rule, exact, path, method));
            }
            docs.push(route(&format!("r{r}"), &rules));
        }
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let s = store(&refs);
        let out = translate(&s, None, "t", &Env::default());
        let p = port(&out.snapshot);
        for _ in 0..20 {
            let path = rand_path(&mut rng);
            let method = if rng.random_bool(0.5) { "POST" } else { "GET" };
            let matches = |exact: bool, mp: &str| {
                if exact {
                    path == mp
                } else {
                    mp == "/" || path == mp || path.starts_with(&format!("{mp}/"))
                }
            };
            // The spec: exact first, then the longest prefix, then a method match; then the
            // oldest route (file order here), then rule order.
            let best = specs
                .iter()
                .filter(|(_, _, exact, mp, m)| matches(*exact, mp) && m.is_none_or(|m| m == method))
                .max_by_key(|(r, rule, exact, mp, m)| {
                    (
                        *exact,
                        mp.len(),
                        m.is_some(),
                        std::cmp::Reverse(*r),
                        std::cmp::Reverse(*rule),
                    )
                });
            let want = best.map(|(r, rule, ..)| (format!("r{r}"), *rule));
            assert_eq!(
                pick(&p, "x.org", &path, method),
                want,
                "round {round}: {method} {path} with {specs:?}"
            );
        }
    }
}

/// Incremental translation: after every change (a route edited, added or removed, a
/// Service gone and back, a Gateway listener added), what the cache-reusing translation
/// produces is exactly what a translation from scratch produces, and routes that did not
/// change keep their very virtual hosts.
#[test]
fn incremental_translation_equals_translation_from_scratch() {
    use crate::translate::{Cache, translate_with};
    let svc2 = "apiVersion: v1\nkind: Service\nmetadata: {name: svc2, namespace: ns}\nspec: {ports: [{port: 80}]}\n";
    let r = |name: &str, path: &str, svc: &str| {
        route(
            name,
            &format!(
                "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: {svc}, port: 80}}]\n"
            ),
        )
    };
    let on_http = |t: String| t.replace("[{name: gw}]", "[{name: gw, sectionName: http}]");
    let a = on_http(r("a", "/a", "svc"));
    let b = on_http(r("b", "/b", "svc2"));
    let b2 = on_http(r("b", "/b2", "svc2"));
    let c = r("c", "/c", "svc").replace("[{name: gw}]", "[{name: gw, sectionName: foo}]");
    let more_listeners = CLASS_AND_GATEWAY.replace(
        "  - {name: foo, port: 80, protocol: HTTP, hostname: foo.example.com}",
        "  - {name: foo, port: 80, protocol: HTTP, hostname: foo.example.com}\n  - {name: bar, port: 80, protocol: HTTP, hostname: bar.example.com}",
    );
    // One file per slot: class and Gateway, Service svc2, routes a, b, c ("" = no file).
    let steps: Vec<[&str; 5]> = vec![
        [CLASS_AND_GATEWAY, svc2, &a, &b, &c],
        [CLASS_AND_GATEWAY, svc2, &a, &b2, &c], // a route edited
        [CLASS_AND_GATEWAY, svc2, &a, &b2, ""], // a route removed
        [CLASS_AND_GATEWAY, "", &a, &b2, &c],   // a Service removed, a route added
        [CLASS_AND_GATEWAY, svc2, &a, &b2, &c], // the Service back
        [CLASS_AND_GATEWAY, svc2, &a, "", &c],  // a route between others removed
        [CLASS_AND_GATEWAY, svc2, &a, &b2, &c], // and added back, nothing else changed
        [&more_listeners, svc2, &a, &b2, &c],   // the Gateway changed
    ];
    let mut s = Store::new();
    let mut cache = Cache::default();
    let mut prev = None;
    let mut last_vhost = None;
    for (i, docs) in steps.iter().enumerate() {
        for (j, d) in docs.iter().enumerate() {
            let name = format!("f{j}.yaml");
            if d.is_empty() {
                s.remove_source(&name);
            } else {
                s.apply_source(&name, manifest::parse(Path::new(&name), d));
            }
        }
        let inc = translate_with(&mut cache, &s, prev.as_ref(), "t", &Env::default());
        let full = translate(&s, prev.as_ref(), "t", &Env::default());
        assert_eq!(inc.status, full.status, "status after step {i}");
        assert_eq!(
            inc.snapshot.describe(),
            full.snapshot.describe(),
            "snapshot after step {i}"
        );
        // Routes a and b are on the catch-all listener, c alone on foo.example.com: when b
        // changes, c's virtual host is reused.
        let foo = port(&inc.snapshot)
            .listener_for(Some("foo.example.com"))
            .and_then(|l| l.vhosts.find("foo.example.com").cloned());
        if i == 1 {
            let (Some(before), Some(now)) = (&last_vhost, &foo) else {
                panic!("route c is served at steps 0 and 1");
            };
            assert!(
                Arc::ptr_eq(before, now),
                "an unchanged virtual host is reused"
            );
        }
        last_vhost = foo;
        prev = Some(inc.status);
    }
}

#[test]
fn a_service_gets_the_ready_endpoints_of_exactly_its_own_slices() {
    let slice = |name: &str, ns: &str, svc: Option<&str>, addrs: &str| {
        let labels = svc.map_or(String::new(), |s| {
            format!(", labels: {{kubernetes.io/service-name: {s}}}")
        });
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}{labels}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: {addrs}\n"
        )
    };
    let docs = [
        // Two slices of svc, one with an endpoint that is not ready.
        slice("svc-b", "ns", Some("svc"), "[{addresses: [10.0.0.2]}]"),
        slice(
            "svc-a",
            "ns",
            Some("svc"),
            "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.9], conditions: {ready: false}}]",
        ),
        // Slices that are not svc's: a Service whose name starts with svc, another
        // namespace, a slice naming no Service.
        slice("svc2-a", "ns", Some("svc2"), "[{addresses: [10.0.1.1]}]"),
        slice("svc-x", "other", Some("svc"), "[{addresses: [10.0.2.1]}]"),
        slice("loose", "ns", None, "[{addresses: [10.0.3.1]}]"),
    ]
    .join("---\n");
    let r = route(
        "r",
        "  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: svc, port: 80}]\n",
    );
    let s = store(&[CLASS_AND_GATEWAY, &docs, &r]);
    let out = translate(&s, None, "t", &Env::default());
    let p = port(&out.snapshot);
    let v = p
        .listener_for(Some("x.org"))
        .and_then(|l| l.vhosts.find("x.org").cloned())
        .expect("the route is served");
    let ir::BackendKind::Service(t) = &v.entries[0].rule.backends[0].kind else {
        panic!("svc resolves");
    };
    let mut got: Vec<String> = t.endpoints.iter().map(|a| a.to_string()).collect();
    got.sort();
    assert_eq!(got, ["10.0.0.1:8080", "10.0.0.2:8080"]);
}

#[test]
fn routes_share_status_lists_and_names() {
    let rule = |path: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: svc, port: 80}}]\n"
        )
    };
    let a = route("a", &rule("/a"));
    let b = route("b", &rule("/b"));
    let broken = route("c", "  - backendRefs: [{name: nothing, port: 80}]\n");
    let s = store(&[CLASS_AND_GATEWAY, &a, &b, &broken]);
    let out = translate(&s, None, "t", &Env::default());
    let parents = |n: &str| {
        out.status
            .http_routes
            .get("ns", n)
            .unwrap()
            .status
            .parents
            .clone()
    };
    // Accepted with references resolved through the same parent: one list for both.
    assert!(Arc::ptr_eq(&parents("a"), &parents("b")));
    assert!(!Arc::ptr_eq(&parents("a"), &parents("c")));
    let resolved = |n: &str| {
        let p = parents(n);
        let c = p[0]
            .conditions
            .iter()
            .find(|c| c.type_ == "ResolvedRefs")
            .unwrap();
        (c.status, c.reason)
    };
    assert_eq!(resolved("a"), ("True", "ResolvedRefs"));
    assert_eq!(resolved("c"), ("False", "BackendNotFound"));
    // The targets of both routes name their namespace and Service with shared strings.
    let p = port(&out.snapshot);
    let v = p.listener_for(Some("x")).unwrap().vhosts.find("x").unwrap();
    let targets: Vec<_> = v
        .entries
        .iter()
        .filter_map(|e| match &e.rule.backends.first()?.kind {
            ir::BackendKind::Service(t) => Some(t.clone()),
            ir::BackendKind::Invalid => None,
        })
        .collect();
    assert_eq!(targets.len(), 2);
    assert!(!Arc::ptr_eq(&targets[0], &targets[1]));
    assert!(Arc::ptr_eq(&targets[0].namespace, &targets[1].namespace));
    assert!(Arc::ptr_eq(&targets[0].service, &targets[1].service));
    // Route ids and statuses name the route from its record: no copies of the names.
    let id = &v.entries[0].rule.route;
    assert_eq!((id.namespace(), id.parent_name()), ("ns", "gw"));
    let st = out.status.http_routes.get("ns", "a").unwrap();
    assert_eq!((st.namespace(), st.name(), st.generation()), ("ns", "a", 1));
}
