//! Stage 4, the host: a ClientHello read to its outcome is counted, its name found among the
//! configured hosts (exactly, or by a `*.` pattern one label up) or among the other names
//! seen, its fingerprint taken (stage 4b, `fingerprint`), its verdict decided (stage 5), and
//! its flow remembered (stage 2).

use core::ffi::c_void;

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_loop, programs::XdpContext};
use aya_log_ebpf::debug;
use sni_common::{
    flow::{kind, Flow},
    host::{NameHash, NameScan, MAX_NAME_LEN},
    maps::{counter, profile_stop as stop, Scratch},
    HostKey, Outcome,
};

use crate::{
    atomic::add,
    counters::{self, charge, count},
    fingerprint, flow,
    headers::Segment,
    maps::{
        debug_enabled, profile_stop, wildcards_enabled, SNI_HOSTS, SNI_NAME_KEYS, SNI_OTHER_NAMES,
        SNI_SCRATCH,
    },
    verdict,
};

/// The ClientHello in the scratch was read to an outcome: counts it, finds its host and
/// verdict, remembers the flow. Returns the XDP action for this packet.
#[inline(always)]
pub fn classify(ctx: &XdpContext, seg: &Segment, scratch: *mut Scratch) -> u32 {
    // SAFETY: this CPU's scratch; the parser's callbacks are done with it, and nothing below
    // writes it.
    let pending = unsafe { &(*scratch).pending };
    let p = &pending.parser;
    let ech = p.has_ech();
    let outcome = p.outcome();
    let (name_len, records) = (p.host.len, p.records());
    if !p.is_client_hello() {
        // Not TLS after all: nothing to remember.
        return xdp_action::XDP_PASS;
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
        Outcome::Sslv2 => counter::SSLV2,
    });
    // Read to its end with `SNI_JA4` on: its fingerprint.
    let fp = p.ja4().map(fingerprint::read);
    if profile_stop() == stop::FINGERPRINT {
        return xdp_action::XDP_PASS;
    }
    let ja4_slot = fp.as_ref().map_or(0, |f| f.slot);
    let mut flow = Flow::default();
    let mut stats = None;
    if outcome == Outcome::Sni {
        let (slot, name_hash) = slot(&p.host);
        flow.name_hash = name_hash;
        if slot != 0 {
            flow.kind = kind::CONFIGURED;
            flow.slot = slot;
        } else {
            flow.kind = kind::OTHER;
            keep_name(flow.name_hash, &p.host);
        }
        stats = flow.owner().and_then(counters::of);
        flow.verdict = verdict::decide(slot, ja4_slot);
    } else if outcome == Outcome::NoSni || outcome == Outcome::Sslv2 {
        // Without a name: `[default]`'s action and rate.
        flow.kind = kind::NO_NAME;
        flow.verdict = verdict::decide(0, ja4_slot);
    }
    let (segments, bytes) = (pending.segments, pending.bytes);
    if let Some(v) = stats {
        // SAFETY: a live map value of host counters; every write to it is atomic.
        unsafe {
            add(&raw mut (*v).client_hellos, 1);
            if ech {
                add(&raw mut (*v).ech, 1);
            }
            charge(v, u64::from(segments), bytes, flow.verdict);
        }
    }
    if profile_stop() == stop::HOST {
        return xdp_action::XDP_PASS;
    }
    if let Some(fp) = &fp {
        flow.ja4 = fp.key.hash64();
        // Slots are far fewer than 2^16 (`JA4_SLOTS_ENTRIES` and a quarter more).
        flow.ja4_slot = fp.slot as u16;
        fingerprint::charge(fp, &flow);
    }
    if profile_stop() == stop::COUNTED {
        return xdp_action::XDP_PASS;
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

/// The slot of the configured host a name belongs to (exactly, or by a `*.` pattern one
/// label up; 0 when it is not configured), and the name's `hash64`. A name is found by its
/// lookup hash and counts only if its check hash matches too (`sni_common::host::NameKeys`).
#[inline(always)]
fn slot(host: &HostKey) -> (u32, u64) {
    // Never missing (one entry, written by the loader); without it, no host and no hash.
    let Some(keys) = SNI_NAME_KEYS.get(0) else {
        return (0, 0);
    };
    let mut scan = NameScan::new(keys);
    // SAFETY: `scan_step` has the callback signature bpf_loop expects; its context is `scan`,
    // on this stack for the whole call.
    unsafe {
        bpf_loop(
            u32::from(host.len).div_ceil(SCAN_BYTES_PER_CALL as u32),
            scan_step as *mut c_void,
            (&raw mut scan).cast(),
            0,
        );
    }
    if let Some(slot) = lookup(&scan.exact) {
        return (slot, scan.hash64);
    }
    let dot = scan.dot as usize;
    if wildcards_enabled() && dot < MAX_NAME_LEN && HostKey::wildcard_ok(host.len, dot) {
        if let Some(slot) = lookup(&scan.wildcard) {
            return (slot, scan.hash64);
        }
    }
    (0, scan.hash64)
}

/// Name bytes hashed per `bpf_loop` call: a call costs more than a byte's hashing, and a
/// loop over the whole name inline is past the verifier's budget.
const SCAN_BYTES_PER_CALL: usize = 4;

/// `bpf_loop` step `i`: bytes `4i..4i+4` of the name in this CPU's scratch into the scan.
extern "C" fn scan_step(i: u64, ctx: *mut c_void) -> i64 {
    let Some(scratch) = SNI_SCRATCH.get_ptr(0) else {
        return 1;
    };
    let first = i as usize * SCAN_BYTES_PER_CALL;
    // SAFETY: `ctx` is the `NameScan` that `slot` passed; the scratch is this CPU's, only read
    // (its name is the one `slot` was given).
    unsafe {
        let host = &(*scratch).pending.parser.host;
        let scan = &mut *ctx.cast::<NameScan>();
        for k in 0..SCAN_BYTES_PER_CALL {
            host.scan_step(scan, first + k);
        }
    }
    0
}

/// The slot of the name whose hashes are `h`, if configured.
#[inline(always)]
fn lookup(h: &NameHash) -> Option<u32> {
    let entry = SNI_HOSTS.get_ptr(&h.lookup)?;
    // SAFETY: a map value of integers, read at once.
    let entry = unsafe { &*entry };
    (entry.check == h.check).then_some(entry.slot)
}

/// Keeps the name of a name that is not configured beside its counters (`SNI_OTHER`, which
/// `counters::of` creates). Looked up at each ClientHello, so that the name leaves the LRU no
/// sooner than its counters; written again if it left anyway.
#[inline(always)]
fn keep_name(hash: u64, name: &HostKey) {
    if SNI_OTHER_NAMES.get_ptr(&hash).is_none() {
        let _ = SNI_OTHER_NAMES.insert(&hash, name, 0);
    }
}
