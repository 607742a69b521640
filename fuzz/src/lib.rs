//! Helpers shared by the fuzz targets (userspace, test only): how an input is cut into the
//! chunks a TCP stream could deliver, and what the parser exposes, gathered for comparison.
//!
//! Chunked inputs are laid out as `[k][cut; k % 16][stream…]`: the `k % 16` cut bytes are
//! chunk lengths (0 to 255; 0 is an empty read), used in turn, cyclically, until the stream
//! is used up. `k % 16 == 0` is one chunk. A seed is a captured ClientHello behind one `0` byte.

use sni_common::{hello::Reason, HostKey, Outcome, Parser, Progress};

/// Most cut bytes an input can carry.
pub const MAX_CUTS: usize = 15;

/// Splits a chunked input into its cut bytes and its stream.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((k, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let k = usize::from(*k) % (MAX_CUTS + 1);
    rest.split_at(k.min(rest.len()))
}

/// The chunks of `stream` under `cuts` (see the crate docs). Concatenated they are `stream`.
pub fn chunks<'a>(cuts: &[u8], mut stream: &'a [u8]) -> Vec<&'a [u8]> {
    if cuts.iter().all(|c| *c == 0) {
        // No cut that takes a byte: the stream in one chunk (after the empty reads, if any).
        let mut out = vec![&stream[..0]; cuts.len()];
        out.push(stream);
        return out;
    }
    let mut out = Vec::new();
    for cut in cuts.iter().cycle() {
        if stream.is_empty() {
            break;
        }
        let (head, rest) = stream.split_at(usize::from(*cut).min(stream.len()));
        out.push(head);
        stream = rest;
    }
    out
}

/// Feeds `chunks` to a new parser (reading the JA4 too when `ja4`) one `step` at a time, as
/// the kernel does, checking the step bound of `Parser::max_steps` and that a parser still
/// wanting bytes took the whole chunk.
pub fn parse_chunks(chunks: &[&[u8]], ja4: bool) -> Parser {
    drive(chunks, ja4, Parser::step)
}

/// Parses `stream` with the second half of each step alone (`Parser::field_step`): one field
/// at a time, never a leap (`Parser::leap`) over several, with the checks of
/// [`parse_chunks`]. A leap must leave the parser as this does.
pub fn parse_fields_only(stream: &[u8], ja4: bool) -> Parser {
    drive(&[stream], ja4, Parser::field_step::<[u8]>)
}

/// Feeds `chunks` to a new parser with `step` until it makes no progress on each.
fn drive(chunks: &[&[u8]], ja4: bool, step: fn(&mut Parser, &[u8], &mut usize) -> bool) -> Parser {
    let mut p = Parser::new(ja4);
    for chunk in chunks {
        let mut pos = 0;
        let mut steps = 0;
        while step(&mut p, chunk, &mut pos) {
            steps += 1;
            assert!(
                steps <= Parser::max_steps(chunk.len()),
                "more than {} steps on a {}-byte chunk: {p:?}",
                Parser::max_steps(chunk.len()),
                chunk.len()
            );
        }
        assert!(pos <= chunk.len(), "read past the chunk");
        if p.progress() == Progress::NeedMore {
            assert_eq!(pos, chunk.len(), "stopped inside a chunk: {p:?}");
        }
    }
    p
}

/// Everything the parser tells its users.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub progress: Progress,
    pub outcome: Outcome,
    pub reason: Reason,
    pub name: Option<HostKey>,
    pub is_client_hello: bool,
    pub wants_more: bool,
    pub has_ech: bool,
    pub records: u8,
}

impl Seen {
    pub fn of(p: &Parser) -> Self {
        Self {
            progress: p.progress(),
            outcome: p.outcome(),
            reason: p.reason(),
            name: p.name().copied(),
            is_client_hello: p.is_client_hello(),
            wants_more: p.wants_more(),
            has_ech: p.has_ech(),
            records: p.records(),
        }
    }
}

/// Checks what must hold of any parser state.
pub fn check_consistent(p: &Parser) {
    let seen = Seen::of(p);
    if let Some(name) = &seen.name {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty(), "empty name: {p:?}");
        assert!(
            !bytes.iter().any(u8::is_ascii_uppercase),
            "name not lowercased: {p:?}"
        );
        assert!(seen.is_client_hello, "a name outside a ClientHello: {p:?}");
        // The key's padding is zero, so equal names are equal keys.
        assert!(name.name[bytes.len()..].iter().all(|b| *b == 0), "{p:?}");
    }
    match seen.progress {
        Progress::Done => {
            assert!(seen.is_client_hello && seen.reason == Reason::None, "{p:?}");
            // An SSLv2-compatible ClientHello has no TLS record.
            assert!(seen.records >= 1 || p.outcome() == Outcome::Sslv2, "{p:?}");
        }
        Progress::NeedMore => assert_eq!(seen.reason, Reason::None, "{p:?}"),
        Progress::NotClientHello | Progress::Malformed => {
            assert_ne!(seen.reason, Reason::None, "no reason: {p:?}");
        }
    }
    assert_eq!(
        seen.wants_more,
        seen.progress == Progress::NeedMore && (p.reads_ja4() || seen.name.is_none())
    );
    // A fingerprint exactly for a ClientHello read to its end (not an SSLv2-compatible one)
    // by a parser that reads them.
    assert_eq!(
        p.ja4().is_some(),
        p.reads_ja4() && seen.progress == Progress::Done && seen.outcome != Outcome::Sslv2,
        "{p:?}"
    );
    if let Some(j) = p.ja4() {
        // JA4_a is letters and digits, and a ClientHello read to its end has cipher suites.
        assert!(j.key().a.iter().all(u8::is_ascii_alphanumeric), "{p:?}");
        assert!(
            j.n_ciphers >= 1 || j.lists.ciphers.iter().all(|c| *c == 0),
            "{p:?}"
        );
    }
}
