//! Counting: the global counters (per CPU, by `sni_common::maps::counter` index) and a host's
//! counters (shared by every CPU, added to atomically).

use aya_ebpf::bindings::BPF_NOEXIST;
use sni_common::{
    flow::{verdict, Owner},
    maps::{counter, HostStats},
};

use crate::{
    atomic::add,
    maps::{SNI_GLOBAL, SNI_HOST_STATS, SNI_OTHER},
};

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
///
/// # Safety
/// `v` points to a live host counters value of a map (8-aligned, shared by every CPU).
#[inline(always)]
pub unsafe fn charge(v: *mut HostStats, packets: u64, bytes: u64, verdict: u8) {
    // SAFETY: the caller's pointer; each add touches one aligned field of it.
    unsafe {
        add(&raw mut (*v).packets, packets);
        add(&raw mut (*v).bytes, bytes);
        match verdict {
            verdict::DROP => add(&raw mut (*v).dropped, 1),
            verdict::RATE_LIMITED => add(&raw mut (*v).rate_limited, 1),
            _ => {}
        }
    }
}

/// The counters of `owner`: a configured host's by slot, another name's created on first
/// sight (counted as untracked when the map refuses it).
#[inline(always)]
pub fn of(owner: Owner) -> Option<*mut HostStats> {
    match owner {
        Owner::Configured(slot) => SNI_HOST_STATS.get_ptr_mut(slot),
        Owner::Other(hash) => {
            if let Some(v) = SNI_OTHER.get_ptr_mut(&hash) {
                return Some(v);
            }
            // NOEXIST: if another CPU creates it in between, that one stays.
            let _ = SNI_OTHER.insert(&hash, &HostStats::default(), u64::from(BPF_NOEXIST));
            let v = SNI_OTHER.get_ptr_mut(&hash);
            if v.is_none() {
                count(counter::HOST_UNTRACKED);
            }
            v
        }
    }
}
