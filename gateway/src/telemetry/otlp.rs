//! OTLP/HTTP export: spans batched (up to 512, or every second), encoded as an
//! `ExportTraceServiceRequest` protobuf (opentelemetry-proto v1; written by hand, it is a
//! handful of messages) and POSTed to the collector. A failed export is logged and dropped:
//! tracing never holds requests back.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Finished, Value};

const BATCH: usize = 512;
const FLUSH: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go: a plain-HTTP collector URL.
pub struct Target {
    uri: http::Uri,
}

impl Target {
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
        match uri.scheme_str() {
            Some("http") => Ok(Target { uri }),
            Some(other) => Err(format!("scheme {other} is not supported; use http://")),
            None => Err("the endpoint needs a scheme (http://host:4318)".into()),
        }
    }
}

pub async fn export(
    target: Target,
    headers: Vec<(String, String)>,
    resource: Vec<(String, String)>,
    mut rx: mpsc::Receiver<Finished>,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(FLUSH);
        tokio::pin!(deadline);
        let closed = loop {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= BATCH {
                            break false;
                        }
                    }
                    None => break true,
                },
                _ = &mut deadline => break false,
            }
        };
        if !batch.is_empty() {
            let body = encode(&resource, &batch);
            let n = batch.len();
            batch.clear();
            let mut req = http::Request::post(target.uri.clone())
                .header("content-type", "application/x-protobuf");
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.body(Full::new(Bytes::from(body))) {
                Ok(req) => match tokio::time::timeout(TIMEOUT, client.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => {
                        let _ = resp.into_body().collect().await;
                        debug!(spans = n, "exported spans");
                    }
                    Ok(Ok(resp)) => {
                        warn!(status = %resp.status(), spans = n, "the OTLP collector refused spans; dropped")
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, spans = n, "cannot reach the OTLP collector; spans dropped")
                    }
                    Err(_) => warn!(spans = n, "OTLP export timed out; spans dropped"),
                },
                Err(e) => warn!(error = %e, "bad OTLP header; spans dropped"),
            }
        }
        if closed {
            return;
        }
    }
}

// Protobuf wire format: varint (0), 64-bit (1), length-delimited (2), 32-bit (5).

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes_field(out, field, &inner);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `KeyValue { string key = 1; AnyValue value = 2; }`, `AnyValue { string string_value
/// = 1; int64 int_value = 3; }`.
fn key_value(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    message(out, field, |kv| {
        bytes_field(kv, 1, k.as_bytes());
        message(kv, 2, |any| match v {
            Value::Str(s) => bytes_field(any, 1, s.as_bytes()),
            Value::Int(n) => {
                key(any, 3, 0);
                varint(any, *n as u64);
            }
        });
    });
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }`.
pub(crate) fn encode(resource: &[(String, String)], spans: &[Finished]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * spans.len() + 128);
    // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
    message(&mut out, 1, |rs| {
        // Resource { repeated KeyValue attributes = 1; }
        message(rs, 1, |r| {
            for (k, v) in resource {
                key_value(r, 1, k, &Value::Str(v.clone()));
            }
        });
        // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes_field(scope, 1, b"cedille-gateway");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                message(ss, 2, |sp| span(sp, s));
            }
        });
    });
    out
}

/// `Span`: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6 (SERVER = 2), start 7,
/// end 8, attributes 9, status 15 (`code` 3: ERROR = 2), flags 16 (the W3C flags).
fn span(out: &mut Vec<u8>, s: &Finished) {
    bytes_field(out, 1, &s.trace_id);
    bytes_field(out, 2, &s.span_id);
    if let Some(p) = &s.parent {
        bytes_field(out, 4, p);
    }
    bytes_field(out, 5, s.name.as_bytes());
    key(out, 6, 0);
    varint(out, 2);
    fixed64(out, 7, nanos(s.start));
    fixed64(out, 8, nanos(s.end).max(nanos(s.start)));
    for (k, v) in &s.attributes {
        key_value(out, 9, k, v);
    }
    if s.error {
        message(out, 15, |st| {
            key(st, 3, 0);
            varint(st, 2);
        });
    }
    // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100) with IS_REMOTE (0x200) for a remote
    // parent, plus the sampled trace flag.
    let remote = if s.parent.is_some() { 0x300 } else { 0x100 };
    fixed32(out, 16, 0x01 | remote);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_as_the_wire_format_writes_them() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut k = Vec::new();
        key(&mut k, 16, 5);
        assert_eq!(k, [0x85, 0x01]);
    }
}
