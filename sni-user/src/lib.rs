//! sni-user (userspace): loads and attaches the XDP SNI classifier, pins its maps, reads its
//! counters, and hosts the command-line interface. The `sni-user` binary is a thin `main` over
//! [`cli::main`].
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`loader`]: loading, map setup, pinning, attaching; [`loader::PinnedMaps`] for readers.
//! - [`stats`]: counters read from the pinned maps, as a table or JSON.
//! - [`top`]: a live terminal view of those counters, as rates.
//! - [`routes`], [`server`], [`conn`], [`counters`]: the TLS terminator (mio + rustls):
//!   certificate per SNI, per-host backends, passthrough, limits.
//! - [`classify`]: the classifier's per-flow state machine over pcap/pcapng captures.
//! - [`cli`]: the commands, and the control plane of `run` (signals, kernel logs).

pub mod buf;
pub mod check;
pub mod classify;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod counters;
pub mod demo;
pub mod hello_reader;
pub mod loader;
pub mod metrics;
pub mod privileges;
pub mod routes;
pub mod server;
pub mod slots;
pub mod stats;
pub mod top;
