//! TLS for tests: a CA made at test time (rcgen), leaf certificates, a
//! finguard TLS listener config, rustls clients and `curl --http2`.

use super::{Proxy, TempFile};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

pub struct Pki {
    pub ca: rcgen::Certificate,
    pub ca_key: rcgen::KeyPair,
}

/// A leaf certificate for `names`, as (cert PEM, key PEM, cert DER).
pub fn leaf(pki: &Pki, names: &[&str]) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

pub fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "finguard test CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = params.self_signed(&ca_key).unwrap();
    Pki { ca, ca_key }
}

/// Files for a listener: default cert for a.test, SNI cert for b.test.
pub struct Files {
    pub a_cert: TempFile,
    pub a_key: TempFile,
    pub b_cert: TempFile,
    pub b_key: TempFile,
    pub a_der: Vec<u8>,
    pub b_der: Vec<u8>,
}

pub fn files(pki: &Pki) -> Files {
    let (ac, ak, a_der) = leaf(pki, &["a.test"]);
    let (bc, bk, b_der) = leaf(pki, &["b.test"]);
    Files {
        a_cert: TempFile::new("a.crt", &ac),
        a_key: TempFile::new("a.key", &ak),
        b_cert: TempFile::new("b.crt", &bc),
        b_key: TempFile::new("b.key", &bk),
        a_der,
        b_der,
    }
}

pub fn tls_config(f: &Files, extra: &str) -> String {
    format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nhandshake_timeout = \"300ms\"\n\
         [[listener.tls.sni]]\nnames = [\"b.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n{extra}",
        f.a_cert.0.display(),
        f.a_key.0.display(),
        f.b_cert.0.display(),
        f.b_key.0.display()
    )
}

pub fn client(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

pub fn ca_file(pki: &Pki) -> TempFile {
    TempFile::new("ca.pem", &pki.ca.pem())
}

/// `curl --http2 -sS`, trusting the test CA, with `a.test` resolved to
/// finguard on `port`; the caller adds its options and URLs.
pub fn curl_to(port: u16, ca: &TempFile) -> std::process::Command {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["--http2", "-sS", "--cacert"])
        .arg(&ca.0)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")]);
    cmd
}

/// `curl --http2` through finguard: (curl's stdout, exit ok).
pub fn curl_h2(p: &Proxy, ca: &TempFile, urls: usize, extra: &[&str]) -> (String, bool) {
    let port = p.addr.port();
    let url = format!("https://a.test:{port}/");
    let mut cmd = curl_to(port, ca);
    cmd.args(["-w", "%{http_version} %{http_code}\\n"]);
    cmd.args(extra);
    for _ in 0..urls {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text, out.status.success())
}
