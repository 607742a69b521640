//! Flows through the loaded XDP program (`BPF_PROG_TEST_RUN`): ClientHellos split across TCP
//! segments at every byte, retransmitted and reordered segments, the flow table, and the
//! per-host actions (drop, rate limit, default, wildcard names).

use sni_common::flow::{kind, verdict};
use sni_tests::{
    fixture,
    frame::{self, Seg, FIN_ACK, PSH_ACK, SYN},
    hellos::{browser_size_hello, named, rustls_hello},
    prog::{assert_outcomes_add_up, v4_key, Prog, XDP_DROP, XDP_PASS},
};

const PORT: u16 = 443;
/// Initial sequence number + 1 of the test flows: the first payload byte.
const ISN: u32 = 0xffff_fc00; // close to the wrap, so that every test crosses it

fn seg(port: u16, seq: u32) -> Seg {
    Seg {
        src_port: port,
        dst_port: PORT,
        seq,
        flags: PSH_ACK,
    }
}

/// Sends `hello` on a new flow as segments cut at `cuts` (increasing offsets); returns the
/// client port and the verdicts.
fn send_split(prog: &Prog, hello: &[u8], cuts: &[usize]) -> (u16, Vec<u32>) {
    let port = frame::next_port();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(hello.len());
    let verdicts = bounds
        .windows(2)
        .map(|w| {
            let f = frame::v4_segment(
                &seg(port, ISN.wrapping_add(w[0] as u32)),
                &hello[w[0]..w[1]],
            );
            prog.run(&f)
        })
        .collect();
    (port, verdicts)
}

/// The real ClientHellos of the tests, with the names they carry.
fn real_hellos() -> Vec<(String, Vec<u8>, &'static str)> {
    vec![
        (
            "openssl".into(),
            fixture("openssl-sni.bin"),
            "www.example.com",
        ),
        ("curl".into(), fixture("curl.bin"), "curl.example.net"),
        (
            "rustls post-quantum".into(),
            rustls_hello("pq.example.org"),
            "pq.example.org",
        ),
        (
            "browser-size".into(),
            browser_size_hello("browser.example.org"),
            "browser.example.org",
        ),
    ]
}

#[test]
fn split_at_every_byte_into_two_segments() {
    for (label, hello, name) in real_hellos() {
        let prog = Prog::load(&[PORT], &[], 1024);
        let n = hello.len() as u64 - 1;
        for cut in 1..hello.len() {
            let (port, verdicts) = send_split(&prog, &hello, &[cut]);
            assert_eq!(verdicts, [XDP_PASS, XDP_PASS], "{label} cut {cut}");
            let flow = prog
                .flow(&v4_key(port, PORT))
                .unwrap_or_else(|| panic!("{label} cut at {cut}: no flow ({:?})", prog.global()));
            assert_eq!(flow.kind, kind::OTHER, "{label} cut {cut}");
        }
        let g = prog.global();
        assert_eq!(g["client_hellos"], n, "{label}: {g:?}");
        assert_eq!(g["sni"], n, "{label}: {g:?}");
        assert_eq!(g["incomplete"], 0, "{label}: {g:?}");
        assert_outcomes_add_up(&g);
        assert_eq!(prog.pending_len(), 0, "{label}: nothing left pending");
        let (h, _) = prog.host(name).unwrap();
        assert_eq!(h.client_hellos, n, "{label}");
        // Both segments count toward the host, whichever carried the name.
        assert_eq!(h.packets, 2 * n, "{label}");
        assert_eq!(prog.other_len(), 1, "{label}: no other name");
    }
}

#[test]
fn split_into_three_segments() {
    for (label, hello, name) in real_hellos() {
        let prog = Prog::load(&[PORT], &[], 1024);
        let len = hello.len();
        let mut cases = 0u64;
        // Every first cut on a stride, every second cut after it on a coprime stride, plus
        // the cuts right around the name.
        let name_at = hello
            .windows(name.len())
            .position(|w| w.eq_ignore_ascii_case(name.as_bytes()))
            .unwrap();
        let mut firsts: Vec<usize> = (1..len - 1).step_by(37).collect();
        firsts.extend(name_at.saturating_sub(3)..(name_at + name.len() + 3).min(len - 1));
        for a in firsts {
            let mut seconds: Vec<usize> = (a + 1..len).step_by(53).collect();
            seconds.extend((a + 1..len).filter(|b| b.abs_diff(name_at) < 3));
            for b in seconds {
                let (_, verdicts) = send_split(&prog, &hello, &[a, b]);
                assert!(verdicts.iter().all(|v| *v == XDP_PASS), "{label} {a} {b}");
                cases += 1;
            }
        }
        let g = prog.global();
        assert_eq!(g["sni"], cases, "{label}: {g:?}");
        assert_eq!(g["incomplete"] + g["malformed"], 0, "{label}: {g:?}");
        assert_eq!(prog.host(name).unwrap().0.client_hellos, cases, "{label}");
        assert_eq!(prog.pending_len(), 0, "{label}");
    }
}

#[test]
fn split_across_tls_records_and_segments() {
    // The ClientHello in three TLS records of 700 bytes, cut into segments that do not line
    // up with the records.
    let prog = Prog::load(&[PORT], &[], 1024);
    let hello = browser_size_hello("records.example.org");
    let mut records = Vec::new();
    for piece in hello[5..].chunks(700) {
        records.extend_from_slice(&[22, 3, 1]);
        records.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        records.extend_from_slice(piece);
    }
    for cut in (1..records.len()).step_by(7) {
        send_split(&prog, &records, &[cut]);
    }
    let cases = (1..records.len()).step_by(7).count() as u64;
    assert_eq!(
        prog.host("records.example.org").unwrap().0.client_hellos,
        cases
    );
    assert_eq!(prog.global()["incomplete"], 0);
}

#[test]
fn retransmitted_segments_are_not_counted_twice() {
    let prog = Prog::load(&[PORT], &[], 1024);
    let hello = browser_size_hello("retx.example.org");
    let cut = 1400;
    let port = frame::next_port();
    let first = frame::v4_segment(&seg(port, ISN), &hello[..cut]);
    // The first segment twice, then a retransmission that overlaps it and carries the rest.
    assert_eq!(prog.run(&first), XDP_PASS);
    assert_eq!(prog.run(&first), XDP_PASS);
    let g = prog.global();
    assert_eq!(
        (g["split"], g["retransmits"], g["client_hellos"]),
        (1, 1, 0)
    );
    let overlap = frame::v4_segment(&seg(port, ISN.wrapping_add(1000)), &hello[1000..]);
    assert_eq!(prog.run(&overlap), XDP_PASS);
    // The whole ClientHello again (the client did not see an ACK): a packet of the flow.
    let all = frame::v4_segment(&seg(port, ISN), &hello);
    assert_eq!(prog.run(&all), XDP_PASS);
    let g = prog.global();
    assert_eq!(g["client_hellos"], 1, "{g:?}");
    assert_eq!(g["sni"], 1, "{g:?}");
    assert_eq!(g["flow_packets"], 1, "{g:?}");
    let (h, _) = prog.host("retx.example.org").unwrap();
    assert_eq!(h.client_hellos, 1);
    assert_eq!(
        h.packets, 4,
        "every packet of the flow counts toward the host"
    );
}

#[test]
fn reordered_segments_are_incomplete_never_misattributed() {
    let prog = Prog::load(&[PORT], &[], 1024);
    let hello = browser_size_hello("reorder.example.org");
    let (a, b) = (600, 1200);
    let port = frame::next_port();
    let s1 = frame::v4_segment(&seg(port, ISN), &hello[..a]);
    let s2 = frame::v4_segment(&seg(port, ISN.wrapping_add(a as u32)), &hello[a..b]);
    let s3 = frame::v4_segment(&seg(port, ISN.wrapping_add(b as u32)), &hello[b..]);
    // 1, 3, 2: the third comes after a hole.
    for f in [&s1, &s3, &s2] {
        assert_eq!(prog.run(f), XDP_PASS);
    }
    let g = prog.global();
    assert_eq!(g["out_of_order"], 1, "{g:?}");
    assert_eq!(g["client_hellos"], 1, "{g:?}");
    assert_eq!(g["incomplete"], 1, "{g:?}");
    assert_eq!(g["sni"], 0, "{g:?}");
    assert!(prog.host("reorder.example.org").is_none());
    assert_eq!(prog.other_len(), 0, "no host guessed");
    let flow = prog.flow(&v4_key(port, PORT)).unwrap();
    assert_eq!(flow.kind, kind::UNKNOWN);
    assert_eq!(prog.pending_len(), 0);

    // 2 before 1: the second alone does not start a ClientHello and is not parsed; the
    // first then waits for bytes that already went by, and the client's next segment (past
    // the hole) ends it as incomplete.
    let port = frame::next_port();
    let s1 = frame::v4_segment(&seg(port, ISN), &hello[..a]);
    let s2 = frame::v4_segment(&seg(port, ISN.wrapping_add(a as u32)), &hello[a..]);
    let next = frame::v4_segment(&seg(port, ISN.wrapping_add(hello.len() as u32)), b"x");
    for f in [&s2, &s1, &next] {
        assert_eq!(prog.run(f), XDP_PASS);
    }
    let g = prog.global();
    assert_eq!((g["incomplete"], g["sni"]), (2, 0), "{g:?}");
    assert_outcomes_add_up(&g);
}

#[test]
fn a_new_connection_on_the_same_ports_starts_over() {
    let prog = Prog::load(&[PORT], &[], 1024);
    let hello = browser_size_hello("again.example.org");
    let port = frame::next_port();
    let syn = frame::v4_segment(
        &Seg {
            flags: SYN,
            seq: ISN.wrapping_sub(1),
            ..seg(port, 0)
        },
        &[],
    );
    // A first connection that stops after its first segment, then the same 5-tuple again.
    assert_eq!(prog.run(&syn), XDP_PASS);
    assert_eq!(
        prog.run(&frame::v4_segment(&seg(port, ISN), &hello[..1000])),
        XDP_PASS
    );
    assert_eq!(prog.run(&syn), XDP_PASS);
    let g = prog.global();
    assert_eq!((g["client_hellos"], g["incomplete"]), (1, 1), "{g:?}");
    send_split_on(&prog, port, &hello, 1000);
    // And once more after a complete one: the flow is forgotten at the SYN, so the new
    // ClientHello is read, not counted as a packet of the old flow.
    assert_eq!(prog.run(&syn), XDP_PASS);
    send_split_on(&prog, port, &hello, 700);
    let g = prog.global();
    assert_eq!((g["client_hellos"], g["sni"]), (3, 2), "{g:?}");
    assert_eq!(prog.host("again.example.org").unwrap().0.client_hellos, 2);
}

fn send_split_on(prog: &Prog, port: u16, hello: &[u8], cut: usize) {
    for (start, part) in [(0, &hello[..cut]), (cut, &hello[cut..])] {
        let f = frame::v4_segment(&seg(port, ISN.wrapping_add(start as u32)), part);
        assert_eq!(prog.run(&f), XDP_PASS);
    }
}

#[test]
fn later_packets_count_toward_the_flows_host() {
    let prog = Prog::load(&[PORT], &["flow.example.org"], 1024);
    let hello = named("flow.example.org");
    let port = frame::next_port();
    let first = frame::v4_segment(&seg(port, ISN), &hello);
    assert_eq!(prog.run(&first), XDP_PASS);
    let mut bytes = first.len() as u64;
    let mut seq = ISN.wrapping_add(hello.len() as u32);
    for i in 0..5 {
        // Application data, then an empty ACK, then a FIN.
        let payload = vec![23u8; 100 * i];
        let flags = if i == 4 { FIN_ACK } else { PSH_ACK };
        let f = frame::v4_segment(
            &Seg {
                flags,
                ..seg(port, seq)
            },
            &payload,
        );
        seq = seq.wrapping_add(payload.len() as u32);
        bytes += f.len() as u64;
        assert_eq!(prog.run(&f), XDP_PASS);
    }
    let (h, configured) = prog.host("flow.example.org").unwrap();
    assert!(configured);
    assert_eq!((h.client_hellos, h.packets, h.bytes), (1, 6, bytes));
    let g = prog.global();
    assert_eq!((g["client_hellos"], g["flow_packets"]), (1, 5), "{g:?}");
    let flow = prog.flow(&v4_key(port, PORT)).unwrap();
    assert_eq!(
        (flow.kind, flow.slot, flow.verdict),
        (kind::CONFIGURED, 1, verdict::PASS)
    );
    // Another flow's packets do not count toward it.
    let other = frame::v4_segment(&seg(frame::next_port(), ISN), &[23; 50]);
    assert_eq!(prog.run(&other), XDP_PASS);
    assert_eq!(prog.host("flow.example.org").unwrap().0.packets, 6);
}

const ACTIONS: &str = r#"
[xdp]
interfaces = ["lo"]
ports = [443]
[[host]]
names = ["drop.example.org"]
action = "drop"
[[host]]
names = ["rate.example.org", "*.rate.example.org"]
hello_rate = 1
hello_burst = 3
[[host]]
names = ["open.example.org"]
"#;

#[test]
fn drop_action_drops_the_hello_and_the_rest_of_its_flow() {
    let prog = Prog::with_config(ACTIONS);
    let hello = browser_size_hello("Drop.Example.ORG");
    // Split: the first segment cannot be judged (no name yet) and passes; the one with the
    // name is dropped, and so is every later packet of the flow.
    let (port, verdicts) = send_split(&prog, &hello, &[300]);
    assert_eq!(verdicts, [XDP_PASS, XDP_DROP]);
    let retry = frame::v4_segment(&seg(port, ISN.wrapping_add(300)), &hello[300..]);
    assert_eq!(prog.run(&retry), XDP_DROP);
    let (_, verdicts) = send_split(&prog, &named("drop.example.org"), &[]);
    assert_eq!(verdicts, [XDP_DROP]);
    let (h, _) = prog.host("drop.example.org").unwrap();
    assert_eq!((h.client_hellos, h.dropped), (2, 3));
    let g = prog.global();
    assert_eq!(g["dropped"], 3, "{g:?}");
    // Other hosts pass.
    let (_, verdicts) = send_split(&prog, &named("open.example.org"), &[]);
    assert_eq!(verdicts, [XDP_PASS]);
    let (_, verdicts) = send_split(&prog, &named("elsewhere.example.org"), &[]);
    assert_eq!(verdicts, [XDP_PASS]);
}

#[test]
fn hello_rate_passes_the_burst_then_drops_per_host() {
    let prog = Prog::with_config(ACTIONS);
    // Ten ClientHellos within microseconds: the burst of 3 passes, 7 are over the rate of 1/s.
    // A wildcard name shares its host's bucket.
    let mut passed = 0;
    for i in 0..10 {
        let name = if i % 2 == 0 {
            "rate.example.org".to_owned()
        } else {
            format!("n{i}.rate.example.org")
        };
        let (port, verdicts) = send_split(&prog, &named(&name), &[]);
        if verdicts == [XDP_PASS] {
            passed += 1;
        } else {
            assert_eq!(verdicts, [XDP_DROP]);
            // The rest of a limited flow is dropped too.
            let more = frame::v4_segment(&seg(port, ISN.wrapping_add(2000)), &[23; 10]);
            assert_eq!(prog.run(&more), XDP_DROP);
        }
    }
    assert_eq!(passed, 3);
    let (h, configured) = prog.host("rate.example.org").unwrap();
    assert!(configured);
    assert_eq!((h.client_hellos, h.rate_limited), (10, 14));
    assert_eq!(
        prog.other_len(),
        0,
        "the wildcard names are the configured host"
    );
    // Another host is not limited by this one's bucket.
    for _ in 0..10 {
        assert_eq!(
            send_split(&prog, &named("open.example.org"), &[]).1,
            [XDP_PASS]
        );
    }
    let g = prog.global();
    assert_eq!(g["rate_limited"], 14, "{g:?}");
    assert_eq!(g["dropped"], 0, "{g:?}");
    // One interval later, one more passes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        send_split(&prog, &named("rate.example.org"), &[]).1,
        [XDP_PASS]
    );
}

#[test]
fn default_action_covers_other_names_and_no_name() {
    let prog = Prog::with_config(
        r#"
[xdp]
interfaces = ["lo"]
ports = [443]
[[host]]
names = ["*.allowed.example"]
[default]
action = "drop"
"#,
    );
    assert_eq!(
        send_split(&prog, &named("a.allowed.example"), &[]).1,
        [XDP_PASS]
    );
    // The wildcard covers one label, not the name itself nor two labels.
    for name in ["allowed.example", "a.b.allowed.example", "unknown.example"] {
        assert_eq!(send_split(&prog, &named(name), &[]).1, [XDP_DROP], "{name}");
    }
    assert_eq!(
        send_split(&prog, &fixture("openssl-nosni.bin"), &[]).1,
        [XDP_DROP]
    );
    let g = prog.global();
    assert_eq!(g["dropped"], 4, "{g:?}");
    assert_eq!(prog.host("unknown.example").unwrap().0.dropped, 1);
    // Not a ClientHello at all: passed (the classifier drops only what it has judged).
    let plain = frame::v4_segment(&seg(frame::next_port(), ISN), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(prog.run(&plain), XDP_PASS);
}

#[test]
fn the_debug_build_of_the_path_loads_and_counts_the_same() {
    // `run --debug` patches SNI_DEBUG: the logging path must pass the verifier too.
    let prog = Prog::with_options(
        ACTIONS,
        sni_user::kernel::loader::StartOptions {
            debug: true,
            ..Default::default()
        },
    );
    let (_, verdicts) = send_split(&prog, &browser_size_hello("open.example.org"), &[1460]);
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS]);
    let (_, verdicts) = send_split(&prog, &named("drop.example.org"), &[]);
    assert_eq!(verdicts, [XDP_DROP]);
    assert_eq!(prog.host("open.example.org").unwrap().0.client_hellos, 1);
}

#[test]
fn the_program_passes_the_verifier_with_room_to_spare() {
    // The verifier gives up past a million instructions processed. A change that nears it
    // fails here first, with the figure, rather than as a program that no longer loads.
    const BUDGET: u32 = 1_000_000;
    for debug in [false, true] {
        let prog = Prog::with_options(
            ACTIONS,
            sni_user::kernel::loader::StartOptions {
                debug,
                ..Default::default()
            },
        );
        let n = prog.verified_insns();
        eprintln!("verified instructions (debug {debug}): {n}");
        assert!(
            n <= BUDGET / 10 * 9,
            "the verifier processed {n} instructions (debug {debug}): within 10% of its budget"
        );
    }
}
