//! JA4 TLS client fingerprints (FoxIO's specification, `technical_details/JA4.md`), read by
//! the ClientHello parser as the bytes stream through it, in the kernel and in userspace alike.
//!
//! A JA4 is `t13d1516h2_8daaf6152771_e5627efa2ab1`:
//! - JA4_a: `t` (TLS over TCP), the version (the highest of supported_versions, else
//!   legacy_version), `d` or `i` (server_name present or not), the counts of cipher suites and
//!   of extensions (two digits, at most 99), the first and last characters of the first ALPN
//!   value;
//! - JA4_b: SHA-256 of the cipher suites in hex, sorted, comma-separated, first 12 hex digits;
//! - JA4_c: the same of the extensions sorted (server_name and ALPN left out), then `_` and the
//!   signature algorithms in their order.
//!
//! GREASE values (RFC 8701) are left out everywhere.
//!
//! The kernel cannot sort or run SHA-256 per packet, and needs a fixed-size key for its maps.
//! So [`Ja4State`] keeps, beside the lists themselves, digests that identify them:
//! commutative ones (a sum of mixed values, independent of order, so equal for a list and its
//! sorted form) of the cipher suites and of the extensions, an ordered one of the signature
//! algorithms. [`Ja4Key`] is JA4_a and those three digests: two ClientHellos with the same key
//! have the same JA4. Userspace turns the lists into the JA4 string ([`Ja4State::ja4`]) the
//! first time the kernel sees a key, and keeps key → JA4.

/// Cipher suites kept in [`Ja4Lists`]; more make the JA4 string unknown (the key still counts
/// them all). A power of two, so that the kernel can mask the index.
pub const MAX_CIPHERS: usize = 128;
/// Extensions kept in [`Ja4Lists`] (IANA has about 60 types; browsers send 16 to 20).
pub const MAX_EXTENSIONS: usize = 64;
/// Signature algorithms kept in [`Ja4Lists`] (OpenSSL 3 sends about 30).
pub const MAX_SIG_ALGS: usize = 64;

/// Extension types JA4 treats on their own.
pub mod ext {
    /// server_name (RFC 6066).
    pub const SERVER_NAME: u16 = 0x0000;
    /// signature_algorithms (RFC 8446 §4.2.3).
    pub const SIGNATURE_ALGORITHMS: u16 = 0x000d;
    /// application_layer_protocol_negotiation (RFC 7301).
    pub const ALPN: u16 = 0x0010;
    /// supported_versions (RFC 8446 §4.2.1).
    pub const SUPPORTED_VERSIONS: u16 = 0x002b;
}

/// Whether `v` is a GREASE value (RFC 8701: `0x?a?a` with both bytes equal).
#[inline(always)]
pub const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// A 64-bit mix of one list value, so that sums of them are digests of the multiset: `salt`
/// (a few bits) keeps the lists apart.
#[inline(always)]
const fn mix(v: u16, salt: u64) -> u64 {
    mix64(v as u64 | salt << 16)
}

/// The splitmix64 finaliser: every bit of `x` moves every bit of the result.
#[inline(always)]
const fn mix64(x: u64) -> u64 {
    let mut x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The lists a JA4 string is made of, GREASE left out, in the order the ClientHello has them;
/// the first [`MAX_CIPHERS`] / [`MAX_EXTENSIONS`] / [`MAX_SIG_ALGS`] of each.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ja4Lists {
    /// Cipher suites.
    pub ciphers: [u16; MAX_CIPHERS],
    /// Extension types, server_name and ALPN included.
    pub extensions: [u16; MAX_EXTENSIONS],
    /// Signature algorithms.
    pub sig_algs: [u16; MAX_SIG_ALGS],
}

/// What the parser gathers toward a ClientHello's JA4 as it reads it (all zero when new).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ja4State {
    /// Sum of [`mix`]ed cipher suites: the digest of their set.
    pub cipher_sum: u64,
    /// Sum of [`mix`]ed extension types but server_name and ALPN.
    pub ext_sum: u64,
    /// Ordered digest (FNV-1a over 16-bit values) of the signature algorithms.
    pub sig_hash: u64,
    /// Cipher suites seen (not GREASE), even past the list's room.
    pub n_ciphers: u16,
    /// Extensions seen (not GREASE).
    pub n_extensions: u16,
    /// Signature algorithms seen (not GREASE).
    pub n_sig_algs: u16,
    /// legacy_version.
    pub legacy_version: u16,
    /// Highest supported_versions entry (not GREASE); 0 without one.
    pub max_supported: u16,
    /// First byte of the first ALPN value.
    pub alpn_first: u8,
    /// Last byte of the first ALPN value.
    pub alpn_last: u8,
    /// `J_*` flags.
    pub flags: u8,
    /// Zero.
    pub _pad: [u8; 3],
    /// The lists themselves, for userspace to hash.
    pub lists: Ja4Lists,
}
const _: () = assert!(core::mem::size_of::<Ja4State>() == Ja4State::SIZE);

/// A server_name extension was seen.
const J_SNI: u8 = 1;
/// An ALPN extension was seen (the first one is read).
const J_ALPN_SEEN: u8 = 2;
/// The first ALPN value is not empty: `alpn_first` and `alpn_last` hold its ends.
const J_ALPN_VALUE: u8 = 4;
/// A signature_algorithms extension was seen (the first one is read).
const J_SIG_ALGS_SEEN: u8 = 8;

impl Ja4State {
    /// Size in bytes (it is part of the parser, stored in BPF maps and sent to userspace).
    pub const SIZE: usize = 40 + 2 * (MAX_CIPHERS + MAX_EXTENSIONS + MAX_SIG_ALGS);

    /// Nothing read yet.
    pub const NEW: Self = Self {
        cipher_sum: 0,
        ext_sum: 0,
        sig_hash: FNV_OFFSET,
        n_ciphers: 0,
        n_extensions: 0,
        n_sig_algs: 0,
        legacy_version: 0,
        max_supported: 0,
        alpn_first: 0,
        alpn_last: 0,
        flags: 0,
        _pad: [0; 3],
        lists: Ja4Lists {
            ciphers: [0; MAX_CIPHERS],
            extensions: [0; MAX_EXTENSIONS],
            sig_algs: [0; MAX_SIG_ALGS],
        },
    };

    /// A cipher suite of the ClientHello.
    #[inline(always)]
    pub fn cipher(&mut self, v: u16) {
        if is_grease(v) {
            return;
        }
        let n = usize::from(self.n_ciphers);
        if n < MAX_CIPHERS {
            self.lists.ciphers[n & (MAX_CIPHERS - 1)] = v;
        }
        self.n_ciphers = self.n_ciphers.saturating_add(1);
        self.cipher_sum = self.cipher_sum.wrapping_add(mix(v, 1));
    }

    /// An extension of the ClientHello, by type.
    #[inline(always)]
    pub fn extension(&mut self, v: u16) {
        if is_grease(v) {
            return;
        }
        let n = usize::from(self.n_extensions);
        if n < MAX_EXTENSIONS {
            self.lists.extensions[n & (MAX_EXTENSIONS - 1)] = v;
        }
        self.n_extensions = self.n_extensions.saturating_add(1);
        match v {
            ext::SERVER_NAME => self.flags |= J_SNI,
            ext::ALPN => {}
            _ => self.ext_sum = self.ext_sum.wrapping_add(mix(v, 2)),
        }
    }

    /// A signature algorithm of the signature_algorithms extension, in order.
    #[inline(always)]
    pub fn sig_alg(&mut self, v: u16) {
        if is_grease(v) {
            return;
        }
        let n = usize::from(self.n_sig_algs);
        if n < MAX_SIG_ALGS {
            self.lists.sig_algs[n & (MAX_SIG_ALGS - 1)] = v;
        }
        self.n_sig_algs = self.n_sig_algs.saturating_add(1);
        self.sig_hash = (self.sig_hash ^ u64::from(v)).wrapping_mul(FNV_PRIME);
    }

    /// A version of the supported_versions extension.
    #[inline(always)]
    pub fn supported_version(&mut self, v: u16) {
        if !is_grease(v) && v > self.max_supported {
            self.max_supported = v;
        }
    }

    /// Whether the ALPN extension is yet to be read: only the first one counts.
    #[inline(always)]
    pub fn wants_alpn(&self) -> bool {
        self.flags & J_ALPN_SEEN == 0
    }

    /// Whether the signature_algorithms extension is yet to be read: only the first one
    /// counts, as only the first ALPN does.
    #[inline(always)]
    pub fn wants_sig_algs(&self) -> bool {
        self.flags & J_SIG_ALGS_SEEN == 0
    }

    /// The first signature_algorithms extension starts.
    #[inline(always)]
    pub fn sig_algs_seen(&mut self) {
        self.flags |= J_SIG_ALGS_SEEN;
    }

    /// The first ALPN extension starts.
    #[inline(always)]
    pub fn alpn_seen(&mut self) {
        self.flags |= J_ALPN_SEEN;
    }

    /// Byte `i` of the first ALPN value (read in order).
    #[inline(always)]
    pub fn alpn_byte(&mut self, i: u32, b: u8) {
        if i == 0 {
            self.alpn_first = b;
            self.flags |= J_ALPN_VALUE;
        }
        self.alpn_last = b;
    }

    /// The version JA4 names: the highest supported_versions entry, else legacy_version.
    pub fn version(&self) -> u16 {
        if self.max_supported != 0 {
            self.max_supported
        } else {
            self.legacy_version
        }
    }

    /// JA4_a: `t`, version, `d`/`i`, counts, ALPN ends.
    pub fn part_a(&self) -> [u8; 10] {
        let v = version_code(self.version());
        let n_c = two_digits(self.n_ciphers);
        let n_e = two_digits(self.n_extensions);
        let alpn = if self.flags & J_ALPN_VALUE != 0 {
            alpn_code(self.alpn_first, self.alpn_last)
        } else {
            *b"00"
        };
        let sni = if self.flags & J_SNI != 0 { b'd' } else { b'i' };
        [
            b't', v[0], v[1], sni, n_c[0], n_c[1], n_e[0], n_e[1], alpn[0], alpn[1],
        ]
    }

    /// The fixed-size key that stands for this ClientHello's JA4.
    pub fn key(&self) -> Ja4Key {
        Ja4Key {
            a: self.part_a(),
            _pad: [0; 6],
            ciphers: self.cipher_sum,
            extensions: self.ext_sum,
            sig_algs: self.sig_hash,
        }
    }

    /// A state from the bytes of one (a ring buffer record of the kernel, native byte order);
    /// `None` when they are not [`Ja4State::SIZE`] long. Read field by field, so any bytes
    /// make some state.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::SIZE {
            return None;
        }
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(x)
        };
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let mut s = Self::NEW;
        s.cipher_sum = u64_at(0);
        s.ext_sum = u64_at(8);
        s.sig_hash = u64_at(16);
        s.n_ciphers = u16_at(24);
        s.n_extensions = u16_at(26);
        s.n_sig_algs = u16_at(28);
        s.legacy_version = u16_at(30);
        s.max_supported = u16_at(32);
        s.alpn_first = b[34];
        s.alpn_last = b[35];
        s.flags = b[36];
        let lists = 40;
        for (i, v) in s.lists.ciphers.iter_mut().enumerate() {
            *v = u16_at(lists + 2 * i);
        }
        let exts = lists + 2 * MAX_CIPHERS;
        for (i, v) in s.lists.extensions.iter_mut().enumerate() {
            *v = u16_at(exts + 2 * i);
        }
        let sigs = exts + 2 * MAX_EXTENSIONS;
        for (i, v) in s.lists.sig_algs.iter_mut().enumerate() {
            *v = u16_at(sigs + 2 * i);
        }
        Some(s)
    }

    /// Whether the lists hold every value seen, so that the JA4 string can be computed.
    pub fn complete(&self) -> bool {
        usize::from(self.n_ciphers) <= MAX_CIPHERS
            && usize::from(self.n_extensions) <= MAX_EXTENSIONS
            && usize::from(self.n_sig_algs) <= MAX_SIG_ALGS
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The two characters JA4 gives a version; `00` when unknown.
pub const fn version_code(v: u16) -> [u8; 2] {
    match v {
        0x0304 => *b"13",
        0x0303 => *b"12",
        0x0302 => *b"11",
        0x0301 => *b"10",
        0x0300 => *b"s3",
        0x0002 => *b"s2",
        0xfeff => *b"d1",
        0xfefd => *b"d2",
        0xfefc => *b"d3",
        _ => *b"00",
    }
}

/// `n` as two decimal digits, 99 at most.
const fn two_digits(n: u16) -> [u8; 2] {
    let n = if n > 99 { 99 } else { n as u8 };
    [b'0' + n / 10, b'0' + n % 10]
}

/// The ALPN characters of JA4_a from the first and last bytes of the first value: the bytes
/// themselves when both are ASCII letters or digits, else the first hex digit of the first
/// and the last hex digit of the last.
const fn alpn_code(first: u8, last: u8) -> [u8; 2] {
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        [first, last]
    } else {
        [hex_digit(first >> 4), hex_digit(last & 0xf)]
    }
}

/// Lower-case hex digit of a nibble.
const fn hex_digit(n: u8) -> u8 {
    match n {
        0..=9 => b'0' + n,
        _ => b'a' + (n - 10),
    }
}

/// The kernel's key for a JA4: JA4_a and the digests of the lists ([`Ja4State::key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ja4Key {
    /// JA4_a, ASCII.
    pub a: [u8; 10],
    /// Zero.
    pub _pad: [u8; 6],
    /// Digest of the cipher suites' set.
    pub ciphers: u64,
    /// Digest of the extensions' set (server_name and ALPN left out).
    pub extensions: u64,
    /// Digest of the signature algorithms in order.
    pub sig_algs: u64,
}
const _: () = assert!(core::mem::size_of::<Ja4Key>() == 40);

impl Ja4Key {
    /// One 64-bit word standing for the key (in the flow table, where the terminator checks
    /// it against its own reading of the ClientHello). Never 0, which means "no fingerprint".
    #[inline(always)]
    pub fn hash64(&self) -> u64 {
        let mut a = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            a[i] = self.a[i];
            i += 1;
        }
        let tail = u64::from(self.a[8]) | u64::from(self.a[9]) << 8;
        let h = mix64(u64::from_le_bytes(a))
            ^ mix64(tail | 1 << 16).rotate_left(13)
            ^ self.ciphers.rotate_left(23)
            ^ self.extensions.rotate_left(37)
            ^ self.sig_algs;
        if h == 0 {
            1
        } else {
            h
        }
    }
}

#[cfg(feature = "user")]
mod string {
    use sha2::{Digest, Sha256};

    use super::{ext, Ja4State};

    /// A JA4 string: 36 ASCII characters.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Ja4(pub [u8; 36]);

    impl Ja4 {
        /// The string.
        pub fn as_str(&self) -> &str {
            // Built from ASCII only (see `Ja4State::ja4`), and checked so by `parse`.
            core::str::from_utf8(&self.0).unwrap_or("")
        }

        /// Reads a JA4 string as configured: `t` or `q` or `d`, version, `d`/`i`, four
        /// digits, two ALPN characters, `_`, 12 lower-case hex digits, `_`, 12 more.
        pub fn parse(s: &str) -> Result<Self, &'static str> {
            let b = s.as_bytes();
            let out: [u8; 36] = b
                .try_into()
                .map_err(|_| "a JA4 is 36 characters: t13d1516h2_8daaf6152771_e5627efa2ab1")?;
            if !matches!(out[0], b't' | b'q' | b'd') {
                return Err("a JA4 starts with t, q or d");
            }
            let known_version = [
                0x0304u16, 0x0303, 0x0302, 0x0301, 0x0300, 0x0002, 0xfeff, 0xfefd, 0xfefc, 0,
            ]
            .iter()
            .any(|v| super::version_code(*v) == [out[1], out[2]]);
            if !known_version {
                return Err("unknown TLS version in JA4_a (13, 12, 11, 10, s3, s2, d1-d3, 00)");
            }
            if !matches!(out[3], b'd' | b'i') {
                return Err("the 4th character of a JA4 is d (server_name) or i (none)");
            }
            if !out[4..8].iter().all(u8::is_ascii_digit) {
                return Err("characters 5 to 8 of a JA4 are the two-digit counts");
            }
            if !out[8..10].iter().all(u8::is_ascii_alphanumeric) {
                return Err("characters 9 and 10 of a JA4 are letters or digits (ALPN)");
            }
            if out[10] != b'_' || out[23] != b'_' {
                return Err("a JA4's parts are separated by _ after characters 10 and 23");
            }
            let hex = |c: &u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
            if !out[11..23].iter().all(hex) || !out[24..36].iter().all(hex) {
                return Err("JA4_b and JA4_c are 12 lower-case hex digits each");
            }
            Ok(Self(out))
        }
    }

    impl core::fmt::Display for Ja4 {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl core::fmt::Debug for Ja4 {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl Ja4State {
        /// The JA4 string, as the specification computes it from the lists; `None` when a
        /// list held more values than [`Ja4State`] keeps.
        pub fn ja4(&self) -> Option<Ja4> {
            if !self.complete() {
                return None;
            }
            let mut out = [0u8; 36];
            out[..10].copy_from_slice(&self.part_a());
            out[10] = b'_';
            out[23] = b'_';
            let mut ciphers = self.lists.ciphers;
            let ciphers = &mut ciphers[..usize::from(self.n_ciphers)];
            ciphers.sort_unstable();
            out[11..23].copy_from_slice(&truncated_hash(ciphers, &[]));
            let mut exts = [0u16; super::MAX_EXTENSIONS];
            let mut n = 0;
            for &e in &self.lists.extensions[..usize::from(self.n_extensions)] {
                if e != ext::SERVER_NAME && e != ext::ALPN {
                    exts[n] = e;
                    n += 1;
                }
            }
            let exts = &mut exts[..n];
            exts.sort_unstable();
            let sigs = &self.lists.sig_algs[..usize::from(self.n_sig_algs)];
            out[24..36].copy_from_slice(&truncated_hash(exts, sigs));
            Some(Ja4(out))
        }
    }

    /// The first 12 hex digits of SHA-256 over `list` in 4-digit hex, comma-separated, then
    /// (when `then` is not empty) `_` and `then` the same way; twelve zeros for an empty `list`.
    fn truncated_hash(list: &[u16], then: &[u16]) -> [u8; 12] {
        if list.is_empty() {
            return [b'0'; 12];
        }
        let mut h = Sha256::new();
        hash_list(&mut h, list);
        if !then.is_empty() {
            h.update(b"_");
            hash_list(&mut h, then);
        }
        let digest = h.finalize();
        let mut out = [0u8; 12];
        for (i, b) in digest.iter().take(6).enumerate() {
            out[2 * i] = super::hex_digit(b >> 4);
            out[2 * i + 1] = super::hex_digit(b & 0xf);
        }
        out
    }

    fn hash_list(h: &mut Sha256, list: &[u16]) {
        for (i, v) in list.iter().enumerate() {
            if i > 0 {
                h.update(b",");
            }
            let b = v.to_be_bytes();
            h.update([
                super::hex_digit(b[0] >> 4),
                super::hex_digit(b[0] & 0xf),
                super::hex_digit(b[1] >> 4),
                super::hex_digit(b[1] & 0xf),
            ]);
        }
    }
}

#[cfg(feature = "user")]
pub use string::Ja4;

#[cfg(all(test, feature = "user"))]
mod tests {
    extern crate std;

    use super::*;

    /// The specification's example (JA4.md): its lists in their original order, GREASE added.
    fn spec_example(sig_algs: bool) -> Ja4State {
        let mut s = Ja4State::NEW;
        s.legacy_version = 0x0303;
        s.cipher(0x0a0a);
        for c in [
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
            0x009c, 0x009d, 0x002f, 0x0035,
        ] {
            s.cipher(c);
        }
        s.extension(0xdada);
        for e in [
            0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
            0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
        ] {
            s.extension(e);
        }
        s.supported_version(0x7a7a);
        s.supported_version(0x0304);
        s.supported_version(0x0303);
        s.alpn_seen();
        s.alpn_byte(0, b'h');
        s.alpn_byte(1, b'2');
        if sig_algs {
            for a in [
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ] {
                s.sig_alg(a);
            }
        }
        s
    }

    #[test]
    fn the_specifications_example() {
        let s = spec_example(true);
        assert_eq!(
            s.ja4().as_ref().map(Ja4::as_str),
            Some("t13d1516h2_8daaf6152771_e5627efa2ab1")
        );
        // Without signature algorithms, JA4_c hashes the extensions alone.
        let s = spec_example(false);
        assert_eq!(&s.ja4().unwrap().as_str()[24..], "6d807ffa2a79");
    }

    #[test]
    fn the_key_does_not_depend_on_the_order_of_ciphers_or_extensions() {
        let a = spec_example(true);
        let mut b = Ja4State::NEW;
        b.legacy_version = 0x0303;
        for i in (0..usize::from(a.n_ciphers)).rev() {
            b.cipher(a.lists.ciphers[i]);
        }
        for i in (0..usize::from(a.n_extensions)).rev() {
            b.extension(a.lists.extensions[i]);
        }
        b.supported_version(0x0304);
        b.alpn_seen();
        b.alpn_byte(0, b'h');
        b.alpn_byte(1, b'2');
        for i in 0..usize::from(a.n_sig_algs) {
            b.sig_alg(a.lists.sig_algs[i]);
        }
        assert_eq!(a.key(), b.key());
        assert_eq!(a.ja4(), b.ja4());
        // The signature algorithms' order is part of it.
        let mut c = b;
        c.sig_hash = FNV_OFFSET;
        c.n_sig_algs = 0;
        for i in (0..usize::from(a.n_sig_algs)).rev() {
            c.sig_alg(a.lists.sig_algs[i]);
        }
        assert_ne!(a.key(), c.key());
        assert_ne!(a.ja4(), c.ja4());
    }

    #[test]
    fn a_state_reads_back_from_its_bytes() {
        let s = spec_example(true);
        let mut bytes = std::vec::Vec::new();
        bytes.extend_from_slice(&s.cipher_sum.to_ne_bytes());
        bytes.extend_from_slice(&s.ext_sum.to_ne_bytes());
        bytes.extend_from_slice(&s.sig_hash.to_ne_bytes());
        for v in [
            s.n_ciphers,
            s.n_extensions,
            s.n_sig_algs,
            s.legacy_version,
            s.max_supported,
        ] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        bytes.extend_from_slice(&[s.alpn_first, s.alpn_last, s.flags, 0, 0, 0]);
        for v in s
            .lists
            .ciphers
            .iter()
            .chain(&s.lists.extensions)
            .chain(&s.lists.sig_algs)
        {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(Ja4State::from_bytes(&bytes), Some(s));
        assert_eq!(Ja4State::from_bytes(&bytes[1..]), None);
    }

    #[test]
    fn alpn_characters_follow_the_specification() {
        assert_eq!(alpn_code(b'h', b'2'), *b"h2");
        assert_eq!(alpn_code(b'h', b'1'), *b"h1");
        assert_eq!(alpn_code(0xab, 0xab), *b"ab");
        assert_eq!(alpn_code(0xab, 0xcd), *b"ad");
        assert_eq!(alpn_code(0x30, 0xab), *b"3b");
        assert_eq!(alpn_code(0x30, 0x31), *b"01");
        // No ALPN: 00.
        let mut s = spec_example(true);
        s.flags &= !J_ALPN_VALUE;
        assert_eq!(&s.part_a()[8..], b"00");
    }

    #[test]
    fn counts_stop_at_99_and_lists_past_their_room_make_the_string_unknown() {
        let mut s = Ja4State::NEW;
        for c in 0..(MAX_CIPHERS as u16 + 1) {
            s.cipher(c + 1);
        }
        assert_eq!(&s.part_a()[4..6], b"99");
        assert!(!s.complete());
        assert_eq!(s.ja4(), None);
    }

    #[test]
    fn configured_strings_are_checked() {
        assert!(Ja4::parse("t13d1516h2_8daaf6152771_e5627efa2ab1").is_ok());
        for bad in [
            "",
            "t13d1516h2_8daaf6152771_e5627efa2ab",
            "x13d1516h2_8daaf6152771_e5627efa2ab1",
            "t14d1516h2_8daaf6152771_e5627efa2ab1",
            "t13x1516h2_8daaf6152771_e5627efa2ab1",
            "t13d15a6h2_8daaf6152771_e5627efa2ab1",
            "t13d1516h2-8daaf6152771_e5627efa2ab1",
            "t13d1516h2_8DAAF6152771_e5627efa2ab1",
            "t13d1516h._8daaf6152771_e5627efa2ab1",
        ] {
            assert!(Ja4::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grease_is_left_out() {
        for g in [0x0a0a, 0x1a1a, 0xfafa] {
            assert!(is_grease(g));
        }
        for v in [0x0a0b, 0x1a0a, 0x0000, 0x1301] {
            assert!(!is_grease(v));
        }
    }
}
