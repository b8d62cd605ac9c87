//! Which request goes where: cases from cases.json (or replay.yaml expansions) turned into
//! concrete requests to a Gateway address, how a case is judged (three passes in a row),
//! the checks that follow some cases (mirrors, weights), and mid-test steps.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    CASE_TIMEOUT, Ctx,
    client::{self, Proto, Req, Target},
    data::{Suite, TestInfo},
    world::World,
};

pub struct Planned {
    /// Checks to run once the case passes, from replay.yaml.
    pub after: Value,
    pub label: String,
    pub case: Value,
    pub req: Req,
    pub addr: SocketAddr,
    pub sni: Option<String>,
    pub h2_only: bool,
    /// Name of the client certificate Secret to present over TLS.
    pub client_cert: Option<String>,
    /// One attempt, which must fail below HTTP (a TLS or connection error).
    pub expect_failure: bool,
}

#[derive(Default)]
pub struct Plan {
    pub initial: Vec<Planned>,
    pub after_step: HashMap<usize, Vec<Planned>>,
}

fn replay_data() -> Value {
    let path = crate::util::root().join("xtask/conformance/replay.yaml");
    super::data::yaml_docs(&path)
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or(Value::Null)
}

fn str_of<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

/// The port a Gateway is reached on by default: its first listener's, or 80/443 when the
/// test strips the port.
fn default_port(gw: &Value, objects: &[Value], tls: bool) -> u16 {
    let use_ = str_of(gw, "/addressUse").unwrap_or("");
    if use_.starts_with("host only") {
        return if tls { 443 } else { 80 };
    }
    let name = str_of(gw, "/name").unwrap_or("");
    let (ns, short) = name.split_once('/').unwrap_or(("", name));
    let spec = objects.iter().find(|o| {
        str_of(o, "/kind") == Some("Gateway")
            && str_of(o, "/metadata/namespace") == Some(ns)
            && str_of(o, "/metadata/name") == Some(short)
    });
    let listeners = spec
        .and_then(|g| g.pointer("/spec/listeners"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let wanted = str_of(gw, "/addressListener");
    listeners
        .iter()
        .find(|l| wanted.is_none_or(|w| l["name"] == w))
        .and_then(|l| l["port"].as_u64())
        .unwrap_or(if tls { 443 } else { 80 }) as u16
}

pub fn plan(
    ctx: &mut Ctx,
    suite: &Suite,
    t: &TestInfo,
    exp: &Value,
    objects: &[Value],
) -> Result<Plan, String> {
    let replay = replay_data();
    let r = replay.get(&t.name).cloned().unwrap_or(Value::Null);
    if let Some(why) = str_of(&r, "/unsupported") {
        return Err(format!("not replayed: {why}"));
    }
    let gws: Vec<Value> = exp
        .get("gateways")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|g| {
            g.get("checks")
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|x| x == "address"))
        })
        .cloned()
        .collect();
    let mut raw: Vec<(usize, Value)> = Vec::new();
    if let Some(exp_cases) = r.get("expand").and_then(Value::as_array) {
        raw.extend(exp_cases.iter().cloned().enumerate());
    } else {
        for (i, (resolved, c)) in suite.cases_of(&t.name).into_iter().enumerate() {
            if !resolved
                && r.get("acceptUnresolved").is_none()
                && r.get("expandAfterStep").is_none()
            {
                return Err(format!("case {i} is a template this harness cannot expand"));
            }
            if resolved || r.get("acceptUnresolved").is_some() {
                raw.push((i, c.clone()));
            }
        }
    }
    let after: HashMap<usize, usize> = r
        .get("afterStep")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .flat_map(|(step, cases)| {
                    let step: usize = step.parse().unwrap_or(0);
                    cases
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.as_u64())
                        .map(move |c| (c as usize, step))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut plan = Plan::default();
    if let Some(path) = str_of(&r, "/websocket") {
        let gw = gws.first().cloned().unwrap_or(Value::Null);
        let ip = ctx.world.gateway_ip(str_of(&gw, "/name").unwrap_or(""));
        let addr = SocketAddr::new(IpAddr::V4(ip), default_port(&gw, objects, false));
        plan.initial.push(Planned {
            after: json!({"websocket": path}),
            label: format!("websocket {path}"),
            case: Value::Null,
            req: Req {
                method: "GET".into(),
                path: path.to_owned(),
                host: ip.to_string(),
                headers: vec![],
            },
            addr,
            sni: None,
            h2_only: false,
            client_cert: None,
            expect_failure: false,
        });
        return Ok(plan);
    }
    let build = |world: &mut World, i: usize, c: &Value, label: String| -> Vec<Planned> {
        let mut targets: Vec<(Value, Option<u16>, Option<String>)> = Vec::new();
        let routed = r.get("routes").and_then(Value::as_array).and_then(|rs| {
            rs.iter().find(|x| {
                x["cases"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|n| n.as_u64() == Some(i as u64)))
            })
        });
        // `Request.SNI` in cases.json is what the backend must see; TLS to the gateway is
        // set by replay.yaml (`sni`, or a route's `sni`).
        let sni = str_of(c, "/sni").map(str::to_owned);
        match routed {
            Some(x) => targets.push((
                json!({"name": x["gateway"]}),
                x["port"].as_u64().map(|p| p as u16),
                str_of(x, "/sni").map(str::to_owned).or(sni),
            )),
            None if r.get("bothGateways").is_some() => {
                targets.extend(gws.iter().map(|g| (g.clone(), None, sni.clone())))
            }
            None => targets.push((
                gws.first().cloned().unwrap_or(Value::Null),
                r["port"].as_u64().map(|p| p as u16),
                sni,
            )),
        }
        targets
            .into_iter()
            .map(|(gw, port, sni)| {
                let name = str_of(&gw, "/name").unwrap_or("");
                let ip = world.gateway_ip(name);
                let host_in_case = str_of(c, "/Request/Host").filter(|h| !h.is_empty());
                let port = port
                    .or_else(|| c.get("port").and_then(Value::as_u64).map(|p| p as u16))
                    .or_else(|| {
                        r.get("hostPort")?;
                        Some(host_in_case.and_then(|h| h.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()).unwrap_or(80))
                    })
                    .unwrap_or_else(|| default_port(&gw, objects, sni.is_some()));
                let addr = SocketAddr::new(IpAddr::V4(ip), port);
                let default_host = if port == 80 || port == 443 { ip.to_string() } else { addr.to_string() };
                let mut headers: Vec<(String, String)> = c
                    .pointer("/Request/Headers")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect();
                let set: Vec<String> = c
                    .get("BackendSetResponseHeaders")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("")))
                    .collect();
                headers.push(("X-Echo-Set-Header".into(), set.join(",")));
                let req = Req {
                    method: str_of(c, "/Request/Method").filter(|m| !m.is_empty()).unwrap_or("GET").to_owned(),
                    path: str_of(c, "/Request/Path").unwrap_or("/").to_owned(),
                    host: host_in_case.map_or(default_host, str::to_owned),
                    headers,
                };
                let proto = str_of(c, "/Request/Protocol").unwrap_or("");
                Planned {
                    after: json!({"distribution": r.get("distribution"), "backendHeader": r.get("backendHeader")}),
                    label: format!("{label} {} {}{}", req.method, req.host, req.path),
                    case: c.clone(),
                    req,
                    addr,
                    sni,
                    h2_only: proto.starts_with("H2") || r.get("h2Only").is_some(),
                    client_cert: str_of(c, "/clientCert").map(str::to_owned),
                    expect_failure: c.get("expectFailure").is_some_and(|v| v == true),
                }
            })
            .collect()
    };
    for (i, c) in &raw {
        let mut c = c.clone();
        // A backend must have seen the Gateway's client certificate.
        if c.get("backendPeerCert").is_some() {
            c["BackendPeerCertPem"] = json!(ctx.backend_client_pem);
        }
        let (i, c) = (i, &c);
        let planned = build(&mut ctx.world, *i, c, format!("#{i}"));
        match after.get(i) {
            Some(step) => plan.after_step.entry(*step).or_default().extend(planned),
            None => plan.initial.extend(planned),
        }
    }
    if let Some(m) = r.get("expandAfterStep").and_then(Value::as_object) {
        for (step, cases) in m {
            let step: usize = step.parse().unwrap_or(0);
            for (i, c) in cases.as_array().into_iter().flatten().enumerate() {
                let planned = build(&mut ctx.world, usize::MAX, c, format!("step{step}#{i}"));
                plan.after_step.entry(step).or_default().extend(planned);
            }
        }
    }
    Ok(plan)
}

/// Sends a planned case until it passes three times in a row (a new connection each time),
/// then runs the checks the case implies.
pub async fn run_case(ctx: &Ctx, c: &Planned, proto: Proto) -> Result<(), String> {
    if c.after.get("websocket").is_some() {
        // WebSocket is an HTTP/1.1 upgrade; there is no HTTP/2 or HTTP/3 variant to run.
        return if proto == Proto::H1 {
            websocket(c).await
        } else {
            Ok(())
        };
    }
    let h3 = proto == Proto::H3;
    // HTTP/3 is always TLS: on a listener that was HTTP in the test (and serves HTTPS for
    // this pass), the client names the request's host.
    let converted = h3 && c.sni.is_none();
    let sni = c.sni.clone().or_else(|| {
        converted.then(|| {
            let host = &c.req.host;
            host.rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host.as_str(), |(h, _)| h)
                .to_owned()
        })
    });
    let target = Target {
        addr: c.addr,
        sni,
        h2: !h3 && (proto == Proto::H2 || c.h2_only),
        h3,
        client_cert: c
            .client_cert
            .as_ref()
            .and_then(|n| ctx.client_certs.get(n).cloned()),
    };
    if c.expect_failure {
        // The suite makes one attempt, which must not produce any HTTP response.
        return match client::send(&target, &c.req, &ctx.pinned).await {
            Ok(resp) => Err(format!(
                "got HTTP {}, expected the connection to be refused",
                resp.status
            )),
            Err(_) => Ok(()),
        };
    }
    let scheme = if target.sni.is_some() {
        "https"
    } else {
        "http"
    };
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut streak = 0;
    let mut last = String::new();
    while streak < 3 {
        if Instant::now() > deadline {
            return Err(format!(
                "did not pass 3 times in a row within {CASE_TIMEOUT:?}: {last}"
            ));
        }
        let mut req = c.req.clone();
        if req.path.contains("{uuid}") {
            req.path = req
                .path
                .replace("{uuid}", &format!("{:032x}", rand::random::<u128>()));
        }
        match client::send(&target, &req, &ctx.pinned).await {
            Ok(resp) if target.client_cert.is_some() && !resp.client_cert_requested => {
                last = "the gateway did not ask for a client certificate".into();
            }
            Ok(resp) => match client::compare(&c.case, &req, scheme, &resp, converted) {
                Ok(()) => {
                    streak += 1;
                    continue;
                }
                Err(e) => last = e,
            },
            // Over TLS, a host name no listener serves is refused in the handshake (no
            // certificate is chosen for it), where cleartext HTTP answers 404: on a listener
            // converted for HTTP/3, that refusal is the case's 404.
            Err(e)
                if converted
                    && c.case
                        .pointer("/Response/StatusCode")
                        .and_then(Value::as_u64)
                        == Some(404)
                    && e.contains("no server certificate chain resolved") =>
            {
                streak += 1;
                continue;
            }
            Err(e) => last = e,
        }
        streak = 0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(m) = c.case.get("MirroredTo").and_then(Value::as_array) {
        check_mirrors(ctx, c, &target, m).await?;
    }
    if let Some(d) = c.after.get("distribution").and_then(Value::as_object) {
        check_distribution(ctx, c, &target, d).await?;
    }
    if c.after
        .get("backendHeader")
        .is_some_and(|b| b.as_bool() == Some(true))
    {
        check_backend_header(ctx, c, &target).await?;
    }
    Ok(())
}

/// Three WebSocket connections in a row, each echoing a text and a binary message.
async fn websocket(c: &Planned) -> Result<(), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut streak = 0;
    let mut last = String::new();
    while streak < 3 {
        if Instant::now() > deadline {
            return Err(format!("websocket did not work 3 times in a row: {last}"));
        }
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(c.addr)
                .await
                .map_err(|e| e.to_string())?;
            let url = format!("ws://{}{}", c.req.host, c.req.path);
            let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            for msg in [
                Message::text("Websocket Support!"),
                Message::binary(vec![1u8, 2, 3, 4, 5, 6, 7]),
            ] {
                ws.send(msg.clone())
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                match ws.next().await {
                    Some(Ok(got)) if got == msg => {}
                    other => return Err(format!("sent {msg:?}, got {other:?}")),
                }
            }
            let _ = ws.close(None).await;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => streak += 1,
            Ok(Err(e)) => {
                last = e;
                streak = 0;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                last = "timed out".into();
                streak = 0;
            }
        }
    }
    Ok(())
}

fn echoed(resp: &client::Resp) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
}

/// Batches of 500 requests; each backend's share must be within 5 points of its weight in
/// one of up to 10 batches, as the upstream HTTPRouteWeight test retries its sampling.
async fn check_distribution(
    ctx: &Ctx,
    c: &Planned,
    target: &Target,
    want: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    const BATCHES: usize = 10;
    let mut last = String::new();
    for _ in 0..BATCHES {
        match distribution_batch(ctx, c, target, want).await? {
            None => return Ok(()),
            Some(why) => last = why,
        }
    }
    Err(format!("{last} (in each of {BATCHES} batches)"))
}

/// One batch: `Ok(None)` within tolerance, `Ok(Some(why))` outside it, `Err` for a request
/// that failed outright.
async fn distribution_batch(
    ctx: &Ctx,
    c: &Planned,
    target: &Target,
    want: &serde_json::Map<String, Value>,
) -> Result<Option<String>, String> {
    const N: usize = 500;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..N {
        let mut req = c.req.clone();
        if i % 2 == 0 {
            req.headers
                .push(("X-Jitter".into(), format!("{}", rand::random::<u32>())));
        }
        let resp = client::send(target, &req, &ctx.pinned).await?;
        if resp.status != 200 {
            return Err(format!("distribution request {i}: status {}", resp.status));
        }
        let pod = echoed(&resp)["pod"].as_str().unwrap_or("").to_owned();
        // The backend is the pod name without its last two parts.
        let backend = pod.rsplitn(3, '-').nth(2).unwrap_or("").to_owned();
        *counts.entry(backend).or_default() += 1;
    }
    if let Some(extra) = counts.keys().find(|k| !want.contains_key(*k)) {
        return Err(format!("weights: unexpected backend {extra}: {counts:?}"));
    }
    for (backend, pct) in want {
        let pct = pct.as_f64().unwrap_or(0.0);
        let got = *counts.get(backend).unwrap_or(&0) as f64 * 100.0 / N as f64;
        if (got - pct).abs() > 5.0 {
            return Ok(Some(format!(
                "weights: {backend} got {got:.1}% of requests, expected {pct}% (+/-5): {counts:?}"
            )));
        }
    }
    Ok(None)
}

/// 100 requests; the `Backend` request header set by the chosen backendRef's filter must
/// name the pod that served it, once.
async fn check_backend_header(ctx: &Ctx, c: &Planned, target: &Target) -> Result<(), String> {
    for i in 0..100 {
        let resp = client::send(target, &c.req, &ctx.pinned).await?;
        let e = echoed(&resp);
        let values: Vec<&str> = e["headers"]["Backend"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let pod = e["pod"].as_str().unwrap_or("");
        if values.len() != 1 || !pod.starts_with(values[0]) {
            return Err(format!(
                "request {i}: Backend header {values:?} but served by {pod}"
            ));
        }
    }
    Ok(())
}

/// Every mirror backend received the request; with a percentage, about that share (within
/// three standard deviations) of a batch of 500, in one of up to 5 batches, as the upstream
/// HTTPRouteRequestPercentageMirror test retries its batches.
async fn check_mirrors(
    ctx: &Ctx,
    c: &Planned,
    target: &Target,
    mirrors: &[Value],
) -> Result<(), String> {
    for m in mirrors {
        let percent = m.pointer("/Percent/args/0").and_then(Value::as_f64);
        let batches = if percent.is_some() { 5 } else { 1 };
        let mut last = String::new();
        let mut passed = false;
        for _ in 0..batches {
            match mirror_batch(ctx, c, target, m, percent).await {
                None => {
                    passed = true;
                    break;
                }
                Some(why) => last = why,
            }
        }
        if !passed {
            return Err(if batches > 1 {
                format!("{last} (in each of {batches} batches)")
            } else {
                last
            });
        }
    }
    Ok(())
}

/// One batch of requests, tagged so that only its own mirrors are counted: `None` when the
/// mirror received the expected number, else why not.
async fn mirror_batch(
    ctx: &Ctx,
    c: &Planned,
    target: &Target,
    m: &Value,
    percent: Option<f64>,
) -> Option<String> {
    let backend = str_of(m, "/BackendRef/Name").unwrap_or("");
    let ns = str_of(m, "/BackendRef/Namespace").unwrap_or("gateway-conformance-infra");
    let pods = ctx.world.pods_of(ns, backend);
    let tag = format!("{:032x}", rand::random::<u128>());
    let sep = if c.req.path.contains('?') { '&' } else { '?' };
    let mut req = c.req.clone();
    req.path = format!("{}{sep}conformance-request-id={tag}", c.req.path);
    let n = if percent.is_some() { 500 } else { 1 };
    for _ in 0..n {
        let _ = client::send(target, &req, &ctx.pinned).await;
    }
    let expected = percent.map_or(1.0, |p| n as f64 * p / 100.0);
    let tolerance = percent.map_or(0.0, |p| {
        3.0 * (n as f64 * p / 100.0 * (1.0 - p / 100.0)).sqrt()
    });
    // Mirrors arrive asynchronously: wait until the count is right, or (for a batch) has
    // stopped moving.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut previous = usize::MAX;
    let mut steady_since = Instant::now();
    loop {
        let seen: usize = pods
            .iter()
            .map(|p| p.echo.seen().iter().filter(|s| **s == req.path).count())
            .sum();
        if (seen as f64 - expected).abs() <= tolerance {
            return None;
        }
        if seen != previous {
            previous = seen;
            steady_since = Instant::now();
        }
        let settled = percent.is_some() && steady_since.elapsed() > Duration::from_secs(2);
        if Instant::now() > deadline || settled {
            return Some(format!(
                "mirror {ns}/{backend} received {seen} of {n} requests, expected about {expected:.0}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies a mid-test step to the manifest list.
pub fn apply_step(
    ctx: &Ctx,
    test: &str,
    step: &Value,
    mut docs: Vec<Value>,
) -> anyhow::Result<Vec<Value>> {
    let object = str_of(step, "/object").unwrap_or("");
    let (kind, rest) = object.split_once(' ').unwrap_or(("", object));
    let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
    let is = |d: &Value| {
        str_of(d, "/kind") == Some(kind)
            && str_of(d, "/metadata/name") == Some(name)
            && (ns.is_empty() || str_of(d, "/metadata/namespace").unwrap_or("") == ns)
    };
    match (str_of(step, "/do").unwrap_or(""), step.get("newObject")) {
        ("delete", _) => docs.retain(|d| !is(d)),
        (_, Some(new)) => {
            docs.retain(|d| !is(d));
            docs.push(new.clone());
        }
        _ => match test {
            "HTTPRouteObservedGenerationBump" => {
                for d in docs.iter_mut().filter(|d| is(d)) {
                    d["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("infra-backend-v2");
                }
            }
            "BackendTLSPolicy" => {
                let change = str_of(step, "/change").unwrap_or("");
                let ns = "gateway-conformance-infra";
                let cm_name = "tls-checks-ca-certificate-reconcile-test";
                // The CA the suite copies into the reconcile-test ConfigMap.
                let ca = ctx
                    .world
                    .extra
                    .iter()
                    .find(|d| {
                        str_of(d, "/kind") == Some("ConfigMap")
                            && str_of(d, "/metadata/name") == Some("tls-checks-ca-certificate")
                    })
                    .and_then(|d| str_of(d, "/data/ca.crt"))
                    .unwrap_or("")
                    .to_owned();
                match kind {
                    "BackendTLSPolicy" => {
                        let target = if change.contains("restore") {
                            "tls-checks-ca-certificate"
                        } else {
                            cm_name
                        };
                        for d in docs.iter_mut().filter(|d| is(d)) {
                            d["spec"]["validation"]["caCertificateRefs"] =
                                json!([{"group": "", "kind": "ConfigMap", "name": target}]);
                        }
                    }
                    "ConfigMap" if str_of(step, "/do") == Some("create") => {
                        docs.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm_name, "namespace": ns}, "data": {"ca.crt": ca}}));
                    }
                    "ConfigMap" => {
                        let value = if change.contains(":= \"\"") {
                            String::new()
                        } else {
                            ca
                        };
                        for d in docs.iter_mut().filter(|d| is(d)) {
                            d["data"]["ca.crt"] = json!(value);
                        }
                    }
                    _ => anyhow::bail!("step of BackendTLSPolicy ({object}) is not replayed"),
                }
            }
            "BackendTLSPolicyObservedGenerationBump" => {
                for d in docs.iter_mut().filter(|d| is(d)) {
                    d["spec"]["validation"]["hostname"] = json!("foo.example.com");
                }
            }
            "GatewayClassObservedGenerationBump" => {
                for d in docs.iter_mut().filter(|d| is(d)) {
                    d["spec"]["description"] = json!("new");
                }
            }
            "HTTPRouteServiceTypes" => {
                let ips: Vec<String> = ctx
                    .world
                    .pods_of("gateway-conformance-infra", "infra-backend-v1")
                    .iter()
                    .map(|p| p.ip.to_string())
                    .collect();
                for d in docs.iter_mut() {
                    let n = str_of(d, "/metadata/name").unwrap_or("");
                    if str_of(d, "/kind") == Some("EndpointSlice")
                        && n.ends_with("-ip4")
                        && n.contains("endpointslices")
                    {
                        d["endpoints"] = json!(ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>());
                    }
                }
            }
            "GatewayStaticAddresses" => {
                for d in docs.iter_mut().filter(|d| is(d)) {
                    let addrs = d["spec"]["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let keep: Vec<Value> = addrs.into_iter().skip(1).collect();
                    d["spec"]["addresses"] = json!(keep);
                }
            }
            other => anyhow::bail!(
                "step of {other} ({object}) is not replayed: {}",
                str_of(step, "/change").unwrap_or("")
            ),
        },
    }
    Ok(docs)
}

/// For the HTTP/3 pass: `docs` with every HTTP listener of every Gateway and ListenerSet
/// served as HTTPS instead (same name, port and hostname, so the same routes attach), with
/// the pinned certificate `cert` (PEM certificate and key) from a Secret added in each such
/// owner's namespace. Client certificate rules (`spec.tls.frontend`) stay with the ports
/// that were HTTPS: a converted port gets a `perPort` entry without validation. `None` when
/// no listener is HTTP.
pub fn served_over_tls(docs: &[Value], cert: &(String, String)) -> Option<Vec<Value>> {
    const SECRET: &str = "cedille-h3-certificate";
    let mut out = docs.to_vec();
    let mut namespaces = std::collections::BTreeSet::new();
    for d in &mut out {
        let kind = str_of(d, "/kind").unwrap_or("");
        if !matches!(kind, "Gateway" | "ListenerSet" | "XListenerSet") {
            continue;
        }
        let ns = str_of(d, "/metadata/namespace")
            .unwrap_or("default")
            .to_owned();
        let Some(listeners) = d
            .pointer_mut("/spec/listeners")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let mut ports = std::collections::BTreeSet::new();
        for l in listeners {
            if l.get("protocol").and_then(Value::as_str) == Some("HTTP") {
                l["protocol"] = json!("HTTPS");
                l["tls"] = json!({"mode": "Terminate", "certificateRefs": [{"name": SECRET}]});
                namespaces.insert(ns.clone());
                ports.extend(l.get("port").and_then(Value::as_u64));
            }
        }
        if let Some(frontend) = d
            .pointer_mut("/spec/tls/frontend")
            .and_then(Value::as_object_mut)
        {
            let mut per_port: Vec<Value> = frontend
                .get("perPort")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| !p["port"].as_u64().is_some_and(|n| ports.contains(&n)))
                .cloned()
                .collect();
            per_port.extend(ports.iter().map(|p| json!({"port": p, "tls": {}})));
            frontend.insert("perPort".into(), Value::Array(per_port));
        }
    }
    if namespaces.is_empty() {
        return None;
    }
    out.extend(
        namespaces
            .iter()
            .map(|ns| super::certs::secret(ns, SECRET, &cert.0, &cert.1)),
    );
    Some(out)
}
