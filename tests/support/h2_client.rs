//! An HTTP/2 client over TLS to a finguard started with a test PKI: one
//! request per call, its fields, body and trailers as given, and what came
//! back, a stream reset included.

use super::tls::*;
use super::Proxy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct H2Setup {
    pub _files: Files,
    pub client: Arc<rustls::ClientConfig>,
    pub proxy: Proxy,
}

/// finguard with a TLS listener (ALPN h2) in front of `backend`; `extra`
/// is more config.
pub fn h2_proxy(extra: &str, backend: SocketAddr) -> H2Setup {
    let pki = pki();
    let files = files(&pki);
    let proxy = Proxy::start_raw(&tls_config(&files, extra), &["--backend", &backend.to_string()]);
    let mut cfg = (*client(&pki)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    H2Setup {
        _files: files,
        client: Arc::new(cfg),
        proxy,
    }
}

/// One HTTP/2 request.
pub struct H2Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// Fields, repeats kept.
    pub fields: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub trailers: &'a [(&'a str, &'a str)],
}

impl Default for H2Request<'_> {
    fn default() -> Self {
        H2Request {
            method: "GET",
            authority: "a.test",
            path: "/",
            fields: &[],
            body: None,
            trailers: &[],
        }
    }
}

/// What came back: the status, the body, the trailers, and whether the
/// stream ended cleanly (not reset or broken off).
pub struct H2Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
    pub clean: bool,
}

fn header_map(fields: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (n, v) in fields {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

pub fn h2_send(s: &H2Setup, r: &H2Request<'_>) -> H2Answer {
    let (cfg, addr) = (s.client.clone(), s.proxy.addr);
    let mut req = http::Request::builder()
        .method(r.method)
        .uri(format!("https://{}{}", r.authority, r.path))
        .body(())
        .unwrap();
    *req.headers_mut() = header_map(r.fields);
    let body = r.body.map(bytes::Bytes::copy_from_slice);
    let trailers = (!r.trailers.is_empty()).then(|| header_map(r.trailers));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let end = body.is_none() && trailers.is_none();
        let (resp, mut send) = client.send_request(req, end).unwrap();
        if let Some(b) = body {
            send.send_data(b, trailers.is_none()).unwrap();
        }
        if let Some(t) = trailers {
            send.send_trailers(t).unwrap();
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("an answer")
            .unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        let mut clean = true;
        while let Some(d) = body.data().await {
            match d {
                Ok(d) => {
                    let _ = body.flow_control().release_capacity(d.len());
                    out.extend_from_slice(&d);
                }
                Err(_) => {
                    clean = false;
                    break;
                }
            }
        }
        let trailers = match body.trailers().await {
            Ok(t) => t,
            Err(_) => {
                clean = false;
                None
            }
        };
        H2Answer {
            status,
            body: out,
            trailers,
            clean,
        }
    })
}

/// Sends one GET for `/echo` with these fields (repeats kept) and returns
/// the status and the body.
pub fn h2_get(s: &H2Setup, authority: &str, fields: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let a = h2_send(
        s,
        &H2Request {
            authority,
            path: "/echo",
            fields,
            ..H2Request::default()
        },
    );
    (a.status, a.body)
}

/// An `h2` client connection to finguard (TLS, ALPN h2, server name
/// `a.test`) made with `builder`; its connection task runs on the caller's
/// runtime.
pub async fn h2_connect(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    builder: h2::client::Builder,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let (client, conn) = builder.handshake(tls).await.unwrap();
    (client, tokio::spawn(conn))
}
