//! TLS termination: one rustls configuration per socket whose certificate resolver reads the
//! socket's current listener table, so a Secret change reaches the next handshake.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::ir::PortConfig;

#[derive(Debug)]
struct SniResolver {
    port: Arc<ArcSwap<PortConfig>>,
}

impl std::fmt::Debug for PortConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortConfig")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cfg = self.port.load();
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        // The listener the name selects; a name no listener claims falls back to a listener
        // without hostname, as an unnamed client would get.
        let listener = cfg
            .listener_for(sni.as_deref())
            .or_else(|| cfg.listener_for(None))?;
        let schemes = hello.signature_schemes();
        listener
            .certs
            .iter()
            .find(|ck| ck.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

/// A server configuration for one socket: TLS 1.2 and 1.3 with aws-lc-rs, ALPN h2 then
/// http/1.1, certificates chosen per handshake from `port`.
pub fn server_config(port: Arc<ArcSwap<PortConfig>>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { port }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
