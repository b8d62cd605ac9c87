//! The CORS filter: answers preflight requests itself and decorates actual responses.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::{Body, empty};
use crate::ir::Cors;

/// Whether `origin` is allowed: `*`, an exact origin, or `scheme://*.domain` (any number
/// of labels before the domain).
pub fn allowed(c: &Cors, origin: &str) -> bool {
    c.allow_origins.iter().any(|a| {
        if a == "*" || a == origin {
            return true;
        }
        match a.split_once("://*") {
            Some((scheme, suffix)) => origin
                .strip_prefix(scheme)
                .and_then(|o| o.strip_prefix("://"))
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix)),
            None => false,
        }
    })
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

pub fn preflight(c: &Cors, origin: &str, req: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if !allowed(c, origin) {
        return resp;
    }
    set(h, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let requested_method = req
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if c.allow_methods.iter().any(|m| m == "*") {
        set(h, header::ACCESS_CONTROL_ALLOW_METHODS, requested_method);
    } else if !c.allow_methods.is_empty() {
        set(
            h,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            &c.allow_methods.join(", "),
        );
    }
    let requested_headers = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok());
    if c.allow_headers.iter().any(|m| m == "*") {
        if let Some(r) = requested_headers {
            set(h, header::ACCESS_CONTROL_ALLOW_HEADERS, r);
        }
    } else if !c.allow_headers.is_empty() {
        set(
            h,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &c.allow_headers.join(", "),
        );
    }
    if !c.expose_headers.is_empty() {
        set(
            h,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &c.expose_headers.join(", "),
        );
    }
    set(
        h,
        header::ACCESS_CONTROL_MAX_AGE,
        &c.max_age.unwrap_or(5).to_string(),
    );
    if c.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// Adds CORS headers to the response of an actual (non-preflight) cross-origin request.
pub fn decorate(c: &Cors, origin: &str, h: &mut HeaderMap) {
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if !allowed(c, origin) {
        return;
    }
    set(h, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if c.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !c.expose_headers.is_empty() {
        set(
            h,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &c.expose_headers.join(", "),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: true,
            allow_methods: vec!["GET".into()],
            allow_headers: vec![],
            expose_headers: vec![],
            max_age: None,
        }
    }

    #[test]
    fn origin_patterns() {
        let c = cors(&["https://www.foo.com", "https://*.bar.com"]);
        assert!(allowed(&c, "https://www.foo.com"));
        assert!(allowed(&c, "https://www.bar.com"));
        assert!(allowed(&c, "https://a.b.bar.com"));
        assert!(!allowed(&c, "https://bar.com"));
        assert!(!allowed(&c, "http://www.bar.com"));
        assert!(!allowed(&c, "https://foobar.com"));
        assert!(allowed(&cors(&["*"]), "https://anything:123"));
    }
}
