//! Validation the Kubernetes API server would do from the CRD schemas and CEL rules. An
//! object failing it is rejected like `kubectl apply` would reject it: its last good version
//! (if any) stays in force. Semantic problems (unknown backends, unsupported features) are
//! not errors here; they show up in the object's status.

use std::collections::HashSet;

use crate::model::{Object, gwapi};

/// `(field path, message)` pairs; empty when valid.
pub type Problems = Vec<(String, String)>;

pub fn object(o: &Object) -> Problems {
    let mut p = Problems::new();
    let name = &o.meta().name;
    if name.len() > 253 || !is_dns_subdomain(name) {
        p.push((
            "metadata.name".into(),
            format!("{name:?} is not a valid DNS subdomain name"),
        ));
    }
    match o {
        Object::Gateway(g) => gateway(&g.spec, &mut p),
        Object::ListenerSet(s) => listeners(&s.spec.listeners, &mut p),

        Object::HttpRoute(r) => http_route(&r.spec, &mut p),
        Object::GatewayClass(c) if c.spec.controller_name.is_empty() => {
            p.push(("spec.controllerName".into(), "must not be empty".into()));
        }
        _ => {}
    }
    p
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Gateway API hostname: a DNS name, optionally with a leading `*.` label, never an IP.
pub fn is_valid_hostname(h: &str) -> bool {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    h.len() <= 253 && is_dns_subdomain(rest) && rest.parse::<std::net::IpAddr>().is_err()
}

fn gateway(spec: &gwapi::GatewaySpec, p: &mut Problems) {
    listeners(&spec.listeners, p);
    gateway_addresses(spec, p);
}

/// Listener rules shared by Gateways and ListenerSets.
fn listeners(list: &[gwapi::Listener], p: &mut Problems) {
    if list.is_empty() || list.len() > 64 {
        p.push(("spec.listeners".into(), "must have 1 to 64 entries".into()));
    }
    let mut names = HashSet::new();
    let mut combos = HashSet::new();
    for (i, l) in list.iter().enumerate() {
        let f = |field: &str| format!("spec.listeners[{i}].{field}");
        if !names.insert(&l.name) {
            p.push((f("name"), format!("duplicate listener name {:?}", l.name)));
        }
        if !(1..=65535).contains(&l.port) {
            p.push((f("port"), format!("{} is not in 1-65535", l.port)));
        }
        if let Some(h) = &l.hostname
            && !is_valid_hostname(h)
        {
            p.push((f("hostname"), format!("{h:?} is not a valid hostname")));
        }
        if matches!(l.protocol.as_str(), "HTTP" | "TCP" | "UDP") && l.tls.is_some() {
            p.push((
                f("tls"),
                format!("must not be set for protocol {}", l.protocol),
            ));
        }
        if matches!(l.protocol.as_str(), "TCP" | "UDP") && l.hostname.is_some() {
            p.push((
                f("hostname"),
                format!("must not be set for protocol {}", l.protocol),
            ));
        }
        if !combos.insert((l.port, l.protocol.clone(), l.hostname.clone())) {
            p.push((
                f("hostname"),
                "port, protocol and hostname must be unique across listeners".into(),
            ));
        }
    }
}

fn gateway_addresses(spec: &gwapi::GatewaySpec, p: &mut Problems) {
    for (i, a) in spec.addresses.iter().enumerate() {
        let t = a.type_.as_deref().unwrap_or("IPAddress");
        if t == "IPAddress" && !a.value.is_empty() && a.value.parse::<std::net::IpAddr>().is_err() {
            p.push((
                format!("spec.addresses[{i}].value"),
                format!("{:?} is not an IP address", a.value),
            ));
        }
    }
}

fn http_route(spec: &gwapi::HttpRouteSpec, p: &mut Problems) {
    if spec.parent_refs.len() > 32 {
        p.push(("spec.parentRefs".into(), "at most 32 entries".into()));
    }
    if spec.hostnames.len() > 16 {
        p.push(("spec.hostnames".into(), "at most 16 entries".into()));
    }
    for (i, h) in spec.hostnames.iter().enumerate() {
        if !is_valid_hostname(h) {
            p.push((
                format!("spec.hostnames[{i}]"),
                format!("{h:?} is not a valid hostname"),
            ));
        }
    }
    if spec.rules.len() > 16 {
        p.push(("spec.rules".into(), "at most 16 entries".into()));
    }
    let mut rule_names = HashSet::new();
    for (r, rule) in spec.rules.iter().enumerate() {
        let f = |field: String| format!("spec.rules[{r}].{field}");
        if let Some(n) = rule.name()
            && !rule_names.insert(n)
        {
            p.push((f("name".into()), format!("duplicate rule name {n:?}")));
        }
        if rule.matches.len() > 64 {
            p.push((f("matches".into()), "at most 64 entries".into()));
        }
        for (m, mat) in rule.matches.iter().enumerate() {
            if let Some(path) = &mat.path {
                let t = path.type_.as_deref().unwrap_or("PathPrefix");
                let v = path.value.as_deref().unwrap_or("/");
                if matches!(t, "Exact" | "PathPrefix") {
                    if !v.starts_with('/') {
                        p.push((
                            f(format!("matches[{m}].path.value")),
                            "must be an absolute path".into(),
                        ));
                    }
                    let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
                    if bad.iter().any(|b| v.contains(b)) || v.ends_with("/..") || v.ends_with("/.")
                    {
                        p.push((
                            f(format!("matches[{m}].path.value")),
                            format!("{v:?} is not a normalized path"),
                        ));
                    }
                }
            }
            for (h, hm) in mat.headers.iter().enumerate() {
                if http::HeaderName::from_bytes(hm.name.as_bytes()).is_err() {
                    p.push((
                        f(format!("matches[{m}].headers[{h}].name")),
                        format!("{:?} is not a header name", hm.name),
                    ));
                }
            }
        }
        filters(&rule.filters, &format!("spec.rules[{r}].filters"), p);
        for (b, br) in rule.backend_refs.iter().enumerate() {
            filters(
                br.filters(),
                &format!("spec.rules[{r}].backendRefs[{b}].filters"),
                p,
            );
            if let Some(w) = br.weight
                && !(0..=1_000_000).contains(&w)
            {
                p.push((
                    f(format!("backendRefs[{b}].weight")),
                    format!("{w} is not in 0-1000000"),
                ));
            }
        }
        if let Some(t) = rule.timeouts() {
            for (field, v) in [
                ("request", &t.request),
                ("backendRequest", &t.backend_request),
            ] {
                if let Some(v) = v
                    && crate::duration::parse(v).is_none()
                {
                    p.push((
                        f(format!("timeouts.{field}")),
                        format!("{v:?} is not a duration like 1h30m, 10s or 500ms"),
                    ));
                }
            }
            if let (Some(req), Some(be)) = (
                t.request.as_deref().and_then(crate::duration::parse),
                t.backend_request
                    .as_deref()
                    .and_then(crate::duration::parse),
            ) && !req.is_zero()
                && !be.is_zero()
                && be > req
            {
                p.push((
                    f("timeouts.backendRequest".into()),
                    "must not be greater than timeouts.request".into(),
                ));
            }
        }
    }
}

fn filters(list: &[gwapi::HttpRouteFilter], at: &str, p: &mut Problems) {
    let mut redirect = false;
    let mut rewrite = false;
    let mut seen = HashSet::new();
    for (i, f) in list.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let present = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("RequestMirror", f.request_mirror.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
        ];
        for (t, set) in present {
            if (t == &*f.type_) != set {
                let what = if set {
                    "must not be set"
                } else {
                    "must be set"
                };
                p.push((
                    field.clone(),
                    format!("{t} configuration {what} for filter type {}", f.type_),
                ));
            }
        }
        redirect |= &*f.type_ == "RequestRedirect";
        rewrite |= &*f.type_ == "URLRewrite";
        if &*f.type_ != "RequestMirror"
            && &*f.type_ != "ExtensionRef"
            && !seen.insert(f.type_.clone())
        {
            p.push((
                field.clone(),
                format!("filter {} may appear only once", f.type_),
            ));
        }
        if let Some(r) = &f.request_redirect
            && let Some(code) = r.status_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            p.push((
                format!("{field}.requestRedirect.statusCode"),
                format!("{code} is not one of 301, 302, 303, 307, 308"),
            ));
        }
        for (name, m) in [
            ("requestHeaderModifier", &f.request_header_modifier),
            ("responseHeaderModifier", &f.response_header_modifier),
        ] {
            if let Some(m) = m {
                for h in m.set.iter().chain(&m.add).map(|h| &h.name).chain(&m.remove) {
                    if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                        p.push((
                            format!("{field}.{name}"),
                            format!("{h:?} is not a header name"),
                        ));
                    }
                }
            }
        }
        if let Some(m) = &f.request_mirror {
            if let Some(pct) = m.percent
                && !(0..=100).contains(&pct)
            {
                p.push((
                    format!("{field}.requestMirror.percent"),
                    format!("{pct} is not in 0-100"),
                ));
            }
            if let Some(fr) = &m.fraction {
                let d = fr.denominator.unwrap_or(100);
                if d <= 0 || fr.numerator < 0 || fr.numerator > d {
                    p.push((
                        format!("{field}.requestMirror.fraction"),
                        "numerator must be in 0..=denominator and denominator > 0".into(),
                    ));
                }
            }
        }
    }
    if redirect && rewrite {
        p.push((
            at.to_owned(),
            "RequestRedirect and URLRewrite cannot be used together".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["example.com", "*.example.com", "a-b.c"] {
            assert!(is_valid_hostname(ok), "{ok}");
        }
        for bad in ["1.2.3.4", "*", "foo.*.com", "Example.com", "-a.com", ""] {
            assert!(!is_valid_hostname(bad), "{bad}");
        }
    }
}
