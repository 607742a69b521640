//! The flow table (`SNI_FLOWS`): a flow in one of the eight entries of its two buckets, found
//! by comparing keys, written in place (`sni_common::flow_table` has the layout and why).
//!
//! Every CPU writes the table, so each write claims the entry first: a compare-and-swap of
//! word 4 to `BUSY`, then the key's other words and the flow, then word 4 last. A reader
//! reads word 4 first and again after the fields it needs; if it changed, a CPU wrote the
//! entry meanwhile and the reader takes the flow as not found.

use core::sync::atomic::{compiler_fence, Ordering};

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use sni_common::flow_table::{
    FlowEntry, BUSY, KEY_BITS, STAMP_MASK, STAMP_SHIFT, STAMP_UNIT_SHIFT, WAYS,
};

use crate::{
    atomic::cmpxchg,
    maps::{SNI_FLOWS, SNI_FLOW_SHAPE},
};

/// A flow found in the table: its entry, and word 4 of the entry's key as it was read.
#[derive(Clone, Copy)]
pub struct Found {
    entry: *mut FlowEntry,
    w4: u64,
}

impl Found {
    /// The entry.
    #[inline(always)]
    pub fn entry(&self) -> *mut FlowEntry {
        self.entry
    }

    /// Whether the entry still holds what was found: no CPU claimed it since. Call after
    /// reading the fields to use.
    #[inline(always)]
    pub fn still(&self) -> bool {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: a live entry of the table; word 4 is read whole.
        unsafe { core::ptr::read_volatile(&raw const (*self.entry).key[4]) == self.w4 }
    }
}

/// The two buckets' first entries of the flow of `words`; `None` if the shape cannot be read.
#[inline(always)]
fn buckets(words: &[u64; 5]) -> Option<[u32; 2]> {
    Some(SNI_FLOW_SHAPE.get(0)?.buckets(words))
}

/// Word 4 of `e`'s key, read once.
///
/// # Safety
/// `e` is a live entry of the table.
#[inline(always)]
unsafe fn word4(e: *mut FlowEntry) -> u64 {
    // SAFETY: the caller's.
    unsafe { core::ptr::read_volatile(&raw const (*e).key[4]) }
}

/// The entry of bucket `first` that holds the flow of `words`.
#[inline(always)]
fn find_in(first: u32, words: &[u64; 5]) -> Option<Found> {
    for way in 0..WAYS {
        let entry = SNI_FLOWS.get_ptr_mut(first.wrapping_add(way))?;
        // SAFETY: a live entry of the table; word 4 first (see the module docs).
        let w4 = unsafe { word4(entry) };
        compiler_fence(Ordering::SeqCst);
        // SAFETY: as above.
        if unsafe { (*entry).holds(w4, words) } {
            return Some(Found { entry, w4 });
        }
    }
    None
}

/// The entry holding the flow of `words`.
#[inline(always)]
pub fn find(words: &[u64; 5]) -> Option<Found> {
    let [a, b] = buckets(words)?;
    find_in(a, words).or_else(|| find_in(b, words))
}

/// Writes `flow` for the flow of `words`: into the entry that holds it, else an empty one,
/// else the one written longest ago, of its two buckets. Nothing is written if another CPU
/// is writing the entry chosen (it wins), or if the table cannot be read.
#[inline(always)]
pub fn insert(words: &[u64; 5], flow: &sni_common::flow::Flow) {
    let Some([a, b]) = buckets(words) else {
        return;
    };
    // SAFETY: a helper without arguments.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } >> STAMP_UNIT_SHIFT) & STAMP_MASK;
    // The best entry so far and its rank: the flow's own, then empty, then the oldest; never
    // one being written.
    let mut pick: Option<Found> = None;
    let mut best = 0u64;
    for i in 0..2 * WAYS {
        let index = if i < WAYS {
            a.wrapping_add(i)
        } else {
            b.wrapping_add(i - WAYS)
        };
        let Some(entry) = SNI_FLOWS.get_ptr_mut(index) else {
            return;
        };
        // SAFETY: a live entry of the table.
        let w4 = unsafe { word4(entry) };
        let rank = if w4 == BUSY {
            0
        } else if w4 == 0 {
            STAMP_MASK + 2
        // SAFETY: as above.
        } else if unsafe { (*entry).holds(w4, words) } {
            STAMP_MASK + 3
        } else {
            FlowEntry::age(w4, now) + 1
        };
        if rank > best {
            best = rank;
            pick = Some(Found { entry, w4 });
        }
    }
    let Some(Found { entry, w4 }) = pick else {
        return;
    };
    // SAFETY: a live entry of the table, claimed before anything else is written, so no other
    // CPU writes it until word 4 is stored last.
    unsafe {
        if !cmpxchg(&raw mut (*entry).key[4], w4, BUSY) {
            return;
        }
        (*entry).key[0] = words[0];
        (*entry).key[1] = words[1];
        (*entry).key[2] = words[2];
        (*entry).key[3] = words[3];
        (*entry).flow = *flow;
        compiler_fence(Ordering::SeqCst);
        core::ptr::write_volatile(
            &raw mut (*entry).key[4],
            (words[4] & KEY_BITS) | now << STAMP_SHIFT,
        );
    }
}

/// Empties the entry holding the flow of `words`; whether there was one.
#[inline(always)]
pub fn remove(words: &[u64; 5]) -> bool {
    let Some(found) = find(words) else {
        return false;
    };
    // SAFETY: a live entry of the table; if another CPU claimed it meanwhile, it is writing
    // another flow there, which stays.
    unsafe { cmpxchg(&raw mut (*found.entry).key[4], found.w4, 0) };
    true
}
