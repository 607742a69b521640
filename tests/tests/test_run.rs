//! The loaded XDP program on built frames through `BPF_PROG_TEST_RUN`, one packet per flow:
//! every verdict is XDP_PASS (no action configured), and the maps say exactly what it carried.

use sni_tests::{
    fixture,
    frame::{self, Ext, V4},
    hellos::{rename, with_extension},
    prog::{assert_outcomes_add_up, Prog, XDP_PASS},
};

const PORT: u16 = 443;

fn curl_hello() -> Vec<u8> {
    fixture("curl.bin")
}

/// Runs `frames` through a fresh program watching PORT, asserting XDP_PASS for each.
fn run_all(prog: &Prog, frames: &[Vec<u8>]) {
    for f in frames {
        assert_eq!(
            prog.run(f),
            XDP_PASS,
            "verdict for a {}-byte frame",
            f.len()
        );
    }
}

#[test]
fn ipv4_client_hello_is_counted_for_its_host() {
    let prog = Prog::load(&[PORT], &[], 1024);
    let f = frame::v4_tcp(PORT, &curl_hello());
    run_all(&prog, std::slice::from_ref(&f));
    let g = prog.global();
    assert_eq!(g["packets"], 1);
    assert_eq!(g["tcp_watched"], 1);
    assert_eq!(g["client_hellos"], 1);
    assert_eq!(g["sni"], 1);
    assert_outcomes_add_up(&g);
    let (h, configured) = prog.host("curl.example.net").expect("host counted");
    assert!(!configured);
    assert_eq!(h.client_hellos, 1);
    assert_eq!(h.packets, 1);
    assert_eq!(h.bytes, f.len() as u64);
    assert_eq!(h.ech, 0);
}

#[test]
fn configured_host_is_counted_in_its_own_entry() {
    let prog = Prog::load(&[PORT], &["Curl.Example.Net."], 1024);
    run_all(
        &prog,
        &[
            frame::v4_tcp(PORT, &curl_hello()),
            frame::v4_tcp(PORT, &curl_hello()),
        ],
    );
    let (h, configured) = prog.host("curl.example.net").expect("host counted");
    assert!(configured, "counted under the configured entry");
    assert_eq!(h.client_hellos, 2);
    assert_eq!(prog.other_len(), 0);
}

#[test]
fn ipv4_options_tcp_options_vlan_and_qinq() {
    let hello = curl_hello();
    let opts = V4 {
        // Record Route (7) with room for 9 addresses: the longest IPv4 header, 60 bytes.
        options: {
            let mut o = vec![7, 39, 4];
            o.resize(39, 0);
            o.push(1);
            o
        },
        frag: 0x4000, // Don't Fragment: not a fragment
    };
    // Each frame a new flow (frame::tcp picks a new client port).
    let v4 = || {
        let segment = frame::tcp(PORT, frame::TCP_OPTIONS, &hello);
        frame::ipv4(frame::IPPROTO_TCP, &opts, &segment)
    };
    let frames = vec![
        frame::ethernet(&[], frame::ETH_P_IP, &v4()),
        frame::ethernet(&[(frame::ETH_P_8021Q, 100)], frame::ETH_P_IP, &v4()),
        frame::ethernet(
            &[(frame::ETH_P_8021AD, 200), (frame::ETH_P_8021Q, 100)],
            frame::ETH_P_IP,
            &v4(),
        ),
    ];
    let prog = Prog::load(&[PORT], &[], 1024);
    run_all(&prog, &frames);
    let g = prog.global();
    assert_eq!(g["client_hellos"], 3, "{g:?}");
    assert_eq!(g["sni"], 3, "{g:?}");
    assert_eq!(prog.host("curl.example.net").unwrap().0.client_hellos, 3);
}

#[test]
fn ipv6_with_extension_headers() {
    let hello = fixture("openssl-sni.bin");
    let chains: Vec<Vec<Ext>> = vec![
        vec![],
        vec![Ext {
            kind: 0,
            body_len: 6,
        }],
        vec![
            Ext {
                kind: 0,
                body_len: 14,
            },
            Ext {
                kind: 60,
                body_len: 6,
            },
            Ext {
                kind: 43,
                body_len: 22,
            },
            Ext {
                kind: 51,
                body_len: 12,
            },
            Ext {
                kind: 60,
                body_len: 30,
            },
        ],
    ];
    let prog = Prog::load(&[PORT], &[], 1024);
    for (i, chain) in chains.iter().enumerate() {
        let f = frame::ethernet(
            &[(frame::ETH_P_8021Q, 7)],
            frame::ETH_P_IPV6,
            &frame::ipv6(
                chain,
                frame::IPPROTO_TCP,
                &frame::tcp(PORT, frame::TCP_OPTIONS, &hello),
            ),
        );
        assert_eq!(prog.run(&f), XDP_PASS);
        assert_eq!(
            prog.host("www.example.com").map(|h| h.0.client_hellos),
            Some(i as u64 + 1),
            "chain {i}"
        );
    }
    // A chain longer than the walk's bound is passed without parsing.
    let long: Vec<Ext> = (0..8)
        .map(|_| Ext {
            kind: 60,
            body_len: 6,
        })
        .collect();
    let f = frame::ethernet(
        &[],
        frame::ETH_P_IPV6,
        &frame::ipv6(
            &long,
            frame::IPPROTO_TCP,
            &frame::tcp(PORT, frame::TCP_OPTIONS, &hello),
        ),
    );
    assert_eq!(prog.run(&f), XDP_PASS);
    let g = prog.global();
    assert_eq!(g["client_hellos"], 3, "{g:?}");
    assert_eq!(g["tcp_watched"], 3, "{g:?}");
}

#[test]
fn fragments_other_ports_other_protocols_and_plain_tcp() {
    let hello = curl_hello();
    let prog = Prog::load(&[PORT, 8443], &[], 1024);
    let frames = vec![
        // Other port.
        frame::v4_tcp(444, &hello),
        // UDP to the watched port number.
        frame::ethernet(
            &[],
            frame::ETH_P_IP,
            &frame::ipv4(
                frame::IPPROTO_UDP,
                &V4::default(),
                &frame::tcp(PORT, &[], &hello),
            ),
        ),
        // ARP-sized junk.
        frame::ethernet(&[], frame::ETH_P_ARP, &[0; 28]),
        // IPv4 first fragment and IPv6 fragment.
        frame::ethernet(
            &[],
            frame::ETH_P_IP,
            &frame::ipv4(
                frame::IPPROTO_TCP,
                &V4 {
                    options: vec![],
                    frag: 0x2000,
                },
                &frame::tcp(PORT, &[], &hello),
            ),
        ),
        frame::ethernet(
            &[],
            frame::ETH_P_IPV6,
            &frame::ipv6(
                &[Ext {
                    kind: 44,
                    body_len: 0,
                }],
                frame::IPPROTO_TCP,
                &frame::tcp(PORT, &[], &hello),
            ),
        ),
        // Watched port: empty segment, HTTP, TLS application data.
        frame::v4_tcp(PORT, &[]),
        frame::v4_tcp(8443, b"GET / HTTP/1.1\r\nHost: curl.example.net\r\n\r\n"),
        frame::v4_tcp(
            PORT,
            &[
                23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                20,
            ],
        ),
        // Truncated headers.
        frame::v4_tcp(PORT, &hello)[..30].to_vec(),
        frame::v4_tcp(PORT, &hello)[..14].to_vec(),
    ];
    run_all(&prog, &frames);
    let g = prog.global();
    assert_eq!(g["packets"], frames.len() as u64, "{g:?}");
    assert_eq!(g["fragments"], 2, "{g:?}");
    assert_eq!(g["tcp_watched"], 3, "{g:?}");
    assert_eq!(g["client_hellos"], 0, "{g:?}");
    assert_eq!(prog.other_len(), 0);
}

#[test]
fn ethernet_padding_is_not_parsed_as_payload() {
    // A tiny TLS record in a frame padded to the 60-byte Ethernet minimum: the IP length says
    // where the payload ends.
    let prog = Prog::load(&[PORT], &[], 1024);
    let mut f = frame::v4_tcp(PORT, &[22, 3]);
    f.resize(60, 0x01);
    assert_eq!(prog.run(&f), XDP_PASS);
    let g = prog.global();
    assert_eq!(g["client_hellos"], 0, "{g:?}");
}

#[test]
fn outcomes_no_sni_malformed_pending_and_ech() {
    let prog = Prog::load(&[PORT], &[], 1024);
    let hello = fixture("openssl-sni.bin");
    // Record length lies (shorter than the handshake needs: the next "record" is garbage).
    let mut lying = hello.clone();
    lying[4] = lying[4].wrapping_sub(40);
    let mut bad_version = hello.clone();
    bad_version[9] = 2; // legacy_version 0x0203
                        // ECH: rebuild with an encrypted_client_hello extension appended.
    let ech = with_extension(&hello, 0xfe0d, &[0; 100]);
    let frames = vec![
        frame::v4_tcp(PORT, &fixture("openssl-nosni.bin")),
        frame::v4_tcp(PORT, &lying),
        frame::v4_tcp(PORT, &bad_version),
        frame::v4_tcp(PORT, &hello[..100]),
        frame::v4_tcp(PORT, &ech),
    ];
    run_all(&prog, &frames);
    let g = prog.global();
    // The cut one waits for its next segment: not an outcome yet.
    assert_eq!(g["client_hellos"], 4, "{g:?}");
    assert_eq!(g["split"], 1, "{g:?}");
    assert_eq!(prog.pending_len(), 1);
    assert_eq!(g["no_sni"], 1, "{g:?}");
    // The bad version breaks it before its name; the lying record after its name, which
    // counts: its host is known, and judged (a lenient server behind could accept it).
    assert_eq!(g["malformed"], 1, "{g:?}");
    assert_eq!(g["incomplete"], 0, "{g:?}");
    assert_eq!(g["sni"], 2, "{g:?}");
    assert_eq!(g["ech"], 1, "{g:?}");
    assert_eq!(
        g["ja4"], 2,
        "only the ClientHellos read to their end: {g:?}"
    );
    assert_outcomes_add_up(&g);
    let (h, _) = prog.host("www.example.com").unwrap();
    assert_eq!((h.client_hellos, h.ech), (2, 1));
}

#[test]
fn every_prefix_of_real_hellos_as_one_packet() {
    // A ClientHello cut after any byte: always XDP_PASS, never a host that was not named, and
    // every ClientHello ends in exactly one outcome.
    let prog = Prog::load(&[PORT], &[], 1024);
    let mut hellos = 0;
    for name in [
        "openssl-sni.bin",
        "curl.bin",
        "python-ssl.bin",
        "openssl-nosni.bin",
    ] {
        let hello = fixture(name);
        for cut in 1..=hello.len() {
            assert_eq!(prog.run(&frame::v4_tcp(PORT, &hello[..cut])), XDP_PASS);
            hellos += 1;
        }
    }
    let g = prog.global();
    assert_outcomes_add_up(&g);
    assert_eq!(g["malformed"], 0, "{g:?}");
    // Each cut is a new flow: the ClientHello is read to its name, or waits for the next
    // segment (counted when it ends).
    assert_eq!(g["client_hellos"] + g["split"], hellos, "{g:?}");
    assert_eq!(prog.pending_len() as u64, g["split"]);
    for host in ["www.example.com", "curl.example.net", "python.example.com"] {
        assert!(prog.host(host).is_some(), "{host} found in some prefix");
    }
    assert_eq!(prog.other_len(), 3, "only the real names");
}

#[test]
fn large_post_quantum_hello_and_multi_record_hello() {
    let prog = Prog::load(&[PORT], &[], 1024);
    // A ClientHello as large as Chrome's post-quantum one (~1.8 KB) in one frame, the
    // extensions padded; and the same split across three TLS records.
    let hello = with_extension(&curl_hello(), 21, &[0; 1300]);
    assert!(hello.len() > 1800);
    let hs = &hello[5..];
    let mut records = Vec::new();
    for piece in hs.chunks(700) {
        records.extend_from_slice(&[22, 3, 1]);
        records.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        records.extend_from_slice(piece);
    }
    run_all(
        &prog,
        &[frame::v4_tcp(PORT, &hello), frame::v4_tcp(PORT, &records)],
    );
    let g = prog.global();
    assert_eq!(g["sni"], 2, "{g:?}");
    assert_eq!(prog.host("curl.example.net").unwrap().0.client_hellos, 2);
}

#[test]
fn random_name_flood_keeps_configured_counters_and_bounds_the_map() {
    const CAPACITY: u32 = 128;
    const FLOOD: usize = 3000;
    let prog = Prog::load(&[PORT], &["keep.example"], CAPACITY);
    let base = fixture("openssl-sni.bin");
    let name_at = base
        .windows(15)
        .position(|w| w.eq_ignore_ascii_case(b"www.example.com"))
        .unwrap();
    let keep = rename(&base, name_at, b"Keep.Example", 15);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..FLOOD {
        let mut name = [0u8; 15];
        for b in &mut name {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = b'a' + (seed % 26) as u8;
        }
        let flood = frame::v4_tcp(PORT, &rename(&base, name_at, &name, 15));
        assert_eq!(prog.run(&flood), XDP_PASS);
        if i % 100 == 0 {
            assert_eq!(prog.run(&frame::v4_tcp(PORT, &keep)), XDP_PASS);
        }
    }
    let g = prog.global();
    let keeps = FLOOD.div_ceil(100) as u64;
    assert_eq!(g["client_hellos"], FLOOD as u64 + keeps, "{g:?}");
    assert_eq!(g["sni"], FLOOD as u64 + keeps, "{g:?}");
    assert_eq!(g["host_untracked"], 0, "{g:?}");
    assert_outcomes_add_up(&g);
    assert!(
        prog.other_len() <= CAPACITY as usize,
        "{} entries",
        prog.other_len()
    );
    let (h, configured) = prog.host("keep.example").expect("configured host present");
    assert!(configured);
    assert_eq!(
        h.client_hellos, keeps,
        "no configured ClientHello lost to the flood"
    );
}

#[test]
fn sslv2_compatible_client_hellos_are_counted_as_such() {
    let prog = Prog::load(&[PORT], &[], 1024);
    let frame = frame::v4_tcp(PORT, &sni_tests::hellos::sslv2_hello());
    assert_eq!(prog.run(&frame), XDP_PASS);
    let g = prog.global();
    assert_eq!(
        (g["client_hellos"], g["sslv2"], g["malformed"]),
        (1, 1, 0),
        "{g:?}"
    );
    assert_outcomes_add_up(&g);
}
