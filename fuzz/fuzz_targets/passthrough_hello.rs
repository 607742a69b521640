//! The terminator's ClientHello reader (`sni_user::hello_reader`) fed the reads a client could
//! cause, under a cap; then rustls' `Acceptor` over the bytes it kept, as the terminator does.
//!
//! Input: `[cap: u16 big-endian]` then a chunked stream (see `sni_fuzz`).
//!
//! Invariants: the bytes kept never exceed the cap and are exactly the stream's prefix pushed
//! so far (a push that would pass the cap is refused whole); a final step stays final; the name
//! is the one a single parser call over those bytes reads; and when rustls accepts the bytes
//! and reports a server_name, it is ours (normalised alike). Otherwise the certificate and
//! backend chosen for our name would serve a connection rustls thinks is for another host.
//!
//! Legitimate differences with rustls, both on rustls' side of "no name":
//! - rustls refuses the bytes (an alert, or more bytes wanted): the connection ends, nothing is
//!   served, so there is nothing to compare. rustls checks much we do not read (every
//!   extension, null compression, signature_algorithms, no message after the ClientHello).
//! - An IP literal as host_name (RFC 6066 §3 forbids it): rustls accepts the ClientHello and
//!   reports no name; ours reads the literal and routes on it like any name. rustls then has
//!   no name of its own to disagree with.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use sni_common::{Parser, Progress};
use sni_fuzz::{chunks, split};
use sni_user::terminator::hello_reader::{self, HelloReader, Step};

fuzz_target!(|data: &[u8]| {
    let Some((cap, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let cap = usize::from(u16::from_be_bytes(*cap));
    let (cuts, stream) = split(rest);

    let mut reader = HelloReader::new(cap);
    // Stream bytes pushed before the last push, and in all.
    let (mut before, mut pushed) = (0, 0);
    for chunk in chunks(cuts, stream) {
        before = pushed;
        let step = reader.push(chunk);
        assert!(reader.bytes().len() <= cap, "kept more than the cap");
        if step == Step::TooLarge {
            assert!(before + chunk.len() > cap, "too large under the cap");
            assert_eq!(reader.bytes(), &stream[..before]);
        } else {
            pushed += chunk.len();
            assert_eq!(reader.bytes(), &stream[..pushed]);
        }
        if step != Step::NeedMore {
            let kept = reader.bytes().len();
            assert_eq!(reader.push(b"\x16\x03\x01"), step, "a final step changed");
            assert_eq!(reader.bytes().len(), kept, "bytes kept after a final step");
            break;
        }
    }

    let mut one = Parser::NEW;
    one.feed(reader.bytes());
    assert_eq!(
        reader.name(),
        one.name(),
        "name differs from one parser call"
    );
    match reader.step() {
        Step::NeedMore => {
            assert_eq!(one.progress(), Progress::NeedMore);
            assert_eq!(reader.bytes(), stream);
        }
        Step::TooLarge => assert_eq!(one.progress(), Progress::NeedMore),
        // An SSLv2-compatible ClientHello is read whole and refused all the same.
        Step::NotClientHello => assert!(
            matches!(
                one.progress(),
                Progress::NotClientHello | Progress::Malformed
            ) || one.outcome() == sni_common::Outcome::Sslv2
        ),
        Step::Done => {
            assert_eq!(one.progress(), Progress::Done);
            // It stopped at the push that completed the ClientHello.
            let mut earlier = Parser::NEW;
            assert_eq!(earlier.feed(&stream[..before]), Progress::NeedMore);
            rustls_agrees(&reader);
        }
    }
});

/// When rustls accepts what the reader read whole, its name is ours.
fn rustls_agrees(reader: &HelloReader) {
    let Ok(accepted) = hello_reader::accept(reader.bytes()) else {
        return;
    };
    match (reader.name(), hello_reader::rustls_name(&accepted)) {
        (Some(ours), Some(theirs)) => assert_eq!(ours, &theirs, "rustls reads another name"),
        (None, None) => {}
        (Some(ours), None) => assert!(
            matches!(
                ServerName::try_from(ours.as_bytes()),
                Ok(ServerName::IpAddress(_))
            ),
            "rustls reads no name where ours reads {ours:?}"
        ),
        (None, Some(theirs)) => panic!("rustls reads {theirs:?} where ours reads none"),
    }
}
