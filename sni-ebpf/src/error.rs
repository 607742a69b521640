//! Why the program gave up on a packet. Every stage returns these with `?`; the entry point
//! counts each once (`errors` in the global counters) and passes the packet: the program
//! fails open.

use sni_common::maps::counter;

/// A failure of the program itself, never of the packet: a packet that is not what it claims
/// (not TLS, malformed, truncated) is an outcome of its stage, not an error.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Error {
    /// A lookup that cannot fail did: an array index within the array, set up by the loader.
    Map = 1,
    /// A kernel helper refused: copying payload bytes (`bpf_xdp_load_bytes`), `bpf_loop` (or
    /// it ended with payload bytes the parser never read).
    Helper = 2,
    /// A map update failed: a pending ClientHello could not be saved for its next segment.
    Update = 3,
}

impl Error {
    /// The global counter it is counted in.
    #[inline(always)]
    pub const fn counter(self) -> u32 {
        counter::ERRORS
    }
}
