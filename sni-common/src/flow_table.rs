//! The flow table's layout ([`crate::maps::MAP_FLOWS`]), shared by the kernel, which writes
//! it, and userspace, which reads it (the terminator's hand-off, tests) and rewrites verdicts
//! (a reload).
//!
//! A plain array of [`FlowEntry`], in buckets of [`WAYS`] entries. A flow lives in one of the
//! eight entries of its two buckets ([`Shape::buckets`], two choices: one bucket alone
//! overflows long before the table is full). A new flow takes the entry that already holds
//! its key, else an empty one, else the one written longest ago: the insert is a write into
//! memory the lookup just read, where an LRU hash's insert into a full table evicts a flow
//! from elsewhere (its bucket lock, its list) first, which measured 0.69 µs of a
//! ClientHello's 1.5. The table has twice as many entries as `flows_capacity` flows
//! ([`entries`]), so that the two choices of four ways lose almost none of them to a full
//! pair of buckets before the table holds that many.
//!
//! Word 4 of an entry's key says its state: 0 empty, [`BUSY`] while a CPU writes the entry,
//! else the key's ports and family ([`KEY_BITS`]) and, in the key's padding above them, when
//! the entry was written ([`STAMP_SHIFT`]). A writer claims word 4 with a compare-and-swap
//! first and stores the key's own last, so two CPUs never write one entry at once and a reader
//! that finds word 4 unchanged after reading the flow read one flow's fields.

use crate::flow::{Flow, FlowKey};

/// Entries per bucket: four, 256 bytes, so a bucket is one run of adjacent cache lines.
pub const WAYS: u32 = 4;

/// Where an entry's stamp starts in word 4 of its key: past the ports (32 bits) and family (8
/// bits), in the key's padding.
pub const STAMP_SHIFT: u32 = 40;
/// The bits of word 4 that belong to the key.
pub const KEY_BITS: u64 = (1 << STAMP_SHIFT) - 1;
/// The stamp's bits: 24 bits of the coarse clock in units of 2^24 ns (16.8 ms), so it wraps
/// every 3.3 days; an entry older than that only looks younger than it is.
pub const STAMP_MASK: u64 = (1 << 24) - 1;
/// How far to shift nanoseconds to get a stamp.
pub const STAMP_UNIT_SHIFT: u32 = 24;
/// Word 4 of an entry a CPU is writing: family `0xff`, which no key has.
pub const BUSY: u64 = 0xff << 32;

/// One flow of the table: its key, as [`FlowKey::words`] (with word 4's stamp and state, see
/// the module docs), and the flow.
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
    /// read it, `w4`: a reader reads it first and once). Word by word: an array compare
    /// would become a call to `bcmp` in the kernel.
    #[inline(always)]
    pub fn holds(&self, w4: u64, words: &[u64; 5]) -> bool {
        (w4 ^ words[4]) & KEY_BITS == 0
            && self.key[0] == words[0]
            && self.key[1] == words[1]
            && self.key[2] == words[2]
            && self.key[3] == words[3]
    }

    /// Whether the entry holds a flow (neither empty nor being written).
    pub fn in_use(&self) -> bool {
        self.key[4] != 0 && self.key[4] != BUSY
    }

    /// The flow's key, if the entry holds one.
    pub fn flow_key(&self) -> Option<FlowKey> {
        if !self.in_use() {
            return None;
        }
        let b = |w: u64| w.to_ne_bytes();
        let mut key = FlowKey::default();
        key.src[..8].copy_from_slice(&b(self.key[0]));
        key.src[8..].copy_from_slice(&b(self.key[1]));
        key.dst[..8].copy_from_slice(&b(self.key[2]));
        key.dst[8..].copy_from_slice(&b(self.key[3]));
        let w4 = self.key[4];
        key.src_port = w4 as u16;
        key.dst_port = (w4 >> 16) as u16;
        key.family = (w4 >> 32) as u8;
        Some(key)
    }

    /// How old a word 4 of stamp-bearing key is at stamp `now`, in stamp units.
    #[inline(always)]
    pub fn age(w4: u64, now: u64) -> u64 {
        now.wrapping_sub(w4 >> STAMP_SHIFT) & STAMP_MASK
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

    /// The index of the first entry of each of the two buckets of the flow whose key has
    /// these [`FlowKey::words`]: the words folded with the seed, two multiplications, and each
    /// product's high half scaled to the bucket count (a multiply and a shift, so any count
    /// works). They may be the same bucket.
    #[inline(always)]
    pub fn buckets(&self, w: &[u64; 5]) -> [u32; 2] {
        const K1: u64 = 0x9e37_79b9_7f4a_7c15;
        const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
        let x = w[0]
            ^ w[1].rotate_left(16)
            ^ w[2].rotate_left(32)
            ^ w[3].rotate_left(48)
            ^ (w[4] & KEY_BITS)
            ^ self.seed;
        let h1 = (x ^ (x >> 32)).wrapping_mul(K1);
        let h2 = (h1 ^ (h1 >> 29)).wrapping_mul(K2);
        let scale = |h: u64| (((h >> 32) * u64::from(self.buckets)) >> 32) as u32;
        [scale(h1).wrapping_mul(WAYS), scale(h2).wrapping_mul(WAYS)]
    }

    /// The entry holding `key` and its index, reading entries through `read` (userspace:
    /// a map lookup each). `None` if neither bucket holds it.
    pub fn find(
        &self,
        key: &FlowKey,
        mut read: impl FnMut(u32) -> Option<FlowEntry>,
    ) -> Option<(u32, FlowEntry)> {
        let words = key.words();
        self.buckets(&words)
            .into_iter()
            .flat_map(|first| first..first.saturating_add(WAYS))
            .filter_map(|i| Some((i, read(i)?)))
            .find(|(_, e)| e.holds(e.key[4], &words))
    }
}

/// Entries of a table for `flows` flows: twice as many, a whole number of buckets, at least
/// two buckets.
pub fn entries(flows: u32) -> u32 {
    (flows.saturating_mul(2) / WAYS).max(2) * WAYS
}

#[cfg(test)]
mod tests {
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
    fn an_entry_gives_back_its_key_whatever_its_stamp() {
        let k = key(40_000);
        let mut words = k.words();
        words[4] |= 0xab_cdef << STAMP_SHIFT;
        let e = FlowEntry {
            key: words,
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
    fn buckets_are_in_the_table_and_spread() {
        let shape = Shape::new(entries(1000), 0x1234_5678);
        assert_eq!(shape.buckets, 500);
        let mut seen = [0u32; 500];
        for port in 0..10_000u16 {
            for first in shape.buckets(&key(port).words()) {
                assert_eq!(first % WAYS, 0);
                assert!(first < 2000);
                seen[(first / WAYS) as usize] += 1;
            }
        }
        // 20,000 choices over 500 buckets: 40 each on average.
        assert!(seen.iter().all(|&n| (10..=80).contains(&n)), "{seen:?}");
    }

    #[test]
    fn the_stamp_does_not_change_the_buckets() {
        let shape = Shape::new(entries(1000), 7);
        let mut words = key(1).words();
        let plain = shape.buckets(&words);
        words[4] |= 0x12 << STAMP_SHIFT;
        assert_eq!(shape.buckets(&words), plain);
    }

    #[test]
    fn a_table_has_twice_the_flows_in_whole_buckets() {
        assert_eq!(entries(128 * 1024), 256 * 1024);
        assert_eq!(entries(1), 2 * WAYS);
        assert_eq!(entries(5), 2 * WAYS);
        assert_eq!(entries(u32::MAX) % WAYS, 0);
    }

    #[test]
    fn age_wraps_with_the_stamp() {
        let w4 = 5 << STAMP_SHIFT | 0x4_01bb_9c40;
        assert_eq!(FlowEntry::age(w4, 7), 2);
        assert_eq!(FlowEntry::age(STAMP_MASK << STAMP_SHIFT, 1), 2);
    }
}
