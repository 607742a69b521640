//! sni-user (userspace): the `sni-user` binary is a thin `main` over [`cli::main`]; everything
//! lives here, one folder per part of the architecture:
//!
//! - [`kernel`]: the XDP classifier's userspace side — load, attach, maps, pins, reload, and
//!   the readers of its counters. The packet path itself is `sni-ebpf`.
//! - [`terminator`]: the connection path — TLS termination (mio + rustls), routing per
//!   host, passthrough, limits.
//! - [`daemon`]: `sni-user run` — the control plane around both: signals, reloads, the
//!   control socket, metrics, the privilege drop.
//! - [`acme`]: certificates by ACME: the state directory, the TLS-ALPN-01 challenges the
//!   terminator answers, and the daemon's ordering and renewal task.
//! - [`tools`]: `stats`, `top`, `check`, `classify` (offline captures).
//! - [`config`]: the TOML configuration and its validation, shared by all of the above.
//! - [`cli`]: the commands (clap) and their dispatch.
//!
//! Uses go downward: `cli` → `tools` and `daemon` → `terminator` → `kernel` (the flow
//! table reader, for the hand-off) → `config`. Two uses go across: `tools::stats` and
//! `tools::top` ask the daemon's control socket (`daemon::control`'s client), and
//! `tools::check` resolves `user` as the daemon will (`daemon::privileges`). `acme` sits
//! beside `terminator`: the terminator reads its challenges and its stored certificates,
//! the daemon runs its client.
#![forbid(unsafe_code)]

pub mod acme;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod kernel;
pub mod terminator;
pub mod tools;
