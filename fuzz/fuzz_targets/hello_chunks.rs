//! The ClientHello parser, resumed at every chunk boundary the input asks for, must end where
//! one call over the whole stream ends, and never panic or overrun its step bound (the kernel
//! runs the same code under `bpf_loop`). Input: see `sni_fuzz`.
//!
//! Everything the parser exposes must match; while it still reads, or once it is done, its
//! whole state too (the kernel keeps that state between segments). After a parse error only
//! the exposed result counts: the counters of the field that broke may have been charged for a
//! whole chunk or for one byte, and nothing reads them again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_common::{Parser, Progress};
use sni_fuzz::{check_consistent, chunks, parse_chunks, split, Seen};

fuzz_target!(|data: &[u8]| {
    let (cuts, stream) = split(data);

    let whole = parse_chunks(&[stream]);
    check_consistent(&whole);
    // `feed` is the userspace entry point; it must agree with stepping by hand.
    let mut fed = Parser::NEW;
    fed.feed(stream);
    assert!(fed == whole, "feed {fed:?} != step {whole:?}");

    let live = matches!(whole.progress(), Progress::NeedMore | Progress::Done);

    let chunked = parse_chunks(&chunks(cuts, stream));
    assert_eq!(Seen::of(&chunked), Seen::of(&whole), "chunked by {cuts:?}");
    assert!(
        !live || chunked == whole,
        "state differs, chunked by {cuts:?}"
    );

    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let bytewise = parse_chunks(&bytes);
    assert_eq!(Seen::of(&bytewise), Seen::of(&whole), "byte by byte");
    assert!(!live || bytewise == whole, "state differs byte by byte");
});
