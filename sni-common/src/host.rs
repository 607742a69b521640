//! Host names as both sides store them: normalised, in a fixed-size key.
//!
//! Normalisation is ASCII lowercase plus the removal of one trailing dot (RFC 6066 §3 says the
//! HostName carries no trailing dot, but clients and fuzzers send one anyway). The kernel
//! normalises byte by byte while it copies the name out of the packet; userspace calls
//! [`HostKey::from_name`]. Both end in the same 256 bytes, so a configured name and a name seen
//! on the wire hash alike: the kernel's host table is keyed by [`HostKey::keyed`], which the
//! loader computes for each configured name and the kernel for each name read
//! ([`HostKey::scan_step`], the wildcard pattern's hash in the same pass). Which configured
//! name covers which: [`crate::pattern`].

/// Longest host name kept, in bytes. A DNS name is at most 253 bytes (RFC 1035 §2.3.4, written
/// without the trailing dot); 255 leaves room for the dot and fits the length in one byte.
pub const MAX_NAME_LEN: usize = 255;

/// Key of the per-host maps: a normalised host name, zero-padded.
///
/// Every byte past `len` is zero, so two keys are equal exactly when the names are.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostKey {
    /// Length of the name in bytes (0 for an empty key).
    pub len: u8,
    /// The name, ASCII-lowercased, without a trailing dot; zero past `len`.
    pub name: [u8; MAX_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<HostKey>() == 256);

/// Why a name cannot become a [`HostKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Empty, or only a dot.
    Empty,
    /// Longer than [`MAX_NAME_LEN`] after normalisation.
    TooLong,
}

impl HostKey {
    /// The all-zero key.
    pub const EMPTY: Self = Self {
        len: 0,
        name: [0; MAX_NAME_LEN],
    };

    /// Normalises `name` (ASCII lowercase, one trailing dot removed) into a key.
    pub fn from_name(name: &[u8]) -> Result<Self, NameError> {
        let name = match name.split_last() {
            Some((b'.', rest)) => rest,
            _ => name,
        };
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let mut key = Self::EMPTY;
        for (dst, src) in key.name.iter_mut().zip(name) {
            *dst = lower(*src);
        }
        key.len = name.len() as u8;
        Ok(key)
    }

    /// The name bytes (without the zero padding).
    pub fn as_bytes(&self) -> &[u8] {
        let len = usize::from(self.len).min(MAX_NAME_LEN);
        &self.name[..len]
    }

    /// The host table's hashes of this name (a configured name, or a `*.` pattern as
    /// written). Written as a loop over the fixed array so the kernel can run it as is.
    #[inline(always)]
    pub fn keyed(&self, keys: &NameKeys) -> NameHash {
        let len = usize::from(self.len);
        let mut h = NameHash::new(keys);
        for i in 0..MAX_NAME_LEN {
            if i >= len {
                break;
            }
            h.push(self.name[i]);
        }
        h
    }

    /// Byte `i` of this name into `scan` (bytes are fed in order from 0; past the name,
    /// nothing). The kernel feeds a ClientHello's name from `bpf_loop`, a few bytes a call:
    /// a loop over the name inline is past the verifier's budget here.
    #[inline(always)]
    pub fn scan_step(&self, scan: &mut NameScan, i: usize) {
        if i >= usize::from(self.len) || i >= MAX_NAME_LEN {
            return;
        }
        let b = self.name[i];
        scan.hash64 = fnv_step(scan.hash64, b);
        scan.exact.push(b);
        if scan.dot < MAX_NAME_LEN as u64 {
            scan.wildcard.push(b);
        } else if b == b'.' {
            scan.dot = i as u64;
            scan.wildcard.push(b);
        }
    }

    /// [`HostKey::scan_step`] over the whole name.
    pub fn scan(&self, keys: &NameKeys) -> NameScan {
        let mut scan = NameScan::new(keys);
        for i in 0..usize::from(self.len) {
            self.scan_step(&mut scan, i);
        }
        scan
    }

    /// 64-bit FNV-1a of the name: the key of the kernel's map of names not configured, so
    /// that a flow can point at its host with 8 bytes instead of 256. Written as a loop over
    /// the fixed array so the kernel can run it as is.
    #[inline(always)]
    pub fn hash64(&self) -> u64 {
        let len = usize::from(self.len);
        let mut h = FNV_OFFSET;
        for i in 0..MAX_NAME_LEN {
            if i >= len {
                break;
            }
            h = fnv_step(h, self.name[i]);
        }
        h
    }

    /// Writes into `out` the wildcard pattern that covers this name one label up
    /// (`a.example.com` → `*.example.com`, as an operator writes it in the config). False when
    /// there is none: a name of one label, or one starting with a dot.
    pub fn wildcard_into(&self, out: &mut HostKey) -> bool {
        let Some(dot) = self.wildcard_dot() else {
            return false;
        };
        for i in 0..MAX_NAME_LEN {
            out.name[i] = self.wildcard_byte(dot, i);
        }
        out.len = Self::wildcard_len(self.len, dot);
        true
    }

    /// Whether byte `i` of the name is the dot that ends its first label.
    #[inline(always)]
    pub fn is_first_dot(&self, i: usize) -> bool {
        i < usize::from(self.len) && i < MAX_NAME_LEN && self.name[i] == b'.'
    }

    /// Where the wildcard pattern's rest starts: the first dot, if a label precedes it and
    /// something follows it.
    pub fn wildcard_dot(&self) -> Option<usize> {
        let dot = (0..MAX_NAME_LEN).find(|i| self.is_first_dot(*i))?;
        Self::wildcard_ok(self.len, dot).then_some(dot)
    }

    /// Whether a first dot at `dot` in a name of `len` bytes makes a pattern.
    #[inline(always)]
    pub const fn wildcard_ok(len: u8, dot: usize) -> bool {
        dot > 0 && dot + 1 < len as usize
    }

    /// Byte `i` of the wildcard pattern of this name, whose first dot is at `dot`: `*`, then
    /// the name from the dot on, then zeros.
    #[inline(always)]
    pub fn wildcard_byte(&self, dot: usize, i: usize) -> u8 {
        if i == 0 {
            return b'*';
        }
        let src = dot + i - 1;
        if src < usize::from(self.len) && src < MAX_NAME_LEN {
            self.name[src]
        } else {
            0
        }
    }

    /// Length of the pattern: `*` plus the name from the dot on (at most the name's length,
    /// since the first label has at least one byte).
    #[inline(always)]
    pub const fn wildcard_len(len: u8, dot: usize) -> u8 {
        (1 + len as usize - dot) as u8
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The check hash's multiplier: odd, and unrelated to FNV's prime, so that the two hashes of
/// a name do not collide together.
const CHECK_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// One FNV-1a step.
#[inline(always)]
const fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// Everything the kernel needs of a name read from a ClientHello, in one pass over it
/// ([`HostKey::scan_step`]): [`HostKey::hash64`], the host table's hashes of the name
/// ([`HostKey::keyed`]) and of the wildcard pattern that covers it one label up (the same as
/// `keyed` of the pattern as an operator writes it, `*.example.com`, without building it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameScan {
    /// [`HostKey::hash64`].
    pub hash64: u64,
    /// The host table's hashes of the name.
    pub exact: NameHash,
    /// The host table's hashes of the wildcard pattern; meaningful only if
    /// [`HostKey::wildcard_ok`] with `dot`.
    pub wildcard: NameHash,
    /// The first dot (`MAX_NAME_LEN` while none).
    pub dot: u64,
}

impl NameScan {
    /// Before the first byte (the pattern's `*` taken).
    #[inline(always)]
    pub fn new(keys: &NameKeys) -> Self {
        let mut wildcard = NameHash::new(keys);
        wildcard.push(b'*');
        Self {
            hash64: FNV_OFFSET,
            exact: NameHash::new(keys),
            wildcard,
            dot: MAX_NAME_LEN as u64,
        }
    }
}

/// The random keys of the host table's two name hashes (`maps::MAP_NAME_KEYS`), picked by the
/// loader at each start. A configured name is found by one 64-bit hash and confirmed by a
/// second, independently keyed one: 128 bits that nobody outside the host can aim at, in
/// place of a 256-byte key hashed and compared whole for every ClientHello.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameKeys {
    /// Key of the lookup hash.
    pub lookup: u64,
    /// Key of the check hash.
    pub check: u64,
}
const _: () = assert!(core::mem::size_of::<NameKeys>() == 16);

/// A configured name (or `*.` pattern) in the host table: the value of `maps::MAP_HOSTS`,
/// keyed by the name's [`NameHash::lookup`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameEntry {
    /// The name's [`NameHash::check`]: a lookup hit counts only if this matches too.
    pub check: u64,
    /// The host slot.
    pub slot: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<NameEntry>() == 16);

/// The two keyed hashes of a name (FNV-1a steps, seeded by [`NameKeys`]), fed a byte at a time
/// so that the kernel can hash a name in the pass that also finds its first dot, and go on
/// from a `*` to hash the wildcard pattern that covers it ([`NameScan`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameHash {
    /// The host table's key.
    pub lookup: u64,
    /// The entry's check.
    pub check: u64,
}

impl NameHash {
    /// The hashes of no bytes yet.
    #[inline(always)]
    pub const fn new(keys: &NameKeys) -> Self {
        Self {
            lookup: FNV_OFFSET ^ keys.lookup,
            check: FNV_OFFSET ^ keys.check,
        }
    }

    /// Takes the next byte.
    #[inline(always)]
    pub fn push(&mut self, b: u8) {
        self.lookup = (self.lookup ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        self.check = (self.check ^ u64::from(b)).wrapping_mul(CHECK_MULTIPLIER);
    }
}

impl Default for HostKey {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl core::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HostKey(\"{}\")", self.as_bytes().escape_ascii())
    }
}

/// ASCII lowercase of one byte; other bytes unchanged. Used by both sides.
#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b | 0x20
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_one_trailing_dot() {
        let key = HostKey::from_name(b"WWW.Example.COM.").expect("valid");
        assert_eq!(key.as_bytes(), b"www.example.com");
        assert_eq!(key, HostKey::from_name(b"www.example.com").expect("valid"));
        // Only one dot goes.
        assert_eq!(HostKey::from_name(b"a..").expect("valid").as_bytes(), b"a.");
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!(HostKey::from_name(b""), Err(NameError::Empty));
        assert_eq!(HostKey::from_name(b"."), Err(NameError::Empty));
        let long = [b'a'; 256];
        assert_eq!(HostKey::from_name(&long), Err(NameError::TooLong));
        assert!(HostKey::from_name(&long[..255]).is_ok());
        let mut dotted = [b'a'; 256];
        dotted[255] = b'.';
        assert_eq!(HostKey::from_name(&dotted).expect("fits").len, 255);
    }

    #[test]
    fn wildcard_one_label_up() {
        let mut out = HostKey::from_name(b"stale.stale.stale.stale").expect("valid");
        let key = HostKey::from_name(b"A.Example.com").expect("valid");
        assert!(key.wildcard_into(&mut out));
        assert_eq!(out, HostKey::from_name(b"*.example.com").expect("valid"));
        for name in [&b"localhost"[..], b".example.com", b"a."] {
            let key = HostKey {
                len: name.len() as u8,
                name: {
                    let mut n = [0; MAX_NAME_LEN];
                    n[..name.len()].copy_from_slice(name);
                    n
                },
            };
            assert!(!key.wildcard_into(&mut out), "{name:?}");
        }
        // The longest name: the pattern is one byte shorter than the name when the first
        // label is two bytes.
        let mut long = [b'a'; MAX_NAME_LEN];
        long[2] = b'.';
        let key = HostKey::from_name(&long).expect("valid");
        assert!(key.wildcard_into(&mut out));
        assert_eq!(usize::from(out.len), MAX_NAME_LEN - 1);
        assert_eq!(&out.as_bytes()[..2], b"*.");
    }

    #[test]
    fn a_wildcard_hash_is_the_hash_of_the_pattern_as_written() {
        let keys = NameKeys {
            lookup: 0x0123_4567_89ab_cdef,
            check: 0xfedc_ba98_7654_3210,
        };
        let name = HostKey::from_name(b"A.Example.com").expect("valid");
        let scan = name.scan(&keys);
        assert_eq!(scan.exact, name.keyed(&keys));
        assert_eq!(scan.hash64, name.hash64());
        assert_eq!(scan.dot, 1);
        assert!(HostKey::wildcard_ok(name.len, 1));
        let pattern = HostKey::from_name(b"*.example.com").expect("valid");
        assert_eq!(scan.wildcard, pattern.keyed(&keys));
        assert_ne!(scan.exact, pattern.keyed(&keys));
        // Keyed: other keys, other hashes, for both halves.
        let other = NameKeys {
            lookup: 1,
            check: 2,
        };
        let (a, b) = (name.keyed(&keys), name.keyed(&other));
        assert_ne!(a.lookup, b.lookup);
        assert_ne!(a.check, b.check);
        assert_eq!(
            HostKey::from_name(b"localhost")
                .expect("valid")
                .scan(&keys)
                .dot,
            MAX_NAME_LEN as u64
        );
        // The pattern the wildcard rules make, for a long name too.
        let mut long = [b'a'; MAX_NAME_LEN];
        long[2] = b'.';
        let name = HostKey::from_name(&long).expect("valid");
        let mut pattern = HostKey::EMPTY;
        assert!(name.wildcard_into(&mut pattern));
        assert_eq!(name.scan(&keys).wildcard, pattern.keyed(&keys));
    }

    #[test]
    fn hash_is_fnv1a_of_the_normalised_name() {
        let a = HostKey::from_name(b"Example.COM.").expect("valid");
        let b = HostKey::from_name(b"example.com").expect("valid");
        assert_eq!(a.hash64(), b.hash64());
        // FNV-1a 64 of "a" (published test vector).
        assert_eq!(
            HostKey::from_name(b"a").expect("valid").hash64(),
            0xaf63_dc4c_8601_ec8c
        );
    }

    #[test]
    fn padding_is_zero() {
        let key = HostKey::from_name(b"abc").expect("valid");
        assert!(key.name[3..].iter().all(|b| *b == 0));
    }
}
