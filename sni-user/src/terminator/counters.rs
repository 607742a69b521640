//! The terminator's counters: per host and global, shared by the worker threads (atomics,
//! relaxed: they are statistics, read whole by `sni-user stats`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Defines [`Failure`] once: each reason's variant and its name (the JSON key under
/// `failures`, the `reason` label of `sni_tls_failures_total`), in the order of the counters.
macro_rules! failures {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)+) => {
        /// Why a connection of a host ended badly.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Failure {
            $($(#[doc = $doc])* $variant,)+
        }

        impl Failure {
            /// Names, in counter order: the JSON keys under `failures`.
            pub const NAMES: [&'static str; [$($name),+].len()] = [$($name),+];
        }
    };
}

failures! {
    /// The TLS handshake failed (bad message, alert, no common parameters).
    Tls = "tls",
    /// The handshake did not finish within `limits.handshake_timeout`.
    HandshakeTimeout = "handshake_timeout",
    /// The client closed or reset during the handshake.
    ClientGone = "client_gone",
    /// The backend refused the connection or could not be reached.
    BackendRefused = "backend_refused",
    /// The backend reset or failed mid-stream.
    BackendFailed = "backend_failed",
    /// No byte either way for `limits.idle_timeout`.
    IdleTimeout = "idle_timeout",
    /// A TLS error after the handshake (a bad record, a fatal alert from the client).
    TlsAfterHandshake = "tls_after_handshake",
    /// The client's certificate was missing or refused (mTLS: no certificate where one is
    /// required, an unknown CA, expired, revoked, a bad signature), or a resumed session's
    /// certificate no longer passes the host's check.
    ClientCert = "client_cert",
    /// The terminator's own fault (a socket it could not register, a host without its TLS
    /// configuration).
    Internal = "internal",
}

/// Upper bounds (seconds) of the handshake duration histogram's buckets: from accept to the
/// handshake's end (terminate) or to routing (passthrough). 100 µs to 10 s.
pub const HANDSHAKE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A histogram of durations with fixed buckets ([`HANDSHAKE_BUCKETS`]), lock-free: one
/// relaxed add per bucket hit, sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above the largest bound.
    buckets: [AtomicU64; HANDSHAKE_BUCKETS.len() + 1],
    /// Sum of observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = HANDSHAKE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(HANDSHAKE_BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Sum (seconds), count, and `(upper bound, observations in that bucket alone)` pairs,
    /// `+Inf` last (the encoder makes them cumulative).
    pub fn parts(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            total = total.saturating_add(n);
            out.push((
                HANDSHAKE_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                n,
            ));
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        (sum, total, out)
    }
}

/// Counters of one host. A host keeps its counters across reloads (matched by label).
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Finished handshakes (terminate) or relayed connections (passthrough).
    pub handshakes: AtomicU64,
    /// Of those, TLS handshakes that resumed a session (ticket or cache).
    pub resumed: AtomicU64,
    /// Of those, TLS handshakes with a verified client certificate (mTLS).
    pub client_certs: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Plaintext (or passthrough) bytes from clients to the backend.
    pub bytes_to_backend: AtomicU64,
    /// Bytes from the backend to clients.
    pub bytes_to_client: AtomicU64,
    /// Failures by [`Failure`]: connections that did not get through.
    pub failures: [AtomicU64; Failure::NAMES.len()],
    /// Connections whose client's socket failed once they were through (after the handshake,
    /// or routed in passthrough): a reset, a write to a client that had gone. Browsers and
    /// mobile clients do it often; not a failure of the host, but counted and logged at
    /// debug.
    pub client_aborts: AtomicU64,
    /// Handshake durations.
    pub handshake_seconds: Histogram,
}

impl HostCounters {
    /// Counts one failure.
    pub fn fail(&self, why: Failure) {
        if let Some(n) = self.failures.get(why as usize) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// A JSON-ready copy under `label`.
    pub fn snapshot(&self, label: &str) -> HostSnapshot {
        let (sum, count, _) = self.handshake_seconds.parts();
        HostSnapshot {
            host: label.to_owned(),
            handshakes: self.handshakes.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            client_certs: self.client_certs.load(Relaxed),
            active: self.active.load(Relaxed),
            bytes_to_backend: self.bytes_to_backend.load(Relaxed),
            bytes_to_client: self.bytes_to_client.load(Relaxed),
            client_aborts: self.client_aborts.load(Relaxed),
            failures: Failure::NAMES
                .iter()
                .zip(&self.failures)
                .map(|(n, v)| ((*n).to_owned(), v.load(Relaxed).into()))
                .collect(),
            handshake_seconds_mean: if count > 0 { sum / count as f64 } else { 0.0 },
            routes: Vec::new(),
        }
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
    /// Hand-off: the classifier's JA4 fingerprint of the flow is the terminator's.
    pub ja4_agreed: AtomicU64,
    /// Hand-off: the classifier's JA4 fingerprint of the flow differs from the terminator's.
    pub ja4_disagreed: AtomicU64,
    /// Hand-off: no classifier record, or no fingerprint on one side.
    pub ja4_unknown: AtomicU64,
    /// Closed while waiting for a ClientHello the classifier drops (`action = "drop"`, or
    /// over `hello_rate`).
    pub xdp_blocked: AtomicU64,
    /// TLS-ALPN-01 challenge handshakes answered (ACME).
    pub acme_challenges: AtomicU64,
    /// Handshakes served with an ACME host's self-signed placeholder, before its first
    /// certificate.
    pub acme_placeholder_handshakes: AtomicU64,
}

/// A global counter's name (the key in `stats --json`, the metric's suffix), its help text
/// (the metric's HELP) and where it is.
type GlobalField = (
    &'static str,
    &'static str,
    fn(&GlobalCounters) -> &AtomicU64,
);

impl GlobalCounters {
    /// Every counter once, in a fixed order: what `stats --json` and the metrics show.
    pub const FIELDS: [GlobalField; 17] = [
        ("accepted", "Connections accepted.", |g| &g.accepted),
        (
            "over_max_connections",
            "Connections closed at once: limits.max_connections reached.",
            |g| &g.over_max_connections,
        ),
        (
            "over_max_per_ip",
            "Connections closed at once: limits.max_connections_per_ip reached.",
            |g| &g.over_max_per_ip,
        ),
        (
            "bad_client_hello",
            "First bytes that were not a TLS ClientHello, or a malformed one.",
            |g| &g.bad_client_hello,
        ),
        (
            "client_hello_too_large",
            "ClientHellos larger than limits.max_client_hello.",
            |g| &g.client_hello_too_large,
        ),
        (
            "rejected_unknown_name",
            "Unknown or missing names answered with unrecognized_name ([default] reject).",
            |g| &g.rejected_unknown_name,
        ),
        (
            "client_hello_timeout",
            "Connections whose ClientHello did not arrive before the handshake deadline.",
            |g| &g.client_hello_timeout,
        ),
        (
            "client_gone_before_hello",
            "Clients that left before sending a whole ClientHello.",
            |g| &g.client_gone_before_hello,
        ),
        (
            "xdp_agreed",
            "Handshakes whose host the XDP classifier had named the same.",
            |g| &g.xdp_agreed,
        ),
        (
            "xdp_disagreed",
            "Handshakes whose host the XDP classifier named otherwise (the TLS name wins).",
            |g| &g.xdp_disagreed,
        ),
        (
            "xdp_unknown",
            "Handshakes without a classifier record.",
            |g| &g.xdp_unknown,
        ),
        (
            "ja4_agreed",
            "Handshakes whose ClientHello the XDP classifier fingerprinted the same (JA4).",
            |g| &g.ja4_agreed,
        ),
        (
            "ja4_disagreed",
            "Handshakes whose ClientHello the XDP classifier fingerprinted otherwise (JA4).",
            |g| &g.ja4_disagreed,
        ),
        (
            "ja4_unknown",
            "Handshakes without a JA4 fingerprint from the classifier or from the terminator.",
            |g| &g.ja4_unknown,
        ),
        (
            "xdp_blocked",
            "Connections closed while waiting for a ClientHello the XDP classifier drops.",
            |g| &g.xdp_blocked,
        ),
        (
            "acme_challenges",
            "TLS-ALPN-01 challenge handshakes answered for the ACME CA.",
            |g| &g.acme_challenges,
        ),
        (
            "acme_placeholder_handshakes",
            "Handshakes served with an ACME host's self-signed placeholder (no certificate yet).",
            |g| &g.acme_placeholder_handshakes,
        ),
    ];

    /// Names and values, in [`Self::FIELDS`] order: the keys of `stats --json`'s terminator
    /// `global`.
    pub fn values(&self) -> [(&'static str, u64); 17] {
        Self::FIELDS.map(|(name, _, field)| (name, field(self).load(Relaxed)))
    }
}

/// One host's counters as shown by `sni-user stats`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct HostSnapshot {
    /// The host's first name, or `default`.
    pub host: String,
    /// Finished handshakes.
    pub handshakes: u64,
    /// Of those, resumed.
    pub resumed: u64,
    /// Of those, with a verified client certificate (mTLS).
    #[serde(default)]
    pub client_certs: u64,
    /// Open connections.
    pub active: u64,
    /// Bytes client → backend.
    pub bytes_to_backend: u64,
    /// Bytes backend → client.
    pub bytes_to_client: u64,
    /// Connections whose client's socket failed once they were through.
    pub client_aborts: u64,
    /// Failures by reason.
    pub failures: serde_json::Map<String, serde_json::Value>,
    /// Mean handshake duration, seconds.
    pub handshake_seconds_mean: f64,
    /// Connections each `[[host.route]]` took (none: the host has no routes by ALPN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSnapshot>,
}

/// A `[[host.route]]`'s count.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RouteSnapshot {
    /// Its protocols, comma-separated.
    pub alpn: String,
    /// Connections it took.
    pub connections: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_each_observation_once_with_inf_last() {
        let h = Histogram::default();
        for ms in [0.05, 0.3, 0.3, 7.0, 20_000.0] {
            h.observe(std::time::Duration::from_secs_f64(ms / 1000.0));
        }
        let (sum, count, buckets) = h.parts();
        assert_eq!(count, 5);
        assert!((sum - 20.00765).abs() < 1e-6, "{sum}");
        assert_eq!(buckets.len(), HANDSHAKE_BUCKETS.len() + 1);
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[2], (0.0005, 2));
        assert_eq!(buckets[6], (0.01, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 5);
        assert_eq!(buckets[HANDSHAKE_BUCKETS.len()], (f64::INFINITY, 1));
    }
}
