//! Every map of the XDP program, and the constants the loader sets before loading. Names,
//! key and value types come from `sni_common::maps`, where each map is described once (who
//! writes it, who reads it); aya names a map after its static, so the statics carry exactly
//! those names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sni_common::{
    flow::{Bucket, CachedFlow, FlowKey, Pending, Policy},
    flow_table::{FlowEntry, Shape},
    host::{NameEntry, NameKeys},
    ja4::Ja4Key,
    maps::{
        counter, HostJa4, HostStats, Ja4Name, Ja4Stats, PortSet, Scratch, FLOW_CACHE_MIN_ENTRIES,
        JA4_EVENTS_BYTES, JA4_HOSTS_DEFAULT_ENTRIES, JA4_NAMES_DEFAULT_ENTRIES,
        JA4_OTHER_DEFAULT_ENTRIES, JA4_SLOTS_ENTRIES, OTHER_HOSTS_DEFAULT_ENTRIES,
        PENDING_DEFAULT_ENTRIES,
    },
    HostKey,
};

/// Global counters, indexed by `sni_common::maps::counter`.
#[map]
pub static SNI_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Configured names and `*.` patterns by lookup hash → check hash and host slot (sized by the
/// loader).
#[map]
pub static SNI_HOSTS: HashMap<u64, NameEntry> = HashMap::with_max_entries(1, 0);

/// The keys of the name hashes (one entry, written by the loader).
#[map]
pub static SNI_NAME_KEYS: Array<NameKeys> = Array::with_max_entries(1, 0);

/// Counters of the configured hosts by slot (sized by the loader, so never evicted), shared
/// by every CPU: added to atomically.
#[map]
pub static SNI_HOST_STATS: Array<HostStats> = Array::with_max_entries(1, 0);

/// Labels by host slot, for userspace readers (the program never reads it).
#[map]
pub static SNI_LABELS: Array<HostKey> = Array::with_max_entries(1, 0);

/// Actions by host slot; slot 0 is `[default]`.
#[map]
pub static SNI_POLICY: Array<Policy> = Array::with_max_entries(1, 0);

/// Rate-limit state by host slot, shared by every CPU (compare-and-swap).
#[map]
pub static SNI_BUCKETS: Array<Bucket> = Array::with_max_entries(1, 0);

/// Counters of every other name by name hash, shared by every CPU as `SNI_HOST_STATS` is;
/// least recently used go first.
#[map]
pub static SNI_OTHER: LruHashMap<u64, HostStats> =
    LruHashMap::with_max_entries(OTHER_HOSTS_DEFAULT_ENTRIES, 0);

/// The names of `SNI_OTHER`'s keys.
#[map]
pub static SNI_OTHER_NAMES: LruHashMap<u64, HostKey> =
    LruHashMap::with_max_entries(OTHER_HOSTS_DEFAULT_ENTRIES, 0);

/// Flows whose ClientHello was read: their host and verdict, in buckets of four entries
/// (`sni_common::flow_table`; the terminator reads it too). Sized by the loader.
#[map]
pub static SNI_FLOWS: Array<FlowEntry> = Array::with_max_entries(1, 0);

/// Per entry of `SNI_FLOWS`, at the same index, its tag and stamp (sized by the loader).
#[map]
pub static SNI_FLOW_TAGS: Array<u64> = Array::with_max_entries(1, 0);

/// Where `SNI_FLOWS`' flows go (one entry, written by the loader).
#[map]
pub static SNI_FLOW_SHAPE: Array<Shape> = Array::with_max_entries(1, 0);

/// Each CPU's copies of flow table entries, with the packets they counted and still owe their
/// host: CPU `c`'s entry `i` (its `FlowKey::cache_index`) at `flow::cache_slot(c, i, mask)`.
/// Each CPU has a power-of-two number of entries, `SNI_CACHE_MASK` + 1; the loader sizes the
/// array to that many per possible CPU id.
#[map]
pub static SNI_FLOW_CACHE: Array<CachedFlow> = Array::with_max_entries(FLOW_CACHE_MIN_ENTRIES, 0);

/// The flow cache's epoch (one entry): a cached copy is valid only in the epoch it was made.
#[map]
pub static SNI_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// ClientHellos waiting for their next segment.
#[map]
pub static SNI_PENDING: LruHashMap<FlowKey, Pending> =
    LruHashMap::with_max_entries(PENDING_DEFAULT_ENTRIES, 0);

/// Watched TCP destination ports (one entry).
#[map]
pub static SNI_PORTS: Array<PortSet> = Array::with_max_entries(1, 0);

/// Per-CPU scratch: a chunk of payload, the ClientHello being read, large values.
#[map]
pub static SNI_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Configured fingerprints' keys → fingerprint slot (written by userspace as it learns them).
#[map]
pub static SNI_JA4_SLOTS: HashMap<Ja4Key, u32> = HashMap::with_max_entries(JA4_SLOTS_ENTRIES, 0);

/// Keys in `SNI_JA4_SLOTS` (one entry, written by userspace): 0 spares the lookup.
#[map]
pub static SNI_JA4_LEARNED: Array<u32> = Array::with_max_entries(1, 0);

/// JA4 strings by fingerprint slot, for userspace readers (the program never reads it).
#[map]
pub static SNI_JA4_LABELS: Array<Ja4Name> = Array::with_max_entries(1, 0);

/// Actions by fingerprint slot (sized by the loader; slot 0 unused).
#[map]
pub static SNI_JA4_POLICY: Array<Policy> = Array::with_max_entries(1, 0);

/// Rate-limit state by fingerprint slot, shared by every CPU.
#[map]
pub static SNI_JA4_BUCKETS: Array<Bucket> = Array::with_max_entries(1, 0);

/// Counters by fingerprint slot, shared by every CPU.
#[map]
pub static SNI_JA4_STATS: Array<Ja4Stats> = Array::with_max_entries(1, 0);

/// Counters of every other fingerprint, shared by every CPU; least recently used go first.
#[map]
pub static SNI_JA4_OTHER: LruHashMap<Ja4Key, Ja4Stats> =
    LruHashMap::with_max_entries(JA4_OTHER_DEFAULT_ENTRIES, 0);

/// Counters per (host, fingerprint), shared by every CPU.
#[map]
pub static SNI_JA4_HOSTS: LruHashMap<HostJa4, Ja4Stats> =
    LruHashMap::with_max_entries(JA4_HOSTS_DEFAULT_ENTRIES, 0);

/// JA4 strings by key, for userspace readers (written by the daemon; the program never reads
/// it).
#[map]
pub static SNI_JA4_NAMES: LruHashMap<Ja4Key, Ja4Name> =
    LruHashMap::with_max_entries(JA4_NAMES_DEFAULT_ENTRIES, 0);

/// The lists of fingerprints seen for the first time, for userspace to hash.
#[map]
pub static SNI_JA4_EVENTS: RingBuf = RingBuf::with_byte_size(JA4_EVENTS_BYTES, 0);

/// 1 when ClientHellos are read to their end for their JA4 fingerprint (the default); 0 reads
/// them up to the name only.
#[no_mangle]
static SNI_JA4: u8 = 1;

/// 1 when the loader was asked (`--debug`) to log every ClientHello; off the per-packet path
/// otherwise.
#[no_mangle]
static SNI_DEBUG: u8 = 0;

/// 1 when some configured name is a `*.` pattern: only then does a name that is not
/// configured cost a second lookup.
#[no_mangle]
static SNI_WILDCARDS: u8 = 0;

/// Where the program stops (`sni_common::maps::profile_stop`): the bench's profile by stage.
#[no_mangle]
static SNI_PROFILE_STOP: u8 = 0;

/// Entries of `SNI_FLOW_CACHE` less one (the loader sets both).
#[no_mangle]
static SNI_CACHE_MASK: u32 = FLOW_CACHE_MIN_ENTRIES - 1;

/// Random seed of the flow cache's index, picked by the loader at each start.
#[no_mangle]
static SNI_CACHE_SEED: u64 = 0;

/// Whether the loader turned the ClientHello log on.
#[inline(always)]
pub fn debug_enabled() -> bool {
    // SAFETY: a plain read of a constant the loader may patch; volatile so that the compiler
    // does not fold the default.
    unsafe { core::ptr::read_volatile(&SNI_DEBUG) != 0 }
}

/// Whether ClientHellos are read for their JA4 fingerprint.
#[inline(always)]
pub fn ja4_enabled() -> bool {
    // SAFETY: as in `debug_enabled`.
    unsafe { core::ptr::read_volatile(&SNI_JA4) != 0 }
}

/// Whether any configured name is a wildcard pattern.
#[inline(always)]
pub fn wildcards_enabled() -> bool {
    // SAFETY: as in `debug_enabled`.
    unsafe { core::ptr::read_volatile(&SNI_WILDCARDS) != 0 }
}

/// Where the program stops (`sni_common::maps::profile_stop`).
#[inline(always)]
pub fn profile_stop() -> u8 {
    // SAFETY: as in `debug_enabled`.
    unsafe { core::ptr::read_volatile(&SNI_PROFILE_STOP) }
}

/// The flow cache's index mask.
#[inline(always)]
pub fn cache_mask() -> u32 {
    // SAFETY: as in `debug_enabled`.
    unsafe { core::ptr::read_volatile(&SNI_CACHE_MASK) }
}

/// The flow cache's seed.
#[inline(always)]
pub fn cache_seed() -> u64 {
    // SAFETY: as in `debug_enabled`.
    unsafe { core::ptr::read_volatile(&SNI_CACHE_SEED) }
}
