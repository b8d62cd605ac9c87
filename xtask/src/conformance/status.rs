//! Status expectations (expectations.yaml) checked against the gateway's `/status`, with
//! the semantics of the upstream suite's helpers (documented in that file's header).

use serde_json::Value;

use super::world::CONTROLLER;

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn arr(v: &Value, p: &str) -> Vec<Value> {
    v.pointer(p)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A condition `{type, status?, reason?}` is present.
fn has_cond(conds: &[Value], exp: &Value) -> bool {
    conds.iter().any(|c| {
        c["type"] == exp["type"]
            && exp
                .get("status")
                .is_none_or(|st| st.is_null() || c["status"] == *st)
            && exp
                .get("reason")
                .is_none_or(|r| r.is_null() || c["reason"] == *r)
    })
}

fn all_current(conds: &[Value], generation: &Value) -> bool {
    conds.iter().all(|c| c["observedGeneration"] == *generation)
}

fn show(conds: &[Value]) -> String {
    conds
        .iter()
        .map(|c| format!("{}={}/{}", s(c, "/type"), s(c, "/status"), s(c, "/reason")))
        .collect::<Vec<_>>()
        .join(",")
}

fn spec_listener_count(objects: &[Value], ns: &str, name: &str) -> usize {
    objects
        .iter()
        .find(|o| {
            s(o, "/kind") == "Gateway"
                && s(o, "/metadata/namespace") == ns
                && s(o, "/metadata/name") == name
        })
        .map_or(0, |g| arr(g, "/spec/listeners").len())
}

/// Everything `exp` expects that `st` does not show. Empty means the expectations hold.
pub fn check(exp: &Value, st: &Value, objects: &[Value]) -> Vec<String> {
    let mut fails = Vec::new();
    for p in arr(exp, "/backendTLSPolicies") {
        check_policy(&p, st, &mut fails);
    }
    for gc in arr(exp, "/gatewayClasses") {
        let name = gc
            .as_str()
            .or_else(|| gc["name"].as_str())
            .unwrap_or("cedille");
        let name = if name.contains('{') { "cedille" } else { name };
        match st.pointer(&format!("/gatewayClasses/{name}")) {
            None => fails.push(format!("GatewayClass {name}: no status")),
            Some(e) => {
                let conds = arr(e, "/status/conditions");
                if !conds.iter().any(|c| c["type"] == "Accepted")
                    || !all_current(&conds, &e["generation"])
                {
                    fails.push(format!(
                        "GatewayClass {name}: conditions [{}] not current/accepted",
                        show(&conds)
                    ));
                }
            }
        }
    }
    for g in arr(exp, "/gateways") {
        check_gateway(&g, st, objects, &mut fails);
    }
    for ls in arr(exp, "/listenerSets") {
        check_listener_set(&ls, st, &mut fails);
    }
    for r in arr(exp, "/routes") {
        check_route(&r, st, &mut fails);
    }
    fails
}

fn check_policy(x: &Value, st: &Value, fails: &mut Vec<String>) {
    let name = s(x, "/name");
    let e = st["backendTLSPolicies"].get(name);
    let ancestors = e.map(|e| arr(e, "/status/ancestors")).unwrap_or_default();
    let generation = e.map(|e| e["generation"].clone()).unwrap_or(Value::Null);
    if !ancestors
        .iter()
        .all(|a| all_current(&arr(a, "/conditions"), &generation))
    {
        fails.push(format!(
            "BackendTLSPolicy {name}: ancestor conditions not at generation {generation}"
        ));
    }
    let ancestor = s(x, "/ancestor");
    if ancestor.is_empty() {
        return;
    }
    let (ans, aname) = ancestor.split_once('/').unwrap_or(("", ancestor));
    let Some(a) = ancestors.iter().find(|a| {
        s(a, "/ancestorRef/name") == aname && [ans, ""].contains(&s(a, "/ancestorRef/namespace"))
    }) else {
        fails.push(format!(
            "BackendTLSPolicy {name}: no status for ancestor {ancestor}"
        ));
        return;
    };
    let conds = arr(a, "/conditions");
    for c in arr(x, "/conditions") {
        if !has_cond(&conds, &c) {
            fails.push(format!(
                "BackendTLSPolicy {name} ancestor {ancestor}: missing {c} in [{}]",
                show(&conds)
            ));
        }
    }
}

fn check_listener_set(x: &Value, st: &Value, fails: &mut Vec<String>) {
    let name = s(x, "/name");
    let Some(e) = st["listenerSets"].get(name) else {
        fails.push(format!("ListenerSet {name}: no status"));
        return;
    };
    let conds = arr(e, "/status/conditions");
    if !all_current(&conds, &e["generation"]) {
        fails.push(format!(
            "ListenerSet {name}: conditions not at generation {}",
            e["generation"]
        ));
    }
    for c in arr(x, "/conditions") {
        if !has_cond(&conds, &c) {
            fails.push(format!(
                "ListenerSet {name}: missing condition {c} in [{}]",
                show(&conds)
            ));
        }
    }
    let listeners = arr(e, "/status/listeners");
    if arr(x, "/checks").iter().any(|c| c == "listenersReady") {
        for l in &listeners {
            let lc = arr(l, "/conditions");
            for t in ["Accepted", "ResolvedRefs", "Programmed"] {
                if !has_cond(&lc, &serde_json::json!({"type": t, "status": "True"})) {
                    fails.push(format!(
                        "ListenerSet {name} listener {}: [{}]",
                        s(l, "/name"),
                        show(&lc)
                    ));
                    break;
                }
            }
        }
    }
    check_listener_list(&format!("ListenerSet {name}"), x, &listeners, fails);
}

fn check_gateway(g: &Value, st: &Value, objects: &[Value], fails: &mut Vec<String>) {
    let name = s(g, "/name");
    let (ns, short) = name.split_once('/').unwrap_or(("", name));
    let Some(e) = st["gateways"].get(name) else {
        fails.push(format!("Gateway {name}: no status"));
        return;
    };
    let gen_ = &e["generation"];
    let conds = arr(e, "/status/conditions");
    let listeners = arr(e, "/status/listeners");
    if !all_current(&conds, gen_) {
        fails.push(format!(
            "Gateway {name}: conditions not at generation {gen_}"
        ));
    }
    for check in arr(g, "/checks") {
        match check.as_str().unwrap_or("") {
            "ready" => {
                for t in ["Accepted", "Programmed"] {
                    if !has_cond(&conds, &serde_json::json!({"type": t, "status": "True"})) {
                        fails.push(format!("Gateway {name}: not ready: [{}]", show(&conds)));
                        break;
                    }
                }
            }
            "address"
                if arr(e, "/status/addresses")
                    .iter()
                    .all(|a| a["type"].is_null()) =>
            {
                fails.push(format!("Gateway {name}: no status.addresses"));
            }

            "listenersReady" => {
                let want = spec_listener_count(objects, ns, short);
                if listeners.len() != want {
                    fails.push(format!(
                        "Gateway {name}: {} listener statuses, spec has {want}",
                        listeners.len()
                    ));
                }
                for l in &listeners {
                    let lc = arr(l, "/conditions");
                    for t in ["Accepted", "ResolvedRefs", "Programmed"] {
                        if !has_cond(&lc, &serde_json::json!({"type": t, "status": "True"})) {
                            fails.push(format!(
                                "Gateway {name} listener {}: [{}]",
                                s(l, "/name"),
                                show(&lc)
                            ));
                            break;
                        }
                    }
                }
            }
            "zeroRoutes" => {
                let ok = listeners.is_empty()
                    || (listeners.len() == 1 && listeners[0]["attachedRoutes"] == 0);
                if !ok {
                    fails.push(format!("Gateway {name}: expected zero attached routes"));
                }
            }
            _ => {}
        }
    }
    for c in arr(g, "/conditions") {
        if !has_cond(&conds, &c) {
            fails.push(format!(
                "Gateway {name}: missing condition {c} in [{}]",
                show(&conds)
            ));
        }
    }
    if let Some(n) = g.get("attachedListenerSets").and_then(Value::as_i64)
        && e["status"]["attachedListenerSets"].as_i64().unwrap_or(0) != n
    {
        fails.push(format!(
            "Gateway {name}: attachedListenerSets {} expected {n}",
            e["status"]["attachedListenerSets"]
        ));
    }
    check_listener_list(&format!("Gateway {name}"), g, &listeners, fails);
}

/// `listeners` + `listenersMatch` (exact or named) of a Gateway or ListenerSet expectation.
fn check_listener_list(owner: &str, g: &Value, listeners: &[Value], fails: &mut Vec<String>) {
    let name = owner;
    let expected = arr(g, "/listeners");
    if expected.is_empty() {
        return;
    }
    let exact = s(g, "/listenersMatch") != "named";
    if exact && listeners.len() != expected.len() {
        fails.push(format!(
            "Gateway {name}: {} listener statuses, expected {}",
            listeners.len(),
            expected.len()
        ));
    }
    for x in expected {
        let lname = s(&x, "/name");
        let Some(l) = listeners.iter().find(|l| s(l, "/name") == lname) else {
            fails.push(format!("{name}: no status for listener {lname}"));
            continue;
        };
        let lc = arr(l, "/conditions");
        for c in arr(&x, "/conditions") {
            if !has_cond(&lc, &c) {
                fails.push(format!(
                    "{name} listener {lname}: missing {c} in [{}]",
                    show(&lc)
                ));
            }
        }
        if !exact {
            continue;
        }
        if let Some(n) = x.get("attachedRoutes")
            && l["attachedRoutes"] != *n
        {
            fails.push(format!(
                "{name} listener {lname}: attachedRoutes {} expected {n}",
                l["attachedRoutes"]
            ));
        }
        if let Some(kinds) = x.get("supportedKinds").and_then(Value::as_array) {
            let have: Vec<String> = arr(l, "/supportedKinds")
                .iter()
                .filter_map(|k| k["kind"].as_str().map(str::to_owned))
                .collect();
            if kinds.is_empty() && !have.is_empty() {
                fails.push(format!(
                    "{name} listener {lname}: supportedKinds {have:?} expected none"
                ));
            }
            for k in kinds {
                let k = k.as_str().or_else(|| k["kind"].as_str()).unwrap_or("");
                if !have.iter().any(|h| h == k) {
                    fails.push(format!(
                        "{name} listener {lname}: supportedKinds {have:?} lacks {k}"
                    ));
                }
            }
        }
    }
}

fn check_route(r: &Value, st: &Value, fails: &mut Vec<String>) {
    let name = s(r, "/name");
    let e = st["httpRoutes"].get(name);
    let parents = e.map(|e| arr(e, "/status/parents")).unwrap_or_default();
    let gen_ = e.map(|e| e["generation"].clone()).unwrap_or(Value::Null);
    if r["noAcceptedParents"].as_bool() == Some(true) {
        let ok = parents.is_empty()
            || (parents.len() == 1
                && has_cond(
                    &arr(&parents[0], "/conditions"),
                    &serde_json::json!({"type": "Accepted", "status": "False"}),
                ));
        if !ok {
            fails.push(format!("HTTPRoute {name}: expected no accepted parent"));
        }
    }
    if (r["latest"].as_bool() == Some(true) || !arr(r, "/parents").is_empty())
        && !parents
            .iter()
            .all(|p| all_current(&arr(p, "/conditions"), &gen_))
    {
        fails.push(format!(
            "HTTPRoute {name}: parent conditions not at generation {gen_}"
        ));
    }
    // Parents the route does not declare must not appear (the test's intent).
    for a in arr(r, "/absentParents") {
        let (kind, who) = if a.get("listenerSet").is_some() {
            ("ListenerSet", s(&a, "/listenerSet"))
        } else {
            ("Gateway", s(&a, "/gateway"))
        };
        let (ans, aname) = who.split_once('/').unwrap_or(("", who));
        if parents.iter().any(|x| {
            s(x, "/parentRef/kind") == kind
                && s(x, "/parentRef/name") == aname
                && [ans, ""].contains(&s(x, "/parentRef/namespace"))
        }) {
            fails.push(format!(
                "HTTPRoute {name}: status lists {kind} {who}, which it does not reference"
            ));
        }
    }
    for p in arr(r, "/parents") {
        // The expected parent is a Gateway or a ListenerSet; both are matched by name.
        let gw = Some(s(&p, "/gateway"))
            .filter(|g| !g.is_empty())
            .unwrap_or(s(&p, "/listenerSet"));

        let (gns, gname) = gw.split_once('/').unwrap_or(("", gw));
        let found = parents.iter().find(|x| {
            s(x, "/parentRef/name") == gname
                && [gns, ""].contains(&s(x, "/parentRef/namespace"))
                && s(x, "/controllerName") == CONTROLLER
                && !x["parentRef"]["group"].is_null()
                && !x["parentRef"]["kind"].is_null()
        });
        let Some(found) = found else {
            fails.push(format!("HTTPRoute {name}: no status parent for {gw}"));
            continue;
        };
        let pc = arr(found, "/conditions");
        for c in arr(&p, "/conditions") {
            if !has_cond(&pc, &c) {
                fails.push(format!(
                    "HTTPRoute {name} parent {gw}: missing {}={}/{} in [{}]",
                    s(&c, "/type"),
                    s(&c, "/status"),
                    s(&c, "/reason"),
                    show(&pc)
                ));
            }
        }
    }
}
