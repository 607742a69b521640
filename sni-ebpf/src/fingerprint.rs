//! Stage 4b, the fingerprint: a ClientHello read to its end (with `SNI_JA4` on) gets its JA4
//! key (`sni_common::ja4`): a configured fingerprint's slot when userspace has learnt that
//! the key's JA4 is configured (`SNI_JA4_SLOTS`), else an entry in the LRU of other
//! fingerprints (`SNI_JA4_OTHER`). A key the LRU did not hold is new: its lists go to
//! userspace through the ring buffer (`SNI_JA4_EVENTS`), which computes the JA4 string.
//! Once the verdict is known, the ClientHello is counted per fingerprint and per (host,
//! fingerprint).

use aya_ebpf::bindings::BPF_NOEXIST;
use sni_common::{
    flow::{verdict, Flow},
    ja4::{Ja4Key, Ja4State},
    maps::{counter, HostJa4, Ja4Stats},
};

use crate::{
    atomic::add,
    counters::count,
    maps::{
        SNI_JA4_EVENTS, SNI_JA4_HOSTS, SNI_JA4_LEARNED, SNI_JA4_OTHER, SNI_JA4_SLOTS, SNI_JA4_STATS,
    },
};

/// A ClientHello's fingerprint: its key, its configured slot (0 when not configured), and its
/// counters.
pub struct Fingerprint {
    /// The key.
    pub key: Ja4Key,
    /// Fingerprint slot of a configured fingerprint, else 0.
    pub slot: u32,
    /// Its counters (configured, or in the LRU of others); None when the LRU refused it.
    stats: Option<*mut Ja4Stats>,
}

/// The fingerprint of the ClientHello whose JA4 state is `state`, a value in this CPU's scratch.
#[inline(always)]
pub fn read(state: &Ja4State) -> Fingerprint {
    count(counter::JA4);
    let key = state.key();
    // Configured fingerprints' keys are looked up only once userspace has learnt one.
    let learned = SNI_JA4_LEARNED.get(0).is_some_and(|n| *n != 0);
    if let Some(slot) = learned.then(|| SNI_JA4_SLOTS.get_ptr(&key)).flatten() {
        // SAFETY: a map value of one integer.
        let slot = unsafe { *slot };
        return Fingerprint {
            key,
            slot,
            stats: SNI_JA4_STATS.get_ptr_mut(slot),
        };
    }
    let mut stats = SNI_JA4_OTHER.get_ptr_mut(&key);
    if stats.is_none() {
        // NOEXIST: when another CPU creates it in between, that one stays and sends the lists.
        if SNI_JA4_OTHER
            .insert(&key, &Ja4Stats::default(), u64::from(BPF_NOEXIST))
            .is_ok()
        {
            count(counter::JA4_NEW);
            if SNI_JA4_EVENTS.output::<Ja4State>(state, 0).is_err() {
                // The ring buffer is full: the key leaves again, so that its next ClientHello
                // sends its lists again (a key that stayed would never be named or learnt).
                // This ClientHello is counted in `ja4_lost`, not in the fingerprint's own
                // counters; its host's row of the key still counts it (readers show that key
                // as its JA4_a until its lists come).
                count(counter::JA4_LOST);
                let _ = SNI_JA4_OTHER.remove(&key);
                return Fingerprint {
                    key,
                    slot: 0,
                    stats: None,
                };
            }
        }
        stats = SNI_JA4_OTHER.get_ptr_mut(&key);
    }
    Fingerprint {
        key,
        slot: 0,
        stats,
    }
}

/// Counts the ClientHello of `flow` (its host and verdict decided) toward its fingerprint and
/// toward the (host, fingerprint) pair.
#[inline(always)]
pub fn charge(fp: &Fingerprint, flow: &Flow) {
    if let Some(v) = fp.stats {
        // SAFETY: a live map value of fingerprint counters, every write to which is atomic.
        unsafe { add_hello(v, flow.verdict) };
    }
    let pair = HostJa4 {
        ja4: fp.key,
        name_hash: if flow.slot == 0 { flow.name_hash } else { 0 },
        slot: flow.slot,
        kind: flow.kind,
        _pad: [0; 3],
    };
    let mut v = SNI_JA4_HOSTS.get_ptr_mut(&pair);
    if v.is_none() {
        let _ = SNI_JA4_HOSTS.insert(&pair, &Ja4Stats::default(), u64::from(BPF_NOEXIST));
        v = SNI_JA4_HOSTS.get_ptr_mut(&pair);
    }
    if let Some(v) = v {
        // SAFETY: as above.
        unsafe { add_hello(v, flow.verdict) };
    }
}

/// Adds one ClientHello that got `verdict` to `v`.
///
/// # Safety
/// `v` points to a live fingerprint counters value of a map (8-aligned, shared by every CPU).
#[inline(always)]
unsafe fn add_hello(v: *mut Ja4Stats, verdict: u8) {
    // SAFETY: the caller's pointer; each add touches one aligned field of it.
    unsafe {
        add(&raw mut (*v).client_hellos, 1);
        match verdict {
            verdict::DROP => add(&raw mut (*v).dropped, 1),
            verdict::RATE_LIMITED => add(&raw mut (*v).rate_limited, 1),
            _ => {}
        }
    }
}
