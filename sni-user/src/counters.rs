//! The terminator's counters: per host and global, shared by the worker threads (atomics,
//! relaxed: they are statistics, read whole by `sni-user stats`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Why a connection of a host ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The TLS handshake failed (bad message, alert, no common parameters).
    Tls = 0,
    /// The handshake did not finish within `limits.handshake_timeout`.
    HandshakeTimeout,
    /// The client closed or reset during the handshake.
    ClientGone,
    /// The backend refused the connection or could not be reached.
    BackendRefused,
    /// The backend reset or failed mid-stream.
    BackendFailed,
    /// No byte either way for `limits.idle_timeout`.
    IdleTimeout,
}

impl Failure {
    /// Names, in order: the JSON keys under `failures`.
    pub const NAMES: [&'static str; 6] = [
        "tls",
        "handshake_timeout",
        "client_gone",
        "backend_refused",
        "backend_failed",
        "idle_timeout",
    ];
}

/// Counters of one host.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Finished handshakes (terminate) or relayed connections (passthrough).
    pub handshakes: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Plaintext (or passthrough) bytes from clients to the backend.
    pub bytes_to_backend: AtomicU64,
    /// Bytes from the backend to clients.
    pub bytes_to_client: AtomicU64,
    /// Failures by [`Failure`].
    pub failures: [AtomicU64; 6],
}

impl HostCounters {
    /// Counts one failure.
    pub fn fail(&self, why: Failure) {
        self.failures[why as usize].fetch_add(1, Relaxed);
    }
}

/// Connections turned away before they reached a host.
#[derive(Debug, Default)]
pub struct GlobalCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Closed at once: `limits.max_connections` reached.
    pub over_max_connections: AtomicU64,
    /// Closed at once: `limits.max_connections_per_ip` reached.
    pub over_max_per_ip: AtomicU64,
    /// The first bytes were not a TLS ClientHello, or a malformed one.
    pub bad_client_hello: AtomicU64,
    /// The ClientHello was larger than `limits.max_client_hello`.
    pub client_hello_too_large: AtomicU64,
    /// Unknown or missing name with `[default] reject = true`: unrecognized_name sent.
    pub rejected_unknown_name: AtomicU64,
    /// The ClientHello did not arrive within the handshake deadline.
    pub client_hello_timeout: AtomicU64,
    /// The client left before sending a whole ClientHello.
    pub client_gone_before_hello: AtomicU64,
    /// Hand-off: the classifier's host for the flow is the one the TLS stack saw.
    pub xdp_agreed: AtomicU64,
    /// Hand-off: the classifier named another host (the TLS stack's name wins).
    pub xdp_disagreed: AtomicU64,
    /// Hand-off: no classifier, or it had no host for the flow.
    pub xdp_unknown: AtomicU64,
    /// Reloads (SIGHUP) applied.
    pub reloads: AtomicU64,
    /// Reloads refused: the running configuration stayed.
    pub reload_failures: AtomicU64,
}

/// All counters of a terminator.
#[derive(Debug)]
pub struct Counters {
    /// Per route (same indices as `Routes::routes`).
    pub hosts: Vec<HostCounters>,
    /// Global.
    pub global: GlobalCounters,
}

/// One host's counters as shown by `sni-user stats`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HostSnapshot {
    /// The host's first name, or `default`.
    pub host: String,
    /// Finished handshakes.
    pub handshakes: u64,
    /// Open connections.
    pub active: u64,
    /// Bytes client → backend.
    pub bytes_to_backend: u64,
    /// Bytes backend → client.
    pub bytes_to_client: u64,
    /// Failures by reason.
    pub failures: serde_json::Map<String, serde_json::Value>,
}

impl Counters {
    /// Zeroed counters for `n` routes.
    pub fn new(n: usize) -> Self {
        Self {
            hosts: (0..n).map(|_| HostCounters::default()).collect(),
            global: GlobalCounters::default(),
        }
    }

    /// A JSON-ready copy: `{"hosts":[…],"global":{…}}`.
    pub fn snapshot(&self, labels: &[String]) -> serde_json::Value {
        let hosts: Vec<HostSnapshot> = self
            .hosts
            .iter()
            .zip(labels)
            .map(|(c, label)| HostSnapshot {
                host: label.clone(),
                handshakes: c.handshakes.load(Relaxed),
                active: c.active.load(Relaxed),
                bytes_to_backend: c.bytes_to_backend.load(Relaxed),
                bytes_to_client: c.bytes_to_client.load(Relaxed),
                failures: Failure::NAMES
                    .iter()
                    .zip(&c.failures)
                    .map(|(n, v)| ((*n).to_owned(), v.load(Relaxed).into()))
                    .collect(),
            })
            .collect();
        let g = &self.global;
        serde_json::json!({
            "hosts": hosts,
            "global": {
                "accepted": g.accepted.load(Relaxed),
                "reloads": g.reloads.load(Relaxed),
                "reload_failures": g.reload_failures.load(Relaxed),
                "over_max_connections": g.over_max_connections.load(Relaxed),
                "over_max_per_ip": g.over_max_per_ip.load(Relaxed),
                "bad_client_hello": g.bad_client_hello.load(Relaxed),
                "client_hello_too_large": g.client_hello_too_large.load(Relaxed),
                "rejected_unknown_name": g.rejected_unknown_name.load(Relaxed),
                "client_hello_timeout": g.client_hello_timeout.load(Relaxed),
                "client_gone_before_hello": g.client_gone_before_hello.load(Relaxed),
                "xdp_agreed": g.xdp_agreed.load(Relaxed),
                "xdp_disagreed": g.xdp_disagreed.load(Relaxed),
                "xdp_unknown": g.xdp_unknown.load(Relaxed),
            }
        })
    }
}
