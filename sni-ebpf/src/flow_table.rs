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
    age, entry_index, tag_word, FlowEntry, Place, BUSY, CLAIMED, STAMP_UNIT_SHIFT, WAYS,
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

/// Entry `index`, if it holds the flow of `words` (word 4 read first, see the module docs).
#[inline(always)]
fn holding(index: u32, words: &[u64; 5]) -> Option<*mut FlowEntry> {
    let entry = SNI_FLOWS.get_ptr_mut(index)?;
    // SAFETY: a live entry of the table.
    let w4 = unsafe { word4(entry) };
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { (*entry).holds(w4, words) }.then_some(entry)
}

/// The entry of `bucket` that holds the flow of `words`, looked at only where the way's tag
/// is the flow's.
#[inline(always)]
fn find_in(bucket: u32, tag: u32, words: &[u64; 5]) -> Option<Found> {
    for way in 0..WAYS {
        // Each tag and entry is an array lookup of its own, so that what the verifier tracks
        // of a found flow does not depend on the way.
        let index = entry_index(bucket, way);
        let (tag_ptr, tag_word) = tag_of(index)?;
        if tag_word as u32 != tag {
            continue;
        }
        if let Some(entry) = holding(index, words) {
            return Some(Found {
                entry,
                tag: tag_ptr,
                tag_word,
            });
        }
    }
    None
}

/// The entry holding the flow of `words`, which goes to `place`.
#[inline(always)]
fn find_at(place: &Place, words: &[u64; 5]) -> Option<Found> {
    let [a, b] = place.buckets;
    find_in(a, place.tag, words).or_else(|| find_in(b, place.tag, words))
}

/// The entry holding the flow of `words`.
#[inline(always)]
pub fn find(words: &[u64; 5]) -> Option<Found> {
    find_at(&place(words)?, words)
}

/// Writes `flow` for the flow of `words`: into the entry that holds it, else an empty one (of
/// the bucket with more empty ones: two choices), else the one used longest ago (written, or
/// found by a packet: `Found::touch`), of its two buckets, as their tags say. Nothing is
/// written if another CPU changed the chosen way's tag since it was read (it claimed the way,
/// or marked its flow used), or if a map cannot be read: the flow is then not remembered, and
/// its later packets are those of a flow not classified.
#[inline(always)]
pub fn insert(words: &[u64; 5], flow: &sni_common::flow::Flow) {
    let Some(place) = place(words) else {
        return;
    };
    let mut seen = Candidates {
        words: *words,
        place,
        now: now(),
        own: NONE,
        empty: [0; 2],
        first_empty: [NONE; 2],
        oldest: NONE,
        oldest_age: 0,
        oldest_tag: 0,
    };
    // SAFETY: `look_at` has the callback signature bpf_loop expects; its context is `seen`,
    // on this stack for the whole call. (A loop here, unrolled, would have the verifier
    // follow each candidate through the rest of the program, past its budget.)
    unsafe {
        bpf_loop(2 * WAYS, look_at as *mut c_void, (&raw mut seen).cast(), 0);
    }
    let more_empty = usize::from(seen.empty[1] > seen.empty[0]);
    let (pick, was) = if seen.own != NONE {
        (seen.own, u64::from(place.tag))
    } else if seen.first_empty[more_empty] != NONE {
        (seen.first_empty[more_empty], 0)
    } else if seen.oldest != NONE {
        (seen.oldest, seen.oldest_tag)
    } else {
        // Every way claimed by another CPU.
        return;
    };
    let (bucket, way) = place.candidate(pick);
    let i = entry_index(bucket, way);
    let (Some(entry), Some((tag, now_seen))) = (SNI_FLOWS.get_ptr_mut(i), tag_of(i)) else {
        return;
    };
    // The flow's own entry is claimed from whatever stamp its tag has now; any other from the
    // tag word it was chosen by.
    let was = if seen.own != NONE && now_seen as u32 == was as u32 {
        now_seen
    } else {
        was
    };
    // SAFETY: a live value of the tags, claimed before anything else is written, so no other
    // CPU writes the way until its tag is stored; and a live entry of the table. The stores
    // to the entry do not wait for its line (no compare-and-swap there).
    unsafe {
        if !cmpxchg(tag, was, CLAIMED) {
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
        core::ptr::write_volatile(tag, tag_word(place.tag, seen.now));
    }
}

/// No candidate.
const NONE: u32 = u32::MAX;

/// What `look_at` found among a new flow's candidates (`insert`), by candidate number
/// (`Place::candidate`).
struct Candidates {
    words: [u64; 5],
    place: Place,
    now: u32,
    /// The candidate that holds the flow.
    own: u32,
    /// Empty ways per bucket, and the first of each.
    empty: [u32; 2],
    first_empty: [u32; 2],
    /// The candidate used longest ago (none claimed by another CPU), its age and its tag word
    /// as read.
    oldest: u32,
    oldest_age: u32,
    oldest_tag: u64,
}

/// `bpf_loop` step for candidate `i` of a new flow: notes it as the flow's own, as empty, or
/// as the oldest so far (ties to the first), by its tag.
extern "C" fn look_at(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Candidates` that `insert` passed, on its stack.
    let seen = unsafe { &mut *ctx.cast::<Candidates>() };
    let i = i as u32;
    let (bucket, way) = seen.place.candidate(i);
    let index = entry_index(bucket, way);
    let Some((_, tag)) = tag_of(index) else {
        return 1;
    };
    let side = (i / WAYS) as usize & 1;
    if tag == 0 {
        seen.empty[side] += 1;
        if seen.first_empty[side] == NONE {
            seen.first_empty[side] = i;
        }
    } else if tag as u32 == seen.place.tag && holding(index, &seen.words).is_some() {
        seen.own = i;
    } else if tag != CLAIMED {
        let age = age(tag, seen.now);
        if seen.oldest == NONE || age > seen.oldest_age {
            seen.oldest = i;
            seen.oldest_age = age;
            seen.oldest_tag = tag;
        }
    }
    0
}

/// Empties the entries holding the flow of `words`, two at the most (two CPUs that inserted it
/// at once can have left it in two), and their tags, unless another CPU claimed one meanwhile
/// for another flow; whether there was one.
#[inline(always)]
pub fn remove(words: &[u64; 5]) -> bool {
    let Some(place) = place(words) else {
        return false;
    };
    let Some(found) = find_at(&place, words) else {
        return false;
    };
    found.clear();
    if let Some(again) = find_at(&place, words) {
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
