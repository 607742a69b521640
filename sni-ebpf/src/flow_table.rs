//! The flow table (`SNI_FLOWS`, with `SNI_FLOW_TAGS`): a flow in one of the eight entries of
//! its two buckets, found through the buckets' tags and a compare of its key, written in place
//! (`sni_common::flow_table` has the layout and why).
//!
//! Every CPU writes the table, so each write claims the way's tag word first (a
//! compare-and-swap to `CLAIMED`), then stores word 4 of the entry's key as `BUSY`, the other
//! words and the flow, word 4, then the tag. A reader reads the key first and again after the
//! fields it needs (`Found::still`); if it changed, a CPU wrote the entry meanwhile and the
//! reader takes the flow as not found: that packet goes on as one of a flow not classified
//! (uncounted, passed), as it would a moment later anyway, the entry being another flow's.

use core::{
    ffi::c_void,
    sync::atomic::{compiler_fence, Ordering},
};

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_loop};
use sni_common::flow_table::{
    age, tag_word, FlowEntry, Place, BUSY, CLAIMED, STAMP_UNIT_SHIFT, WAYS,
};

use crate::{
    atomic::cmpxchg,
    maps::{SNI_FLOWS, SNI_FLOW_SHAPE, SNI_FLOW_TAGS},
};

/// A flow found in the table: its entry, its way's tag word and that word as read.
#[derive(Clone, Copy)]
pub struct Found {
    entry: *mut FlowEntry,
    tag: *mut u64,
    tag_word: u64,
}

impl Found {
    /// The entry.
    #[inline(always)]
    pub fn entry(&self) -> *mut FlowEntry {
        self.entry
    }

    /// Marks the entry used now, so that new flows take older ones first (as an LRU's lookup
    /// does): its tag's stamp moves, at most once per stamp unit (16.8 ms) and only if no CPU
    /// claimed the way meanwhile.
    #[inline(always)]
    pub fn touch(&self) {
        let now = now();
        if age(self.tag_word, now) != 0 {
            // SAFETY: a live value of the tags.
            unsafe { cmpxchg(self.tag, self.tag_word, tag_word(self.tag_word as u32, now)) };
        }
    }

    /// Whether the entry still holds the flow of `words`: no CPU wrote it since it was found
    /// (a writer stores word 4 as `BUSY` before anything else, and another flow's key differs
    /// in some word). Call after reading the fields to use.
    #[inline(always)]
    pub fn still(&self, words: &[u64; 5]) -> bool {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: a live entry of the table; word 4 first, as in `find_in`.
        unsafe {
            let w4 = word4(self.entry);
            compiler_fence(Ordering::SeqCst);
            (*self.entry).holds(w4, words)
        }
    }
}

/// The coarse clock as a stamp.
#[inline(always)]
fn now() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } >> STAMP_UNIT_SHIFT) as u32
}

/// Where the flow of `words` goes; `None` if the shape cannot be read or was never written
/// (no buckets: the table is then neither read nor written, as without the map).
#[inline(always)]
fn place(words: &[u64; 5]) -> Option<Place> {
    let shape = SNI_FLOW_SHAPE.get(0)?;
    if shape.buckets == 0 {
        return None;
    }
    Some(shape.place(words))
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

/// The tag word of entry `index` (its address, and its value read once).
#[inline(always)]
fn tag_of(index: u32) -> Option<(*mut u64, u64)> {
    let p = SNI_FLOW_TAGS.get_ptr_mut(index)?;
    // SAFETY: a live value of the tags, read whole.
    Some((p, unsafe { core::ptr::read_volatile(p) }))
}

/// The index of entry `way` of bucket `bucket`, in the table and in its tags.
#[inline(always)]
fn index(bucket: u32, way: u32) -> u32 {
    bucket.wrapping_mul(WAYS).wrapping_add(way)
}

/// The entry of `bucket` that holds the flow of `words`, looked at only where the way's tag
/// is the flow's.
#[inline(always)]
fn find_in(bucket: u32, tag: u32, words: &[u64; 5]) -> Option<Found> {
    for way in 0..WAYS {
        // Each tag and entry is an array lookup of its own, so that what the verifier tracks
        // of a found flow does not depend on the way.
        let (tag_ptr, tag_word) = tag_of(index(bucket, way))?;
        if tag_word as u32 != tag {
            continue;
        }
        let entry = SNI_FLOWS.get_ptr_mut(index(bucket, way))?;
        // SAFETY: a live entry of the table; word 4 first (see the module docs).
        let w4 = unsafe { word4(entry) };
        compiler_fence(Ordering::SeqCst);
        // SAFETY: as above.
        if unsafe { (*entry).holds(w4, words) } {
            return Some(Found {
                entry,
                tag: tag_ptr,
                tag_word,
            });
        }
    }
    None
}

/// The entry holding the flow of `words`.
#[inline(always)]
pub fn find(words: &[u64; 5]) -> Option<Found> {
    let place = place(words)?;
    let [a, b] = place.buckets;
    find_in(a, place.tag, words).or_else(|| find_in(b, place.tag, words))
}

/// Writes `flow` for the flow of `words`: into the entry that holds it, else an empty one (of
/// the bucket with more empty ones), else the one used longest ago (written, or found by a
/// packet: `Found::touch`), of its two buckets, as their tags say. Nothing is written if
/// another CPU changed the chosen way's tag since it was ranked (it claimed the way, or marked
/// its flow used), or if a map cannot be read: the flow is then not remembered, and its later
/// packets are those of a flow not classified.
#[inline(always)]
pub fn insert(words: &[u64; 5], flow: &sni_common::flow::Flow) {
    let Some(place) = place(words) else {
        return;
    };
    let mut choice = Choice {
        words: *words,
        place,
        now: now(),
        best: 0,
        pick: 0,
        seen: 0,
        empty: [0; 2],
        first_empty_b: 0,
    };
    // SAFETY: `rank_way` has the callback signature bpf_loop expects; its context is
    // `choice`, on this stack for the whole call. (A loop here, unrolled, would have the
    // verifier follow each way's ranking through the rest of the program, past its budget.)
    unsafe {
        bpf_loop(
            2 * WAYS,
            rank_way as *mut c_void,
            (&raw mut choice).cast(),
            0,
        );
    }
    if choice.best == 0 {
        // Every way claimed by another CPU.
        return;
    }
    // Two choices: an empty way of the bucket with more of them (ties to the first).
    if choice.best == EMPTY && choice.pick < WAYS && choice.empty[1] > choice.empty[0] {
        choice.pick = choice.first_empty_b;
        choice.seen = 0;
    }
    let (bucket, way) = choice.candidate(choice.pick);
    let i = index(bucket, way);
    let (Some(entry), Some(tag)) = (SNI_FLOWS.get_ptr_mut(i), SNI_FLOW_TAGS.get_ptr_mut(i)) else {
        return;
    };
    // SAFETY: a live value of the tags, claimed (from the value it was ranked with) before
    // anything else is written, so no other CPU writes the way until its tag is stored; and a
    // live entry of the table. The stores to the entry do not wait for its line (no
    // compare-and-swap there).
    unsafe {
        if !cmpxchg(tag, choice.seen, CLAIMED) {
            return;
        }
        core::ptr::write_volatile(&raw mut (*entry).key[4], BUSY);
        compiler_fence(Ordering::SeqCst);
        (*entry).key[0] = words[0];
        (*entry).key[1] = words[1];
        (*entry).key[2] = words[2];
        (*entry).key[3] = words[3];
        (*entry).flow = *flow;
        compiler_fence(Ordering::SeqCst);
        core::ptr::write_volatile(&raw mut (*entry).key[4], words[4]);
        core::ptr::write_volatile(tag, tag_word(choice.place.tag, choice.now));
    }
}

/// Which entry a new flow takes (`insert`): what `rank_way` reads and what it found so far.
struct Choice {
    words: [u64; 5],
    place: Place,
    now: u32,
    /// The best candidate's rank so far: the flow's own entry, then an empty one, then the
    /// oldest; 0 for none (a way another CPU claimed).
    best: u64,
    /// The best candidate so far, 0..2 × WAYS.
    pick: u32,
    /// Its tag word as ranked.
    seen: u64,
    /// Empty ways seen in each bucket.
    empty: [u32; 2],
    /// The first empty way of the second bucket, as a candidate.
    first_empty_b: u32,
}

/// A candidate's rank when it is empty (see `rank_way`).
const EMPTY: u64 = u32::MAX as u64 + 2;

impl Choice {
    /// Candidate `i`'s bucket and way.
    #[inline(always)]
    fn candidate(&self, i: u32) -> (u32, u32) {
        let bucket = if i < WAYS {
            self.place.buckets[0]
        } else {
            self.place.buckets[1]
        };
        (bucket, i % WAYS)
    }
}

/// `bpf_loop` step for candidate `i` of a new flow: ranks it by its tag, keeps the best (ties
/// to the first), counts the empty ways of its bucket.
extern "C" fn rank_way(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Choice` that `insert` passed, on its stack.
    let choice = unsafe { &mut *ctx.cast::<Choice>() };
    let i = i as u32;
    let (bucket, way) = choice.candidate(i);
    let Some((_, tag)) = tag_of(index(bucket, way)) else {
        return 1;
    };
    let rank = if tag == 0 {
        let side = (i / WAYS) as usize & 1;
        choice.empty[side] += 1;
        if side == 1 && choice.empty[1] == 1 {
            choice.first_empty_b = i;
        }
        EMPTY
    } else if tag == CLAIMED {
        0
    } else if tag as u32 == choice.place.tag && holds(bucket, way, &choice.words) {
        EMPTY + 1
    } else {
        u64::from(age(tag, choice.now)) + 1
    };
    if rank > choice.best {
        choice.best = rank;
        choice.pick = i;
        choice.seen = tag;
    }
    0
}

/// Whether entry `way` of `bucket` holds the flow of `words`.
#[inline(always)]
fn holds(bucket: u32, way: u32, words: &[u64; 5]) -> bool {
    match SNI_FLOWS.get_ptr_mut(index(bucket, way)) {
        // SAFETY: a live entry of the table.
        Some(e) => unsafe { (*e).holds(word4(e), words) },
        None => false,
    }
}

/// Empties the entries holding the flow of `words`, two at the most (two CPUs that inserted it
/// at once can have left it in two), and their tags, unless another CPU claimed one meanwhile
/// for another flow; whether there was one.
#[inline(always)]
pub fn remove(words: &[u64; 5]) -> bool {
    let Some(found) = find(words) else {
        return false;
    };
    found.clear();
    if let Some(again) = find(words) {
        again.clear();
    }
    true
}

impl Found {
    /// Empties the entry and its tag, claimed first as a writer does. A claim that fails
    /// because a packet marked the flow used meanwhile (its stamp moved, its tag did not) is
    /// tried again; one that fails because another CPU claimed the way leaves it to that
    /// CPU's new flow.
    #[inline(always)]
    fn clear(&self) {
        let mut seen = self.tag_word;
        for _ in 0..3 {
            // SAFETY: a live value of the tags and a live entry of the table.
            unsafe {
                if cmpxchg(self.tag, seen, CLAIMED) {
                    core::ptr::write_volatile(&raw mut (*self.entry).key[4], 0);
                    core::ptr::write_volatile(self.tag, 0);
                    return;
                }
                let now = core::ptr::read_volatile(self.tag);
                if now as u32 != self.tag_word as u32 {
                    return;
                }
                seen = now;
            }
        }
    }
}
