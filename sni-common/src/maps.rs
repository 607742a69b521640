//! Map names, keys and values shared by the XDP program and userspace.
//!
//! Every map is named here once; the kernel side declares its statics with these exact names
//! (aya names a map after its static) and the loader finds and pins them by these constants.
//! Value types are `#[repr(C)]` with explicit padding and a compile-time size check, so both
//! sides agree on the layout byte for byte.

use crate::hello::Parser;

/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "sni_classify";

/// Global counters: `PerCpuArray<u64>`, one slot per [`counter`] index. Written by the XDP
/// program, summed over CPUs by userspace.
pub const MAP_GLOBAL: &str = "SNI_GLOBAL";
/// Per-host counters for the names the operator configured: `PerCpuHashMap<HostKey,
/// HostStats>`, filled with zeroed entries by userspace at start; the kernel only updates
/// entries that exist, so no flood of other names can evict them.
pub const MAP_KNOWN_HOSTS: &str = "SNI_KNOWN";
/// Per-host counters for every other name seen: `LruPerCpuHashMap<HostKey, HostStats>`,
/// inserted by the kernel; under a flood of random names the least recently seen go first.
pub const MAP_OTHER_HOSTS: &str = "SNI_OTHER";
/// Watched TCP destination ports: `Array<PortSet>` with one entry, written by userspace.
pub const MAP_PORTS: &str = "SNI_PORTS";
/// Per-CPU scratch space of the XDP program (packet bytes and parser state): kernel only.
pub const MAP_SCRATCH: &str = "SNI_SCRATCH";

/// Maps that `sni-user run` pins under its pin directory for other processes to read.
pub const PINNED_MAPS: [&str; 4] = [MAP_GLOBAL, MAP_KNOWN_HOSTS, MAP_OTHER_HOSTS, MAP_PORTS];

/// Default capacity of [`MAP_KNOWN_HOSTS`]; the loader sizes it to the configuration.
pub const KNOWN_HOSTS_DEFAULT_ENTRIES: u32 = 1024;
/// Default capacity of [`MAP_OTHER_HOSTS`]. 16 Ki names × 256-byte keys × per-CPU values
/// stays within a few MiB on a many-core host.
pub const OTHER_HOSTS_DEFAULT_ENTRIES: u32 = 16 * 1024;

/// Indices into [`MAP_GLOBAL`].
///
/// Every ClientHello the program starts to parse ends in exactly one of `SNI`, `NO_SNI`,
/// `MALFORMED` or `INCOMPLETE`, so those four add up to `CLIENT_HELLOS`. `ECH` counts the
/// ClientHellos among them that carry `encrypted_client_hello`.
pub mod counter {
    /// Every packet the program saw.
    pub const PACKETS: u32 = 0;
    /// IPv4 or IPv6 TCP packets to a watched destination port.
    pub const TCP_WATCHED: u32 = 1;
    /// TLS ClientHellos whose parsing started in a packet (handshake type 1 seen).
    pub const CLIENT_HELLOS: u32 = 2;
    /// ClientHellos in which a server_name was read.
    pub const SNI: u32 = 3;
    /// ClientHellos read to the end without a server_name.
    pub const NO_SNI: u32 = 4;
    /// ClientHellos carrying `encrypted_client_hello`: the name seen is the outer public name.
    pub const ECH: u32 = 5;
    /// ClientHellos that break the TLS grammar (length fields that lie, bad versions, …).
    pub const MALFORMED: u32 = 6;
    /// ClientHellos that continue past the packet before their name was read.
    pub const INCOMPLETE: u32 = 7;
    /// IP fragments carrying TCP, passed without parsing (their ports may be in another
    /// fragment).
    pub const FRAGMENTS: u32 = 8;
    /// A host entry could not be created (map full and not evictable): the name was seen but
    /// not counted per host.
    pub const HOST_UNTRACKED: u32 = 9;
    /// A kernel helper failed; the packet was passed without parsing (fail open).
    pub const ERRORS: u32 = 10;
    /// Number of counters; the size of [`super::MAP_GLOBAL`].
    pub const COUNT: u32 = 11;

    /// Names of the counters in index order: the keys of `sni-user stats --json`'s `global`.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "tcp_watched",
        "client_hellos",
        "sni",
        "no_sni",
        "ech",
        "malformed",
        "incomplete",
        "fragments",
        "host_untracked",
        "errors",
    ];
}

/// Per-host counters (per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// ClientHellos naming this host.
    pub client_hellos: u64,
    /// Packets counted toward this host.
    pub packets: u64,
    /// Bytes (whole frames) counted toward this host.
    pub bytes: u64,
    /// ClientHellos naming this host that carried `encrypted_client_hello`: this host is then
    /// only the outer public name of some hidden inner host.
    pub ech: u64,
}
const _: () = assert!(core::mem::size_of::<HostStats>() == 32);

impl HostStats {
    /// Adds `other` to `self`, saturating.
    pub fn add(&mut self, other: &Self) {
        self.client_hellos = self.client_hellos.saturating_add(other.client_hellos);
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.ech = self.ech.saturating_add(other.ech);
    }
}

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

/// Per-CPU scratch of the XDP program: one chunk of payload and the parser state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    /// Payload bytes of the current chunk.
    pub buf: [u8; SCRATCH_LEN],
    /// Parser state; its host key is used directly as the map key.
    pub parser: Parser,
    /// Valid bytes in `buf`.
    pub len: u32,
    /// Next byte of `buf` the parser reads.
    pub pos: u32,
}
const _: () = assert!(core::mem::size_of::<Scratch>() == SCRATCH_LEN + Parser::SIZE + 8);

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
