//! Request tracing: one OpenTelemetry server span per request, W3C Trace Context in and out,
//! exported over OTLP/HTTP (protobuf). Configured by the standard `OTEL_*` variables and
//! off when no endpoint is set, in which case a request costs one `None` check.
//!
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (`/v1/traces` appended): an `http://` collector endpoint.
//! - `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`: `http/protobuf` (the default; `grpc` and
//!   `http/json` are refused with a log line, tracing stays off).
//! - `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`: `key=value,...` added to every export.
//! - `OTEL_TRACES_SAMPLER` (`parentbased_always_on` by default, `parentbased_traceidratio`,
//!   `traceidratio`, `always_on`, `always_off`, `parentbased_always_off`) and
//!   `OTEL_TRACES_SAMPLER_ARG` (the ratio).
//! - `OTEL_SERVICE_NAME` (default `cedille-gateway`), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_SDK_DISABLED=true`.

mod otlp;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use http::{HeaderMap, HeaderValue};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// An attribute value, as OTLP's AnyValue carries it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

/// A W3C `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` when it is not valid Trace Context (all
    /// zero ids, unknown version 255, wrong lengths), which starts a new trace.
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let version: [u8; 1] = hex(version)?;
        if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?;
        let span_id: [u8; 8] = hex(span)?;
        let flags: [u8; 1] = hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    pub fn header(&self) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        for b in self.trace_id {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('-');
        for b in self.span_id {
            s.push_str(&format!("{b:02x}"));
        }
        s.push_str(if self.sampled { "-01" } else { "-00" });
        HeaderValue::from_str(&s).expect("hex digits and dashes")
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

/// One request's server span, open until [`Tracer::finish`].
pub struct Span {
    pub context: TraceParent,
    parent: Option<[u8; 8]>,
    name: String,
    start: SystemTime,
    attributes: Mutex<Vec<(&'static str, Value)>>,
}

impl Span {
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        self.attributes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, value.into()));
    }

    /// The `traceparent` to send to a backend: this span as its parent.
    pub fn traceparent(&self) -> HeaderValue {
        self.context.header()
    }
}

/// A finished span, on its way to the exporter.
pub(crate) struct Finished {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(&'static str, Value)>,
    error: bool,
}

pub struct Tracer {
    root: Sampler,
    parent_based: bool,
    tx: mpsc::Sender<Finished>,
    /// Spans dropped because the export queue was full.
    pub dropped: AtomicU64,
}

/// The exporter's queue: spans beyond it are dropped (counted), never waited for.
const QUEUE: usize = 8192;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Tracer {
    /// The tracer the `OTEL_*` environment asks for; `None` (logged) when tracing is off or
    /// misconfigured. Starts the export task: call inside the runtime.
    pub fn from_env() -> Option<Arc<Tracer>> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let endpoint = match (
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => e,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return None,
        };
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        if protocol != "http/protobuf" {
            warn!(%protocol, "OTLP protocol not supported: tracing stays off; use http/protobuf (collector port 4318)");
            return None;
        }
        let target = match otlp::Target::parse(&endpoint) {
            Ok(t) => t,
            Err(e) => {
                warn!(%endpoint, error = %e, "OTLP endpoint not usable: tracing stays off");
                return None;
            }
        };
        let headers = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|h| pairs(&h))
            .unwrap_or_default();
        let ratio = env("OTEL_TRACES_SAMPLER_ARG")
            .and_then(|r| r.trim().parse::<f64>().ok())
            .map_or(1.0, |r| r.clamp(0.0, 1.0));
        let sampler = env("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
        let (root, parent_based) = match sampler.as_str() {
            "always_on" => (Sampler::AlwaysOn, false),
            "always_off" => (Sampler::AlwaysOff, false),
            "traceidratio" => (Sampler::Ratio(ratio), false),
            "parentbased_always_off" => (Sampler::AlwaysOff, true),
            "parentbased_traceidratio" => (Sampler::Ratio(ratio), true),
            "parentbased_always_on" => (Sampler::AlwaysOn, true),
            other => {
                warn!(
                    sampler = other,
                    "unknown OTEL_TRACES_SAMPLER; using parentbased_always_on"
                );
                (Sampler::AlwaysOn, true)
            }
        };
        let mut resource = vec![(
            "service.name".to_owned(),
            env("OTEL_SERVICE_NAME").unwrap_or_else(|| "cedille-gateway".into()),
        )];
        resource.push(("service.version".into(), env!("CARGO_PKG_VERSION").into()));
        if let Some(attrs) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in pairs(&attrs) {
                if k != "service.name" || env("OTEL_SERVICE_NAME").is_none() {
                    resource.retain(|(rk, _)| *rk != k);
                    resource.push((k, v));
                }
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        info!(%endpoint, sampler, ratio, "exporting traces over OTLP/HTTP");
        tokio::spawn(otlp::export(target, headers, resource, rx));
        Some(Arc::new(Tracer {
            root,
            parent_based,
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Opens the server span of a request, continuing the trace of its `traceparent`.
    pub fn start(&self, headers: &HeaderMap, name: String) -> Span {
        let incoming = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let span_id = loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                break id;
            }
        };
        let (trace_id, parent, sampled) = match incoming {
            Some(p) => {
                let sampled = if self.parent_based {
                    p.sampled
                } else {
                    self.sample(&p.trace_id)
                };
                (p.trace_id, Some(p.span_id), sampled)
            }
            None => {
                let id = loop {
                    let id: [u8; 16] = rand::random();
                    if id != [0; 16] {
                        break id;
                    }
                };
                (id, None, self.sample(&id))
            }
        };
        Span {
            context: TraceParent {
                trace_id,
                span_id,
                sampled,
            },
            parent,
            name,
            start: SystemTime::now(),
            attributes: Mutex::new(Vec::with_capacity(12)),
        }
    }

    fn sample(&self, trace_id: &[u8; 16]) -> bool {
        match self.root {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            // The trace id's low 8 bytes against the ratio, so every service sampling at
            // the same ratio keeps the same traces.
            Sampler::Ratio(r) => {
                let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
                (low as f64) < r * (u64::MAX as f64)
            }
        }
    }

    /// Closes a span; sampled ones go to the exporter.
    pub fn finish(&self, span: Span, error: bool) {
        if !span.context.sampled {
            return;
        }
        let done = Finished {
            trace_id: span.context.trace_id,
            span_id: span.context.span_id,
            parent: span.parent,
            name: span.name,
            start: span.start,
            end: SystemTime::now(),
            attributes: span
                .attributes
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
            error,
        };
        if self.tx.try_send(done).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `key=value,key2=value2` (W3C Baggage-like, as the OTEL variables write them).
fn pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_invalid_values() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert!(p.sampled);
        assert_eq!(p.header().to_str().unwrap(), v);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let (tx, _rx) = mpsc::channel(1);
        let t = Tracer {
            root: Sampler::Ratio(0.25),
            parent_based: true,
            tx,
            dropped: AtomicU64::new(0),
        };
        let mut kept = 0;
        for i in 0..4000u64 {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
            id[0] = 1;
            kept += usize::from(t.sample(&id));
        }
        assert!((800..1200).contains(&kept), "{kept} of 4000 at 25%");
        // Parent-based: an incoming sampled flag decides.
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let s = t.start(&h, "GET".into());
        assert!(!s.context.sampled);
        assert_eq!(
            s.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(s.context.trace_id[0], 0x4b);
    }
}
