//! JA4 fingerprints against an independent reference (`sni_tests::ja4`, tls-parser and the
//! specification's rules): sni-common's parser, fed every ClientHello the tests have in any
//! split, and `sni-user classify` over a capture of them, must give the reference's JA4; so
//! must both for a ClientHello Chromium sends right now.

use std::{
    io::Read,
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sni_common::Parser;
use sni_tests::{
    fixture,
    frame::{self, Seg, PSH_ACK},
    hellos::{browser_size_hello, rustls_hello},
    ja4::{reference, Reference},
    netns::{run, ChildGuard},
    pcap::{write_pcap, write_pcapng},
    sni_user_bin,
};

const PORT: u16 = 443;
const ISN: u32 = 9_000_000;

/// Every ClientHello the tests have: real captures, and rustls' own made now.
fn hellos() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = [
        "openssl-sni.bin",
        "openssl-nosni.bin",
        "openssl-tls12.bin",
        "curl.bin",
        "python-ssl.bin",
        "openssl-punycode.bin",
    ]
    .into_iter()
    .map(|f| (f.to_owned(), fixture(f)))
    .collect();
    out.push(("rustls".into(), rustls_hello("rustls.example.org")));
    out.push(("browser-size".into(), browser_size_hello("pq.example.org")));
    out.push((
        "browser-size in three records".into(),
        in_records(&browser_size_hello("records.example.org"), &[3, 700]),
    ));
    out
}

/// `hello` (one record) with its handshake message cut into records after each of `cuts`
/// (offsets into the message): a ClientHello fragmented at the record layer.
fn in_records(hello: &[u8], cuts: &[usize]) -> Vec<u8> {
    let message = &hello[5..];
    let mut out = Vec::new();
    let mut from = 0;
    for to in cuts.iter().copied().chain([message.len()]) {
        let part = &message[from..to];
        out.extend_from_slice(&hello[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
        from = to;
    }
    out
}

/// sni-common's JA4 of `bytes` fed in the pieces that `cuts` (offsets) make.
fn parsed(bytes: &[u8], cuts: &[usize]) -> Option<String> {
    let mut parser = Parser::new(true);
    let mut from = 0;
    for to in cuts.iter().copied().chain([bytes.len()]) {
        parser.feed(&bytes[from..to]);
        from = to;
    }
    let ja4 = parser.ja4()?.ja4()?;
    Some(ja4.as_str().to_owned())
}

fn reference_of(what: &str, bytes: &[u8]) -> Reference {
    reference(bytes).unwrap_or_else(|e| panic!("{what}: the reference cannot read it: {e}"))
}

#[test]
fn the_parsers_ja4_is_the_references_for_every_hello_and_split() {
    let mut seen = std::collections::HashSet::new();
    for (what, bytes) in hellos() {
        let r = reference_of(&what, &bytes);
        assert_eq!(
            parsed(&bytes, &[]).as_deref(),
            Some(r.ja4.as_str()),
            "{what}: JA4_r {}",
            r.raw
        );
        for at in 1..bytes.len() {
            assert_eq!(
                parsed(&bytes, &[at]).as_deref(),
                Some(r.ja4.as_str()),
                "{what} split at {at}: JA4_r {}",
                r.raw
            );
        }
        let thirds = [bytes.len() / 3, 2 * bytes.len() / 3];
        assert_eq!(parsed(&bytes, &thirds), Some(r.ja4.clone()), "{what}");
        seen.insert(r.ja4);
    }
    // Not agreement on one value: the captures differ (openssl's with and without a name,
    // TLS 1.2 only, curl, Python, rustls).
    assert!(seen.len() >= 6, "{seen:?}");
}

/// The JA4 the flow from a client port must show.
struct Expect {
    port: u16,
    /// The ClientHello and how it is split, for messages.
    what: String,
    /// `None`: a flow that must have none.
    ja4: Option<String>,
}

/// One flow per (ClientHello, cut offsets), each to its own client port, interleaved; and the
/// JA4 each flow must show.
fn traffic(hellos: &[(String, Vec<u8>)]) -> (Vec<Vec<u8>>, Vec<Expect>) {
    let mut flows: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut expect = Vec::new();
    let mut flow = |what: String, bytes: &[u8], cuts: &[usize], ja4: Option<String>| {
        let port = frame::next_port();
        let mut frames = Vec::new();
        let mut from = 0;
        for to in cuts.iter().copied().chain([bytes.len()]) {
            let seg = Seg {
                src_port: port,
                dst_port: PORT,
                seq: ISN.wrapping_add(from as u32),
                flags: PSH_ACK,
            };
            frames.push(frame::v4_segment(&seg, &bytes[from..to]));
            from = to;
        }
        flows.push(frames);
        expect.push(Expect { port, what, ja4 });
    };
    for (what, bytes) in hellos {
        let r = reference_of(what, bytes);
        flow(format!("{what} whole"), bytes, &[], Some(r.ja4.clone()));
        let half = bytes.len() / 2;
        flow(
            format!("{what} in two"),
            bytes,
            &[half],
            Some(r.ja4.clone()),
        );
        let cuts = [bytes.len() / 3, 2 * bytes.len() / 3];
        flow(format!("{what} in three"), bytes, &cuts, Some(r.ja4));
    }
    // Cut short by the capture's end: no fingerprint.
    let (what, bytes) = &hellos[0];
    flow(
        format!("{what} cut short"),
        &bytes[..bytes.len() - 10],
        &[],
        None,
    );
    let longest = flows.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        for f in &flows {
            if let Some(frame) = f.get(i) {
                out.push(frame.clone());
            }
        }
    }
    (out, expect)
}

/// `sni-user classify --json` over `path`.
fn classify(path: &Path) -> Value {
    let out = run(Command::new(sni_user_bin())
        .args(["classify", "--json"])
        .arg(path));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks that each flow of `report` has the JA4 `expect` says for its client port.
fn check_flows(report: &Value, expect: &[Expect]) {
    let flows = report["flows"].as_array().unwrap();
    assert_eq!(flows.len(), expect.len(), "{report}");
    for Expect { port, what, ja4 } in expect {
        let flow = flows
            .iter()
            .find(|f| f["client"].as_str().unwrap().ends_with(&format!(":{port}")))
            .unwrap_or_else(|| panic!("{what}: no flow from port {port} in {report}"));
        let want = ja4.as_deref().map_or(Value::Null, Value::from);
        assert_eq!(flow["ja4"], want, "{what}: {flow}");
    }
}

#[test]
fn classify_reports_the_references_ja4_per_flow_whole_or_split() {
    let hellos = hellos();
    let (frames, expect) = traffic(&hellos);
    let dir = tempfile::tempdir().unwrap();
    for (file, write) in [
        ("j.pcap", write_pcap as fn(&Path, &[Vec<u8>])),
        ("j.pcapng", write_pcapng),
    ] {
        let path = dir.path().join(file);
        write(&path, &frames);
        let report = classify(&path);
        assert_eq!(report["skipped"], 0, "{file}: {report}");
        check_flows(&report, &expect);
    }
    // The text form: `ja4=` on each line, `-` for none.
    let path = dir.path().join("j.pcap");
    let out = run(Command::new(sni_user_bin()).arg("classify").arg(&path));
    let text = String::from_utf8_lossy(&out.stdout);
    for Expect { what, ja4, .. } in &expect {
        let field = format!("ja4={}  ", ja4.as_deref().unwrap_or("-"));
        assert!(text.contains(&field), "{what}: no {field} in\n{text}");
    }
}

/// The first ClientHello headless Chromium sends, read off a loopback listener (nothing
/// answers it: the browser is ended once its ClientHello is whole).
fn chromium_hello() -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let profile = tempfile::tempdir().unwrap();
    let log = profile.path().join("chromium.log");
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "chromium"])
        .args(sni_tests::CHROMIUM_HEADLESS)
        .arg("--host-resolver-rules=MAP *.test 127.0.0.1")
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p").display()
        ))
        .args(["--dump-dom", &format!("https://ja4.test:{port}/")]);
    let chromium = ChildGuard::spawn(cmd, "chromium", &log);
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "Chromium never connected: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while reference(&bytes).is_err() {
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading Chromium's ClientHello: {e} after {bytes:02x?}"));
        assert!(
            n > 0,
            "Chromium closed before its ClientHello ended: {bytes:02x?}"
        );
        bytes.extend_from_slice(&buf[..n]);
    }
    drop(chromium);
    bytes
}

#[test]
fn chromiums_ja4_in_the_parser_and_classify_is_the_references() {
    let bytes = chromium_hello();
    let r = reference_of("Chromium", &bytes);
    // Chrome: TLS 1.3, a name, h2 offered (its JA4 starts t13d15 or t13d16 and ends h2).
    assert!(r.ja4.starts_with("t13d"), "{}", r.raw);
    assert_eq!(&r.ja4[8..10], "h2", "{}", r.raw);
    assert_eq!(parsed(&bytes, &[]), Some(r.ja4.clone()), "JA4_r {}", r.raw);
    // As segments of a 1500-byte link would carry it, and in three.
    let hellos = vec![("Chromium".to_owned(), bytes)];
    let (frames, expect) = traffic(&hellos);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chromium.pcap");
    write_pcap(&path, &frames);
    check_flows(&classify(&path), &expect);
}
