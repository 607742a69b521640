//! Stage 5, the verdict: a new ClientHello's host action, then its rate limit (GCRA, one
//! bucket per host shared by every CPU); and the XDP action of a verdict.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns};
use sni_common::{
    flow::{gcra, verdict, ACTION_DROP},
    maps::counter,
};

use crate::{
    atomic::cmpxchg,
    counters::count,
    maps::{SNI_BUCKETS, SNI_POLICY},
};

/// Compare-and-swap attempts on a rate-limit bucket before letting the ClientHello pass.
const CAS_ATTEMPTS: usize = 4;

/// The verdict of a new ClientHello for host slot `slot`: its action, then its rate limit.
#[inline(always)]
pub fn decide(slot: u32) -> u8 {
    let Some(policy) = SNI_POLICY.get(slot) else {
        return verdict::PASS;
    };
    if policy.action == ACTION_DROP {
        return verdict::DROP;
    }
    if policy.interval_ns == 0 {
        return verdict::PASS;
    }
    let Some(bucket) = SNI_BUCKETS.get_ptr_mut(slot) else {
        return verdict::PASS;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value shared by every CPU, 8-aligned, written only by `cmpxchg`.
    let tat = unsafe { &raw mut (*bucket).tat_ns };
    for _ in 0..CAS_ATTEMPTS {
        // SAFETY: as above; a torn read is impossible for an aligned 8-byte load, and a stale
        // one only makes the exchange below fail.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let Some(new) = gcra(old, now, policy.interval_ns, policy.tolerance_ns) else {
            return verdict::RATE_LIMITED;
        };
        // SAFETY: as above.
        if unsafe { cmpxchg(tat, old, new) } {
            return verdict::PASS;
        }
    }
    // Other CPUs kept winning the race: fail open.
    verdict::PASS
}

/// The XDP action of a verdict, counting the drops.
#[inline(always)]
pub fn action(v: u8) -> u32 {
    match v {
        verdict::DROP => {
            count(counter::DROPPED);
            xdp_action::XDP_DROP
        }
        verdict::RATE_LIMITED => {
            count(counter::RATE_LIMITED);
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
}
