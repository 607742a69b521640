//! The operator's tools beside the daemon; each reads what a running `sni-user run` exposes,
//! or works offline.
//!
//! - [`stats`]: the counters as a table or JSON.
//! - [`top`]: the counters live, as rates, in the terminal; [`top_fingerprints`] its view of
//!   the JA4 fingerprints.
//! - [`check`]: a config validated as `run` would, and the routing table it resolves to.
//! - [`capture`]: the classifier's per-flow state machine over a pcap or pcapng capture
//!   (`sni-user classify`).

pub mod capture;
pub mod check;
pub mod stats;
pub mod top;
pub mod top_fingerprints;
