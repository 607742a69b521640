//! The kernel side: what userspace does with the XDP program (`sni-ebpf`) and its maps.
//!
//! - [`loader`]: loading, map setup, attaching, pinning; what a reload does to the maps
//!   ([`loader::Classifier::apply`]).
//! - [`fingerprints`]: configured JA4 fingerprints in the maps, and learning which kernel
//!   keys stand for them from the kernel's ring buffer of new fingerprints.
//! - [`flow_table`]: the kernel's flow table as userspace reads and rewrites it.
//! - [`fingerprint_rows`]: what readers see of fingerprints, by JA4 string.
//! - [`slots`]: which host owns which slot of the per-host maps, across reloads.
//! - [`readers`]: what readers of the pinned maps see: host counters (with what the flow
//!   caches still owe them), global counters, snapshots.

pub mod fingerprint_rows;
pub mod fingerprints;
pub mod flow_table;
pub mod loader;
pub mod readers;
pub mod slots;
