//! Configured names as operators write them, parsed once: an exact name, or a `*.` pattern
//! that covers every name of one more label (`*.example.com` covers `a.example.com`, not
//! `a.b.example.com` nor `example.com`).
//!
//! Both sides keep a configured name under its [`HostPattern::key`] (the pattern as written,
//! `*.` included) and look a client's name up with the same rule: the name itself, then the
//! pattern one label up, which [`HostKey::wildcard_into`] builds and whose hash the kernel
//! computes while it reads the name ([`HostKey::scan_step`]). Both stop at
//! [`HostKey::wildcard_ok`]: the first label must not be empty, so `.example.com` is covered
//! by no pattern. Userspace resolves with [`find`]; the kernel, by hash, in the same order.

use crate::host::{HostKey, NameError};

/// A configured name: exact, or a wildcard one label up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// A name that matches itself only.
    Exact(HostKey),
    /// `*.` and a parent: matches the names of one more, non-empty label. The key is the
    /// pattern as written (`*.example.com`), the form both sides' tables hold.
    Wildcard(HostKey),
}

/// Why an operator's name is not a [`HostPattern`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternError {
    /// Empty, or only a dot.
    Empty,
    /// Longer than [`crate::host::MAX_NAME_LEN`] after normalisation.
    TooLong,
    /// A byte that no host name holds (IDNs are written in their `xn--` form).
    Byte(u8),
    /// An empty label: a leading dot, two dots in a row, or two trailing dots. No client's
    /// name could reach it through a pattern, and no certificate covers it.
    EmptyLabel,
    /// A `*` other than as the whole first label of a name with a parent.
    Wildcard,
}

impl From<NameError> for PatternError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Empty => Self::Empty,
            NameError::TooLong => Self::TooLong,
        }
    }
}

impl HostPattern {
    /// Parses a name as an operator writes it: letters, digits, `-`, `_` and dots, normalised
    /// as [`HostKey::from_name`] does (ASCII lowercase, one trailing dot dropped), with `*.`
    /// allowed in front.
    pub fn parse(name: &[u8]) -> Result<Self, PatternError> {
        if let Some(b) = name.iter().find(|b| !is_name_byte(**b)) {
            return Err(PatternError::Byte(*b));
        }
        let key = HostKey::from_name(name)?;
        let bytes = key.as_bytes();
        if bytes.split(|b| *b == b'.').any(<[u8]>::is_empty) {
            return Err(PatternError::EmptyLabel);
        }
        match bytes.strip_prefix(b"*.") {
            Some(parent) if !parent.contains(&b'*') => Ok(Self::Wildcard(key)),
            _ if bytes.contains(&b'*') => Err(PatternError::Wildcard),
            _ => Ok(Self::Exact(key)),
        }
    }

    /// The key both sides' tables hold: the name, or the pattern as written.
    pub fn key(&self) -> &HostKey {
        match self {
            Self::Exact(key) | Self::Wildcard(key) => key,
        }
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Wildcard(_))
    }

    /// A wildcard's parent (`example.com` for `*.example.com`).
    pub fn parent(&self) -> Option<&[u8]> {
        match self {
            Self::Exact(_) => None,
            Self::Wildcard(key) => key.as_bytes().get(2..),
        }
    }

    /// Whether a client naming `name` (as the parser normalised it) reaches this pattern when
    /// it is the only one configured.
    pub fn covers(&self, name: &HostKey) -> bool {
        find(name, |k| (k == self.key()).then_some(())).is_some()
    }
}

/// The entry a client naming `name` reaches in a table keyed by [`HostPattern::key`]: the
/// name itself, else the wildcard pattern one label up. The kernel's lookup, in userspace.
pub fn find<T>(name: &HostKey, mut get: impl FnMut(&HostKey) -> Option<T>) -> Option<T> {
    if let Some(found) = get(name) {
        return Some(found);
    }
    let mut pattern = HostKey::EMPTY;
    if name.wildcard_into(&mut pattern) {
        get(&pattern)
    } else {
        None
    }
}

/// Letters, digits, hyphen, underscore (SRV-style labels, seen in the wild), dot, and `*`
/// (placed by [`HostPattern::parse`]).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MAX_NAME_LEN;

    fn key(name: &[u8]) -> HostKey {
        HostKey::from_name(name).expect("valid")
    }

    fn pattern(name: &[u8]) -> HostPattern {
        HostPattern::parse(name).expect("valid pattern")
    }

    #[test]
    fn parses_exact_and_wildcard_normalised() {
        assert_eq!(
            pattern(b"WWW.Example.com."),
            HostPattern::Exact(key(b"www.example.com"))
        );
        let w = pattern(b"*.Example.COM");
        assert_eq!(w, HostPattern::Wildcard(key(b"*.example.com")));
        assert!(w.is_wildcard());
        assert_eq!(w.parent(), Some(&b"example.com"[..]));
        assert_eq!(pattern(b"example.com").parent(), None);
        assert_eq!(pattern(b"*.com").parent(), Some(&b"com"[..]));
        assert!(!pattern(b"xn--bcher-kva.example").is_wildcard());
        assert!(!pattern(b"_sip._tcp.example.com").is_wildcard());
    }

    #[test]
    fn rejects_what_no_client_name_reaches() {
        for (name, err) in [
            (&b""[..], PatternError::Empty),
            (b".", PatternError::Empty),
            (b"*", PatternError::Wildcard),
            (b"*.", PatternError::Wildcard),
            (b"a.*.example.com", PatternError::Wildcard),
            (b"*.*.example.com", PatternError::Wildcard),
            (b"a*.example.com", PatternError::Wildcard),
            (b"**.example.com", PatternError::Wildcard),
            (b".example.com", PatternError::EmptyLabel),
            (b"*..example.com", PatternError::EmptyLabel),
            (b"a..example.com", PatternError::EmptyLabel),
            (b"example.com..", PatternError::EmptyLabel),
            (b"b\xc3\xbccher.example", PatternError::Byte(0xc3)),
            (b"a b.example", PatternError::Byte(b' ')),
        ] {
            assert_eq!(
                HostPattern::parse(name),
                Err(err),
                "{:?}",
                name.escape_ascii()
            );
        }
        let long = [b'a'; MAX_NAME_LEN + 1];
        assert_eq!(HostPattern::parse(&long), Err(PatternError::TooLong));
        assert!(HostPattern::parse(&long[..MAX_NAME_LEN]).is_ok());
    }

    #[test]
    fn a_wildcard_covers_one_non_empty_label() {
        let w = pattern(b"*.example.com");
        for name in [
            &b"a.example.com"[..],
            b"xn--bcher-kva.example.com",
            b"*.example.com",
        ] {
            assert!(w.covers(&key(name)), "{:?}", name.escape_ascii());
        }
        for name in [
            &b"example.com"[..],
            b".example.com",
            b"..example.com",
            b"a..example.com",
            b"a.b.example.com",
            b"a.example.com..",
            b"a.example.co",
            b"aexample.com",
        ] {
            assert!(!w.covers(&key(name)), "{:?}", name.escape_ascii());
        }
        let e = pattern(b"example.com");
        assert!(e.covers(&key(b"example.com")));
        assert!(!e.covers(&key(b"a.example.com")));
    }

    #[test]
    fn find_tries_the_name_then_the_pattern_one_label_up() {
        let table = [pattern(b"a.example.com"), pattern(b"*.example.com")];
        let get = |k: &HostKey| table.iter().position(|p| p.key() == k);
        assert_eq!(find(&key(b"a.example.com"), get), Some(0));
        assert_eq!(find(&key(b"b.example.com"), get), Some(1));
        assert_eq!(find(&key(b"*.example.com"), get), Some(1));
        assert_eq!(find(&key(b"b.b.example.com"), get), None);
        assert_eq!(find(&key(b".example.com"), get), None);
    }

    /// What the kernel decides from its one pass over a name (`sni-ebpf/src/host.rs`), for
    /// a table of one pattern: the name's hash, else the wildcard's if `wildcard_ok`.
    fn kernel_finds(p: &HostPattern, name: &HostKey) -> bool {
        use crate::host::NameKeys;
        let keys = NameKeys {
            lookup: 0x0123_4567_89ab_cdef,
            check: 0x0f1e_2d3c_4b5a_6978,
        };
        let entry = p.key().keyed(&keys);
        let scan = name.scan(&keys);
        let dot = scan.dot as usize;
        scan.exact == entry
            || (dot < MAX_NAME_LEN && HostKey::wildcard_ok(name.len, dot) && scan.wildcard == entry)
    }

    #[test]
    fn covers_is_what_the_kernel_finds() {
        let patterns = [
            pattern(b"*.example.com"),
            pattern(b"example.com"),
            pattern(b"*.b.example.com"),
        ];
        for name in [
            &b"a.example.com"[..],
            b"A.EXAMPLE.COM.",
            b".example.com",
            b"..example.com",
            b"a..example.com",
            b"a.example.com..",
            b"example.com",
            b"a.b.example.com",
            b"*.example.com",
            b"*.b.example.com",
            b"xn--bcher-kva.example.com",
            b"..",
            b"...",
            b"a..",
            b"*",
        ] {
            let name = key(name);
            for p in &patterns {
                assert_eq!(p.covers(&name), kernel_finds(p, &name), "{p:?} {name:?}");
            }
        }
    }

    #[test]
    fn the_longest_names_reach_the_longest_patterns() {
        // A 253-byte parent: its pattern and a name one short label below it are 255 bytes.
        let mut parent = [b'p'; 253];
        for i in [63, 127, 191] {
            parent[i] = b'.';
        }
        let mut written = [0; MAX_NAME_LEN];
        written[..2].copy_from_slice(b"*.");
        written[2..].copy_from_slice(&parent);
        let w = pattern(&written);
        assert_eq!(usize::from(w.key().len), MAX_NAME_LEN);
        let mut name = written;
        name[0] = b'a';
        assert!(w.covers(&key(&name)));
    }
}
