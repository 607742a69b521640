//! JA4 fingerprints in the XDP program (`BPF_PROG_TEST_RUN`): the kernel's key for every real
//! ClientHello of the tests equals the one the shared parser computes over the whole
//! ClientHello in userspace, in one segment and split into two (at every byte) and three;
//! the lists it sends for a new key give its JA4 string, the one the specification gives
//! (`sni_tests::ja4::reference`, independent of the parser); counters per fingerprint and per
//! (host, fingerprint); and with fingerprinting off, the flow has none.

use sni_common::{
    flow::{kind, Pending},
    ja4::{Ja4Key, Ja4State},
    Progress,
};
use sni_tests::{
    fixture,
    frame::{self, Seg, PSH_ACK},
    hellos::{browser_size_hello, rustls_hello},
    ja4::reference,
    prog::{v4_key, Prog, XDP_PASS},
};

const PORT: u16 = 443;
const ISN: u32 = 0xffff_fe00; // close to the wrap, so that the splits cross it

/// The real ClientHellos of the tests: captures of openssl, curl and Python, rustls's
/// post-quantum one, and a browser-size one whose name is past the first segment.
fn hellos() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("openssl", fixture("openssl-sni.bin")),
        ("openssl without SNI", fixture("openssl-nosni.bin")),
        ("openssl TLS 1.2", fixture("openssl-tls12.bin")),
        ("curl", fixture("curl.bin")),
        ("python", fixture("python-ssl.bin")),
        ("openssl punycode", fixture("openssl-punycode.bin")),
        ("rustls post-quantum", rustls_hello("pq.example.org")),
        ("browser-size", browser_size_hello("browser.example.org")),
    ]
}

/// The JA4 state the shared parser reads from the whole ClientHello in userspace.
fn userspace(hello: &[u8]) -> Ja4State {
    let mut p = Pending::JA4.parser;
    assert_eq!(p.feed(hello), Progress::Done);
    *p.ja4().expect("a ClientHello read to its end has a JA4")
}

/// Sends `hello` on a new flow cut at `cuts`; returns the flow's fingerprint hash.
fn send(prog: &Prog, hello: &[u8], cuts: &[usize]) -> u64 {
    let port = frame::next_port();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(hello.len());
    for w in bounds.windows(2) {
        let seg = Seg {
            src_port: port,
            dst_port: PORT,
            seq: ISN.wrapping_add(w[0] as u32),
            flags: PSH_ACK,
        };
        let verdict = prog.run(&frame::v4_segment(&seg, &hello[w[0]..w[1]]));
        assert_eq!(verdict, XDP_PASS, "cuts {cuts:?}");
    }
    prog.flow(&v4_key(port, PORT))
        .unwrap_or_else(|| panic!("cuts {cuts:?}: no flow ({:?})", prog.global()))
        .ja4
}

#[test]
fn the_kernels_fingerprint_is_the_parsers_and_its_lists_give_the_ja4() {
    let mut prog = Prog::load(&[PORT], &["www.example.com"], 1024);
    let mut expected = Vec::new();
    for (label, hello) in hellos() {
        let state = userspace(&hello);
        let key = state.key();
        assert_eq!(send(&prog, &hello, &[]), key.hash64(), "{label}");
        expected.push((label, key, state));
    }
    // ClientHellos of one client with different names share a key (openssl's two).
    let same_key = |key: &Ja4Key| expected.iter().filter(|e| e.1 == *key).count() as u64;
    let distinct = {
        let mut keys: Vec<_> = expected.iter().map(|e| e.1).collect();
        keys.sort();
        keys.dedup();
        keys.len() as u64
    };
    // Each new key sent its lists once, and they give the same key and JA4 string.
    let events = prog.ja4_events();
    assert_eq!(events.len() as u64, distinct);
    let other = prog.ja4_other();
    for (label, key, state) in &expected {
        let sent: Vec<_> = events.iter().filter(|e| e.key() == *key).collect();
        assert_eq!(sent.len(), 1, "{label}: one record of its lists");
        let ja4 = sent[0].ja4().expect("lists within their room");
        assert_eq!(Some(ja4), state.ja4(), "{label}");
        // And that string is the specification's, computed independently over the bytes.
        let hello = &hellos()
            .into_iter()
            .find(|h| h.0 == *label)
            .expect("the hello")
            .1;
        let want = reference(hello).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(ja4.as_str(), want.ja4, "{label}: reference {}", want.raw);
        assert_eq!(other[key].client_hellos, same_key(key), "{label}");
    }
    // Sent again: counted, not sent again.
    for (_, hello) in hellos() {
        send(&prog, &hello, &[]);
    }
    assert!(
        prog.ja4_events().is_empty(),
        "known keys are not sent again"
    );
    let other = prog.ja4_other();
    for (label, key, _) in &expected {
        assert_eq!(other[key].client_hellos, 2 * same_key(key), "{label}");
    }
    let g = prog.global();
    assert_eq!(g["ja4"], 2 * expected.len() as u64, "{g:?}");
    assert_eq!(g["ja4_new"], distinct, "{g:?}");
    assert_eq!(g["ja4_lost"], 0, "{g:?}");
    // Per (host, fingerprint): the configured host's pair, and the others by name.
    let pairs = prog.ja4_hosts();
    let openssl = expected[0].1;
    let configured = pairs
        .iter()
        .find(|(k, _)| k.ja4 == openssl && k.kind == kind::CONFIGURED)
        .expect("the configured host's pair");
    assert_eq!(configured.0.slot, 1);
    assert_eq!(configured.1.client_hellos, 2);
    let no_name = expected[1].1;
    assert!(
        pairs
            .iter()
            .any(|(k, v)| k.ja4 == no_name && k.kind == kind::NO_NAME && v.client_hellos == 2),
        "the ClientHello without a name has its pair: {pairs:?}"
    );
}

#[test]
fn split_at_every_byte_into_two_segments_and_into_three_the_fingerprint_is_the_same() {
    for (label, hello) in hellos() {
        if !matches!(label, "curl" | "browser-size") {
            continue;
        }
        let prog = Prog::load(&[PORT], &[], 1024);
        let want = userspace(&hello).key().hash64();
        for cut in 1..hello.len() {
            assert_eq!(send(&prog, &hello, &[cut]), want, "{label} cut at {cut}");
        }
        for first in (1..hello.len()).step_by(61) {
            for second in (first + 1..hello.len()).step_by(97) {
                assert_eq!(
                    send(&prog, &hello, &[first, second]),
                    want,
                    "{label} cut at {first} and {second}"
                );
            }
        }
        // One key, whatever the cuts.
        assert_eq!(prog.ja4_other().len(), 1, "{label}");
    }
}

#[test]
fn keys_differ_where_the_ja4_differs() {
    let hellos = hellos();
    let mut keys: Vec<(&str, Ja4Key)> = Vec::new();
    for (label, hello) in &hellos {
        keys.push((label, userspace(hello).key()));
    }
    // The captures of different clients have different JA4s, and so different keys; the
    // openssl ones with and without a name differ in JA4_a (d or i) only.
    for (i, (a, ka)) in keys.iter().enumerate() {
        for (b, kb) in &keys[i + 1..] {
            let ja = userspace(&hellos.iter().find(|h| h.0 == *a).unwrap().1).ja4();
            let jb = userspace(&hellos.iter().find(|h| h.0 == *b).unwrap().1).ja4();
            assert_eq!(ka == kb, ja == jb, "{a} and {b}: {ja:?} {jb:?}");
        }
    }
}

#[test]
fn with_fingerprinting_off_a_flow_has_no_fingerprint() {
    let prog = Prog::with_config(&format!(
        "[xdp]\ninterfaces = [\"lo\"]\nports = [{PORT}]\nja4 = false\n"
    ));
    for (label, hello) in hellos() {
        assert_eq!(send(&prog, &hello, &[]), 0, "{label}");
    }
    assert!(prog.ja4_other().is_empty());
    assert_eq!(prog.global()["ja4"], 0);
}

/// `hello` (one record, openssl's or curl's capture) with its cipher suites replaced by
/// `suites` (same count), lengths unchanged.
fn with_suites(hello: &[u8], suites: &[u16]) -> Vec<u8> {
    let mut out = hello.to_vec();
    // Record 5, handshake header 4, version 2, random 32, session id.
    let sid = 5 + 4 + 2 + 32;
    let at = sid + 1 + usize::from(out[sid]);
    let len = usize::from(u16::from_be_bytes([out[at], out[at + 1]]));
    assert_eq!(len, 2 * suites.len(), "as many suites as the capture has");
    for (i, s) in suites.iter().enumerate() {
        out[at + 2 + 2 * i..at + 4 + 2 * i].copy_from_slice(&s.to_be_bytes());
    }
    out
}

#[test]
fn a_flood_of_random_fingerprints_keeps_the_maps_bounded_and_loses_nothing_silently() {
    let mut prog = Prog::load(&[PORT], &[], 1024);
    let curl = fixture("curl.bin");
    let n_suites = userspace(&curl).n_ciphers as usize;
    let mut rng = sni_tests::Rng::new(19);
    // More fingerprints than the LRU of others holds (16 Ki by default), and than the ring
    // buffer holds records while nothing reads it.
    let flood = 20_000u64;
    let mut received = 0u64;
    for i in 0..flood {
        let suites: Vec<u16> = (0..n_suites)
            .map(|_| (rng.next_u64() as u16) | 0x0101)
            .collect();
        send(&prog, &with_suites(&curl, &suites), &[]);
        // Read the ring buffer now and then, as the daemon does, but not always in time.
        if i % 5_000 == 4_999 {
            received += prog.ja4_events().len() as u64;
        }
    }
    received += prog.ja4_events().len() as u64;
    let g = prog.global();
    assert_eq!(g["ja4"], flood, "{g:?}");
    assert_eq!(g["ja4_new"], flood, "every fingerprint was new: {g:?}");
    assert_eq!(
        received + g["ja4_lost"],
        flood,
        "each new fingerprint's lists were received or counted lost: {g:?}"
    );
    assert!(g["ja4_lost"] > 0, "the flood outran the ring buffer: {g:?}");
    let other = prog.ja4_other().len() as u64;
    assert!(
        other <= u64::from(sni_common::maps::JA4_OTHER_DEFAULT_ENTRIES),
        "{other} entries"
    );
    assert!(
        prog.ja4_hosts().len() as u64 <= u64::from(sni_common::maps::JA4_HOSTS_DEFAULT_ENTRIES)
    );
}

#[test]
fn a_fingerprints_action_drops_new_and_reloaded_flows_and_the_stricter_wins() {
    use aya::maps::{Array, HashMap as BpfHashMap};
    use sni_common::{
        flow::Policy,
        maps::{MAP_JA4_LEARNED, MAP_JA4_POLICY, MAP_JA4_SLOTS},
    };
    use sni_tests::prog::XDP_DROP;
    use sni_user::kernel::loader::{rewrite_flows, ActionChanges};

    let curl = fixture("curl.bin");
    let state = userspace(&curl);
    let ja4 = state.ja4().expect("curl's JA4");
    let mut prog = Prog::with_config(&format!(
        "[xdp]\ninterfaces = [\"lo\"]\nports = [{PORT}]\n\n[[fingerprint]]\nja4 = \"{ja4}\"\n"
    ));
    // What the daemon does once it has learnt that curl's key is configured fingerprint 1.
    let learn = |prog: &mut Prog, drop: bool| {
        let ebpf = prog.ebpf_mut();
        let mut slots: BpfHashMap<_, Ja4Key, u32> =
            BpfHashMap::try_from(ebpf.map_mut(MAP_JA4_SLOTS).unwrap()).unwrap();
        slots.insert(state.key(), 1, 0).unwrap();
        let mut learned: Array<_, u32> =
            Array::try_from(ebpf.map_mut(MAP_JA4_LEARNED).unwrap()).unwrap();
        learned.set(0, 1, 0).unwrap();
        let mut policy: Array<_, Policy> =
            Array::try_from(ebpf.map_mut(MAP_JA4_POLICY).unwrap()).unwrap();
        policy.set(1, Policy::new(drop, None, None), 0).unwrap();
    };
    learn(&mut prog, false);
    // A flow of curl's fingerprint, passed; its next packet too.
    let port = frame::next_port();
    let at = |seq: u32| Seg {
        src_port: port,
        dst_port: PORT,
        seq: ISN.wrapping_add(seq),
        flags: PSH_ACK,
    };
    assert_eq!(prog.run(&frame::v4_segment(&at(0), &curl)), XDP_PASS);
    let data = frame::v4_segment(&at(curl.len() as u32), b"application data");
    assert_eq!(prog.run(&data), XDP_PASS);
    let flow = prog.flow(&v4_key(port, PORT)).unwrap();
    assert_eq!(flow.ja4_slot, 1, "{flow:?}");

    // The fingerprint turns to drop: a new ClientHello of it is dropped in XDP…
    learn(&mut prog, true);
    let other = frame::next_port();
    let hello = frame::v4_segment(
        &Seg {
            src_port: other,
            ..at(0)
        },
        &curl,
    );
    assert_eq!(prog.run(&hello), XDP_DROP);
    // …and a reload rewrites the flows already classified with it.
    let drop_it = ActionChanges {
        ja4: [1].into(),
        ja4_drops: [1].into(),
        ..ActionChanges::default()
    };
    assert_eq!(rewrite_flows(prog.ebpf_mut(), &drop_it, &[]).unwrap(), 1);
    assert_eq!(prog.run(&data), XDP_DROP);
    // The host's action changing (to pass) does not let it through: the stricter wins.
    let host_passes = ActionChanges {
        hosts: [0].into(),
        ja4_drops: [1].into(),
        ..ActionChanges::default()
    };
    rewrite_flows(prog.ebpf_mut(), &host_passes, &[]).unwrap();
    assert_eq!(prog.run(&data), XDP_DROP);
    // The fingerprint back to pass (or removed): through again.
    let pass_it = ActionChanges {
        ja4: [1].into(),
        ..ActionChanges::default()
    };
    rewrite_flows(prog.ebpf_mut(), &pass_it, &[]).unwrap();
    assert_eq!(prog.run(&data), XDP_PASS);
    // Removed: its flows forget the slot, which a later fingerprint may get.
    let removed = ActionChanges {
        ja4: [1].into(),
        ja4_removed: [1].into(),
        ..ActionChanges::default()
    };
    rewrite_flows(prog.ebpf_mut(), &removed, &[]).unwrap();
    assert_eq!(prog.flow(&v4_key(port, PORT)).unwrap().ja4_slot, 0);
    assert_eq!(prog.run(&data), XDP_PASS);
}
