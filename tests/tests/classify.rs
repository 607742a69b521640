//! `sni-user classify` against the kernel: the same frames (split, retransmitted, reordered,
//! restarted flows) go through the loaded XDP program (`BPF_PROG_TEST_RUN`) and, written as a
//! pcap and as a pcapng capture, through `sni-user classify`; both must say the same.

use std::{path::Path, process::Command};

use serde_json::Value;
use sni_tests::{
    fixture,
    frame::{self, Seg, PSH_ACK, SYN},
    hellos::{browser_size_hello, named},
    netns::run,
    pcap::{write_pcap, write_pcapng},
    prog::{Prog, XDP_PASS},
    sni_user_bin,
};

const PORT: u16 = 443;
const ISN: u32 = 7_000_000;

fn seg(port: u16, seq: u32, flags: u8) -> Seg {
    Seg {
        src_port: port,
        dst_port: PORT,
        seq,
        flags,
    }
}

/// Frames of many flows, interleaved: every outcome the classifier knows.
fn traffic() -> Vec<Vec<u8>> {
    let mut flows: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut flow = |parts: Vec<(u32, &[u8], u8)>| {
        let port = frame::next_port();
        flows.push(
            parts
                .into_iter()
                .map(|(off, bytes, flags)| {
                    frame::v4_segment(&seg(port, ISN.wrapping_add(off), flags), bytes)
                })
                .collect(),
        );
    };
    let pq = browser_size_hello("split.example.org");
    let one = named("one.example.org");
    let nosni = fixture("openssl-nosni.bin");
    let mut bad = named("bad.example.org");
    bad[9] = 2; // legacy_version 0x0203
                // One segment; split in two; split in three; a retransmission in between.
    flow(vec![(0, &one, PSH_ACK)]);
    flow(vec![
        (0, &pq[..1000], PSH_ACK),
        (1000, &pq[1000..], PSH_ACK),
    ]);
    flow(vec![
        (0, &pq[..500], PSH_ACK),
        (500, &pq[500..1400], PSH_ACK),
        (1400, &pq[1400..], PSH_ACK),
    ]);
    flow(vec![
        (0, &pq[..1400], PSH_ACK),
        (0, &pq[..1400], PSH_ACK),
        (1400, &pq[1400..], PSH_ACK),
        (pq.len() as u32, b"after", PSH_ACK),
    ]);
    // Reordered: incomplete. No name, malformed.
    flow(vec![(0, &pq[..700], PSH_ACK), (1400, &pq[1400..], PSH_ACK)]);
    flow(vec![(0, &nosni, PSH_ACK)]);
    flow(vec![(0, &bad, PSH_ACK)]);
    // Started over by a SYN on the same ports, then complete.
    flow(vec![
        (0, &pq[..900], PSH_ACK),
        (u32::MAX, &[], SYN),
        (0, &pq[..900], PSH_ACK),
        (900, &pq[900..], PSH_ACK),
    ]);
    // Not TLS at all.
    flow(vec![(0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PSH_ACK)]);
    // Round-robin over the flows, as a link interleaves them.
    let mut out = Vec::new();
    let longest = flows.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for f in &flows {
            if let Some(frame) = f.get(i) {
                out.push(frame.clone());
            }
        }
    }
    out
}

fn classify(path: &Path) -> Value {
    let out = run(Command::new(sni_user_bin())
        .args(["classify", "--json"])
        .arg(path));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn classify_agrees_with_the_kernel_on_the_same_frames() {
    let frames = traffic();
    let prog = Prog::load(&[PORT], &[], 1024);
    for f in &frames {
        assert_eq!(prog.run(f), XDP_PASS);
    }
    let g = prog.global();
    let dir = tempfile::tempdir().unwrap();
    for (file, write) in [
        ("t.pcap", write_pcap as fn(&Path, &[Vec<u8>])),
        ("t.pcapng", write_pcapng),
    ] {
        let path = dir.path().join(file);
        write(&path, &frames);
        let report = classify(&path);
        assert_eq!(report["frames"], frames.len(), "{file}: {report}");
        assert_eq!(report["skipped"], 0, "{file}: {report}");
        let flows = report["flows"].as_array().unwrap();
        let count = |o: &str| flows.iter().filter(|f| f["outcome"] == o).count() as u64;
        for outcome in ["sni", "no_sni", "malformed", "incomplete"] {
            assert_eq!(
                count(outcome),
                g[outcome],
                "{file} {outcome}: {report}\n{g:?}"
            );
        }
        assert_eq!(flows.len() as u64, g["client_hellos"], "{file}");
        for name in ["one.example.org", "split.example.org"] {
            let n = flows.iter().filter(|f| f["sni"] == name).count() as u64;
            assert_eq!(n, prog.host(name).unwrap().0.client_hellos, "{file} {name}");
        }
        let reasons: Vec<&str> = flows.iter().filter_map(|f| f["reason"].as_str()).collect();
        for reason in ["out_of_order", "restarted", "bad_hello_version"] {
            assert!(reasons.contains(&reason), "{file}: no {reason} in {report}");
        }
        let retransmits: u64 = flows
            .iter()
            .map(|f| f["retransmits"].as_u64().unwrap())
            .sum();
        assert_eq!(retransmits, g["retransmits"], "{file}");
        let three = flows.iter().filter(|f| f["segments"] == 3).count();
        assert_eq!(three, 1, "{file}: the three-segment flow: {report}");
    }
    // The counts the test expects, so that agreement is not agreement on nothing.
    assert_eq!(
        (g["sni"], g["no_sni"], g["malformed"], g["incomplete"]),
        (5, 1, 1, 2),
        "{g:?}"
    );
}

#[test]
fn classify_fails_clearly_on_what_is_not_a_capture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not.pcap");
    std::fs::write(&path, b"this is not a capture").unwrap();
    let out = Command::new(sni_user_bin())
        .arg("classify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pcap or pcapng capture"), "{err}");
    // Cut short mid-record: an error naming the file, not a panic.
    let frames = traffic();
    write_pcap(&path, &frames);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let out = Command::new(sni_user_bin())
        .arg("classify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not.pcap"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn classify_output_to_a_reader_that_stops_early_is_not_a_crash() {
    // `sni-user classify big.pcap | head`: far more output than a pipe holds, and the reader
    // gone after a few bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pcap");
    let frames: Vec<Vec<u8>> = (0..100).flat_map(|_| traffic()).collect();
    write_pcap(&path, &frames);
    let mut child = Command::new(sni_user_bin())
        .args(["classify", "--json"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
