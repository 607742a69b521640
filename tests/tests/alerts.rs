//! Hostile ClientHellos against the terminator and against `openssl s_server` with the same
//! certificate: every refusal is a fatal TLS alert of the description the RFCs name, sent as
//! one record before the connection closes, and the terminator refuses what OpenSSL refuses.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use sni_tests::{
    hellos::{resize_hello, with_extension},
    netns::{wait_until, ChildGuard},
    term::{standard_pki, Term, HOSTS},
};

/// Fatal alert descriptions (RFC 8446 §6.2).
const DECODE_ERROR: u8 = 50;
const ILLEGAL_PARAMETER: u8 = 47;
const UNRECOGNIZED_NAME: u8 = 112;
const UNEXPECTED_MESSAGE: u8 = 10;
const HANDSHAKE_FAILURE: u8 = 40;

/// Where the terminator refuses and OpenSSL does not, and why.
const STRICTER_THAN_OPENSSL: [&str; 4] = [
    // RFC 6066 §3: `opaque HostName<1..2^16-1>`, so an empty one does not decode. OpenSSL
    // takes it as no name.
    "empty name",
    // "." is no host name (RFC 6066 §3: a DNS hostname); the shared parser, and so the
    // kernel, count it malformed. OpenSSL takes it and serves its default certificate.
    "name of one dot",
    // RFC 8446 §5.1: zero-length fragments of handshake messages MUST NOT be sent. OpenSSL
    // skips them.
    "an empty handshake record",
    // Past `limits.max_client_hello` (16 KiB by default); OpenSSL reads larger ones.
    "a ClientHello over the size cap",
];

/// What a server answered: an alert record's description, the start of a handshake (it took
/// the ClientHello), or a close with nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Alert(u8),
    Handshake,
    Nothing,
}

/// Sends `hello` to `addr`, half-closes, and reads the first record of the answer.
fn answer(addr: &str, hello: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(hello).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 7 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    match got.as_slice() {
        [] => Answer::Nothing,
        [21, 3, _, 0, 2, 2, d, ..] => Answer::Alert(*d),
        [22, 3, ..] => Answer::Handshake,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// A ClientHello captured from `openssl s_client -noservername` (fixed bytes, so that every
/// run sends the same), with `server_name` (extension 0) appended with `body` as its data.
fn with_sni(body: &[u8]) -> Vec<u8> {
    with_extension(&sni_tests::fixture("openssl-nosni.bin"), 0, body)
}

/// A server_name body: the list length, then `(type, name)` entries.
fn sni_body(list_delta: i32, entries: &[(u8, &[u8], i32)]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name, len_delta) in entries {
        list.push(*ty);
        list.extend_from_slice(&((name.len() as i32 + len_delta) as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut body = ((list.len() as i32 + list_delta) as u16)
        .to_be_bytes()
        .to_vec();
    body.extend_from_slice(&list);
    body
}

/// Every hostile case: its name, its bytes, and the terminator's answer.
fn cases() -> Vec<(&'static str, Vec<u8>, Answer)> {
    let name: &[u8] = b"a.example";
    let good = with_sni(&sni_body(0, &[(0, name, 0)]));
    let mut cases = vec![
        ("a good ClientHello", good.clone(), Answer::Handshake),
        (
            "empty server_name extension",
            with_sni(&[]),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "empty host list",
            with_sni(&sni_body(0, &[])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "empty name",
            with_sni(&sni_body(0, &[(0, b"", 0)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "list length +1",
            with_sni(&sni_body(1, &[(0, name, 0)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "list length -1",
            with_sni(&sni_body(-1, &[(0, name, 0)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "name length +1",
            with_sni(&sni_body(0, &[(0, name, 1)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "name length -1",
            with_sni(&sni_body(0, &[(0, name, -1)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "two host_names",
            with_sni(&sni_body(0, &[(0, name, 0), (0, b"b.example", 0)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "two name types",
            with_sni(&sni_body(0, &[(0, name, 0), (1, b"other", 0)])),
            Answer::Alert(DECODE_ERROR),
        ),
        (
            "two server_name extensions",
            with_extension(&good, 0, &sni_body(0, &[(0, name, 0)])),
            Answer::Alert(ILLEGAL_PARAMETER),
        ),
        (
            "name of one dot",
            with_sni(&sni_body(0, &[(0, b".", 0)])),
            Answer::Alert(UNRECOGNIZED_NAME),
        ),
    ];
    // Length fields of the record layer and the handshake that lie short by one.
    let mut short_record = good.clone();
    resize_hello(&mut short_record, 0, &[]);
    let v = u16::from_be_bytes([short_record[3], short_record[4]]) - 1;
    short_record[3..5].copy_from_slice(&v.to_be_bytes());
    // The last byte then starts a record header: the ClientHello is not over, and both wait
    // for the rest (until the handshake deadline here).
    cases.push(("record length -1", short_record, Answer::Nothing));
    let mut short_hs = good.clone();
    short_hs[8] -= 1;
    cases.push(("handshake length -1", short_hs, Answer::Alert(DECODE_ERROR)));
    let at = sni_tests::hellos::extensions_length_at(&good);
    let mut short_exts = good.clone();
    short_exts[at + 1] -= 1;
    cases.push((
        "extensions length -1",
        short_exts,
        Answer::Alert(DECODE_ERROR),
    ));
    let mut long_exts = good.clone();
    long_exts[at + 1] += 1;
    cases.push((
        "extensions length +1",
        long_exts,
        Answer::Alert(DECODE_ERROR),
    ));
    // Trailing bytes after the ClientHello inside its record.
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    let v = u16::from_be_bytes([trailing[3], trailing[4]]) + 3;
    trailing[3..5].copy_from_slice(&v.to_be_bytes());
    // They start a second handshake message, which no client may send before the server's
    // answer.
    cases.push((
        "trailing bytes in the record",
        trailing,
        Answer::Alert(UNEXPECTED_MESSAGE),
    ));
    // The ClientHello in records of one byte each: valid TLS (RFC 8446 §5.1).
    let body = &good[5..];
    let mut one_byte_records = Vec::new();
    for b in body {
        one_byte_records.extend_from_slice(&[22, 3, 1, 0, 1, *b]);
    }
    cases.push(("one-byte records", one_byte_records, Answer::Handshake));
    // An empty handshake record first: not allowed (RFC 8446 §5.1).
    let mut empty_record = vec![22, 3, 1, 0, 0];
    empty_record.extend_from_slice(&good);
    cases.push((
        "an empty handshake record",
        empty_record,
        Answer::Alert(DECODE_ERROR),
    ));
    // Over the size cap, in two records.
    let big = with_extension(&good, 21, &vec![0; 17_000]);
    let body = &big[5..];
    let mut over = Vec::new();
    for part in body.chunks(body.len() / 2 + 1) {
        over.extend_from_slice(&[22, 3, 1]);
        over.extend_from_slice(&(part.len() as u16).to_be_bytes());
        over.extend_from_slice(part);
    }
    cases.push((
        "a ClientHello over the size cap",
        over,
        Answer::Alert(DECODE_ERROR),
    ));
    // An SSLv2-compatible ClientHello: rustls reads none; refused as OpenSSL refuses it.
    cases.push((
        "an SSLv2-compatible ClientHello",
        sni_tests::hellos::sslv2_hello(),
        Answer::Alert(HANDSHAKE_FAILURE),
    ));
    // Not TLS at all: closed without an alert.
    cases.push((
        "plain HTTP",
        b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec(),
        Answer::Nothing,
    ));
    cases
}

#[test]
fn hostile_client_hellos_get_the_alert_openssl_would_send() {
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let openssl = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-accept", &openssl])
        .arg("-cert")
        .arg(pki.path("a.pem"))
        .arg("-key")
        .arg(pki.path("a.key"));
    let _server = ChildGuard::spawn(cmd, "openssl s_server", &pki.path("s_server.log"));
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        &openssl
    )
    .is_ok()));
    let ours = term.addr.to_string();
    let mut table = String::new();
    let (mut wrong, mut disagree) = (Vec::new(), Vec::new());
    let refused = |a: Answer| matches!(a, Answer::Alert(_));
    for (what, bytes, want) in cases() {
        let got = answer(&ours, &bytes);
        let theirs = answer(&openssl, &bytes);
        table.push_str(&format!(
            "{what:32} ours {got:?}  openssl {theirs:?}  want {want:?}\n"
        ));
        if got != want {
            wrong.push(what);
        }
        if refused(got) != refused(theirs) && !STRICTER_THAN_OPENSSL.contains(&what) {
            disagree.push(what);
        }
    }
    eprintln!("{table}");
    assert!(wrong.is_empty(), "wrong answers for {wrong:?}:\n{table}");
    assert!(
        disagree.is_empty(),
        "OpenSSL decides otherwise for {disagree:?}:\n{table}"
    );
    // Every refusal counted, none of them logged above debug.
    term.wait_stats("refusals counted", |s| {
        s["global"]["bad_client_hello"].as_u64() >= Some(15)
            && s["global"]["client_hello_too_large"] == 1
    });
    let log = std::fs::read_to_string(&term.log).unwrap();
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn a_flood_of_bad_client_hellos_is_counted_not_logged() {
    const FLOOD: u64 = 10_000;
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    let addr = term.addr.to_string();
    let bad = with_sni(&sni_body(0, &[(0, b"", 0)]));
    for i in 0..FLOOD {
        assert_eq!(
            answer(&addr, &bad),
            Answer::Alert(DECODE_ERROR),
            "connection {i}"
        );
    }
    term.wait_stats("every bad ClientHello counted", |s| {
        s["global"]["bad_client_hello"] == FLOOD
    });
    let log = std::fs::read_to_string(&term.log).unwrap();
    // The start-up lines, and nothing per connection.
    assert!(
        log.lines().count() < 20,
        "{} lines:\n{log}",
        log.lines().count()
    );
}
