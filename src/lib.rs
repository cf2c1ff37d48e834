//! finguard: a reverse proxy that shields web servers (Apache httpd above all)
//! from buggy clients — per-User-Agent keepalive policy, lingering close,
//! pooled backend connections, and sockets reaped on a timer so that neither
//! FIN_WAIT_2 nor CLOSE_WAIT builds up on either side.
//!
//! # Layout
//! Layers call down only: listener → client connection → exchange → backend pool.
//! - [`config`]: TOML file + CLI overrides → checked `Config` (errors name file, key, reason);
//!   `config/settings.rs` lists the overridable client settings once
//! - [`policy`] (in `config/`): User-Agent rules (Apache `BrowserMatch` semantics) → `ClientPolicy`
//! - [`server`]: listeners, worker threads, accept loop, connection permits, drain;
//!   `server/endpoint.rs` what each listening socket speaks across reloads,
//!   `server/admission.rs` the per-IP count and refusals
//! - [`shared`]: a configuration generation, shared read-only by connection tasks
//! - [`downstream`]: the client connection: keep-alive loop, the idle set (idle HTTP/1 connections, plain or TLS, parked without a task), lingering close, tunnel, HTTP/2
//! - [`exchange`]: one exchange for both protocols: route, backend head, retry rules;
//!   `exchange/h1.rs` drives an HTTP/1 client socket, `exchange/h2.rs` an HTTP/2 stream
//! - [`http1`]: HTTP/1 on the wire: head parse, body framing, forwarded head, response shaping
//! - [`error`]: the exchange's one error type: side at fault, status, log line
//! - [`timeouts`]: every deadline of an exchange, from config
//! - [`upstream`]: the bounded backend pool (raw connections, lent whole)
//! - [`reaper`]: the timer that sweeps idle pools and stuck lingering clients
//! - [`registry`]: open client connections (`/connections`, state gauges, who is closed to make room)
//! - [`pressure`]: a full house: occupancy, keep-alive scaling, eviction triggers (`[client.pressure]`)
//! - [`stream`]: a client byte stream, plain TCP or TLS
//! - [`proxy_protocol`]: PROXY protocol v1/v2 headers, written to backends and read on listeners
//! - [`metrics`]: every exported metric and label value, declared once
//! - [`census`]: TCP sockets by state from /proc/net/tcp{,6}
//! - [`admin`]: /healthz, /metrics, /census, /connections
//! - [`exposition`]: /metrics' two text formats (OpenMetrics, classic), chosen by `Accept`
//! - [`accesslog`]: combined or JSON access log on stdout
//! - [`tls`]: rustls termination: certificates, SNI, ALPN; `tls/stream.rs` the HTTP/1 TLS stream (its parts park)
//! - [`sys`]: the only `unsafe` calls (the socket send queue `SIOCOUTQ`, the TCP state, an inherited descriptor)
//! - [`spool`]: a body held for a slow side: memory, then an unlinked temporary file, within budgets
//! - [`simulate`]: the buggy-client simulator and `finguard demo`
//! - [`compare`]: `finguard compare`: a client mix against several targets, HTML/JSON report
//! - [`cli`]: the `finguard` command line (arguments, subcommands, exit codes)
//! - [`handoff`]: binary upgrade: the listening sockets handed to a new process
//! - [`lifecycle`]: a running process: runtime, signals (SIGHUP reload, SIGTERM drain)

#![deny(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod census;
pub mod cli;
pub mod clock;
pub mod compare;
pub mod config;
pub mod downstream;
pub mod error;
pub mod exchange;
pub mod exposition;
pub mod handoff;
pub mod http1;
pub mod lifecycle;
pub mod metrics;
pub use config::policy;
pub mod pressure;
pub mod proxy_protocol;
pub mod reaper;
pub mod registry;
pub mod server;
pub mod shared;
pub mod simulate;
pub mod spool;
pub mod stream;
pub mod sys;
pub mod timeouts;
pub mod tls;
pub mod upstream;
