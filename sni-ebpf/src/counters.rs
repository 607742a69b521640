//! Counting: the global counters (per CPU, by `sni_common::maps::counter` index) and a host's
//! counters.

use sni_common::{flow::verdict, maps::HostStats};

use crate::maps::SNI_GLOBAL;

/// Adds one to global counter `index`.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = SNI_GLOBAL.get_ptr_mut(index) {
        // SAFETY: a per-CPU value of this CPU.
        unsafe { *c += 1 };
    }
}

/// Adds `packets` packets of `bytes` to a host's counters; the last of them (this one) got
/// `verdict` (earlier segments of a split ClientHello passed before the name was known).
#[inline(always)]
pub fn charge(v: &mut HostStats, packets: u32, bytes: u64, verdict: u8) {
    v.packets += u64::from(packets);
    v.bytes += bytes;
    match verdict {
        verdict::DROP => v.dropped += 1,
        verdict::RATE_LIMITED => v.rate_limited += 1,
        _ => {}
    }
}
