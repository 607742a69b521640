//! Per-flow state, shared by the kernel and `sni-user classify`: which segment continues a
//! ClientHello, what a flow's host and verdict are, and the per-host rate limit.
//!
//! A ClientHello that does not fit in one TCP segment (a browser's post-quantum one is ~1.8 KB
//! against a 1460-byte MSS) is read across segments: the parser state is kept per flow with the
//! sequence number the next byte must carry, and resumed when it arrives. [`place`] decides
//! what a segment is relative to that number; both sides call it, so the kernel and the offline
//! classifier follow the same rules:
//! - the expected next bytes (possibly after a retransmitted prefix): resume;
//! - bytes already read (a retransmission): skip, the ClientHello is not counted twice;
//! - bytes past a hole (reordering or loss): give up and count the ClientHello incomplete.
//!   Nothing is buffered, so the missing bytes could not be placed in front of these anyway,
//!   and no host is ever guessed.

use crate::hello::Parser;

/// A TCP flow as the client sends it (client → server), the key of the flow maps. IPv4
/// addresses sit in the first 4 bytes of the 16, the rest zero. Ports in host order.
///
/// Aligned to 8 so that the kernel hashes and compares it as five 64-bit words
/// ([`FlowKey::words`]) instead of forty bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address.
    pub src: [u8; 16],
    /// Server address.
    pub dst: [u8; 16],
    /// Client port.
    pub src_port: u16,
    /// Server port.
    pub dst_port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

impl FlowKey {
    /// The key as five 64-bit words (native byte order): addresses, then ports and family.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        let w = |b: &[u8; 16], half: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[half * 8..half * 8 + 8]);
            u64::from_ne_bytes(x)
        };
        [
            w(&self.src, 0),
            w(&self.src, 1),
            w(&self.dst, 0),
            w(&self.dst, 1),
            u64::from(self.src_port)
                | u64::from(self.dst_port) << 16
                | u64::from(self.family) << 32,
        ]
    }

    /// The key whose [`FlowKey::words`] these are.
    pub fn from_words(w: &[u64; 5]) -> Self {
        let mut key = FlowKey::default();
        key.src[..8].copy_from_slice(&w[0].to_ne_bytes());
        key.src[8..].copy_from_slice(&w[1].to_ne_bytes());
        key.dst[..8].copy_from_slice(&w[2].to_ne_bytes());
        key.dst[8..].copy_from_slice(&w[3].to_ne_bytes());
        key.src_port = w[4] as u16;
        key.dst_port = (w[4] >> 16) as u16;
        key.family = (w[4] >> 32) as u8;
        key
    }

    /// This flow's entry in a flow cache of `mask + 1` entries: [`cache_index`] of its words.
    #[inline(always)]
    pub fn cache_index(&self, seed: u64, mask: u32) -> u32 {
        cache_index(&self.words(), seed, mask)
    }
}

/// Where CPU `cpu`'s entry `index` is in the flow cache ([`crate::maps::MAP_FLOW_CACHE`]),
/// each CPU's `mask + 1` entries after the previous CPU's in one plain array. Not a per-CPU
/// array: its lookup reads a pointer per entry before the value, a second random memory access
/// on every packet of a busy table. (Nor groups of entries per value, which readers would read
/// in fewer system calls: the verifier's work for an entry at a variable offset in its value
/// went past its budget.)
#[inline(always)]
pub fn cache_slot(cpu: u32, index: u32, mask: u32) -> u32 {
    cpu.wrapping_mul(mask.wrapping_add(1)).wrapping_add(index)
}

/// The entry of a flow cache of `mask + 1` entries (a power of two) for the flow whose key has
/// these [`FlowKey::words`]: the words folded together with `seed` (a random number the loader
/// picks), the high half folded onto the low one, one multiplication (Fibonacci hashing), the
/// product's high half. A few instructions, as it runs on every packet of a watched port; a
/// stronger mix measured 4 ns more per packet. Flows that share an entry (by chance, or chosen
/// by someone who learnt the seed) only cost a lookup in the flow table each: an entry is
/// never mistaken for another flow, whose key is compared in full.
#[inline(always)]
pub fn cache_index(w: &[u64; 5], seed: u64, mask: u32) -> u32 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let x = w[0] ^ w[1] ^ w[2].rotate_left(32) ^ w[3].rotate_left(32) ^ w[4] ^ seed;
    let h = (x ^ (x >> 32)).wrapping_mul(K);
    (h >> 32) as u32 & mask
}

/// An entry of the kernel's flow cache ([`crate::maps::MAP_FLOW_CACHE`]): a copy of a
/// flow table entry whose verdict is `PASS`, with the key it belongs to (as
/// [`FlowKey::words`], so that the kernel compares five aligned words), the epoch it was
/// copied in, and the packets and bytes it counted that its host's counters do not hold yet.
///
/// A packet of a classified flow finds its host here with one array index and that compare
/// instead of a hash-table walk, and is counted here, in memory only its CPU writes. The
/// host's counters are shared by every CPU; an entry adds what it owes them (atomically) when
/// its CPU gives the entry to another flow, so a popular host's counters are written once per
/// flow and CPU, not once per packet. Readers add what every entry still owes
/// ([`CachedFlow::owed`]), whatever its epoch: the count is exact once traffic stops (a read
/// while it flows can miss what an entry hands over meanwhile).
///
/// Valid for lookups while `epoch` equals [`crate::maps::MAP_EPOCH`]'s value (userspace bumps
/// it whenever it rewrites flows); zero (never a live epoch) when emptied. An emptied entry
/// keeps its flow and what it owes until it is reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow {
    /// The flow's key, as [`FlowKey::words`].
    pub key: [u64; 5],
    /// Its host and verdict, as the flow table had them.
    pub flow: Flow,
    /// The epoch the entry was copied in.
    pub epoch: u64,
    /// Packets counted here and not yet added to the host's counters.
    pub packets: u64,
    /// Bytes (whole frames) of those packets.
    pub bytes: u64,
}

impl CachedFlow {
    /// Whether this entry holds the flow whose key has these `words` in `epoch`. Written out
    /// word by word: an array compare would become a call to `bcmp` in the kernel.
    #[inline(always)]
    pub fn holds(&self, words: &[u64; 5], epoch: u64) -> bool {
        self.epoch == epoch && same_key(&self.key, self.key[4], words)
    }

    /// The host this entry's counts belong to, with the packets and bytes it still owes it;
    /// `None` when it owes nothing (or its flow has no host to count toward).
    #[inline(always)]
    pub fn owed(&self) -> Option<(Owner, u64, u64)> {
        if self.packets == 0 {
            return None;
        }
        Some((self.flow.owner()?, self.packets, self.bytes))
    }
}
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 88);

/// Whether `key`, with its word 4 as read once (`w4`), is the key whose words are `words`.
/// Word by word: an array compare would become a call to `bcmp` in the kernel.
#[inline(always)]
pub fn same_key(key: &[u64; 5], w4: u64, words: &[u64; 5]) -> bool {
    w4 == words[4]
        && key[0] == words[0]
        && key[1] == words[1]
        && key[2] == words[2]
        && key[3] == words[3]
}

/// Whose counters a flow's packets count toward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A configured host, by slot ([`crate::maps::MAP_HOST_STATS`]).
    Configured(u32),
    /// Another name, by [`crate::HostKey::hash64`] ([`crate::maps::MAP_OTHER_HOSTS`]).
    Other(u64),
}

/// What the flow's ClientHello named ([`Flow::kind`]).
pub mod kind {
    /// No ClientHello could be read to a name or its end (malformed, or given up as
    /// incomplete): the flow is only remembered so that its later segments are not parsed.
    pub const UNKNOWN: u8 = 0;
    /// A ClientHello without server_name.
    pub const NO_NAME: u8 = 1;
    /// A configured host: [`super::Flow::slot`] says which.
    pub const CONFIGURED: u8 = 2;
    /// A name not configured: [`super::Flow::name_hash`] is its key in the map of other names.
    pub const OTHER: u8 = 3;
}

/// What happens to a flow's packets ([`Flow::verdict`]).
pub mod verdict {
    /// Passed on.
    pub const PASS: u8 = 0;
    /// Dropped by its host's `action = "drop"`.
    pub const DROP: u8 = 1;
    /// Dropped because its ClientHello came over its host's `hello_rate`.
    pub const RATE_LIMITED: u8 = 2;
}

/// A flow whose ClientHello was read: every later packet counts toward its host and gets its
/// verdict without parsing. Written by the kernel, read by the terminator (hand-off).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// FNV-1a of the normalised name ([`crate::HostKey::hash64`]), for every named flow.
    pub name_hash: u64,
    /// Host slot of a configured host (1-based index of its `[[host]]`), else 0.
    pub slot: u32,
    /// [`kind`].
    pub kind: u8,
    /// [`verdict`].
    pub verdict: u8,
    /// Fingerprint slot of a configured fingerprint (1-based index of its `[[fingerprint]]`)
    /// whose key the ClientHello had, else 0: a reload that changes its action rewrites the
    /// verdict, as for a host's.
    pub ja4_slot: u16,
    /// [`crate::ja4::Ja4Key::hash64`] of the ClientHello's fingerprint; 0 without one.
    pub ja4: u64,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 24);

impl Flow {
    /// The verdict a flow already classified takes after a reload that changed its host's or
    /// its fingerprint's action: dropped when either drops now (the stricter wins, as for a
    /// new ClientHello), let through when it was dropped and neither drops now. A rate
    /// limit's verdict stays: a rate is judged per ClientHello, not per flow.
    pub fn reloaded(verdict: u8, host_drops: bool, ja4_drops: bool) -> u8 {
        if host_drops || ja4_drops {
            verdict::DROP
        } else if verdict == verdict::DROP {
            verdict::PASS
        } else {
            verdict
        }
    }

    /// Whose counters this flow's packets count toward: none for a flow without a name.
    #[inline(always)]
    pub fn owner(&self) -> Option<Owner> {
        match self.kind {
            kind::CONFIGURED => Some(Owner::Configured(self.slot)),
            kind::OTHER => Some(Owner::Other(self.name_hash)),
            _ => None,
        }
    }
}

/// A ClientHello read up to the end of a segment, waiting for the next one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Where the parser stands.
    pub parser: Parser,
    /// Sequence number of the next byte the parser needs.
    pub next_seq: u32,
    /// Segments read so far (counted toward the host once it is known).
    pub segments: u32,
    /// Bytes of those segments' frames.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Pending>() == Parser::SIZE + 16);

impl Pending {
    /// A ClientHello whose first segment is about to be read, up to its name.
    pub const NEW: Self = Self::new(false);
    /// A ClientHello whose first segment is about to be read, to its end and its JA4.
    pub const JA4: Self = Self::new(true);

    /// A ClientHello whose first segment is about to be read: to its end and its JA4 when
    /// `ja4`, else up to its name.
    pub const fn new(ja4: bool) -> Self {
        Self {
            parser: Parser::new(ja4),
            next_seq: 0,
            segments: 0,
            bytes: 0,
        }
    }

    /// Takes account of a segment of `len` payload bytes at `seq`, in a frame of `frame_len`
    /// bytes, that the parser just read.
    #[inline(always)]
    pub fn read(&mut self, seq: u32, len: u32, frame_len: u64) {
        self.segments += 1;
        self.bytes += frame_len;
        self.next_seq = seq.wrapping_add(len);
    }
}

/// What a segment with payload does to its flow's ClientHello, before a byte of it is
/// parsed: the one per-segment step that the XDP program (`sni-ebpf/src/hello.rs`) and
/// `sni-user classify` (`sni-user/src/tools/capture.rs`) both take. A SYN (the 5-tuple starts
/// over) and a flow already classified are dealt with before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing pending, and the payload does not start a ClientHello: not the parser's.
    NotHello,
    /// Every byte was read before (a retransmission): nothing to parse.
    Retransmit,
    /// It starts past the next byte the pending ClientHello needs (reordered, or after a
    /// loss): the ClientHello is given up as incomplete, since nothing is buffered.
    Gap,
    /// Parse the payload from byte `skip` on: with the pending parser if `resumed`, else
    /// with a new one ([`Pending::NEW`]).
    Parse {
        /// Payload bytes the pending parser already read.
        skip: u32,
        /// Whether a pending ClientHello goes on.
        resumed: bool,
    },
}

impl Step {
    /// The step of a segment of `len` payload bytes at `seq`, given the next byte its flow's
    /// pending ClientHello needs (`None`: nothing pending). `starts` says whether the payload
    /// starts like a ClientHello; it is asked only when nothing is pending.
    #[inline(always)]
    pub fn of(next_seq: Option<u32>, seq: u32, len: u32, starts: impl FnOnce() -> bool) -> Self {
        match next_seq {
            Some(next) => match place(next, seq, len) {
                Placement::Old => Self::Retransmit,
                Placement::Gap => Self::Gap,
                Placement::Next { skip } => Self::Parse {
                    skip,
                    resumed: true,
                },
            },
            None if starts() => Self::Parse {
                skip: 0,
                resumed: false,
            },
            None => Self::NotHello,
        }
    }
}

/// A segment relative to the next byte a pending ClientHello needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// It carries the next byte, `skip` bytes into its payload (a retransmission that also
    /// carries new bytes starts with some already read).
    Next {
        /// Payload bytes already read.
        skip: u32,
    },
    /// Every byte was read before: a retransmission (or an empty segment).
    Old,
    /// It starts past the next byte: reordered or after a loss.
    Gap,
}

/// Places a segment of `len` payload bytes starting at sequence number `seq`, against the
/// `next` byte a pending ClientHello needs (sequence numbers wrap, RFC 9293 §3.4).
#[inline(always)]
pub const fn place(next: u32, seq: u32, len: u32) -> Placement {
    // Signed distance from `next` to the segment's start; fine for any gap under 2^31.
    let ahead = seq.wrapping_sub(next) as i32;
    if ahead > 0 {
        return Placement::Gap;
    }
    let behind = (0i64 - ahead as i64) as u64;
    if len as u64 <= behind {
        Placement::Old
    } else {
        Placement::Next {
            skip: behind as u32,
        }
    }
}

/// A host's action, as the kernel applies it: an entry of the policy map, by host slot (slot
/// 0 is `[default]`, for every name not configured and for ClientHellos without one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Nanoseconds between ClientHellos at the sustained rate (1e9 / hello_rate); 0 when
    /// there is no rate limit.
    pub interval_ns: u64,
    /// How far ahead of now the bucket may run: (burst - 1) × interval.
    pub tolerance_ns: u64,
    /// `ACTION_*`.
    pub action: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Policy>() == 24);

/// [`Policy::action`]: pass (subject to the rate limit).
pub const ACTION_PASS: u32 = 0;
/// [`Policy::action`]: drop every flow of the host.
pub const ACTION_DROP: u32 = 1;

impl Policy {
    /// A policy from an action and an optional rate (ClientHellos per second) with its burst.
    pub fn new(drop: bool, hello_rate: Option<u32>, burst: Option<u32>) -> Self {
        let (interval_ns, tolerance_ns) = match hello_rate {
            Some(rate) if rate > 0 => {
                let interval = 1_000_000_000u64 / u64::from(rate);
                let burst = u64::from(burst.unwrap_or(rate).max(1));
                (interval.max(1), interval.max(1).saturating_mul(burst - 1))
            }
            _ => (0, 0),
        };
        Self {
            interval_ns,
            tolerance_ns,
            action: if drop { ACTION_DROP } else { ACTION_PASS },
            _pad: 0,
        }
    }
}

/// One host's token bucket in the form of GCRA (the generic cell rate algorithm, ITU-T
/// I.371): a single "theoretical arrival time", updated with compare-and-swap by whichever CPU
/// sees the ClientHello, so the limit holds across CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Nanoseconds (`bpf_ktime_get_ns`) at which the bucket is full again.
    pub tat_ns: u64,
}

/// The rate decision: given the bucket's `tat` and the time `now`, the new `tat` if this
/// ClientHello is within the rate, None if it is over. Up to `burst` ClientHellos pass at
/// once, then one per interval.
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    if start - now > tolerance {
        None
    } else {
        Some(start + interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_stricter_of_host_and_fingerprint() {
        use verdict::{DROP, PASS, RATE_LIMITED};
        for v in [PASS, DROP, RATE_LIMITED] {
            assert_eq!(Flow::reloaded(v, true, false), DROP);
            assert_eq!(Flow::reloaded(v, false, true), DROP);
        }
        assert_eq!(Flow::reloaded(DROP, false, false), PASS);
        assert_eq!(Flow::reloaded(PASS, false, false), PASS);
        assert_eq!(Flow::reloaded(RATE_LIMITED, false, false), RATE_LIMITED);
    }

    #[test]
    fn cache_index_stays_in_the_mask_and_spreads() {
        // 8192 flows over 4096 entries, varying the client port, then the client address:
        // at least as even as random placement (Poisson with mean 2: ~13.5% of entries
        // empty, none with more than about 9).
        let mask = 4095;
        for vary_address in [false, true] {
            let mut seen = [0u32; 4096];
            for n in 0..8192u16 {
                let mut key = FlowKey {
                    src: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    dst: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    src_port: 40_000,
                    dst_port: 443,
                    family: 4,
                    _pad: [0; 3],
                };
                if vary_address {
                    key.src[2..4].copy_from_slice(&n.to_be_bytes());
                } else {
                    key.src_port = n;
                }
                let i = key.cache_index(0x1234_5678, mask);
                assert!(i <= mask);
                seen[i as usize] += 1;
            }
            let max = seen.iter().max().copied().unwrap_or(0);
            let empty = seen.iter().filter(|n| **n == 0).count();
            assert!(max <= 13, "a crowded entry: {max}");
            assert!(empty <= 700, "{empty} entries empty");
        }
        let a = FlowKey::default();
        assert_ne!(
            a.cache_index(1, u32::MAX),
            a.cache_index(2, u32::MAX),
            "seeded"
        );
    }

    #[test]
    fn steps() {
        let never = || -> bool { panic!("asked whether a segment starts a ClientHello") };
        assert_eq!(Step::of(None, 7, 10, || false), Step::NotHello);
        assert_eq!(
            Step::of(None, 7, 10, || true),
            Step::Parse {
                skip: 0,
                resumed: false
            }
        );
        assert_eq!(Step::of(Some(100), 90, 10, never), Step::Retransmit);
        assert_eq!(Step::of(Some(100), 101, 10, never), Step::Gap);
        assert_eq!(
            Step::of(Some(100), 95, 10, never),
            Step::Parse {
                skip: 5,
                resumed: true
            }
        );
        let mut p = Pending::NEW;
        p.read(u32::MAX - 1, 10, 1500);
        assert_eq!((p.segments, p.bytes, p.next_seq), (1, 1500, 8));
    }

    #[test]
    fn placement() {
        assert_eq!(place(100, 100, 10), Placement::Next { skip: 0 });
        assert_eq!(place(100, 95, 10), Placement::Next { skip: 5 });
        assert_eq!(place(100, 90, 10), Placement::Old);
        assert_eq!(place(100, 50, 10), Placement::Old);
        assert_eq!(place(100, 100, 0), Placement::Old);
        assert_eq!(place(100, 101, 10), Placement::Gap);
        // Across the wrap of the sequence space.
        assert_eq!(place(3, u32::MAX - 1, 10), Placement::Next { skip: 5 });
        assert_eq!(place(u32::MAX, 2, 10), Placement::Gap);
        assert_eq!(place(2, u32::MAX, 3), Placement::Old);
    }

    #[test]
    fn gcra_allows_a_burst_then_the_rate() {
        let p = Policy::new(false, Some(10), Some(3));
        assert_eq!(p.interval_ns, 100_000_000);
        let mut tat = 0;
        let now = 5_000_000_000;
        let mut passed = 0;
        for _ in 0..10 {
            if let Some(t) = gcra(tat, now, p.interval_ns, p.tolerance_ns) {
                tat = t;
                passed += 1;
            }
        }
        assert_eq!(passed, 3, "the burst");
        // One interval later, one more.
        assert!(gcra(tat, now + p.interval_ns, p.interval_ns, p.tolerance_ns).is_some());
        assert!(gcra(tat, now + p.interval_ns / 2, p.interval_ns, p.tolerance_ns).is_none());
        // After a long pause, a full burst again.
        let later = now + 10 * p.interval_ns;
        let mut passed = 0;
        for _ in 0..10 {
            if let Some(t) = gcra(tat, later, p.interval_ns, p.tolerance_ns) {
                tat = t;
                passed += 1;
            }
        }
        assert_eq!(passed, 3);
    }

    #[test]
    fn policy_without_rate_has_no_interval() {
        assert_eq!(Policy::new(true, None, None).interval_ns, 0);
        assert_eq!(Policy::new(true, None, None).action, ACTION_DROP);
        let p = Policy::new(false, Some(2_000_000_000), None);
        assert_eq!(p.interval_ns, 1, "rates above 1e9/s clamp to 1 ns");
    }
}
