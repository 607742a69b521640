//! The ClientHello parser against ClientHellos captured from real clients (openssl s_client,
//! curl, Python's ssl; see testdata/capture.py) and one made live by a rustls client offering
//! X25519MLKEM768, then reshaped: every prefix, every split point, records of every size,
//! extension orders, GREASE, long names, punycode, and length fields that lie.

use std::sync::Arc;

use sni_common::{hello::Reason, Parser, Progress};

// ---------------------------------------------------------------------------------------------
// Fixtures

struct Fixture {
    file: &'static str,
    bytes: &'static [u8],
    /// Expected normalised name; None for a ClientHello without SNI.
    name: Option<&'static str>,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        file: "openssl-sni.bin",
        bytes: include_bytes!("../testdata/openssl-sni.bin"),
        name: Some("www.example.com"),
    },
    Fixture {
        file: "openssl-nosni.bin",
        bytes: include_bytes!("../testdata/openssl-nosni.bin"),
        name: None,
    },
    Fixture {
        file: "openssl-tls12.bin",
        bytes: include_bytes!("../testdata/openssl-tls12.bin"),
        name: Some("tls12.example.org"),
    },
    Fixture {
        file: "curl.bin",
        bytes: include_bytes!("../testdata/curl.bin"),
        name: Some("curl.example.net"),
    },
    Fixture {
        file: "python-ssl.bin",
        bytes: include_bytes!("../testdata/python-ssl.bin"),
        name: Some("python.example.com"),
    },
    Fixture {
        file: "openssl-punycode.bin",
        bytes: include_bytes!("../testdata/openssl-punycode.bin"),
        name: Some("xn--bcher-kva.example"),
    },
];

/// A ClientHello made right now by rustls with its default (post-quantum first) key shares.
fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls");
    }
    out
}

/// All fixtures plus the live rustls one, as (label, bytes, expected name).
fn corpus() -> Vec<(String, Vec<u8>, Option<String>)> {
    let mut all: Vec<_> = FIXTURES
        .iter()
        .map(|f| {
            (
                f.file.to_owned(),
                f.bytes.to_vec(),
                f.name.map(str::to_owned),
            )
        })
        .collect();
    all.push((
        "rustls-x25519mlkem768".to_owned(),
        rustls_hello("pq.example.com"),
        Some("pq.example.com".to_owned()),
    ));
    all
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Parses `chunks` in order with a parser that reads up to the name and with one that reads
/// the JA4 too: both must come to the same answer (the JA4 is read without changing what the
/// parser accepts). Returns the JA4 one.
fn parse_chunks(chunks: &[&[u8]]) -> Parser {
    let name_only = parse_chunks_with(Parser::NEW, chunks);
    let ja4 = parse_chunks_with(Parser::new(true), chunks);
    assert_eq!(name_only.progress(), ja4.progress(), "{ja4:?}");
    assert_eq!(name_only.reason(), ja4.reason(), "{ja4:?}");
    assert_eq!(name_only.name(), ja4.name(), "{ja4:?}");
    assert_eq!(name_only.outcome(), ja4.outcome(), "{ja4:?}");
    assert_eq!(name_only.records(), ja4.records(), "{ja4:?}");
    assert_eq!(name_only.ja4(), None);
    ja4
}

/// The JA4 key and string of a ClientHello read to its end.
fn ja4_of(p: &Parser) -> Option<(sni_common::ja4::Ja4Key, Option<String>)> {
    p.ja4()
        .map(|j| (j.key(), j.ja4().map(|s| s.as_str().to_owned())))
}

/// Parses `chunks` in order from `p`, checking the step bound on each: when the parser still
/// needs more, every byte of the chunk must have been consumed within `Parser::max_steps`.
fn parse_chunks_with(p: Parser, chunks: &[&[u8]]) -> Parser {
    drive(p, chunks, Parser::step)
}

/// Parses `bytes` with the second half of each step alone (`Parser::field_step`): one field
/// at a time, never a leap over several (`Parser::leap`), with the checks of
/// [`parse_chunks_with`].
fn parse_fields_only(bytes: &[u8], ja4: bool) -> Parser {
    drive(Parser::new(ja4), &[bytes], Parser::field_step::<[u8]>)
}

/// [`parse_chunks_with`], each chunk read by `step` until it makes no progress.
fn drive(
    mut p: Parser,
    chunks: &[&[u8]],
    step: fn(&mut Parser, &[u8], &mut usize) -> bool,
) -> Parser {
    for chunk in chunks {
        let mut pos = 0;
        let mut steps = 0;
        while step(&mut p, chunk, &mut pos) {
            steps += 1;
            assert!(
                steps <= Parser::max_steps(chunk.len()),
                "step bound exceeded on a {}-byte chunk",
                chunk.len()
            );
        }
        if p.progress() == Progress::NeedMore {
            assert_eq!(pos, chunk.len(), "parser stopped early: {p:?}");
        }
    }
    p
}

fn parse(bytes: &[u8]) -> Parser {
    parse_chunks(&[bytes])
}

fn name_of(p: &Parser) -> Option<String> {
    p.name()
        .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned())
}

/// A ClientHello taken apart with plain std code, so tests can rebuild it differently.
#[derive(Clone)]
struct Hello {
    version: [u8; 2],
    random: Vec<u8>,
    session_id: Vec<u8>,
    suites: Vec<u8>,
    compression: Vec<u8>,
    extensions: Option<Vec<(u16, Vec<u8>)>>,
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// The handshake bytes carried by a run of records.
fn handshake_bytes(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= records.len() {
        let len = be16(&records[i + 3..]);
        out.extend_from_slice(&records[i + 5..i + 5 + len]);
        i += 5 + len;
    }
    out
}

impl Hello {
    fn from_records(records: &[u8]) -> Self {
        let hs = handshake_bytes(records);
        assert_eq!(hs[0], 1);
        let body = &hs[4..];
        let mut i = 0;
        let version = [body[0], body[1]];
        i += 2;
        let random = body[i..i + 32].to_vec();
        i += 32;
        let sid_len = usize::from(body[i]);
        let session_id = body[i + 1..i + 1 + sid_len].to_vec();
        i += 1 + sid_len;
        let cs_len = be16(&body[i..]);
        let suites = body[i + 2..i + 2 + cs_len].to_vec();
        i += 2 + cs_len;
        let comp_len = usize::from(body[i]);
        let compression = body[i + 1..i + 1 + comp_len].to_vec();
        i += 1 + comp_len;
        let extensions = if i == body.len() {
            None
        } else {
            let total = be16(&body[i..]);
            i += 2;
            let end = i + total;
            let mut exts = Vec::new();
            while i < end {
                let ty = u16::from_be_bytes([body[i], body[i + 1]]);
                let len = be16(&body[i + 2..]);
                exts.push((ty, body[i + 4..i + 4 + len].to_vec()));
                i += 4 + len;
            }
            Some(exts)
        };
        Self {
            version,
            random,
            session_id,
            suites,
            compression,
            extensions,
        }
    }

    /// Where the first extension starts in `self.records(16384)` (one record): past the
    /// record and handshake headers, the version, the random, the session ID, the cipher
    /// suites, the compression methods and the extensions' length.
    fn extensions_at(&self) -> usize {
        5 + 4
            + 2
            + 32
            + 1
            + self.session_id.len()
            + 2
            + self.suites.len()
            + 1
            + self.compression.len()
            + 2
    }

    /// The handshake message: type, 24-bit length, body.
    fn handshake(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.version);
        body.extend_from_slice(&self.random);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        body.extend_from_slice(&(self.suites.len() as u16).to_be_bytes());
        body.extend_from_slice(&self.suites);
        body.push(self.compression.len() as u8);
        body.extend_from_slice(&self.compression);
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (ty, data) in exts {
                block.extend_from_slice(&ty.to_be_bytes());
                block.extend_from_slice(&(data.len() as u16).to_be_bytes());
                block.extend_from_slice(data);
            }
            body.extend_from_slice(&(block.len() as u16).to_be_bytes());
            body.extend_from_slice(&block);
        }
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    /// In records of at most `size` bytes each.
    fn records(&self, size: usize) -> Vec<u8> {
        frame(&self.handshake(), size)
    }

    fn set_sni(&mut self, name: &[u8]) {
        let exts = self.extensions.get_or_insert_with(Vec::new);
        exts.retain(|(ty, _)| *ty != 0);
        exts.insert(0, (0, sni_body(name)));
    }

    fn sni_index(&self) -> Option<usize> {
        self.extensions
            .as_ref()?
            .iter()
            .position(|(ty, _)| *ty == 0)
    }
}

fn frame(hs: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in hs.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

fn sni_body(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut body = (entry.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(&entry);
    body
}

/// A small deterministic generator for shuffles and noise.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn real_client_hellos_parse_in_one_piece() {
    for (label, bytes, name) in corpus() {
        let p = parse(&bytes);
        assert_eq!(p.progress(), Progress::Done, "{label}: {p:?}");
        assert!(p.is_client_hello(), "{label}");
        assert_eq!(name_of(&p), name, "{label}");
        assert!(!p.has_ech(), "{label}");
    }
}

#[test]
fn rustls_hello_offers_post_quantum_share_and_is_large() {
    // X25519MLKEM768 is group 0x11ec; its key share alone is 1216 bytes.
    let bytes = rustls_hello("pq.example.com");
    let hello = Hello::from_records(&bytes);
    let exts = hello.extensions.expect("extensions");
    let key_share = exts.iter().find(|(ty, _)| *ty == 51).expect("key_share");
    assert_eq!(
        &key_share.1[2..4],
        &[0x11, 0xec],
        "first share is X25519MLKEM768"
    );
    assert!(bytes.len() > 1200, "{} bytes", bytes.len());
}

#[test]
fn every_prefix_needs_more_and_never_invents_a_name() {
    for (label, bytes, name) in corpus() {
        for cut in 0..bytes.len() {
            let p = parse(&bytes[..cut]);
            assert_eq!(p.progress(), Progress::NeedMore, "{label} cut at {cut}");
            if let Some(found) = name_of(&p) {
                assert_eq!(Some(found), name, "{label} cut at {cut}");
            }
        }
    }
}

#[test]
fn name_is_known_as_soon_as_its_last_byte_arrives() {
    for (label, bytes, name) in corpus() {
        let Some(name) = name else { continue };
        let pos = bytes
            .windows(name.len())
            .position(|w| w.eq_ignore_ascii_case(name.as_bytes()))
            .expect("name in bytes");
        let end = pos + name.len();
        assert_eq!(name_of(&parse(&bytes[..end - 1])), None, "{label}");
        assert_eq!(name_of(&parse(&bytes[..end])), Some(name), "{label}");
    }
}

#[test]
fn every_split_into_two_and_three_chunks_gives_the_same_answer() {
    for (label, bytes, name) in corpus() {
        let n = bytes.len();
        let whole = ja4_of(&parse(&bytes));
        assert!(
            matches!(&whole, Some((_, Some(s))) if s.len() == 36),
            "{label}: {whole:?}"
        );
        for i in 0..=n {
            let p = parse_chunks(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(p.progress(), Progress::Done, "{label} split at {i}");
            assert_eq!(name_of(&p), name, "{label} split at {i}");
            assert_eq!(ja4_of(&p), whole, "{label} split at {i}");
        }
        // Three chunks: every first cut, second cuts on a stride (all pairs of the large
        // rustls hello would be a million parses).
        let stride = if n > 600 { 37 } else { 7 };
        for i in 0..=n {
            for j in (i..=n).step_by(stride) {
                let p = parse_chunks(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(name_of(&p), name, "{label} split at {i},{j}");
                assert_eq!(ja4_of(&p), whole, "{label} split at {i},{j}");
                assert_eq!(p.progress(), Progress::Done, "{label} split at {i},{j}");
            }
        }
    }
}

#[test]
fn hello_split_across_records_of_every_size() {
    for (label, bytes, name) in corpus() {
        let hello = Hello::from_records(&bytes);
        let hs_len = hello.handshake().len();
        let whole = ja4_of(&parse(&bytes));
        for size in (1..64).chain([100, 255, 256, 511, 1000, hs_len - 1, hs_len]) {
            let framed = hello.records(size);
            let p = parse(&framed);
            assert_eq!(p.progress(), Progress::Done, "{label} records of {size}");
            assert_eq!(ja4_of(&p), whole, "{label} records of {size}");
            assert_eq!(name_of(&p), name, "{label} records of {size}");
            assert!(usize::from(p.records()) >= hs_len.div_ceil(size).min(255));
        }
    }
}

#[test]
fn extensions_in_any_order() {
    let mut rng = Lcg(7);
    for (label, bytes, name) in corpus() {
        let Some(name) = name else { continue };
        let hello = Hello::from_records(&bytes);
        let exts = hello.extensions.clone().expect("extensions");
        let n = exts.len();
        let mut orders: Vec<Vec<(u16, Vec<u8>)>> = Vec::new();
        // Every rotation, its reverse, and seeded shuffles.
        for r in 0..n {
            let mut o = exts.clone();
            o.rotate_left(r);
            orders.push(o.clone());
            o.reverse();
            orders.push(o);
        }
        for _ in 0..200 {
            let mut o = exts.clone();
            for i in (1..n).rev() {
                o.swap(i, rng.below(i + 1));
            }
            orders.push(o);
        }
        // server_name at every position.
        let sni_at = hello.sni_index().expect("sni");
        for target in 0..n {
            let mut o = exts.clone();
            let sni = o.remove(sni_at);
            o.insert(target, sni);
            orders.push(o);
        }
        // JA4 sorts the extensions: their order does not change it.
        let whole = ja4_of(&parse(&bytes));
        for o in orders {
            let mut h = hello.clone();
            h.extensions = Some(o);
            let p = parse(&h.records(16384));
            assert_eq!(p.progress(), Progress::Done, "{label}");
            assert_eq!(name_of(&p).as_deref(), Some(name.as_str()), "{label}");
            assert_eq!(ja4_of(&p), whole, "{label}");
        }
    }
}

#[test]
fn grease_extensions_and_suites_are_passed_over() {
    // RFC 8701 GREASE values: 0x0a0a, 0x1a1a, … 0xfafa.
    let grease: Vec<u16> = (0..16u16).map(|i| (i << 12) | 0x0a0a | (i << 4)).collect();
    for (label, bytes, name) in corpus() {
        let hello = Hello::from_records(&bytes);
        let n = hello.extensions.as_ref().map_or(0, Vec::len);
        for (k, g) in grease.iter().enumerate() {
            let mut h = hello.clone();
            let mut suites = g.to_be_bytes().to_vec();
            suites.extend_from_slice(&h.suites);
            h.suites = suites;
            let exts = h.extensions.get_or_insert_with(Vec::new);
            let body = if k % 2 == 0 { vec![] } else { vec![0] };
            exts.insert(k % (n + 1), (*g, body));
            exts.push((grease[(k + 1) % 16], vec![0; k]));
            let p = parse(&h.records(16384));
            assert_eq!(p.progress(), Progress::Done, "{label} grease {g:#06x}");
            assert_eq!(name_of(&p), name, "{label} grease {g:#06x}");
            // JA4 leaves GREASE out.
            assert_eq!(
                ja4_of(&p),
                ja4_of(&parse(&bytes)),
                "{label} grease {g:#06x}"
            );
        }
    }
}

#[test]
fn long_names_normalisation_and_punycode() {
    let base = Hello::from_records(FIXTURES[0].bytes);
    let label63 = "a".repeat(63);
    let name253 = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
    assert_eq!(name253.len(), 253);
    let cases: Vec<(String, Option<String>)> = vec![
        (name253.clone(), Some(name253.clone())),
        (format!("{name253}."), Some(name253.clone())),
        ("c".repeat(255), Some("c".repeat(255))),
        (format!("{}.", "d".repeat(254)), Some("d".repeat(254))),
        (
            "MiXeD.Case.EXAMPLE".to_owned(),
            Some("mixed.case.example".to_owned()),
        ),
        (
            "xn--nxasmq6b.xn--jxalpdlp".to_owned(),
            Some("xn--nxasmq6b.xn--jxalpdlp".to_owned()),
        ),
        ("x".to_owned(), Some("x".to_owned())),
    ];
    for (wire, want) in cases {
        let mut h = base.clone();
        h.set_sni(wire.as_bytes());
        let p = parse(&h.records(16384));
        assert_eq!(p.progress(), Progress::Done, "{wire}");
        assert_eq!(name_of(&p), want, "{wire}");
    }
    for bad in ["e".repeat(256), ".".to_owned()] {
        let mut h = base.clone();
        h.set_sni(bad.as_bytes());
        let p = parse(&h.records(16384));
        assert_eq!(p.progress(), Progress::Malformed, "{} bytes", bad.len());
        assert_eq!(p.name(), None);
    }
}

#[test]
fn hello_without_extensions_has_no_name() {
    let mut h = Hello::from_records(FIXTURES[0].bytes);
    h.extensions = None;
    let p = parse(&h.records(16384));
    assert_eq!(p.progress(), Progress::Done);
    assert_eq!(p.name(), None);
    h.extensions = Some(vec![]);
    assert_eq!(parse(&h.records(16384)).progress(), Progress::Done);
}

#[test]
fn ech_is_flagged_wherever_it_sits() {
    let base = Hello::from_records(FIXTURES[3].bytes);
    let n = base.extensions.as_ref().expect("extensions").len();
    for at in 0..=n {
        let mut h = base.clone();
        h.extensions
            .as_mut()
            .expect("extensions")
            .insert(at, (0xfe0d, vec![0; 200]));
        let p = parse(&h.records(16384));
        assert_eq!(p.progress(), Progress::Done);
        assert!(p.has_ech(), "ECH at {at}");
        assert_eq!(name_of(&p).as_deref(), Some("curl.example.net"));
    }
}

#[test]
fn duplicate_server_name_is_malformed() {
    let mut h = Hello::from_records(FIXTURES[0].bytes);
    h.extensions
        .as_mut()
        .expect("extensions")
        .push((0, sni_body(b"other.example")));
    let p = parse(&h.records(16384));
    assert_eq!(p.progress(), Progress::Malformed);
    assert_eq!(p.reason(), Reason::DuplicateServerName);
}

#[test]
fn not_client_hellos() {
    let server_hello = {
        let mut b = FIXTURES[0].bytes.to_vec();
        b[5] = 2;
        b
    };
    let cases: &[(&str, &[u8])] = &[
        ("http", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("application data", &[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]),
        // (An SSLv2-compatible ClientHello is one: its own test above.)
        ("sslv2 server message", &[0x80, 0x2e, 0x04, 0x00, 0x02]),
        ("ssh", b"SSH-2.0-OpenSSH_9.2\r\n"),
        ("record version 2", &[22, 2, 0, 0, 5, 1, 0, 0, 1, 0]),
        ("server hello", &server_hello),
    ];
    for (label, bytes) in cases {
        let p = parse(bytes);
        assert_eq!(p.progress(), Progress::NotClientHello, "{label}");
        assert!(!p.is_client_hello(), "{label}");
    }
}

/// Offsets of every length field in a framed single-record hello, with their width.
fn length_fields(hello: &Hello) -> Vec<(usize, usize)> {
    let mut fields = vec![(3, 2), (6, 3)]; // record length, handshake length
    let mut i = 5 + 4 + 2 + 32;
    fields.push((i, 1));
    i += 1 + hello.session_id.len();
    fields.push((i, 2));
    i += 2 + hello.suites.len();
    fields.push((i, 1));
    i += 1 + hello.compression.len();
    if let Some(exts) = &hello.extensions {
        fields.push((i, 2));
        i += 2;
        for (ty, data) in exts {
            fields.push((i + 2, 2));
            if *ty == 0 {
                fields.push((i + 4, 2)); // server_name_list
                fields.push((i + 7, 2)); // host_name
            }
            i += 4 + data.len();
        }
    }
    fields
}

#[test]
fn length_fields_that_lie_never_yield_a_wrong_name() {
    for (label, bytes, name) in corpus() {
        let hello = Hello::from_records(&bytes);
        let framed = hello.records(16384);
        for (off, width) in length_fields(&hello) {
            let orig = framed[off..off + width]
                .iter()
                .fold(0u32, |a, b| (a << 8) | u32::from(*b));
            let max = (1u32 << (8 * width)) - 1;
            let lies = [
                0,
                1,
                orig.wrapping_sub(1) & max,
                (orig + 1) & max,
                (orig + 2) & max,
                orig / 2,
                max,
            ];
            for lie in lies {
                if lie == orig {
                    continue;
                }
                let mut b = framed.clone();
                for k in 0..width {
                    b[off + k] = (lie >> (8 * (width - 1 - k))) as u8;
                }
                let p = parse(&b);
                // Any answer but a name other than the real one (a shortened name would be
                // attributed to the wrong host).
                // A lie may also make the rest read as other extensions (no name): honest.
                if let Some(found) = name_of(&p) {
                    assert_eq!(Some(found), name.clone(), "{label} field@{off} = {lie}");
                }
            }
        }
    }
}

#[test]
fn what_is_read_straight_through_leaves_the_parser_as_its_steps_do() {
    // `Parser::leap` reads the fixed fields, and the lengths in front of the first value of
    // server_name, ALPN, signature_algorithms and supported_versions, straight through. Each
    // of those bytes, set to values the checks refuse and accept, in the ClientHello as sent,
    // without a session ID (so that a handshake length just under the smallest ClientHello's
    // still holds the fields), and with each of those extensions last (where a length that
    // lies ends the ClientHello): steps over the whole in one piece (which leap where they
    // can) and field steps alone (which never do) come to the same parser, whole while it
    // still reads, else to the same answer. Records ending at each of those bytes put a record's end inside
    // what is read straight through.
    const VALUES_READ: [u16; 4] = [0, 16, 13, 43];
    for (label, bytes, _) in corpus() {
        let hello = Hello::from_records(&bytes);
        let mut no_session_id = hello.clone();
        no_session_id.session_id.clear();
        // No compression method (refused) but the extensions' length where it should be.
        let mut no_compression = hello.clone();
        no_compression.compression.clear();
        // An empty extensions block ends the ClientHello at its length.
        let mut no_extensions = hello.clone();
        no_extensions.extensions = Some(Vec::new());
        let mut cases = vec![no_compression.records(16384), no_extensions.records(16384)];
        // A list length with no room for its values in the last extension, which ends the
        // ClientHello right after it.
        for (ty, body) in [(43u16, vec![4u8]), (13, vec![0, 4])] {
            let mut short = hello.clone();
            if let Some(exts) = &mut short.extensions {
                exts.retain(|e| e.0 != ty);
                exts.push((ty, body));
            }
            cases.push(short.records(16384));
        }
        // Each ClientHello, with whether its fixed fields are changed too, and the extensions
        // whose first bytes are.
        let mut bases = vec![(hello.clone(), true, VALUES_READ.to_vec())];
        bases.push((no_session_id, true, VALUES_READ.to_vec()));
        for ty in VALUES_READ {
            let mut last = hello.clone();
            if let Some(exts) = &mut last.extensions {
                if let Some(i) = exts.iter().position(|e| e.0 == ty) {
                    let e = exts.remove(i);
                    exts.push(e);
                    bases.push((last, false, vec![ty]));
                }
            }
        }
        for (base, fixed, types) in &bases {
            let first_extension = base.extensions_at();
            let mut read: Vec<usize> = if *fixed {
                (0..first_extension).collect()
            } else {
                Vec::new()
            };
            let mut at = first_extension;
            for (ty, data) in base.extensions.iter().flatten() {
                if types.contains(ty) {
                    read.extend(at..at + 4 + data.len().min(8));
                }
                at += 4 + data.len();
            }
            // A record (of the size it holds) ending at each of those bytes.
            cases.extend(
                read.iter()
                    .filter(|&&at| at > 5)
                    .map(|&at| base.records(at - 5)),
            );
            let bytes = base.records(16384);
            for &at in &read {
                let b = bytes[at];
                let mut values = vec![0, 1, 2, 3, 22, 32, 33, 38, 0x80, 0xff];
                values.extend([b.wrapping_add(1), b.wrapping_sub(1)]);
                values.sort_unstable();
                values.dedup();
                for v in values.into_iter().filter(|&v| v != b) {
                    let mut m = bytes.clone();
                    m[at] = v;
                    cases.push(m);
                }
            }
        }
        for case in &cases {
            for ja4 in [false, true] {
                let whole = parse_chunks_with(Parser::new(ja4), &[case]);
                let fields = parse_fields_only(case, ja4);
                let what = format!("{label} ja4 {ja4}: {case:02x?}");
                assert_eq!(whole.progress(), fields.progress(), "{what}");
                assert_eq!(whole.reason(), fields.reason(), "{what}");
                assert_eq!(whole.name(), fields.name(), "{what}");
                assert_eq!(whole.ja4(), fields.ja4(), "{what}");
                if matches!(whole.progress(), Progress::NeedMore | Progress::Done) {
                    assert!(whole == fields, "{what}: {whole:?} != {fields:?}");
                }
            }
        }
    }
}

#[test]
fn random_and_mutated_bytes_never_panic_and_stay_bounded() {
    let mut rng = Lcg(42);
    let corpus = corpus();
    for round in 0..20_000 {
        let (_, base, _) = &corpus[round % corpus.len()];
        let mut b = base.clone();
        match round % 3 {
            0 => {
                for _ in 0..=rng.below(8) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            1 => b.truncate(rng.below(b.len() + 1)),
            _ => {
                let n = rng.below(600);
                b = vec![22, 3, 1];
                b.extend((0..n).map(|_| rng.next() as u8));
            }
        }
        // parse_chunks asserts the step bound and full consumption.
        let cut = rng.below(b.len() + 1);
        let one = parse(&b);
        let two = parse_chunks(&[&b[..cut], &b[cut..]]);
        assert_eq!(one.progress(), two.progress(), "round {round}");
        assert_eq!(one.name(), two.name(), "round {round}");
    }
}

#[test]
fn sslv2_compatible_client_hellos_are_their_own_outcome() {
    use sni_common::{hello::starts_client_hello, Outcome};
    // Two-byte header (high bit set, length 0x2e), CLIENT-HELLO, version 3.1, then its
    // fields: no extensions can follow, so there is no name to wait for.
    let mut v2 = vec![0x80, 0x2e, 1, 3, 1, 0, 9, 0, 0, 0, 16];
    v2.extend_from_slice(&[0; 9 + 16]);
    let head: [u8; 6] = v2[..6].try_into().unwrap();
    assert!(starts_client_hello(head));
    for cut in 0..v2.len() {
        let p = parse_chunks(&[&v2[..cut], &v2[cut..]]);
        assert_eq!(p.progress(), Progress::Done, "cut at {cut}");
        assert_eq!(p.outcome(), Outcome::Sslv2);
        assert!(p.is_client_hello());
        assert_eq!(p.name(), None);
    }
    assert_eq!(parse(&v2[..4]).progress(), Progress::NeedMore);
    // The same header over another message type, an SSL 2.0 or TLS 1.3 version, or a length
    // too short for a ClientHello, is not TLS.
    for (i, b) in [(2, 2), (3, 2), (4, 4), (1, 27)] {
        let mut other = v2.clone();
        other[i] = b;
        assert_eq!(
            parse(&other).progress(),
            Progress::NotClientHello,
            "byte {i} = {b}"
        );
    }
}
