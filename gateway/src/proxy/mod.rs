//! The data plane: bound sockets, connections, request handling and upstreams.

mod backend_tls;
pub mod conn;
mod cors;
pub(crate) mod flood;
pub(crate) mod h1guard;
pub mod h1pool;
pub(crate) mod handler;
mod headers;
pub(crate) mod idle;
pub(crate) mod quic;
mod quic_fields;
pub mod runtime;
mod tls;
mod tunnel;
pub mod upstream;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used on both sides of the proxy.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
