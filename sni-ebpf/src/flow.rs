//! Stage 2, the flow: a packet of a flow whose ClientHello was already read counts toward its
//! host and gets its verdict here, without parsing. A SYN forgets what the 5-tuple's previous
//! connection left.
//!
//! The flow table (`SNI_FLOWS`: buckets in an array shared by every CPU, `flow_table`; the
//! terminator reads it too) is the record. In front of it, each CPU keeps a direct-mapped
//! cache (its block of `SNI_FLOW_CACHE`): the entry at the flow's `cache_index`, tagged with
//! its key and the epoch it was copied in. A hit costs an array index and a compare of five
//! words, in memory only this CPU writes, instead of two tag lines and an entry of the shared
//! table; a miss falls back to the table and fills the entry. Only
//! flows that pass are cached, so a stale copy can at worst count a packet toward the host of
//! the 5-tuple's previous connection, never drop one.
//!
//! A cached flow's packets are counted in its entry, which only its CPU writes, not in the
//! host's counters, which every CPU shares: when the entry goes to another flow, what it owes
//! is added to them atomically. Readers add what the entries still owe, so the counts are
//! exact once traffic stops, while a popular host's counters are written once per flow and
//! CPU, not per packet.
//!
//! Copies go stale when:
//! - userspace rewrites flows (a reload that changes an action or removes a host): it bumps
//!   `SNI_EPOCH`, and every copy of an older epoch is a miss;
//! - a SYN reuses the 5-tuple: its CPU clears its own entry, and when the table knew the flow,
//!   every other CPU's entry for it too;
//! - the table evicted the flow and the 5-tuple came back with its SYN on another CPU: a
//!   segment that starts a ClientHello never takes a cached copy, so the new one is read.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_get_smp_processor_id, bpf_loop},
    programs::XdpContext,
};
use sni_common::{
    flow::{cache_index, cache_slot, same_key, verdict::PASS, CachedFlow, Flow},
    maps::counter,
};

use crate::{
    counters::{self, charge},
    flow_table,
    headers::{Key, Segment},
    hello,
    maps::{cache_mask, cache_seed, SNI_EPOCH, SNI_FLOW_CACHE},
    verdict,
};

/// CPUs whose cache entries a SYN clears at most: the kernel's largest `NR_CPUS` (8192). The
/// cache has no entry past the last possible CPU's, which ends the loop far earlier.
const MAX_CPUS: u32 = 8192;

/// A packet of a flow whose ClientHello was read: counts it toward the flow's host and sets
/// `action` to the flow's verdict. False, and nothing done, when the flow is not classified.
///
/// The flow is found in this CPU's cache, else in the flow table (then cached). A cached
/// copy is not trusted with a segment that starts a ClientHello: that is the table's to say
/// (a retransmitted ClientHello of this flow), or a new connection on the 5-tuple whose SYN
/// another core saw after the table had evicted the old flow, which must be read. The cache
/// entry is read in place; the table's flow is copied, then its key checked again
/// (`flow_table::Found::still`), since another CPU may write the entry meanwhile.
///
/// A packet of a cached flow is counted in its cache entry, which only this CPU writes; the
/// host's shared counters get it when the entry goes to another flow (`fill`).
#[inline(always)]
pub fn packet(ctx: &XdpContext, seg: &Segment, frame_len: u64, action: &mut u32) -> bool {
    let key = &seg.key;
    // Epoch 0 (never live) if the map could not be read, or for a segment that starts a
    // ClientHello: the cache is then only bypassed.
    let epoch = if hello::starts(ctx, seg) {
        0
    } else {
        SNI_EPOCH.get(0).copied().unwrap_or(0)
    };
    // Both uses of the entry want a live epoch: without one it is not looked up at all.
    let cached = if epoch != 0 {
        this_cpus(cache_index(&key.words, cache_seed(), cache_mask()))
    } else {
        None
    };
    if let Some(c) = cached {
        // SAFETY: an entry of this CPU's block; this program on this CPU is its only writer
        // in the kernel but for a SYN on another CPU clearing `epoch` (see `clear_on_cpu`);
        // userspace rewrites entries only to clear what they owe a slot a reload freed.
        let c = unsafe { &mut *c };
        if c.holds(&key.words, epoch) {
            counters::count(counter::FLOW_PACKETS);
            c.packets += 1;
            c.bytes += frame_len;
            // Only flows that pass are cached (`fill`).
            *action = xdp_action::XDP_PASS;
            return true;
        }
    }
    let Some(found) = flow_table::find(&key.words) else {
        return false;
    };
    // SAFETY: a live entry of the table, copied; `still` then says whether another CPU wrote
    // it meanwhile, and the copy is used only if none did (else the flow is not found).
    let flow = unsafe { (*found.entry()).flow };
    if !found.still(&key.words) {
        return false;
    }
    found.touch();
    let flow = &flow;
    counters::count(counter::FLOW_PACKETS);
    match cached {
        // Cached, and counted in the entry from this packet on.
        Some(c) if flow.verdict == PASS => {
            fill(c, &key.words, flow, epoch, 1, frame_len);
        }
        _ => {
            if let Some(v) = flow.owner().and_then(counters::of) {
                // SAFETY: a live map value of host counters.
                unsafe { charge(v, 1, frame_len, flow.verdict) };
            }
        }
    }
    *action = verdict::action(flow.verdict);
    true
}

/// Remembers the flow of a ClientHello read to its outcome (or given up), so that its later
/// packets are not parsed: in the table, and in this CPU's cache. The ClientHello's own
/// segments were counted by the host stage.
#[inline(always)]
pub fn remember(key: &Key, flow: &Flow) {
    flow_table::insert(&key.words, flow);
    let epoch = SNI_EPOCH.get(0).copied().unwrap_or(0);
    if epoch == 0 {
        return;
    }
    if let Some(c) = this_cpus(cache_index(&key.words, cache_seed(), cache_mask())) {
        fill(c, &key.words, flow, epoch, 0, 0);
    }
}

/// A SYN: forgets the 5-tuple's previous connection, pending ClientHello, flow and cached
/// copies.
#[inline(always)]
pub fn forget(key: &Key) {
    hello::forget(key.flow_key());
    let index = cache_index(&key.words, cache_seed(), cache_mask());
    if let Some(c) = this_cpus(index) {
        // Cleared whatever flow it holds: comparing the key first loads the entry, which
        // measured +90 ns a SYN (a flood's cost); a flow it held only pays a table lookup.
        // SAFETY: an entry of this CPU's block.
        unsafe { (*c).epoch = 0 };
    }
    // Other CPUs may hold a copy only of a flow the table knew.
    if !flow_table::remove(&key.words) {
        return;
    }
    let mut sweep = Sweep {
        words: key.words,
        index,
    };
    // SAFETY: `clear_on_cpu` has the callback signature bpf_loop expects; its context is
    // `sweep`, on this stack for the whole call.
    unsafe {
        bpf_loop(
            MAX_CPUS,
            clear_on_cpu as *mut c_void,
            (&raw mut sweep).cast(),
            0,
        );
    }
}

/// Gives cache entry `c` to `flow`: first adds what the entry owes its previous flow's host
/// to that host's counters, then copies `flow` in, owing `packets` of `bytes` (the packet that
/// filled it, if it is counted here). A flow that does not pass is not copied; the entry is
/// emptied, so that it cannot outlive a verdict that changed to drop.
#[inline(always)]
fn fill(c: *mut CachedFlow, words: &[u64; 5], flow: &Flow, epoch: u64, packets: u64, bytes: u64) {
    // SAFETY: an entry of this CPU's block.
    let c = unsafe { &mut *c };
    if let Some((owner, owed_packets, owed_bytes)) = c.owed() {
        if let Some(v) = counters::of(owner) {
            // SAFETY: a live map value of host counters.
            unsafe { charge(v, owed_packets, owed_bytes, PASS) };
        }
    }
    if flow.verdict == PASS {
        c.key = *words;
        c.flow = *flow;
        c.epoch = epoch;
        c.packets = packets;
        c.bytes = bytes;
    } else {
        c.epoch = 0;
        c.packets = 0;
        c.bytes = 0;
    }
}

/// CPU `cpu`'s cache entry `index` (`None` past the last possible CPU).
#[inline(always)]
fn entry(cpu: u32, index: u32) -> Option<*mut CachedFlow> {
    SNI_FLOW_CACHE.get_ptr_mut(cache_slot(cpu, index, cache_mask()))
}

/// This CPU's cache entry `index`.
#[inline(always)]
fn this_cpus(index: u32) -> Option<*mut CachedFlow> {
    // SAFETY: a helper without arguments; it reads the CPU this program runs on, which XDP
    // does not leave until it returns.
    entry(unsafe { bpf_get_smp_processor_id() }, index)
}

/// What `clear_on_cpu` clears: the entry at `index` on every CPU, if it holds `words`.
#[repr(C)]
struct Sweep {
    words: [u64; 5],
    index: u32,
}

/// `bpf_loop` step for CPU `cpu`: empties its cache entry if it holds the swept flow (an
/// entry of another flow, one that shares the index, stays cached); stops past the last CPU.
/// Only `epoch` is written: a CPU filling the entry at the same moment writes a consistent
/// copy of its own, and a cleared epoch is only ever a miss.
extern "C" fn clear_on_cpu(cpu: u64, ctx: *mut c_void) -> i64 {
    let sweep = ctx.cast::<Sweep>();
    // SAFETY: `ctx` is the `Sweep` that `forget` passed.
    let index = unsafe { (*sweep).index };
    let Some(entry) = entry(cpu as u32, index) else {
        return 1;
    };
    // SAFETY: a live entry of CPU `cpu`'s block, and `sweep` as above.
    unsafe {
        if same_key(&(*entry).key, (*entry).key[4], &(*sweep).words) {
            (*entry).epoch = 0;
        }
    }
    0
}
