//! The flow table's layout ([`crate::maps::MAP_FLOWS`], [`crate::maps::MAP_FLOW_TAGS`]),
//! shared by the kernel, which writes it, and userspace, which reads it (the terminator's
//! hand-off, tests) and rewrites verdicts (a reload).
//!
//! A plain array of [`FlowEntry`], in buckets of [`WAYS`] entries. A flow lives in one of the
//! eight entries of its two buckets ([`Shape::place`], two choices: one bucket alone
//! overflows long before the table is full). A new flow takes the entry that already holds
//! its key, else an empty one (of the bucket with more of them), else the one used longest ago
//! (written, or found by a packet that missed its CPU's cache, as an LRU's lookup marks an
//! entry): the insert is a write in place, where an LRU hash's insert into a full table evicts
//! a flow from elsewhere (its bucket lock, its list) first, which measured 0.69 µs of a
//! ClientHello's 1.8 through a veth. The table has twice as many entries as `flows_capacity`
//! flows ([`entries`]), so that the two choices of four ways lose almost none of them to a
//! full pair of buckets before the table holds that many.
//!
//! Each entry has a tag word beside it, in an array of its own (a bucket's four in 32 bytes):
//! a 32-bit tag of the flow's hash and when the entry was last used. The kernel reads the two
//! tag lines first and an entry only where a tag matches, so a flow not in the table (every
//! new flow, every SYN) costs two small reads, not eight entries; and a new flow picks its
//! entry from the tags too. The tags are a hint: the entry's key decides, and userspace reads
//! entries only.
//!
//! A writer claims the way's tag word with a compare-and-swap ([`CLAIMED`]; the tag line is
//! in cache, the lookup read it), so two CPUs never write one entry at once; then stores word
//! 4 of the entry's key as [`BUSY`], the other words and the flow, word 4 as the key's, and
//! the tag last. None of those stores waits for the entry's line. A reader reads the key,
//! then the fields it needs, then the key again: unchanged, it read one flow's fields (or the
//! fields of two writes of that same flow, which the kernel does not make: a flow the table
//! holds is answered before it would be written again) (x86
//! keeps stores, and loads, in program order; on a CPU that does not, the reader and the
//! writer would need acquire and release orderings, which BPF has from kernel 6.15).
//!
//! Userspace's rewrite of verdicts (a reload) cannot claim a way: it writes entries with a
//! system call, each just after reading it. A flow the kernel writes into the entry in
//! those microseconds is lost, one a SYN removed comes back without its tag (found by
//! userspace, not by the kernel), and a packet read meanwhile may see a mix of the old and new
//! verdict.

use crate::flow::{same_key, Flow, FlowKey};

/// Entries per bucket: four, 256 bytes, so a bucket is one run of adjacent cache lines.
pub const WAYS: u32 = 4;

/// Word 4 of an entry a CPU is writing: family `0xff`, which no key has.
pub const BUSY: u64 = 0xff << 32;

/// A tag word a CPU has claimed to write its way: no tag in the low half (which is 0 only for
/// this and for an empty entry's word, 0).
pub const CLAIMED: u64 = 0xffff_ffff << 32;

/// How far to shift nanoseconds to get a stamp: units of 16.8 ms.
pub const STAMP_UNIT_SHIFT: u32 = 24;

/// An entry's tag word ([`crate::maps::MAP_FLOW_TAGS`]): 0 if the kernel left the entry
/// empty, else the flow's tag ([`Place::tag`], never 0) in the low 32 bits and the entry's
/// stamp (when it was last used, in units of 2^[`STAMP_UNIT_SHIFT`] ns of the coarse clock,
/// wrapping after 2.3 years) in the high 32.
#[inline(always)]
pub fn tag_word(tag: u32, stamp: u32) -> u64 {
    u64::from(tag) | u64::from(stamp) << 32
}

/// How long ago, in stamp units, a tag word's entry was last used, at stamp `now`: 0 for a
/// stamp after `now` (written by another CPU whose clock read came later), and for an entry
/// idle longer than 2^31 units (1.1 years), which then ranks as new.
#[inline(always)]
pub fn age(word: u64, now: u32) -> u32 {
    let age = now.wrapping_sub((word >> 32) as u32);
    if age > i32::MAX as u32 {
        0
    } else {
        age
    }
}

/// One flow of the table: its key, as [`FlowKey::words`] (word 4 also says whether the entry
/// is empty or being written, see the module docs), and the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The flow's key.
    pub key: [u64; 5],
    /// Its host and verdict.
    pub flow: Flow,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 64);

impl FlowEntry {
    /// Whether this entry holds the flow whose key has these `words` (word 4 as the kernel
    /// read it, `w4`: a reader reads it first and once).
    #[inline(always)]
    pub fn holds(&self, w4: u64, words: &[u64; 5]) -> bool {
        same_key(&self.key, w4, words)
    }

    /// Whether the entry holds a flow (neither empty nor being written).
    pub fn in_use(&self) -> bool {
        self.key[4] != 0 && self.key[4] != BUSY
    }

    /// The flow's key, if the entry holds one.
    pub fn flow_key(&self) -> Option<FlowKey> {
        self.in_use().then(|| FlowKey::from_words(&self.key))
    }
}

/// Where a table's flows go: the seed its bucket hashes are keyed with (drawn by the loader at
/// each start) and how many buckets it has. One entry of [`crate::maps::MAP_FLOW_SHAPE`],
/// written by the loader before the program runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Keys the bucket hashes.
    pub seed: u64,
    /// Buckets of [`WAYS`] entries.
    pub buckets: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Shape>() == 16);

impl Shape {
    /// A table of `entries` entries (see [`entries`]) with `seed`.
    pub fn new(entries: u32, seed: u64) -> Self {
        Self {
            seed,
            buckets: entries / WAYS,
            _pad: 0,
        }
    }

    /// Where the flow whose key has these [`FlowKey::words`] goes: the words mixed into the
    /// seed one by one (a multiplication each, so that which keys share buckets depends on
    /// the seed: someone who does not know it cannot aim flows at a flow's buckets to evict
    /// it), then each of two products' high half scaled to the bucket count (a multiply and a
    /// shift, so any count works) for its two buckets, which may be the same; the second
    /// product's low half for its tag.
    #[inline(always)]
    pub fn place(&self, w: &[u64; 5]) -> Place {
        const K1: u64 = 0x9e37_79b9_7f4a_7c15;
        const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
        let mut x = self.seed;
        x = (x ^ w[0]).wrapping_mul(K1);
        x = (x ^ w[1]).wrapping_mul(K1);
        x = (x ^ w[2]).wrapping_mul(K1);
        x = (x ^ w[3]).wrapping_mul(K1);
        x = (x ^ w[4]).wrapping_mul(K1);
        let h1 = x ^ (x >> 32);
        let h2 = (h1 ^ (h1 >> 29)).wrapping_mul(K2);
        let scale = |h: u64| (((h >> 32) * u64::from(self.buckets)) >> 32) as u32;
        Place {
            buckets: [scale(h1), scale(h2)],
            tag: h2 as u32 | 1,
        }
    }

    /// The entry holding `key` and its index, reading entries through `read` (userspace:
    /// a map lookup each). `None` if neither bucket holds it.
    pub fn find(
        &self,
        key: &FlowKey,
        mut read: impl FnMut(u32) -> Option<FlowEntry>,
    ) -> Option<(u32, FlowEntry)> {
        let words = key.words();
        self.place(&words)
            .entries()
            .filter_map(|i| Some((i, read(i)?)))
            .find(|(_, e)| e.holds(e.key[4], &words))
    }
}

/// Where a flow goes ([`Shape::place`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Its two buckets, by number: bucket `b`'s entries and their tags start at index
    /// `b × WAYS`.
    pub buckets: [u32; 2],
    /// Its tag, never 0.
    pub tag: u32,
}

impl Place {
    /// Candidate `i` (0..2 × [`WAYS`]) of the entries it may take: its bucket and way, the
    /// first bucket's ways first.
    #[inline(always)]
    pub fn candidate(&self, i: u32) -> (u32, u32) {
        let bucket = if i < WAYS {
            self.buckets[0]
        } else {
            self.buckets[1]
        };
        (bucket, i % WAYS)
    }

    /// The indices of the entries it may take (the eight of its two buckets, or four twice).
    pub fn entries(&self) -> impl Iterator<Item = u32> + '_ {
        (0..2 * WAYS).map(|i| {
            let (bucket, way) = self.candidate(i);
            entry_index(bucket, way)
        })
    }
}

/// The index of entry `way` of bucket `bucket`, in the table and in its tags (buckets number
/// at most 2^30: no overflow).
#[inline(always)]
pub const fn entry_index(bucket: u32, way: u32) -> u32 {
    bucket.wrapping_mul(WAYS).wrapping_add(way)
}

/// Entries of a table for `flows` flows: twice as many, a whole number of buckets, at least
/// two buckets.
pub fn entries(flows: u32) -> u32 {
    (flows.saturating_mul(2) / WAYS).max(2) * WAYS
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn key(port: u16) -> FlowKey {
        let mut key = FlowKey {
            src_port: port,
            dst_port: 443,
            family: 4,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        key
    }

    #[test]
    fn an_entry_gives_back_its_key() {
        let k = key(40_000);
        let e = FlowEntry {
            key: k.words(),
            flow: Flow::default(),
        };
        assert!(e.holds(e.key[4], &k.words()));
        assert_eq!(e.flow_key(), Some(k));
        assert!(!e.holds(e.key[4], &key(40_001).words()));
    }

    #[test]
    fn empty_and_busy_entries_hold_no_flow() {
        let words = key(40_000).words();
        for w4 in [0, BUSY] {
            let mut e = FlowEntry {
                key: words,
                flow: Flow::default(),
            };
            e.key[4] = w4;
            assert!(!e.holds(w4, &words));
            assert_eq!(e.flow_key(), None);
        }
    }

    #[test]
    fn places_are_in_the_table_and_spread() {
        let shape = Shape::new(entries(1000), 0x1234_5678);
        assert_eq!(shape.buckets, 500);
        let mut seen = [0u32; 500];
        for port in 0..10_000u16 {
            let place = shape.place(&key(port).words());
            assert_ne!(place.tag, 0);
            for b in place.buckets {
                seen[b as usize] += 1;
            }
            let entries: Vec<u32> = place.entries().collect();
            assert_eq!(entries.len(), 2 * WAYS as usize);
            assert!(entries.iter().all(|&i| i < 2000));
            assert_eq!(entries[0], place.buckets[0] * WAYS);
            assert_eq!(entries[4], place.buckets[1] * WAYS);
        }
        // 20,000 choices over 500 buckets: 40 each on average.
        assert!(seen.iter().all(|&n| (10..=80).contains(&n)), "{seen:?}");
    }

    #[test]
    fn a_table_has_twice_the_flows_in_whole_buckets() {
        assert_eq!(entries(128 * 1024), 256 * 1024);
        assert_eq!(entries(1), 2 * WAYS);
        assert_eq!(entries(5), 2 * WAYS);
        assert_eq!(entries(u32::MAX) % WAYS, 0);
    }

    #[test]
    fn a_tag_word_holds_its_tag_and_age() {
        let w = tag_word(0xdead_beef, 5);
        assert_eq!(w as u32, 0xdead_beef);
        assert_eq!(age(w, 7), 2);
        assert_eq!(age(tag_word(1, u32::MAX), 1), 2);
        // Written by a CPU whose clock read came after `now`: not old.
        assert_eq!(age(tag_word(1, 8), 7), 0);
    }

    #[test]
    fn keys_that_share_places_under_one_seed_do_not_under_another() {
        // Keys whose words XOR to the same value: an address's last bytes and the port
        // changed together.
        let a = key(40_000);
        let mut b = key(40_000 ^ 0x00ff);
        b.src[0] ^= 0xff;
        let (wa, wb) = (a.words(), b.words());
        assert_eq!(
            wa.iter().fold(0, |x, w| x ^ w),
            wb.iter().fold(0, |x, w| x ^ w)
        );
        let shared = (0..64u64)
            .filter(|&seed| {
                let shape = Shape::new(entries(1 << 20), seed);
                shape.place(&wa) == shape.place(&wb)
            })
            .count();
        assert_eq!(shared, 0);
    }
}
