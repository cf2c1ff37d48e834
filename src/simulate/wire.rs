//! The simulator's client side of HTTP/1.1: just enough to send requests and
//! read responses off a raw socket, and to tell a FIN from a reset.

use crate::http1::framing::Framing;
use std::io;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a read ended when it did not yield a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The server closed (FIN) first.
    Eof,
    /// The server reset the connection.
    Reset,
    /// Nothing came before the deadline.
    Timeout,
    /// Not HTTP.
    Garbage,
}

/// A response's status and whether the server will close after it.
#[derive(Debug, Clone, Copy)]
pub struct Resp {
    pub status: u16,
    /// The server announced `Connection: close` or spoke HTTP/1.0 without keep-alive.
    pub closes: bool,
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
    )
}

async fn more(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Cut> {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
        Err(_) => Err(Cut::Timeout),
        Ok(Ok(0)) => Err(Cut::Eof),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Ok(Err(e)) if is_reset(&e) => Err(Cut::Reset),
        Ok(Err(_)) => Err(Cut::Reset),
    }
}

/// Reads one response (skipping 1xx) from `s`; bytes past it stay in `buf`.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<Resp, Cut> {
    loop {
        let (status, head_len, framing, closes) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = r.code.unwrap_or(0);
                    let mut framing = None;
                    let mut closes = r.version == Some(0);
                    for h in r.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                            framing = len.map(Framing::Length);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            framing = Some(Framing::chunked(u64::MAX));
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                            closes = v.contains("close") || (closes && !v.contains("keep-alive"));
                        }
                    }
                    break (status, n, framing, closes);
                }
                Ok(httparse::Status::Partial) => more(s, buf, deadline).await?,
                Err(_) => return Err(Cut::Garbage),
            }
        };
        buf.drain(..head_len);
        if (100..200).contains(&status) {
            continue;
        }
        let delimited_by_close = framing.is_none() && status != 204 && status != 304;
        match framing {
            Some(mut f) => loop {
                let used = f.consume(buf).map_err(|_| Cut::Garbage)?;
                buf.drain(..used);
                if f.is_done() {
                    break;
                }
                more(s, buf, deadline).await?;
            },
            None if status == 204 || status == 304 => {}
            None => loop {
                buf.clear();
                match more(s, buf, deadline).await {
                    Ok(()) => {}
                    Err(Cut::Eof) => break,
                    Err(e) => return Err(e),
                }
            },
        }
        return Ok(Resp {
            status,
            closes: closes || delimited_by_close,
        });
    }
}

/// How the server has ended the connection by now, without waiting long:
/// FIN, reset, or still open.
pub async fn probe_end(s: &mut TcpStream) -> super::End {
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            Err(_) => return super::End::Open,
            Ok(Ok(0)) => return super::End::Fin,
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return super::End::Rst,
        }
    }
}
