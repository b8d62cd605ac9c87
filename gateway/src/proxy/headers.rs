//! Header hygiene: hop-by-hop headers never cross the proxy, and the Host a request names.

use http::{HeaderMap, HeaderName, Request, header};

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any the Connection header names. `Upgrade` is
/// removed too unless `keep_upgrade` (a WebSocket handshake being forwarded).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none, or only `Connection`: one pass over the names (standard
    // names compare as small integers) finds which are there, and only those are removed.
    // The bit after HOP_BY_HOP's eight.
    const UPGRADE_BIT: u16 = 1 << 8;
    let mut found = 0u16;
    for k in h.keys() {
        // A cheap look first: every hop-by-hop name has one of these lengths and first
        // letters (connection, keep-alive, proxy-*, te, trailer, transfer-encoding, upgrade).
        let name = k.as_str();
        let maybe = matches!(
            (name.len(), name.as_bytes().first()),
            (10, Some(b'c' | b'k'))
                | (16 | 18 | 19, Some(b'p'))
                | (2 | 7 | 17, Some(b't'))
                | (7, Some(b'u'))
        );
        if !maybe {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            found |= 1 << i;
        } else if k == header::UPGRADE {
            found |= UPGRADE_BIT;
        }
    }
    if found == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection: the fields it names go too (looked up by name, which
    // allocates nothing).
    if found & 1 != 0 {
        // (The values are cloned, which only counts references, so that `h` can change.)
        let mut values = h.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<http::HeaderValue> = values.cloned().collect();
        for v in first.iter().chain(&rest) {
            let Ok(v) = v.to_str() else { continue };
            for t in v.split(',').map(str::trim) {
                let kept = keep_upgrade && t.eq_ignore_ascii_case("upgrade");
                if !t.is_empty() && !kept {
                    // A token that is no valid field name matches nothing.
                    h.remove(t);
                }
            }
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if !keep_upgrade && found & UPGRADE_BIT != 0 {
        h.remove(header::UPGRADE);
    }
}

/// An HTTP/1.1 upgrade request: `Connection: upgrade` and an `Upgrade` protocol.
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The host a request is for, lowercased and without port: the URI authority (HTTP/2
/// `:authority`, absolute-form HTTP/1.1) or the Host header.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })?;
    Some(strip_port(&raw).to_ascii_lowercase())
}

pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_tokens_match_any_case_and_upgrade_may_stay() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Upgrade".parse().unwrap());
        h.append(header::CONNECTION, " X-Other , bad token,".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["upgrade", "x-kept"]);
        let mut only_connection = HeaderMap::new();
        only_connection.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        strip_hop_by_hop(&mut only_connection, false);
        assert!(only_connection.is_empty());
    }

    #[test]
    fn host_without_port() {
        assert_eq!(strip_port("Example.com:8080"), "Example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
        let req = Request::builder()
            .uri("/")
            .header("host", "Foo.COM:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("foo.com"));
    }
}
