//! Request buffering, for both client sides: the request body is taken
//! from the client in full (memory, then the spool's temporary file, up to
//! `max_body_bytes`, which the body's framing enforces) before a backend
//! connection is taken, so a slow uploader holds nothing on the backend
//! side. When a budget runs out the rest streams as without buffering
//! (counted by the spool): what was held goes first, then the bytes in
//! hand, then the rest as the client sends it ([`Prefixed`]).
//!
//! The upload ([`super::upload`]) is unchanged: it reads the backend while
//! it sends, so an early answer (a 401 before the body was read) is still
//! heard and relayed.

use super::upload::RequestBody;
use crate::error::ProxyError;
use crate::spool::{self, Reader};
use bytes::Bytes;

/// What was taken of a request body before the backend was contacted.
pub struct Prefix {
    reader: Option<Reader>,
    /// Taken from the client when the spool could take no more.
    held: Option<Bytes>,
}

/// Reads `body` into a spool until it ends or the spool is full.
pub async fn take<B: RequestBody + Send>(
    body: &mut B,
    cfg: std::sync::Arc<crate::config::buffer::BufferConfig>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<Prefix, ProxyError> {
    let (mut w, reader) = spool::channel(cfg, metrics);
    let mut held = None;
    while !body.is_done() {
        let b = body.next().await?;
        match w.push_now(b).await {
            Ok(()) => {}
            Err(Some(back)) => {
                held = Some(back);
                break;
            }
            Err(None) => return Err(lost()),
        }
    }
    w.finish(Ok(()), Vec::new());
    Ok(Prefix {
        reader: Some(reader),
        held,
    })
}

fn lost() -> ProxyError {
    ProxyError::BackendIo(std::io::Error::other("request body lost from its temporary file"))
}

/// A request body: what was taken first, then the rest from the client.
pub struct Prefixed<B> {
    pub pre: Option<Prefix>,
    pub live: B,
}

impl<B: RequestBody + Send> RequestBody for Prefixed<B> {
    fn is_done(&self) -> bool {
        self.pre.is_none() && self.live.is_done()
    }

    // Cancel-safe, as the upload's `select!` needs: the spool's reader
    // moves on only when it returns bytes.
    async fn next(&mut self) -> Result<Bytes, ProxyError> {
        if let Some(p) = self.pre.as_mut() {
            if let Some(r) = p.reader.as_mut() {
                match r.next().await {
                    Some(Ok(b)) => return Ok(b),
                    Some(Err(_)) => return Err(lost()),
                    None => p.reader = None,
                }
            }
            let held = p.held.take();
            self.pre = None;
            if let Some(b) = held {
                return Ok(b);
            }
        }
        if self.live.is_done() {
            return Ok(Bytes::new());
        }
        self.live.next().await
    }
}
