//! Stage 4, the host: a ClientHello read to its outcome is counted, its name found among the
//! configured hosts (exactly, or by a `*.` pattern one label up) or among the other names
//! seen, its verdict decided (stage 5), and its flow remembered (stage 2).

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_loop, programs::XdpContext};
use aya_log_ebpf::debug;
use sni_common::{
    flow::{kind, Flow},
    host::MAX_NAME_LEN,
    maps::{counter, HostStats, Scratch},
    HostKey, Outcome,
};

use crate::{
    counters::{charge, count},
    flow,
    headers::Segment,
    maps::{
        debug_enabled, wildcards_enabled, SNI_HOSTS, SNI_HOST_STATS, SNI_OTHER, SNI_OTHER_NAMES,
        SNI_SCRATCH,
    },
    verdict,
};

/// The ClientHello in the scratch was read to an outcome: counts it, finds its host and
/// verdict, remembers the flow. Returns the XDP action for this packet.
#[inline(always)]
pub fn classify(ctx: &XdpContext, seg: &Segment, scratch: *mut Scratch) -> u32 {
    // Scalars out of this CPU's scratch first: the wildcard search below runs callbacks that
    // write the scratch, so no reference into it may live across it.
    // SAFETY: this CPU's scratch, between callbacks.
    let (hello, ech, outcome, name_len, records) = unsafe {
        let p = &(*scratch).pending.parser;
        (
            p.is_client_hello(),
            p.has_ech(),
            p.outcome(),
            p.host.len,
            p.records(),
        )
    };
    if !hello {
        // Not TLS after all: nothing to remember.
        return verdict::action(sni_common::flow::verdict::PASS);
    }
    count(counter::CLIENT_HELLOS);
    if ech {
        count(counter::ECH);
    }
    count(match outcome {
        Outcome::Sni => counter::SNI,
        Outcome::NoSni => counter::NO_SNI,
        Outcome::Malformed => counter::MALFORMED,
        Outcome::Incomplete => counter::INCOMPLETE,
    });
    let mut flow = Flow::default();
    let mut stats = None;
    if outcome == Outcome::Sni {
        // SAFETY: as above.
        flow.name_hash = unsafe { (*scratch).pending.parser.host.hash64() };
        let slot = slot(scratch);
        if slot != 0 {
            flow.kind = kind::CONFIGURED;
            flow.slot = slot;
            stats = SNI_HOST_STATS.get_ptr_mut(slot);
        } else {
            flow.kind = kind::OTHER;
            stats = other_stats(flow.name_hash, scratch);
        }
        flow.verdict = verdict::decide(slot);
    } else if outcome == Outcome::NoSni {
        flow.kind = kind::NO_NAME;
        flow.verdict = verdict::decide(0);
    }
    // SAFETY: this CPU's scratch, read after the last callback.
    let (segments, bytes) = unsafe { ((*scratch).pending.segments, (*scratch).pending.bytes) };
    if let Some(v) = stats {
        // SAFETY: a per-CPU value of this CPU.
        let v = unsafe { &mut *v };
        v.client_hellos += 1;
        v.ech += u64::from(ech);
        charge(v, segments, bytes, flow.verdict);
    }
    flow::remember(&seg.key, &flow);
    if debug_enabled() {
        debug!(
            ctx,
            "ClientHello {} name_len={} ech={} records={} segments={} slot={} verdict={}",
            outcome.as_str(),
            name_len,
            ech as u8,
            records,
            segments,
            flow.slot,
            flow.verdict
        );
    }
    verdict::action(flow.verdict)
}

/// The slot of the configured host the parser's name belongs to (exactly, or by a `*.`
/// pattern one label up); 0 when it is not configured.
#[inline(always)]
fn slot(scratch: *mut Scratch) -> u32 {
    // SAFETY: the key is read by the helper from this CPU's scratch; values are integers.
    if let Some(slot) = unsafe { SNI_HOSTS.get(&(*scratch).pending.parser.host) } {
        return *slot;
    }
    if wildcards_enabled() && wildcard_pattern(scratch) {
        // SAFETY: as above.
        if let Some(slot) = unsafe { SNI_HOSTS.get(&(*scratch).wildcard) } {
            return *slot;
        }
    }
    0
}

/// Builds the wildcard pattern of the parser's name into the scratch's `wildcard` (the
/// shared `HostKey::wildcard_*` rules, one byte per `bpf_loop` step); whether there is one.
#[inline(always)]
fn wildcard_pattern(scratch: *mut Scratch) -> bool {
    // SAFETY: this CPU's scratch, written by the callbacks in between, so only read through
    // the raw pointer. The callbacks have the signature bpf_loop expects and find their state
    // in the scratch.
    unsafe {
        (*scratch).dot = MAX_NAME_LEN as u32;
        bpf_loop(
            MAX_NAME_LEN as u32,
            find_dot as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        let dot = (*scratch).dot as usize;
        let len = (*scratch).pending.parser.host.len;
        if dot >= MAX_NAME_LEN || !HostKey::wildcard_ok(len, dot) {
            return false;
        }
        bpf_loop(
            MAX_NAME_LEN as u32,
            copy_wildcard as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        (*scratch).wildcard.len = HostKey::wildcard_len(len, dot);
    }
    true
}

/// `bpf_loop` step `i` of the search for the first dot; stops at it.
extern "C" fn find_dot(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch; the caller holds no reference to it across bpf_loop, and
    // this one lives only for the test.
    if unsafe { (*scratch).pending.parser.host.is_first_dot(i as usize) } {
        // SAFETY: as above.
        unsafe { (*scratch).dot = i as u32 };
        return 1;
    }
    0
}

/// `bpf_loop` step `i` of the copy of the wildcard pattern.
extern "C" fn copy_wildcard(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let i = i as usize;
    if i >= MAX_NAME_LEN {
        return 1;
    }
    // SAFETY: as in `find_dot`: one field read, then one written.
    unsafe {
        let b = (*scratch)
            .pending
            .parser
            .host
            .wildcard_byte((*scratch).dot as usize, i);
        (*scratch).wildcard.name[i] = b;
    }
    0
}

/// The counters of a name that is not configured, created on first sight; its name kept
/// beside them.
#[inline(always)]
fn other_stats(hash: u64, scratch: *mut Scratch) -> Option<*mut HostStats> {
    // Looked up at each ClientHello, so that the name leaves the LRU no sooner than its
    // counters; written again if it left anyway.
    if SNI_OTHER_NAMES.get_ptr(&hash).is_none() {
        // SAFETY: this CPU's scratch; the helper copies the name.
        let _ = SNI_OTHER_NAMES.insert(&hash, unsafe { &(*scratch).pending.parser.host }, 0);
    }
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
