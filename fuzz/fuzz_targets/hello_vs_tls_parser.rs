//! Differential: our ClientHello parser against rusticata's `tls-parser` on the same bytes.
//!
//! tls-parser reads one whole record (`parse_tls_plaintext`). When that record starts with a
//! ClientHello, both must call it a ClientHello and read the same server_name (tls-parser's
//! raw bytes through our normalisation, [`HostKey::from_name`]) and the same ECH flag; when it
//! starts with anything else, ours must not call it a ClientHello.
//!
//! Where the two legitimately differ, tls-parser is the lenient side; each case is checked
//! against the bytes, not assumed:
//! - L1 record version: tls-parser takes any `legacy_record_version`; ours wants 3.x, as every
//!   TLS and SSLv3 record has (RFC 8446 §5.1, Appendix D) — anything else is "not TLS" to us.
//! - L2 record length: tls-parser allows 2^14 + 256; a plaintext record MUST NOT exceed 2^14
//!   (RFC 8446 §5.1).
//! - L3 fixed fields: tls-parser takes an empty cipher_suites, an empty
//!   legacy_compression_methods (both `<1..>` / `<2..>` in RFC 8446 §4.1.2), any
//!   legacy_version, and so a body shorter than the 41 bytes those minimums add up to.
//! - L4 extension block: tls-parser ignores bytes after the extensions block, and reads "no
//!   extensions" when the block's length runs past the message; ours wants the block to end
//!   exactly where the ClientHello does (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2).
//! - L5 server_name: tls-parser takes an empty extension (allowed only in a ServerHello), a
//!   server_name_list shorter than its extension, several entries, empty or over-long names,
//!   and several server_name extensions; ours wants exactly one list that fills its extension
//!   with one entry (RFC 6066 §3: one name per type, and host_name is the only type), a name of
//!   1 to 255 bytes other than ".", and one server_name extension (RFC 8446 §4.2).
//! - "Read on": in L4 and L5 ours stops at the first byte that proves a length wrong. When
//!   the ClientHello fills its record, that byte is the next record's header, so the reason
//!   given is about that header; or, when the input ends before the next record's body, ours
//!   still wants more.
//! - L6 tls-parser stops at the first extension whose content it cannot parse (say an odd
//!   signature_algorithms list) and reports only those before it; ours reads server_name and
//!   encrypted_client_hello and steps over the rest by length. A name past that point is only
//!   ours to see.
//! - L7 a ClientHello fragmented over several records: tls-parser reads one record, so it has
//!   nothing to say (ours reads across records; the `hello_chunks` and `passthrough_hello`
//!   targets and the unit tests cover that).
//! - L8 an SSLv2-compatible ClientHello (RFC 5246 appendix E.2): no TLS record at all to
//!   tls-parser; ours reads its first four bytes and calls it one (no name, nothing more to
//!   read). Checked against those five bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sni_common::{
    hello::{starts_sslv2_client_hello, Reason},
    HostKey, Outcome, Parser, Progress,
};
use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_plaintext, TlsClientHelloContents, TlsExtension,
    TlsMessage, TlsMessageHandshake, TlsRecordHeader,
};

/// ExtensionType server_name (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// ExtensionType encrypted_client_hello (RFC 9849 §11.1).
const EXT_ECH: u16 = 0xfe0d;
/// RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14.
const MAX_RECORD_LEN: u16 = 1 << 14;

fuzz_target!(|data: &[u8]| {
    let mut ours = Parser::NEW;
    ours.feed(data);
    if ours.outcome() == Outcome::Sslv2 {
        // L8.
        let mut head = [0u8; 6];
        for (h, b) in head.iter_mut().zip(data) {
            *h = *b;
        }
        assert!(
            data.len() >= 5 && starts_sslv2_client_hello(head),
            "{ours:?}"
        );
        assert_eq!(ours.name(), None);
        return;
    }
    match parse_tls_plaintext(data) {
        Ok((_, record)) => match record.msg.first() {
            Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch))) => {
                both_read_a_hello(data, &record.hdr, ch, &ours);
            }
            _ => {
                // A whole record that does not start with a ClientHello.
                assert!(
                    !ours.is_client_hello(),
                    "tls-parser reads {:?}, ours a ClientHello: {ours:?}",
                    record.msg.first()
                );
            }
        },
        Err(_) => {
            // tls-parser reads no whole record. If the first record is all here and ours read
            // a whole ClientHello inside it, tls-parser should have read it too.
            let whole_record = data
                .get(3..5)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                .is_some_and(|len| data.len() >= 5 + len);
            assert!(
                !(whole_record && ours.progress() == Progress::Done && ours.records() == 1),
                "tls-parser rejects a record ours reads a whole ClientHello from: {ours:?}"
            );
        }
    }
});

/// tls-parser read a ClientHello at the start of a whole record.
fn both_read_a_hello(
    data: &[u8],
    hdr: &TlsRecordHeader,
    ch: &TlsClientHelloContents<'_>,
    ours: &Parser,
) {
    if hdr.version.0 >> 8 != 3 {
        // L1.
        assert_eq!(ours.reason(), Reason::BadRecordVersion, "{ours:?}");
        assert_eq!(ours.progress(), Progress::NotClientHello, "{ours:?}");
        return;
    }
    assert!(
        ours.is_client_hello(),
        "not a ClientHello to ours: {ours:?}"
    );

    // The handshake message header is there: tls-parser read the message.
    let hs_len = usize::from(data[6]) << 16 | usize::from(data[7]) << 8 | usize::from(data[8]);
    let sid_len = ch.session_id.map_or(0, <[u8]>::len);
    let fixed = 2 + 32 + 1 + sid_len + 2 + 2 * ch.ciphers.len() + 1 + ch.comp.len();
    let ext_end = fixed + ch.ext.map_or(0, |e| 2 + e.len());
    // Bytes of the ClientHello after the extensions block (when tls-parser found one) or
    // after the compression methods (when it did not).
    let trailing = hs_len
        .checked_sub(ext_end)
        .expect("tls-parser read past the message");
    // The extensions as a plain type-length-value walk, up to one that runs past the block.
    let (raw, walked) = ch.ext.map_or((Vec::new(), true), raw_extensions);
    let block_ok = trailing == 0 && walked;
    let raw_sni: Vec<&[u8]> = raw
        .iter()
        .filter(|(t, _)| *t == EXT_SERVER_NAME)
        .map(|(_, d)| *d)
        .collect();
    let sni_ok = raw_sni.len() <= 1 && raw_sni.iter().all(|d| sni_well_formed(d));
    // See "read on" in the module docs.
    let fills_record = 4 + hs_len == usize::from(hdr.len);
    let read_on = fills_record && !(block_ok && sni_ok);

    // What tls-parser made of the extensions.
    let (rest, theirs) = match ch.ext {
        Some(block) => parse_tls_client_hello_extensions(block).unwrap_or((block, Vec::new())),
        None => (&[][..], Vec::new()),
    };
    let their_sni: Vec<&Vec<(tls_parser::SNIType, &[u8])>> = theirs
        .iter()
        .filter_map(|e| match e {
            TlsExtension::SNI(list) => Some(list),
            _ => None,
        })
        .collect();
    let their_ech = theirs
        .iter()
        .any(|e| matches!(e, TlsExtension::Unknown(t, _) if t.0 == EXT_ECH));

    match ours.progress() {
        Progress::Done => {
            assert_eq!(ours.records(), 1, "{ours:?}");
            assert!(block_ok, "ours accepts a broken extensions block: {ours:?}");
            assert!(sni_ok, "ours accepts server_name extensions {raw_sni:?}");
            if rest.is_empty() {
                // tls-parser read every extension.
                assert_eq!(ours.has_ech(), their_ech, "ECH: ours {ours:?}");
            } else {
                assert!(!their_ech || ours.has_ech(), "ECH: ours {ours:?}");
                if their_sni.is_empty() {
                    // L6: the name, if any, is past what tls-parser could read.
                    return;
                }
            }
            let their_name = their_sni
                .first()
                .and_then(|list| list.first())
                .filter(|(t, _)| t.0 == 0)
                .map(|(_, name)| *name);
            match (ours.name(), their_name) {
                (None, None) => {}
                (Some(ours_name), Some(raw_name)) => {
                    let key = HostKey::from_name(raw_name);
                    assert_eq!(
                        key.as_ref().ok(),
                        Some(ours_name),
                        "names differ: tls-parser {:?}",
                        raw_name.escape_ascii().to_string()
                    );
                }
                (o, t) => panic!(
                    "ours reads {o:?}, tls-parser {:?}",
                    t.map(|n| n.escape_ascii().to_string())
                ),
            }
        }
        Progress::NeedMore => {
            assert!(
                // At most the next record's header follows: no byte of its body yet.
                read_on && data.len() <= 9 + hs_len + 5,
                "tls-parser read the whole ClientHello, ours wants more: {ours:?}"
            );
        }
        Progress::NotClientHello => panic!("ours: not a ClientHello: {ours:?}"),
        Progress::Malformed => {
            let reason = ours.reason();
            let explained = match reason {
                // L2, or read on into the next record.
                Reason::BadRecordLength => hdr.len > MAX_RECORD_LEN || read_on,
                Reason::NotHandshakeRecord | Reason::BadRecordVersion => read_on,
                // L3.
                Reason::HelloTooShort => hs_len < 41,
                Reason::BadHelloVersion => ch.version.0 >> 8 != 3,
                Reason::BadCipherSuitesLength => ch.ciphers.is_empty(),
                Reason::BadCompressionLength => ch.comp.is_empty(),
                // L4; or a malformed server_name whose fields run past the ClientHello (e.g.
                // the list length of an empty one at the end): ours reads the bytes after it,
                // in the same record or the next, and reports the overrun there.
                Reason::ExtensionsLengthMismatch | Reason::Overrun | Reason::ExtensionOverrun => {
                    !block_ok || read_on || !sni_ok
                }
                // L5.
                Reason::DuplicateServerName => raw_sni.len() > 1,
                Reason::BadServerNameList | Reason::BadNameLength | Reason::EmptyName => !sni_ok,
                _ => false,
            };
            assert!(
                explained,
                "tls-parser reads a ClientHello ours calls malformed ({}): {ours:?}",
                reason.as_str()
            );
        }
    }
}

/// The extensions block as (type, data) pairs, up to the first that runs past the block; and
/// whether the walk reached the block's end.
fn raw_extensions(mut block: &[u8]) -> (Vec<(u16, &[u8])>, bool) {
    let mut out = Vec::new();
    while !block.is_empty() {
        let Some(head) = block.get(..4) else {
            return (out, false);
        };
        let ext_type = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let Some(body) = block.get(4..4 + len) else {
            return (out, false);
        };
        out.push((ext_type, body));
        block = &block[4 + len..];
    }
    (out, true)
}

/// Whether a server_name extension's data is what ours accepts: a list filling the extension,
/// and either one host_name entry filling the list with a name that normalises (1 to 255 bytes,
/// not ".") or a first entry of another NameType (ours skips the rest: it cannot be parsed).
fn sni_well_formed(d: &[u8]) -> bool {
    let Some(head) = d.get(..3) else {
        return false;
    };
    let list_len = usize::from(u16::from_be_bytes([head[0], head[1]]));
    if list_len != d.len() - 2 || list_len < 3 {
        return false;
    }
    if head[2] != 0 {
        return true;
    }
    let Some(n) = d.get(3..5) else {
        return false;
    };
    let name_len = usize::from(u16::from_be_bytes([n[0], n[1]]));
    (1..=255).contains(&name_len) && name_len == d.len() - 5 && HostKey::from_name(&d[5..]).is_ok()
}
