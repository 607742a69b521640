//! Stage 5, the verdict: a new ClientHello's host and fingerprint actions, then their rate
//! limits (GCRA, one bucket per host and per configured fingerprint, shared by every CPU); and
//! the XDP action of a verdict.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns};
use sni_common::{
    flow::{gcra, verdict, Bucket, Policy, ACTION_DROP},
    maps::counter,
};

use crate::{
    atomic::cmpxchg,
    counters::count,
    maps::{SNI_BUCKETS, SNI_JA4_BUCKETS, SNI_JA4_POLICY, SNI_POLICY},
};

/// Compare-and-swap attempts on a rate-limit bucket before letting the ClientHello pass.
const CAS_ATTEMPTS: usize = 4;

/// The verdict of a new ClientHello for host slot `slot` and fingerprint slot `ja4_slot` (0:
/// not a configured fingerprint): the stricter of the two. A drop action of either drops;
/// then the host's rate limit, then the fingerprint's, each taking a token only when the
/// ClientHello got that far.
#[inline(always)]
pub fn decide(slot: u32, ja4_slot: u32) -> u8 {
    let host = SNI_POLICY.get(slot);
    let ja4 = if ja4_slot != 0 {
        SNI_JA4_POLICY.get(ja4_slot)
    } else {
        None
    };
    if host.is_some_and(|p| p.action == ACTION_DROP) || ja4.is_some_and(|p| p.action == ACTION_DROP)
    {
        return verdict::DROP;
    }
    if let Some(p) = host {
        if !within_rate(p, SNI_BUCKETS.get_ptr_mut(slot)) {
            return verdict::RATE_LIMITED;
        }
    }
    if let Some(p) = ja4 {
        if !within_rate(p, SNI_JA4_BUCKETS.get_ptr_mut(ja4_slot)) {
            return verdict::RATE_LIMITED;
        }
    }
    verdict::PASS
}

/// Whether a ClientHello is within `policy`'s rate (GCRA on `bucket`, shared by every CPU);
/// true without a rate, or when the bucket cannot be read or updated (fail open).
#[inline(always)]
fn within_rate(policy: &Policy, bucket: Option<*mut Bucket>) -> bool {
    if policy.interval_ns == 0 {
        return true;
    }
    let Some(bucket) = bucket else {
        return true;
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
            return false;
        };
        // SAFETY: as above.
        if unsafe { cmpxchg(tat, old, new) } {
            return true;
        }
    }
    // Other CPUs kept winning the race: fail open.
    true
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
