//! finguard: a reverse proxy that shields web servers (Apache httpd above all)
//! from buggy clients — per-User-Agent keepalive policy, lingering close,
//! pooled backend connections, and sockets reaped on a timer so that neither
//! FIN_WAIT_2 nor CLOSE_WAIT builds up on either side.
//!
//! # Layout
//! - [`config`]: TOML file + CLI overrides → checked `Config` (errors name file, key, reason)
//! - [`policy`]: User-Agent rules (Apache `BrowserMatch` semantics) → `ClientPolicy`
//! - [`server`]: listeners, accept loop, connection permits, drain
//! - [`downstream`]: the client connection: keep-alive loop, head checks, lingering close
//! - [`proxy`]: routing, forwarding, hop-by-hop headers, response shaping, error statuses
//! - [`upstream`]: the bounded backend pool and its reaper
//! - [`metrics`]: every exported metric, declared once
//! - [`census`]: TCP sockets by state from /proc/net/tcp{,6}
//! - [`admin`]: /healthz, /metrics, /census, /connections
//! - [`accesslog`]: combined or JSON access log on stdout
//! - [`tls`]: rustls termination: certificates, SNI, ALPN
//! - [`simulate`]: the buggy-client simulator and `finguard demo`
//! - [`cli`]: the `finguard` command line

#![deny(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod census;
pub mod cli;
pub mod config;
pub mod downstream;
pub mod error;
pub mod exchange;
pub mod http1;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reaper;
pub mod registry;
pub mod server;
pub mod shared;
pub mod simulate;
pub mod stream;
pub mod sys;
pub mod timeouts;
pub mod tls;
pub mod upstream;
