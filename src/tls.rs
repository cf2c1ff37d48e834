//! TLS termination with rustls (ring provider): certificate and key loading
//! with precise errors, several certificates chosen by SNI, ALPN, TLS 1.2 and
//! 1.3 only. Loaded with the config, so a reload (SIGHUP) picks up new files
//! and a bad file keeps the running certificates.

pub mod stream;

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// A TLS client that opens TCP and never finishes the handshake is closed after this.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

/// A listener's TLS: the acceptor and what it was built from.
#[derive(Clone)]
pub struct TlsSettings {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
    /// The default certificate first, then the SNI ones.
    pub files: Vec<CertFiles>,
    pub alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("files", &self.files)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Loads one chain and key; the error says which file and what is wrong.
pub fn load_key_pair(cert: &str, key: &str) -> Result<CertifiedKey, (String, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ("cert".to_string(), format!("{cert}: cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert".to_string(), format!("{cert}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(("cert".into(), format!("{cert}: no certificate in the file")));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(e) => ("key".to_string(), format!("{key}: cannot read: {e}")),
        e => (
            "key".to_string(),
            format!("{key}: no PKCS#8, RSA or EC private key in the file ({e})"),
        ),
    })?;
    let signing = provider::sign::any_supported_type(&der)
        .map_err(|e| ("key".to_string(), format!("{key}: unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|_| {
        (
            "key".to_string(),
            format!("{key}: does not match the certificate in {cert}"),
        )
    })?;
    Ok(ck)
}

/// Picks the certificate by SNI, else the default one.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// Builds a listener's TLS from its files. `alpn` in preference order.
pub fn build(
    files: Vec<CertFiles>,
    handshake_timeout: Duration,
    alpn: Vec<Vec<u8>>,
) -> Result<TlsSettings, (usize, String, String)> {
    let mut keys = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let ck = load_key_pair(&f.cert, &f.key).map_err(|(k, why)| (i, k, why))?;
        keys.push(Arc::new(ck));
    }
    let mut by_name = HashMap::new();
    for (f, k) in files.iter().zip(&keys).skip(1) {
        for n in &f.names {
            by_name.insert(n.to_ascii_lowercase(), k.clone());
        }
    }
    let resolver = SniResolver {
        default: keys[0].clone(),
        by_name,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| (0, "cert".to_string(), format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn.clone();
    Ok(TlsSettings {
        acceptor: TlsAcceptor::from(Arc::new(cfg)),
        handshake_timeout,
        files,
        alpn,
    })
}

/// ALPN protocols offered on TLS listeners, in preference order.
pub fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}
