//! One request: describe it as JSON, honouring the suite's steering (set headers, delay,
//! status, retry simulation).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::duration::parse_go_duration;
use crate::{ConnInfo, Echo};

/// Request bodies are read and discarded; larger ones are answered with 413.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest `delay` (or `delayRetry`) honoured; longer ones are shortened to this.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);
const SET_HEADER: &str = "x-echo-set-header";

/// The JSON body of every echo response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EchoedRequest {
    /// The request target as received, query included (`/a/b?c=d`).
    pub path: String,
    /// The `Host` header, or the HTTP/2 `:authority`.
    pub host: String,
    pub method: String,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub proto: String,
    /// Request headers by canonical name (`X-Forwarded-For`), values in arrival order.
    /// `Host` is reported in `host`, not here.
    pub headers: BTreeMap<String, Vec<String>>,
    pub namespace: String,
    pub pod: String,
    pub service: String,
    /// Local port of the listener that accepted the connection.
    pub http_port: String,
    /// Present when the request arrived over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsDetails>,
}

/// The `tls` object of an echo response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDetails {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The SNI the client sent, empty without one.
    pub server_name: String,
    /// The ALPN protocol agreed (`h2`, `http/1.1`), empty without one.
    pub negotiated_protocol: String,
    /// IANA name, such as `TLS_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    /// The client's certificates, PEM; empty unless the server asked for them.
    #[serde(default)]
    pub peer_certificates: Vec<String>,
}

/// Returned to hyper to fail an attempt by dropping the connection (HTTP/1.x) or
/// resetting the stream (HTTP/2).
#[derive(Debug, thiserror::Error)]
#[error("retry simulation: attempt failed by aborting the connection")]
pub(crate) struct Aborted;

type EchoResponse = Response<Full<Bytes>>;

pub(crate) async fn handle(
    echo: Arc<Echo>,
    conn: Arc<ConnInfo>,
    mut req: hyper::Request<Incoming>,
) -> Result<EchoResponse, Aborted> {
    if crate::websocket::is_websocket(req.headers()) {
        echo.record(req.uri().path_and_query().map_or("/", |p| p.as_str()));
        return Ok(crate::websocket::accept(&mut req));
    }
    let (parts, body) = req.into_parts();
    echo.record(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let echoed = describe(&echo, &conn, &parts);
    let mut response = respond(&echo, &conn, &parts, body, echoed).await;
    if parts.method == hyper::Method::HEAD
        && let Ok(resp) = &mut response
    {
        // HTTP/2 would send a HEAD response's body as DATA; HTTP/1.1 drops it itself.
        *resp.body_mut() = Full::new(Bytes::new());
    }
    match &response {
        Ok(resp) => {
            debug!(method = %parts.method, uri = %parts.uri, status = resp.status().as_u16(), "echoed")
        }
        Err(_) => debug!(method = %parts.method, uri = %parts.uri, "aborted (retry simulation)"),
    }
    response
}

async fn respond(
    echo: &Echo,
    conn: &ConnInfo,
    parts: &Parts,
    body: Incoming,
    echoed: EchoedRequest,
) -> Result<EchoResponse, Aborted> {
    if let Err(error) = Limited::new(body, MAX_BODY_BYTES).collect().await {
        return Ok(if error.downcast_ref::<LengthLimitError>().is_some() {
            message(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            message(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body: {error}"),
            )
        });
    }
    let query = Query::parse(parts.uri.query());
    let path = parts.uri.path();
    let mut status = StatusCode::OK;

    if path == "/retry" || path.starts_with("/retry/") {
        let Some(Ok(succeed_after)) = query.get("succeedAfter").map(|n| n.parse::<u64>()) else {
            return Ok(message(StatusCode::BAD_REQUEST, "succeedAfter is required"));
        };
        // The suite sends a fresh uuid per probe; without one the whole target is the key.
        let key = query.get("uuid").unwrap_or(&echoed.path);
        if echo.retries.attempt_fails(key, succeed_after) {
            if let Err(resp) = sleep_for(query.get("delayRetry")).await {
                return Ok(resp);
            }
            let Some(code) = query.get("responseCode") else {
                if parts.version < Version::HTTP_2 {
                    conn.abort.raise();
                }
                return Err(Aborted);
            };
            return Ok(match parse_status(code) {
                Some(code) => {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = code;
                    resp
                }
                None => message(StatusCode::BAD_REQUEST, "invalid responseCode"),
            });
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = parse_status(code).unwrap_or(StatusCode::BAD_REQUEST);
    }

    if let Err(resp) = sleep_for(query.get("delay")).await {
        return Ok(resp);
    }
    let mut headers = requested_headers(&parts.headers);
    let body = serde_json::to_vec_pretty(&echoed).expect("the echo JSON always serializes");
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// What the echo JSON says about this request.
fn describe(echo: &Echo, conn: &ConnInfo, parts: &Parts) -> EchoedRequest {
    let uri = &parts.uri;
    // HTTP/2 requests carry scheme and authority as pseudo-headers; the target is :path.
    // HTTP/1 targets are reported as sent (origin form, or absolute form to a proxy).
    let path = if parts.version >= Version::HTTP_2 {
        uri.path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default()
    } else {
        uri.to_string()
    };
    let host = match uri.authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => parts
            .headers
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default(),
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in parts.headers.iter().filter(|(name, _)| *name != HOST) {
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    EchoedRequest {
        path,
        host,
        method: parts.method.as_str().to_owned(),
        proto: proto_name(parts.version).to_owned(),
        headers,
        namespace: echo.config.namespace.clone(),
        pod: echo.config.pod.clone(),
        service: echo.config.service.clone(),
        http_port: conn.port.to_string(),
        tls: conn.tls.clone(),
    }
}

fn proto_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Go's canonical MIME header key: first letter and each letter after `-` upper case,
/// the rest lower case (`x-forwarded-for` -> `X-Forwarded-For`).
pub(crate) fn canonical_header_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let c = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            c
        })
        .collect()
}

/// The headers asked for with `X-Echo-Set-Header: k:v,k2:v2` (any number of such
/// headers). A name given twice gets its values joined with `,`; malformed pairs are
/// skipped.
pub(crate) fn requested_headers(request: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for list in request.get_all(SET_HEADER) {
        for pair in String::from_utf8_lossy(list.as_bytes()).split(',') {
            let (name, value) = pair.split_once(':').unwrap_or((pair, ""));
            let (name, value) = (name.trim(), value.trim());
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            let joined = match out.get(&name) {
                Some(previous) => {
                    let mut joined = previous.as_bytes().to_vec();
                    joined.push(b',');
                    joined.extend_from_slice(value.as_bytes());
                    HeaderValue::from_bytes(&joined)
                }
                None => HeaderValue::from_str(value),
            };
            if let Ok(value) = joined {
                out.insert(name, value);
            }
        }
    }
    out
}

/// A status from 200 to 599. 1xx cannot be a final status (hyper would turn it into 500).
fn parse_status(code: &str) -> Option<StatusCode> {
    let code: u16 = code.parse().ok()?;
    (200..=599)
        .contains(&code)
        .then(|| StatusCode::from_u16(code).ok())
        .flatten()
}

/// Sleeps for a `delay`-style parameter, capped at [`MAX_DELAY`]; a malformed one is
/// answered with 400.
async fn sleep_for(delay: Option<&str>) -> Result<(), EchoResponse> {
    let Some(delay) = delay else { return Ok(()) };
    match parse_go_duration(delay) {
        Ok(delay) => {
            tokio::time::sleep(delay.min(MAX_DELAY)).await;
            Ok(())
        }
        Err(error) => Err(message(StatusCode::BAD_REQUEST, &error.to_string())),
    }
}

/// `{"message": ...}` with `status`, for requests the echo cannot honour.
fn message(status: StatusCode, text: &str) -> EchoResponse {
    let body = serde_json::json!({ "message": text }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A parsed query string; the first value of a name wins, as with Go's `Query().Get`.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Self(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Form decoding: `+` is a space, `%XX` a byte; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalizes_like_go() {
        for (input, want) in [
            ("x-forwarded-for", "X-Forwarded-For"),
            ("user-agent", "User-Agent"),
            ("accept", "Accept"),
            ("x-echo-set-header", "X-Echo-Set-Header"),
            ("x--a", "X--A"),
            ("-x", "-X"),
            ("www-authenticate", "Www-Authenticate"),
        ] {
            assert_eq!(canonical_header_name(input), want);
        }
    }

    #[test]
    fn parses_set_header_lists() {
        let mut request = HeaderMap::new();
        request.append(SET_HEADER, HeaderValue::from_static("a:1, b : two ,c:x:y"));
        request.append(SET_HEADER, HeaderValue::from_static("a:3,bad name:z,d"));
        let out = requested_headers(&request);
        assert_eq!(out["a"], "1,3");
        assert_eq!(out["b"], "two");
        assert_eq!(out["c"], "x:y");
        assert_eq!(out["d"], "");
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn parses_queries() {
        let q = Query::parse(Some("delay=1s&uuid=a%2Db+c&delay=2s&flag&bad=%zz&end=%4"));
        assert_eq!(q.get("delay"), Some("1s"));
        assert_eq!(q.get("uuid"), Some("a-b c"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("end"), Some("%4"));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn status_codes() {
        assert_eq!(parse_status("418"), Some(StatusCode::IM_A_TEAPOT));
        for bad in ["100", "199", "600", "abc", "", "4180", "-1"] {
            assert_eq!(parse_status(bad), None, "{bad}");
        }
    }
}
