//! Shared by both sides of sni: the XDP program (`sni-ebpf`, no_std, kernel) and the userspace
//! loader, terminator and tools (`sni-user`).
//!
//! - [`hello`]: the TLS ClientHello parser, a resumable state machine. The kernel runs it over
//!   packet bytes copied into a per-CPU buffer; userspace runs the very same code in tests, in
//!   `sni-user classify` and wherever bytes must be read without terminating TLS.
//! - [`flow`]: per-flow state: where a segment continues a ClientHello, a flow's host and
//!   verdict, the per-host rate limit.
//! - [`flow_table`]: the flow table's buckets, entries and hashes.
//! - [`ja4`]: JA4 client fingerprints: what the parser gathers, the kernel's key, the string.
//! - [`host`]: host-name normalisation and the fixed-size host key used by every map.
//! - [`pattern`]: configured names (exact or `*.`) and the one rule for which covers a name.
//! - [`maps`]: map names, `#[repr(C)]` map keys and values, and global counter indices.
#![no_std]
#![deny(unsafe_code)]

pub mod flow;
pub mod flow_table;
pub mod hello;
pub mod host;
pub mod ja4;
pub mod maps;
pub mod pattern;

#[cfg(feature = "user")]
#[expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe marker trait for plain-old-data map types"
)]
mod pod;

pub use hello::{Input, Outcome, Parser, Progress};
pub use host::HostKey;
pub use pattern::HostPattern;
