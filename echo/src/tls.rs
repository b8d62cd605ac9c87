//! TLS listener configuration and the `tls` object of the echo response.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{CipherSuite, ProtocolVersion, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::handler::TlsDetails;

/// Why a TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The certificate file could not be read or parsed.
    #[error("reading certificates from {path}")]
    Certificates {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {path}")]
    NoCertificates { path: PathBuf },
    /// The key file could not be read or holds no private key.
    #[error("reading the private key from {path}")]
    PrivateKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the certificate chain or key (for example, they do not match).
    #[error("building the TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// A TLS server configuration for an echo listener: the aws-lc-rs provider, TLS 1.2 and
/// 1.3, no client authentication, ALPN `h2` then `http/1.1`.
///
/// `chain` is the server certificate followed by its intermediates.
pub fn tls_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`tls_server_config`] from PEM files: `cert` holds the chain (leaf first), `key` the
/// private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_tls_server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let cert_error = |source| TlsConfigError::Certificates {
        path: cert.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(cert_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_error)?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificates {
            path: cert.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsConfigError::PrivateKey {
        path: key.to_owned(),
        source,
    })?;
    tls_server_config(chain, key)
}

/// The `tls` object for a completed handshake.
pub(crate) fn details(conn: &ServerConnection) -> TlsDetails {
    TlsDetails {
        version: conn
            .protocol_version()
            .map(version_name)
            .unwrap_or_default(),
        server_name: conn.server_name().unwrap_or_default().to_owned(),
        negotiated_protocol: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map(|s| cipher_suite_name(s.suite()))
            .unwrap_or_default(),
        peer_certificates: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|cert| pem_encode("CERTIFICATE", cert))
            .collect(),
    }
}

/// The suite's spelling: `TLSv1.3`.
fn version_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        ProtocolVersion::TLSv1_1 => "TLSv1.1".into(),
        ProtocolVersion::TLSv1_0 => "TLSv1.0".into(),
        other => format!("0x{:04x}", u16::from(other)),
    }
}

/// The IANA name, as Go's `tls.CipherSuiteName` gives it (`TLS_AES_128_GCM_SHA256`).
fn cipher_suite_name(suite: CipherSuite) -> String {
    match suite.as_str() {
        // rustls prefixes TLS 1.3 suites with `TLS13_`; IANA and Go say `TLS_`.
        Some(name) => match name.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => name.to_owned(),
        },
        None => format!("0x{:04X}", u16::from(suite)),
    }
}

/// PEM armour: base64 in 64-column lines between BEGIN and END markers.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        for len in [0, 1, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            assert!(pem.lines().all(|l| l.len() <= 64));
            let back = CertificateDer::from_pem_slice(pem.as_bytes());
            if len == 0 {
                continue;
            }
            assert_eq!(back.expect("parses").as_ref(), der.as_slice(), "len {len}");
        }
        assert_eq!(
            pem_encode("X", b"foobar"),
            "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n"
        );
        assert!(pem_encode("X", b"fo").contains("\nZm8=\n"));
        assert!(pem_encode("X", b"f").contains("\nZg==\n"));
    }

    #[test]
    fn names_follow_go() {
        assert_eq!(version_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
        assert_eq!(
            cipher_suite_name(CipherSuite::TLS13_AES_128_GCM_SHA256),
            "TLS_AES_128_GCM_SHA256"
        );
        assert_eq!(
            cipher_suite_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }
}
