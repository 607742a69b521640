//! The ClientHello parser, resumed at every chunk boundary the input asks for, must end where
//! one call over the whole stream ends, and never panic or overrun its step bound (the kernel
//! runs the same code under `bpf_loop`). Input: see `sni_fuzz`.
//!
//! Everything the parser exposes must match; while it still reads, or once it is done, its
//! whole state too (the kernel keeps that state between segments), JA4 fingerprint included.
//! The same holds against the parser driven one field at a time, without the leaps.
//! A parser that reads the JA4 must give the same answers as one that reads up to the name. After a parse error only
//! the exposed result counts: the counters of the field that broke may have been charged for a
//! whole chunk or for one byte, and nothing reads them again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_common::{Parser, Progress};
use sni_fuzz::{check_consistent, chunks, parse_chunks, parse_fields_only, split, Seen};

fuzz_target!(|data: &[u8]| {
    let (cuts, stream) = split(data);
    let name_only = check(cuts, stream, false);
    let ja4 = check(cuts, stream, true);
    let (mut a, mut b) = (Seen::of(&name_only), Seen::of(&ja4));
    // Only whether more bytes are wanted differs: a JA4 parser wants them past the name.
    a.wants_more = false;
    b.wants_more = false;
    assert_eq!(a, b, "reading the JA4 changed the answer");
});

/// The checks of the module docs with a parser that reads the JA4 or not; returns the parser
/// of the whole stream.
fn check(cuts: &[u8], stream: &[u8], ja4: bool) -> Parser {
    let whole = parse_chunks(&[stream], ja4);
    check_consistent(&whole);
    // `feed` is the userspace entry point; it must agree with stepping by hand.
    let mut fed = Parser::new(ja4);
    fed.feed(stream);
    assert!(fed == whole, "feed {fed:?} != step {whole:?}");

    let live = matches!(whole.progress(), Progress::NeedMore | Progress::Done);

    // Leaps (`Parser::leap`) read several fields in one go; one field at a time must come to
    // the same parser.
    let fields = parse_fields_only(stream, ja4);
    assert_eq!(Seen::of(&fields), Seen::of(&whole), "one field at a time");
    assert!(
        !live || fields == whole,
        "state differs one field at a time"
    );

    let chunked = parse_chunks(&chunks(cuts, stream), ja4);
    assert_eq!(Seen::of(&chunked), Seen::of(&whole), "chunked by {cuts:?}");
    assert!(
        !live || chunked == whole,
        "state differs, chunked by {cuts:?}"
    );

    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let bytewise = parse_chunks(&bytes, ja4);
    assert_eq!(Seen::of(&bytewise), Seen::of(&whole), "byte by byte");
    assert!(!live || bytewise == whole, "state differs byte by byte");
    whole
}
