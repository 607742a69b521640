//! sni-user (userspace): loads and attaches the XDP SNI classifier, pins its maps, reads its
//! counters, and hosts the command-line interface. The `sni-user` binary is a thin `main` over
//! [`cli::main`].
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`loader`]: loading, map setup, pinning, attaching; [`loader::PinnedMaps`] for readers.
//! - [`stats`]: counters read from the pinned maps, as a table or JSON.
//! - [`cli`]: the commands, and the control plane of `run` (signals, kernel logs).

pub mod cli;
pub mod config;
pub mod loader;
pub mod stats;
