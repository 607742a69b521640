//! Map names, keys and values shared by the XDP program and userspace.
//!
//! Every map is named here once; the kernel side declares its statics with these exact names
//! (aya names a map after its static) and the loader finds and pins them by these constants.
//! Value types are `#[repr(C)]` with explicit padding and a compile-time size check, so both
//! sides agree on the layout byte for byte.

use crate::flow::Pending;

/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "sni_classify";

/// Global counters: `PerCpuArray<u64>`, one slot per [`counter`] index. Written by the XDP
/// program, summed over CPUs by userspace.
pub const MAP_GLOBAL: &str = "SNI_GLOBAL";
/// Configured names: `HashMap<u64, NameEntry>`, from a name's (or a `*.example.com`
/// pattern's) [`crate::host::NameHash::lookup`] to its check hash and host slot, the 1-based
/// index of its `[[host]]`. Written by userspace.
pub const MAP_HOSTS: &str = "SNI_HOSTS";
/// The keys of the host table's name hashes: `Array<NameKeys>` with one entry, random at each
/// start. Written by the loader before the names, read by the kernel at each ClientHello and
/// by whoever looks a name up.
pub const MAP_NAME_KEYS: &str = "SNI_NAME_KEYS";
/// Per-host counters of the configured hosts: `Array<HostStats>` indexed by host slot (slot 0
/// unused), one copy shared by every CPU and added to atomically: per-CPU copies would cost
/// 48 bytes per host per CPU, 300 MiB for 100,000 hosts on 64 CPUs. A flow's packets are
/// counted first in its CPU's [`MAP_FLOW_CACHE`] entry, so these are written once per flow
/// and CPU, not per packet. Fixed entries, so no flood of other names can evict them.
pub const MAP_HOST_STATS: &str = "SNI_HOST_STATS";
/// Configured hosts' labels (their first name) by host slot: `Array<HostKey>`, written by
/// userspace for readers such as `sni-user stats`; the kernel does not use it.
pub const MAP_LABELS: &str = "SNI_LABELS";
/// Per-host actions: `Array<Policy>` indexed by host slot; slot 0 is `[default]`.
pub const MAP_POLICY: &str = "SNI_POLICY";
/// Per-host rate-limit state: `Array<Bucket>` indexed by host slot, shared by all CPUs.
pub const MAP_BUCKETS: &str = "SNI_BUCKETS";
/// Per-host counters for every other name seen: `LruHashMap<u64, HostStats>` keyed by
/// [`crate::HostKey::hash64`], inserted by the kernel, shared by every CPU as
/// [`MAP_HOST_STATS`] is; under a flood of random names the least recently seen go first.
pub const MAP_OTHER_HOSTS: &str = "SNI_OTHER";
/// The names of [`MAP_OTHER_HOSTS`]' keys: `LruHashMap<u64, HostKey>`, apart from the counters
/// so that a counter's entry stays small. The kernel writes a name when it
/// first sees it and looks it up at each of its ClientHellos, so that it stays in the LRU as
/// long as its counters do; readers take a missing name as evicted.
pub const MAP_OTHER_NAMES: &str = "SNI_OTHER_NAMES";
/// Flows whose ClientHello was read: `Array<FlowEntry>` in buckets of four, two buckets a
/// flow ([`crate::flow_table`]). The kernel writes, the terminator reads (hand-off), a reload
/// rewrites verdicts.
pub const MAP_FLOWS: &str = "SNI_FLOWS";
/// The tags of [`MAP_FLOWS`]' entries, at the same indices: `Array<u64>`, a bucket's four in
/// 32 bytes ([`crate::flow_table::tag_word`]). Kernel only.
pub const MAP_FLOW_TAGS: &str = "SNI_FLOW_TAGS";
/// Where [`MAP_FLOWS`]' flows go: `Array<Shape>` with one entry, its bucket count and the
/// seed of its bucket hashes ([`crate::flow_table::Shape`]), written by the loader.
pub const MAP_FLOW_SHAPE: &str = "SNI_FLOW_SHAPE";
/// In front of [`MAP_FLOWS`], per CPU: `Array<CachedFlow>`, each CPU's entries in a block of
/// its own ([`crate::flow::cache_slot`]), indexed in it by
/// [`crate::flow::FlowKey::cache_index`], a power-of-two number of entries. The kernel copies
/// a flow's table entry here on its first packet on a CPU, and counts its later packets here
/// until the entry goes to another flow; readers of the host counters add what the entries
/// still owe ([`crate::flow::CachedFlow::owed`]).
pub const MAP_FLOW_CACHE: &str = "SNI_FLOW_CACHE";
/// The flow cache's epoch: `Array<u64>` with one entry, starting at 1. Userspace increments it
/// after it rewrites flows (a reload that changes an action or removes a host), which
/// invalidates every cached copy at once.
pub const MAP_EPOCH: &str = "SNI_EPOCH";
/// ClientHellos waiting for their next segment: `LruHashMap<FlowKey, Pending>`. Kernel only.
pub const MAP_PENDING: &str = "SNI_PENDING";
/// Watched TCP destination ports: `Array<PortSet>` with one entry, written by userspace.
pub const MAP_PORTS: &str = "SNI_PORTS";
/// Per-CPU scratch space of the XDP program (packet bytes and parser state): kernel only.
pub const MAP_SCRATCH: &str = "SNI_SCRATCH";
/// Configured fingerprints' keys: `HashMap<Ja4Key, u32>` from a [`crate::ja4::Ja4Key`] to the
/// fingerprint slot (1-based index of its `[[fingerprint]]`). Userspace writes a key once it
/// learns that the key's JA4 is configured ([`MAP_JA4_EVENTS`]).
pub const MAP_JA4_SLOTS: &str = "SNI_JA4_SLOTS";
/// How many keys [`MAP_JA4_SLOTS`] holds: `Array<u32>` with one entry, written by userspace
/// after each change to it. While it is 0 (no configured fingerprint seen yet, the usual
/// case without `[[fingerprint]]`), the kernel does not look keys up there.
pub const MAP_JA4_LEARNED: &str = "SNI_JA4_LEARNED";
/// Configured fingerprints' JA4 strings by fingerprint slot: `Array<Ja4Name>`, written by the
/// loader with the policies, for readers to label configured rows (the kernel does not use
/// it); an empty entry for a free slot.
pub const MAP_JA4_LABELS: &str = "SNI_JA4_LABELS";
/// Configured fingerprints' actions: `Array<Policy>` by fingerprint slot (slot 0 unused).
pub const MAP_JA4_POLICY: &str = "SNI_JA4_POLICY";
/// Configured fingerprints' rate-limit state: `Array<Bucket>` by fingerprint slot.
pub const MAP_JA4_BUCKETS: &str = "SNI_JA4_BUCKETS";
/// Configured fingerprints' counters: `Array<Ja4Stats>` by fingerprint slot, shared by every
/// CPU and added to atomically; never evicted.
pub const MAP_JA4_STATS: &str = "SNI_JA4_STATS";
/// Every other fingerprint's counters: `LruHashMap<Ja4Key, Ja4Stats>`, shared by every CPU;
/// under a flood of random fingerprints the least recently seen go first. A key's insertion
/// here is what sends its lists to userspace.
pub const MAP_JA4_OTHER: &str = "SNI_JA4_OTHER";
/// Counters per (host, fingerprint): `LruHashMap<HostJa4, Ja4Stats>`, shared by every CPU;
/// readers keep the top of each host and sum the rest.
pub const MAP_JA4_HOSTS: &str = "SNI_JA4_HOSTS";
/// The JA4 strings of the fingerprints seen: `LruHashMap<Ja4Key, Ja4Name>`, written by the
/// daemon as it learns them from [`MAP_JA4_EVENTS`], read by every reader (`stats`, `top`,
/// `/metrics`) to show JA4 strings, never keys. The kernel does not use it.
pub const MAP_JA4_NAMES: &str = "SNI_JA4_NAMES";
/// Fingerprints seen for the first time: a ring buffer of [`crate::ja4::Ja4State`] records
/// (the lists), from which userspace computes the JA4 strings. Bounded: a full buffer loses
/// the record (counted as `ja4_lost`), and the key is sent again when it comes back after
/// leaving [`MAP_JA4_OTHER`].
pub const MAP_JA4_EVENTS: &str = "SNI_JA4_EVENTS";

/// Maps that `sni-user run` pins under its pin directory for other processes to read.
pub const PINNED_MAPS: [&str; 18] = [
    MAP_GLOBAL,
    MAP_HOSTS,
    MAP_HOST_STATS,
    MAP_LABELS,
    MAP_POLICY,
    MAP_OTHER_HOSTS,
    MAP_OTHER_NAMES,
    MAP_FLOWS,
    MAP_FLOW_SHAPE,
    MAP_FLOW_CACHE,
    MAP_PORTS,
    MAP_JA4_SLOTS,
    MAP_JA4_POLICY,
    MAP_JA4_LABELS,
    MAP_JA4_STATS,
    MAP_JA4_OTHER,
    MAP_JA4_HOSTS,
    MAP_JA4_NAMES,
];

/// Default capacity of [`MAP_OTHER_HOSTS`] and [`MAP_OTHER_NAMES`]: 16 Ki names; 48 bytes of
/// counters and one 256-byte name each.
pub const OTHER_HOSTS_DEFAULT_ENTRIES: u32 = 16 * 1024;
/// Default flows [`MAP_FLOWS`] holds: 128 Ki flows, in twice as many 64-byte entries
/// ([`crate::flow_table::entries`]).
pub const FLOWS_DEFAULT_ENTRIES: u32 = 128 * 1024;
/// Flow cache entries per CPU, at the fewest and at the most (see [`flow_cache_entries`]).
pub const FLOW_CACHE_MIN_ENTRIES: u32 = 1024;
/// See [`FLOW_CACHE_MIN_ENTRIES`]: 64 Ki entries of 88 bytes is 5.5 MiB per CPU.
pub const FLOW_CACHE_MAX_ENTRIES: u32 = 64 * 1024;

/// Entries per CPU of [`MAP_FLOW_CACHE`] for a flow table of `flows` flows on `cpus` CPUs:
/// the flows' share of one CPU (RSS spreads flows over the CPUs), rounded up to a power of
/// two and kept within [`FLOW_CACHE_MIN_ENTRIES`]..=[`FLOW_CACHE_MAX_ENTRIES`]. The cache's
/// memory then stays near the flow table's (64-byte entries, twice as many as flows, plus
/// their tags) whatever the number of CPUs.
pub fn flow_cache_entries(flows: u32, cpus: u32) -> u32 {
    let share = flows / cpus.max(1);
    share
        .clamp(FLOW_CACHE_MIN_ENTRIES, FLOW_CACHE_MAX_ENTRIES)
        .next_power_of_two()
}

/// Default capacity of [`MAP_PENDING`]: ClientHellos in flight across segments at once.
pub const PENDING_DEFAULT_ENTRIES: u32 = 8 * 1024;

/// Default capacity of [`MAP_JA4_OTHER`]: fingerprints not configured, 64 bytes each.
pub const JA4_OTHER_DEFAULT_ENTRIES: u32 = 16 * 1024;
/// Default capacity of [`MAP_JA4_HOSTS`]: (host, fingerprint) pairs, 80 bytes each.
pub const JA4_HOSTS_DEFAULT_ENTRIES: u32 = 64 * 1024;
/// Default capacity of [`MAP_JA4_NAMES`]: JA4 strings known, 80 bytes each.
pub const JA4_NAMES_DEFAULT_ENTRIES: u32 = 64 * 1024;
/// Capacity of [`MAP_JA4_SLOTS`]: keys of configured fingerprints (a JA4 has one key unless
/// its lists overflow what the kernel keeps).
pub const JA4_SLOTS_ENTRIES: u32 = 4096;
/// Size of [`MAP_JA4_EVENTS`] in bytes (a power of two): about 470 records of 552 bytes.
pub const JA4_EVENTS_BYTES: u32 = 256 * 1024;

/// Defines the global counters once: each one's index constant, its name (the key in
/// `sni-user stats --json` and the metric's suffix) and its help text (the constant's doc and
/// the metric's HELP), in index order.
macro_rules! counters {
    ($($konst:ident = $index:literal, $name:literal, $help:literal;)+) => {
        $(
            #[doc = $help]
            pub const $konst: u32 = $index;
        )+
        /// Number of counters; the size of [`super::MAP_GLOBAL`].
        pub const COUNT: u32 = [$($index),+].len() as u32;
        /// Names of the counters in index order: the keys of `sni-user stats --json`'s
        /// `global`, and the metrics' names after `sni_xdp_`.
        pub const NAMES: [&str; COUNT as usize] = [$($name),+];
        /// Help texts of the counters in index order (the metrics' HELP).
        pub const HELP: [&str; COUNT as usize] = [$($help),+];
        // Indices are 0, 1, 2, … in order, so that NAMES and HELP are indexed by them.
        const _: () = {
            let indices = [$($index),+];
            let mut i = 0;
            while i < indices.len() {
                assert!(indices[i] == i as u32, "counter indices must run 0, 1, 2, … in order");
                i += 1;
            }
        };
    };
}

/// Where the program stops, for the benchmark's profile by stage (`SNI_PROFILE_STOP`, set by
/// the loader; [`profile_stop::NONE`] unless the bench asks). The verifier knows the value and
/// removes the checks of the stops not taken, so running every stage costs nothing for them.
pub mod profile_stop {
    /// Every stage runs (the product).
    pub const NONE: u8 = 0;
    /// After the global packet counter and the watched ports' lookup.
    pub const ENTRY: u8 = 1;
    /// After the headers stage.
    pub const HEADERS: u8 = 2;
    /// After the flow stage (a packet of no classified flow goes no further).
    pub const FLOW: u8 = 3;
    /// After the ClientHello is read, before its host, fingerprint, flow record and verdict.
    pub const HELLO: u8 = 4;
    /// After its outcome is counted and its fingerprint read (the key, its slot or its entry
    /// among the others), before its host.
    pub const FINGERPRINT: u8 = 5;
    /// After its host is found, its verdict decided and the host's counters charged, before
    /// the fingerprint's counters.
    pub const HOST: u8 = 6;
    /// After the fingerprint's counters (its own, and the host's row of it), before the flow
    /// is remembered (the flow table's insert) and the verdict returned.
    pub const COUNTED: u8 = 7;
    /// Inside the ClientHello stage: after the pending map's lookup and the first bytes' check,
    /// before the parser's state is set up in the scratch.
    pub const PENDING: u8 = 8;
    /// Inside the ClientHello stage: after the parser's state is set up in the scratch, before
    /// the payload is copied and parsed.
    pub const SCRATCH: u8 = 9;
}

/// Indices into [`MAP_GLOBAL`], with each counter's name and help text.
///
/// Every ClientHello the program starts to parse ends in exactly one of `SNI`, `NO_SNI`,
/// `MALFORMED`, `INCOMPLETE` or `SSLV2`, so those five add up to `CLIENT_HELLOS`. `ECH` counts the
/// ClientHellos among them that carry `encrypted_client_hello`.
pub mod counter {
    counters! {
        PACKETS = 0, "packets", "Packets the XDP program saw.";
        TCP_WATCHED = 1, "tcp_watched", "IPv4 or IPv6 TCP packets to a watched port.";
        CLIENT_HELLOS = 2, "client_hellos",
            "TLS ClientHellos read to an outcome (sni + no_sni + malformed + incomplete + sslv2).";
        SNI = 3, "sni", "ClientHellos in which a server_name was read.";
        NO_SNI = 4, "no_sni", "ClientHellos read to the end without a server_name.";
        ECH = 5, "ech",
            "ClientHellos carrying encrypted_client_hello (the name is the outer public name).";
        MALFORMED = 6, "malformed",
            "ClientHellos that break the TLS grammar (length fields that lie, bad versions).";
        INCOMPLETE = 7, "incomplete",
            "ClientHellos given up before their name was read (out of order, started over).";
        FRAGMENTS = 8, "fragments",
            "IP fragments carrying TCP, passed without parsing (their ports may be elsewhere).";
        HOST_UNTRACKED = 9, "host_untracked",
            "Names seen that could not get a host entry (map full): not counted per host.";
        ERRORS = 10, "errors", "Kernel helper failures; the packet was passed (fail open).";
        SPLIT = 11, "split", "ClientHellos read across more than one segment.";
        RETRANSMITS = 12, "retransmits",
            "Segments of a pending ClientHello carrying only bytes already read.";
        OUT_OF_ORDER = 13, "out_of_order",
            "Segments of a pending ClientHello that came after a hole (counted incomplete).";
        FLOW_PACKETS = 14, "flow_packets",
            "Packets of classified flows, counted toward their host without parsing.";
        DROPPED = 15, "dropped", "Packets dropped by a host's action = drop.";
        RATE_LIMITED = 16, "rate_limited",
            "Packets dropped because their ClientHello came over its host's hello_rate.";
        SSLV2 = 17, "sslv2",
            "SSLv2-compatible ClientHellos (old clients, scanners): no extensions, no name.";
        JA4 = 18, "ja4", "ClientHellos read to their end whose JA4 fingerprint was taken.";
        JA4_NEW = 19, "ja4_new",
            "Fingerprints the kernel had not seen (or had forgotten): their lists were sent.";
        JA4_LOST = 20, "ja4_lost",
            "New fingerprints whose lists the full ring buffer could not take.";
    }
}

/// Per-host counters, shared by every CPU (the kernel adds to them atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// ClientHellos naming this host.
    pub client_hellos: u64,
    /// Packets counted toward this host: its flows' packets from the first ClientHello
    /// segment on.
    pub packets: u64,
    /// Bytes (whole frames) of those packets.
    pub bytes: u64,
    /// ClientHellos naming this host that carried `encrypted_client_hello`: this host is then
    /// only the outer public name of some hidden inner host.
    pub ech: u64,
    /// Packets dropped by the host's `action = "drop"`.
    pub dropped: u64,
    /// Packets dropped because their ClientHello came over the host's `hello_rate`.
    pub rate_limited: u64,
}
const _: () = assert!(core::mem::size_of::<HostStats>() == 48);

impl HostStats {
    /// Adds `other` to `self`, saturating.
    pub fn add(&mut self, other: &Self) {
        self.client_hellos = self.client_hellos.saturating_add(other.client_hellos);
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.ech = self.ech.saturating_add(other.ech);
        self.dropped = self.dropped.saturating_add(other.dropped);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
    }
}

/// Counters of a fingerprint, or of a (host, fingerprint) pair; shared by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ja4Stats {
    /// ClientHellos with this fingerprint.
    pub client_hellos: u64,
    /// Those whose flow was dropped by an action (the host's or the fingerprint's).
    pub dropped: u64,
    /// Those whose flow was dropped by a hello_rate (the host's or the fingerprint's).
    pub rate_limited: u64,
}
const _: () = assert!(core::mem::size_of::<Ja4Stats>() == 24);

impl Ja4Stats {
    /// Adds `other` to `self`, saturating.
    pub fn add(&mut self, other: &Self) {
        self.client_hellos = self.client_hellos.saturating_add(other.client_hellos);
        self.dropped = self.dropped.saturating_add(other.dropped);
        self.rate_limited = self.rate_limited.saturating_add(other.rate_limited);
    }
}

/// A JA4 string as [`MAP_JA4_NAMES`] keeps it: 36 ASCII bytes; `known` is 0 when the lists
/// were too long to compute it (then `ja4` holds JA4_a and zeros).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ja4Name {
    /// The JA4 string.
    pub ja4: [u8; 36],
    /// 1 when `ja4` is the whole string.
    pub known: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Ja4Name>() == 40);

/// Key of [`MAP_JA4_HOSTS`]: a host (as a flow names its owner) and a fingerprint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostJa4 {
    /// The fingerprint.
    pub ja4: crate::ja4::Ja4Key,
    /// [`crate::flow::Flow::name_hash`] of a name not configured, else 0.
    pub name_hash: u64,
    /// The host slot of a configured host, else 0.
    pub slot: u32,
    /// [`crate::flow::kind`] of the flow.
    pub kind: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<HostJa4>() == 56);

/// The set of watched TCP destination ports, one bit per port.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PortSet {
    /// Bit `p % 64` of word `p / 64` is set when port `p` is watched.
    pub bits: [u64; 1024],
}
const _: () = assert!(core::mem::size_of::<PortSet>() == 8192);

impl PortSet {
    /// No port watched.
    pub const EMPTY: Self = Self { bits: [0; 1024] };

    /// Whether `port` is watched.
    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        let word = self.bits[usize::from(port >> 6)];
        word & (1u64 << (port & 63)) != 0
    }

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port >> 6)] |= 1u64 << (port & 63);
    }

    /// Watched ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(move |p| self.contains(*p))
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Bytes of TCP payload the XDP program copies into its scratch buffer at a time. A power of
/// two so that an index masked with `SCRATCH_LEN - 1` is provably in bounds for the verifier.
pub const SCRATCH_LEN: usize = 4096;

/// Per-CPU scratch of the XDP program: one chunk of payload, the ClientHello being read, and
/// room for map values too large for the 512-byte BPF stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    /// Payload bytes of the current chunk.
    pub buf: [u8; SCRATCH_LEN],
    /// The ClientHello being read: parser state (its host key is used directly as a map key)
    /// and what it has read so far.
    pub pending: Pending,
    /// Valid bytes in `buf`.
    pub len: u32,
    /// Next byte of `buf` the parser reads.
    pub pos: u32,
}
const _: () =
    assert!(core::mem::size_of::<Scratch>() == SCRATCH_LEN + core::mem::size_of::<Pending>() + 8);

/// The kernel's view of the scratch buffer as parser input: reads are masked into the buffer,
/// so the verifier sees every access in bounds whatever it knows about `len`.
pub struct Chunk<'a> {
    buf: &'a [u8; SCRATCH_LEN],
    len: usize,
}

impl<'a> Chunk<'a> {
    /// The first `len` bytes of `buf` (at most [`SCRATCH_LEN`]).
    #[inline(always)]
    pub fn new(buf: &'a [u8; SCRATCH_LEN], len: usize) -> Self {
        Self {
            buf,
            len: if len < SCRATCH_LEN { len } else { SCRATCH_LEN },
        }
    }
}

impl crate::hello::Input for Chunk<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }
    #[inline(always)]
    fn byte(&self, i: usize) -> u8 {
        self.buf[i & (SCRATCH_LEN - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_cache_is_the_tables_share_of_a_cpu_in_a_power_of_two() {
        // The default table on this project's 2-core machines, and on a 64-core edge.
        assert_eq!(flow_cache_entries(FLOWS_DEFAULT_ENTRIES, 2), 64 * 1024);
        assert_eq!(flow_cache_entries(FLOWS_DEFAULT_ENTRIES, 64), 2048);
        assert_eq!(flow_cache_entries(100_000, 3), 64 * 1024);
        assert_eq!(flow_cache_entries(10, 1), FLOW_CACHE_MIN_ENTRIES);
        assert_eq!(flow_cache_entries(u32::MAX, 1), FLOW_CACHE_MAX_ENTRIES);
        assert_eq!(flow_cache_entries(1 << 20, 0), FLOW_CACHE_MAX_ENTRIES);
    }
}
