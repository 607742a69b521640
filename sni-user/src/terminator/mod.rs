//! The terminator, the connection path (mio + rustls): each connection's ClientHello is read
//! with the same parser the XDP program runs, routed to its host, then terminated with the
//! host's certificate (plaintext to its backend) or relayed as it is (passthrough).
//!
//! - [`server`]: the workers, one mio event loop and `SO_REUSEPORT` listener set per thread.
//! - [`conn`]: one connection, as a state machine driven by readiness.
//! - [`hello_reader`]: the ClientHello read before rustls sees it, and the hand-over.
//! - [`routes`]: name → host (exact, wildcard, default), with its TLS config and backend.
//! - [`ticket_keys`]: session ticket keys from a file, shared by a fleet.
//! - [`buf`]: the bounded byte queue between the two sides.
//! - [`counters`]: per-host and global counters shared by the workers.

pub mod buf;
pub mod conn;
pub mod counters;
pub mod hello_reader;
pub mod routes;
pub mod server;
pub mod ticket_keys;
