//! Every deadline of an HTTP/1 exchange, in one value built from the client's
//! policy and the backend's config. Each network await of the exchange is
//! bounded by one of these; nothing else spells a timeout.

use crate::config::{BackendConfig, ClientSettings};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest gap between two reads of a request body, and longest a write
    /// to the client may make no progress (a client that stopped reading).
    pub client_gap: Duration,
    /// `response_timeout`: from the end of the request to the backend's
    /// response head (504), and the longest gap between two reads of the
    /// response body or a write to the backend that makes no progress.
    pub response: Duration,
}

impl Timeouts {
    pub fn new(client: &ClientSettings, backend: &BackendConfig) -> Timeouts {
        Timeouts {
            client_gap: client.body_timeout,
            response: backend.response_timeout,
        }
    }

    /// The client's deadlines alone, for answers made before a backend is chosen.
    pub fn client(client: &ClientSettings) -> Timeouts {
        Timeouts {
            client_gap: client.body_timeout,
            response: Duration::ZERO,
        }
    }
}
