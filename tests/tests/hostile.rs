//! The loaded XDP program under hostile input, through `BPF_PROG_TEST_RUN`: hundreds of
//! thousands of random and mutated frames (truncated at every offset, length fields that lie,
//! thousands of extensions, deep VLAN stacks, IPv6 header chains, TCP options), and floods of
//! random names and 5-tuples. The program must never abort, never drop outside a configured
//! action, count every frame, and keep its maps bounded and configured hosts' counters exact.
//!
//! Every input comes from a fixed-seed generator: a failure names the frame and replays.

use sni_common::flow_table;
use sni_tests::{
    fixture,
    frame::{self, Ext, Seg, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, V4},
    hellos::{
        browser_size_hello, extensions_length_at, named, resize_hello, rustls_hello, with_extension,
    },
    prog::{assert_outcomes_add_up, Prog, XDP_DROP, XDP_PASS},
    Rng,
};

const PORT: u16 = 443;
/// Capacities small enough that the floods below overrun them many times over.
const FLOWS: u32 = 512;
const PENDING: u32 = 64;
const OTHERS: u32 = 128;

/// Mutated and random frames come from this source address; the configured hosts' own flows
/// below come from others, so no mutation can land in one of their flows by chance.
const NOISE_SRC: [u8; 4] = [198, 18, 0, 1];
const KEEP_SRC: [u8; 4] = [198, 18, 7, 7];
const DROP_SRC: [u8; 4] = [198, 18, 9, 9];

/// The program, its expectations, and the count of frames it ran.
struct Harness {
    prog: Prog,
    frames: u64,
    drops_expected: u64,
}

impl Harness {
    fn new() -> Self {
        let text = format!(
            "[xdp]\ninterfaces = [\"lo\"]\nports = [{PORT}]\nflows_capacity = {FLOWS}\n\
             pending_capacity = {PENDING}\nother_hosts_capacity = {OTHERS}\n\
             [[host]]\nnames = [\"keep.example\"]\n\
             [[host]]\nnames = [\"drop.example\"]\naction = \"drop\"\n"
        );
        Self {
            prog: Prog::with_config(&text),
            frames: 0,
            drops_expected: 0,
        }
    }

    /// A frame that must pass: anything but the drop host's own flows.
    fn pass(&mut self, what: &str, f: &[u8]) {
        self.frames += 1;
        let verdict = self.prog.run(f);
        assert_eq!(
            verdict,
            XDP_PASS,
            "{what}: verdict {verdict} for this {}-byte frame: {f:02x?}",
            f.len()
        );
    }

    /// A frame of the drop host's flows.
    fn drop(&mut self, what: &str, f: &[u8]) {
        self.frames += 1;
        self.drops_expected += 1;
        assert_eq!(self.prog.run(f), XDP_DROP, "{what}");
    }
}

/// Ethernet/IPv4/TCP from `src`, as `seg` says.
fn v4_from(src: [u8; 4], seg: &Seg, payload: &[u8]) -> Vec<u8> {
    let mut f = frame::v4_segment(seg, payload);
    frame::set_v4_src(&mut f, src);
    f
}

fn hello_seg(port: u16, seq: u32) -> Seg {
    Seg {
        src_port: port,
        dst_port: PORT,
        seq,
        flags: frame::PSH_ACK,
    }
}

/// The base frames mutations start from: each a whole ClientHello in one frame, over the
/// encapsulations the program reads.
fn base_frames() -> Vec<(&'static str, Vec<u8>)> {
    // (Each frame's TCP header is found by `tcp_at`, so mutants can get flows of their own.)
    let curl = fixture("curl.bin");
    let pq = rustls_hello("pq.example.org");
    let tcp_opts = frame::tcp(PORT, frame::TCP_OPTIONS, &curl);
    vec![
        ("v4 curl", frame::v4_tcp(PORT, &curl)),
        ("v4 post-quantum", frame::v4_tcp(PORT, &pq)),
        (
            "v4 options + tcp options",
            frame::ethernet(
                &[],
                ETH_P_IP,
                &frame::ipv4(
                    IPPROTO_TCP,
                    &V4 {
                        options: vec![1, 1, 7, 7, 4, 0, 0, 0, 0],
                        frag: 0,
                    },
                    &tcp_opts,
                ),
            ),
        ),
        (
            "qinq v6 ext chain",
            frame::ethernet(
                &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
                ETH_P_IPV6,
                &frame::ipv6(
                    &[
                        Ext {
                            kind: 0,
                            body_len: 6,
                        },
                        Ext {
                            kind: 43,
                            body_len: 22,
                        },
                        Ext {
                            kind: 60,
                            body_len: 14,
                        },
                    ],
                    IPPROTO_TCP,
                    &frame::tcp(PORT, frame::TCP_OPTIONS, &named("mutant.example")),
                ),
            ),
        ),
    ]
}

/// Where the TCP header of a base frame starts (it is the first `PORT` destination after the
/// fixed headers).
fn tcp_at(f: &[u8]) -> usize {
    (14..f.len() - 4)
        .find(|&i| f[i + 2..i + 4] == PORT.to_be_bytes() && f[i + 12] >> 4 >= 5)
        .expect("a TCP header to PORT")
}

/// A counter for fresh source ports: each mutant is its own flow, so its bytes reach the
/// parser rather than count toward an earlier mutant's flow.
fn fresh_port(f: &mut [u8], at: usize, n: &mut u16) {
    *n = n.wrapping_add(1);
    f[at..at + 2].copy_from_slice(&n.to_be_bytes());
}

/// Every frame of `bases` cut at every length, then every byte set to values that make length
/// fields lie (0, 1, 0x7f, 0x80, 0xff, and one off either way), then every 16-bit field set to
/// 0 and 0xffff.
fn truncations_and_lying_lengths(h: &mut Harness, bases: &[(&'static str, Vec<u8>)]) {
    let mut n = 0u16;
    for (name, base) in bases {
        let at = tcp_at(base);
        // The kernel's test run refuses frames shorter than an Ethernet header (a NIC never
        // hands one to XDP).
        for len in 14..base.len() {
            let mut f = base[..len].to_vec();
            if len >= at + 2 {
                fresh_port(&mut f, at, &mut n);
            }
            h.pass(&format!("{name} cut to {len} bytes"), &f);
        }
        let mut f = base.clone();
        for i in 0..base.len() {
            let orig = base[i];
            for v in [
                0,
                1,
                0x7f,
                0x80,
                0xff,
                orig.wrapping_add(1),
                orig.wrapping_sub(1),
            ] {
                fresh_port(&mut f, at, &mut n);
                f[i] = v;
                h.pass(&format!("{name} byte {i} = {v:#x}"), &f);
            }
            f[i] = orig;
        }
        for i in 0..base.len() - 1 {
            for v in [[0, 0], [0xff, 0xff]] {
                let orig = [f[i], f[i + 1]];
                fresh_port(&mut f, at, &mut n);
                f[i..i + 2].copy_from_slice(&v);
                h.pass(&format!("{name} u16 at {i} = {v:02x?}"), &f);
                f[i..i + 2].copy_from_slice(&orig);
            }
        }
    }
}

/// Random byte flips, inserts, deletes and splices of the bases.
fn havoc(h: &mut Harness, rng: &mut Rng, bases: &[(&'static str, Vec<u8>)], rounds: usize) {
    for round in 0..rounds {
        let (name, base) = &bases[rng.below(bases.len())];
        let mut f = base.clone();
        let at = tcp_at(base);
        let port = rng.next_u64() as u16;
        f[at..at + 2].copy_from_slice(&port.to_be_bytes());
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(f.len() + 1);
            match rng.below(6) {
                0 | 1 if at < f.len() => f[at] = rng.byte(),
                2 if at < f.len() => f[at] ^= 1 << rng.below(8),
                3 => {
                    let n = 1 + rng.below(16);
                    let bytes = rng.bytes(n);
                    f.splice(at..at, bytes);
                }
                4 if at < f.len() => {
                    let end = (at + 1 + rng.below(32)).min(f.len());
                    f.drain(at..end);
                }
                _ => {
                    // A length-sized run of 0xff: the classic "length that lies" edit.
                    let end = (at + 2).min(f.len());
                    for b in &mut f[at..end] {
                        *b = 0xff;
                    }
                }
            }
        }
        f.truncate(3000);
        if f.len() < 14 {
            f.resize(14, 0);
        }
        h.pass(&format!("{name} havoc round {round}"), &f);
    }
}

/// Frames of random bytes, and random bytes behind valid headers of each layer.
fn random_frames(h: &mut Harness, rng: &mut Rng, count: usize) {
    for i in 0..count {
        let len = 14 + rng.below(1600);
        let body = rng.bytes(len);
        let f = match i % 5 {
            0 => body,
            1 => frame::ethernet(&[], ETH_P_IP, &body),
            2 => frame::ethernet(&[], ETH_P_IPV6, &body),
            3 => frame::ethernet(
                &[],
                ETH_P_IP,
                &frame::ipv4(IPPROTO_TCP, &V4::default(), &{
                    let mut t = body;
                    if t.len() >= 4 {
                        t[2..4].copy_from_slice(&PORT.to_be_bytes());
                    }
                    t
                }),
            ),
            _ => frame::v4_tcp(PORT, &{
                // A TLS handshake record header and random rest.
                let mut p = vec![0x16, 0x03, 0x01];
                p.extend_from_slice(&body);
                p
            }),
        };
        h.pass(&format!("random frame {i}"), &f);
    }
}

/// Up to 12 tags of either kind before IPv4 or IPv6.
fn nested_vlans(h: &mut Harness, rng: &mut Rng) {
    let hello = fixture("openssl-sni.bin");
    for depth in 0..=12 {
        for _ in 0..40 {
            let tags: Vec<(u16, u16)> = (0..depth)
                .map(|_| {
                    let tpid = if rng.below(2) == 0 {
                        ETH_P_8021Q
                    } else {
                        ETH_P_8021AD
                    };
                    (tpid, rng.next_u64() as u16)
                })
                .collect();
            let (ty, l3) = if rng.below(2) == 0 {
                (
                    ETH_P_IP,
                    frame::ipv4(IPPROTO_TCP, &V4::default(), &frame::tcp(PORT, &[], &hello)),
                )
            } else {
                (
                    ETH_P_IPV6,
                    frame::ipv6(&[], IPPROTO_TCP, &frame::tcp(PORT, &[], &hello)),
                )
            };
            h.pass(
                &format!("{depth} VLAN tags"),
                &frame::ethernet(&tags, ty, &l3),
            );
        }
    }
}

/// IPv6 chains of up to 16 extension headers of every kind (and unknown ones), in random
/// order and sizes, some with their length byte replaced.
fn ipv6_chains(h: &mut Harness, rng: &mut Rng) {
    let hello = fixture("curl.bin");
    let kinds = [0u8, 43, 44, 51, 60, 135, 139, 140, 253, 59];
    for i in 0..4000 {
        let n = rng.below(17);
        let exts: Vec<Ext> = (0..n)
            .map(|_| Ext {
                kind: kinds[rng.below(kinds.len())],
                body_len: rng.below(64),
            })
            .collect();
        let mut l3 = frame::ipv6(&exts, IPPROTO_TCP, &frame::tcp(PORT, &[], &hello));
        if n > 0 && i % 2 == 1 {
            // The length byte of the first extension header, after the 40-byte fixed header.
            l3[41] = rng.byte();
        }
        h.pass(
            &format!("ipv6 chain {i} of {n}"),
            &frame::ethernet(&[], ETH_P_IPV6, &l3),
        );
    }
}

/// TCP options of every length up to 40 bytes, random kinds and lengths, and data offsets that
/// lie in both directions.
fn tcp_options(h: &mut Harness, rng: &mut Rng) {
    let hello = fixture("curl.bin");
    for i in 0..4000 {
        let n = rng.below(41);
        let opts = rng.bytes(n);
        let mut t = frame::tcp(PORT, &opts, &hello);
        if i % 3 == 0 {
            t[12] = (rng.byte() & 0xf0) | (t[12] & 0x0f);
        }
        let f = frame::ethernet(&[], ETH_P_IP, &frame::ipv4(IPPROTO_TCP, &V4::default(), &t));
        h.pass(&format!("tcp options {i}: {opts:02x?}"), &f);
    }
}

/// A ClientHello carrying `count` empty extensions before its server_name.
fn many_extensions(name: &str, count: usize) -> Vec<u8> {
    let mut hello = named(name);
    let mut block = Vec::new();
    for i in 0..count {
        // GREASE-like unknown types, all empty.
        block.extend_from_slice(&(0x0a0a_u16 + (i as u16 % 16) * 0x1010).to_be_bytes());
        block.extend_from_slice(&[0, 0]);
    }
    // Insert them right after the extensions length, before every real extension.
    let exts_start = extensions_length_at(&hello) + 2;
    hello.splice(exts_start..exts_start, block.iter().copied());
    // The record may now exceed the TLS limit: that is part of the test; lengths wrap as u16.
    resize_hello(&mut hello, block.len() as isize, &[]);
    hello
}

/// ClientHellos with hundreds to thousands of extensions, whole and across segments, and
/// with counts that lie.
fn huge_extension_counts(h: &mut Harness) {
    for count in [100, 700, 2000, 4000] {
        let hello = many_extensions("many.example", count);
        // Whole, when it fits a frame the kernel accepts for a test run.
        if hello.len() < 3000 {
            h.pass(&format!("{count} extensions"), &frame::v4_tcp(PORT, &hello));
        }
        // Across 1,400-byte segments of one flow.
        let port = frame::next_port();
        for (k, chunk) in hello.chunks(1400).enumerate() {
            let f = v4_from(NOISE_SRC, &hello_seg(port, 1 + (k * 1400) as u32), chunk);
            h.pass(&format!("{count} extensions, segment {k}"), &f);
        }
    }
    // An extension whose length claims 0xffff bytes, after 500 empty ones.
    let mut hello = many_extensions("liar.example", 500);
    let tail = with_extension(&hello, 0x4444, &[]);
    hello = tail;
    let n = hello.len();
    hello[n - 2..].copy_from_slice(&[0xff, 0xff]);
    h.pass("extension length 0xffff", &frame::v4_tcp(PORT, &hello));
}

/// One configured host's ClientHello on a flow of its own.
fn keep_hello(h: &mut Harness, port: u16) {
    let f = v4_from(KEEP_SRC, &hello_seg(port, 1), &named("keep.example"));
    h.pass("keep.example hello", &f);
}

#[test]
fn hostile_frames_never_abort_never_drop_unasked_and_are_all_counted() {
    let mut h = Harness::new();
    let mut rng = Rng::new(0x5eed_cafe_f00d_0001);
    let bases = base_frames();
    let mut keeps = 0u64;
    let mut next_keep_port = 20_000u16;
    let mut keep = |h: &mut Harness| {
        keep_hello(h, next_keep_port);
        next_keep_port += 1;
        keeps += 1;
    };

    truncations_and_lying_lengths(&mut h, &bases);
    keep(&mut h);
    havoc(&mut h, &mut rng, &bases, 200_000);
    keep(&mut h);
    random_frames(&mut h, &mut rng, 60_000);
    keep(&mut h);
    nested_vlans(&mut h, &mut rng);
    ipv6_chains(&mut h, &mut rng);
    tcp_options(&mut h, &mut rng);
    huge_extension_counts(&mut h);
    keep(&mut h);

    // The drop host's flows, from their own source: the hello and a later packet dropped.
    for port in 30_000..30_020u16 {
        let hello = named("drop.example");
        let f = v4_from(DROP_SRC, &hello_seg(port, 1), &hello);
        h.drop("drop.example hello", &f);
        let later = v4_from(DROP_SRC, &hello_seg(port, 1 + hello.len() as u32), b"data");
        h.drop("drop.example later packet", &later);
    }

    let g = h.prog.global();
    eprintln!("{} frames: {g:?}", h.frames);
    assert!(h.frames > 300_000, "{} frames", h.frames);
    assert_eq!(g["packets"], h.frames, "every frame counted once: {g:?}");
    assert_eq!(g["dropped"], h.drops_expected, "{g:?}");
    assert_eq!(g["rate_limited"], 0, "{g:?}");
    assert_eq!(g["errors"], 0, "{g:?}");
    assert!(g["tcp_watched"] <= g["packets"], "{g:?}");
    assert!(
        g["client_hellos"] > 10_000,
        "mutants reached the parser: {g:?}"
    );
    assert!(g["malformed"] > 0 && g["sni"] > 0, "{g:?}");
    assert_outcomes_add_up(&g);
    let (k, configured) = h.prog.host("keep.example").unwrap();
    assert!(configured);
    assert_eq!(k.client_hellos, keeps, "configured counters exact");
    let (d, _) = h.prog.host("drop.example").unwrap();
    assert_eq!(d.dropped, 40, "{d:?}");
    // Every flow in one entry, at a place its hash allows (the count is bounded by the array).
    assert!(h.prog.checked_flows() > 0);
    assert!(h.prog.pending_len() <= PENDING as usize);
    assert!(h.prog.other_len() <= OTHERS as usize);
}

#[test]
fn floods_of_names_and_five_tuples_keep_maps_bounded_and_counters_intact() {
    let mut h = Harness::new();
    let mut rng = Rng::new(0x5eed_cafe_f00d_0002);
    let base = browser_size_hello("flood.example");
    let name_at = base
        .windows(13)
        .position(|w| w == b"flood.example")
        .unwrap();
    let mut keeps = 0u64;
    let mut finished = 0u64;
    for i in 0..60_000u32 {
        // A random name, on a random 5-tuple: the first segment only (a pending hello, never
        // finished), or the whole hello.
        let name: Vec<u8> = (0..13)
            .map(|_| b'a' + (rng.next_u64() % 26) as u8)
            .collect();
        let mut hello = base.clone();
        hello[name_at..name_at + 13].copy_from_slice(&name);
        let src = [10, rng.byte(), rng.byte(), rng.byte().max(1)];
        let port = 1024 + (rng.next_u64() % 60_000) as u16;
        let seq = rng.next_u64() as u32;
        let cut = if i % 2 == 0 { 1400 } else { hello.len() };
        let f = v4_from(src, &hello_seg(port, seq), &hello[..cut]);
        h.pass("flood", &f);
        if cut == hello.len() {
            finished += 1;
        } else if i % 4 == 0 {
            let rest = v4_from(
                src,
                &hello_seg(port, seq.wrapping_add(1400)),
                &hello[1400..],
            );
            h.pass("flood rest", &rest);
            finished += 1;
        }
        if i % 500 == 0 {
            // A configured host's ClientHello, split in two, on a flow of its own.
            let keep = browser_size_hello("keep.example");
            let port = 20_000 + (i / 500) as u16;
            let a = v4_from(KEEP_SRC, &hello_seg(port, 7), &keep[..1400]);
            let b = v4_from(KEEP_SRC, &hello_seg(port, 7 + 1400), &keep[1400..]);
            h.pass("keep first segment", &a);
            h.pass("keep second segment", &b);
            keeps += 1;
            finished += 1;
        }
    }
    let g = h.prog.global();
    eprintln!("{} frames: {g:?}", h.frames);
    assert_eq!(g["packets"], h.frames, "{g:?}");
    assert_eq!(g["errors"], 0, "{g:?}");
    // Every whole hello and every finished split one read to its name, configured or not.
    assert_eq!(g["sni"], finished, "{g:?}");
    assert_eq!(g["client_hellos"], finished, "{g:?}");
    assert!(
        h.prog.other_len() > OTHERS as usize / 2,
        "{}",
        h.prog.other_len()
    );
    assert_outcomes_add_up(&g);
    assert!(
        // Every flow in one entry, at a place its hash allows; the flood filled the table.
        h.prog.checked_flows() >= flow_table::entries(FLOWS) as usize * 9 / 10,
        "{}",
        h.prog.flows_len()
    );
    assert!(
        h.prog.pending_len() <= PENDING as usize,
        "{}",
        h.prog.pending_len()
    );
    assert!(
        h.prog.other_len() <= OTHERS as usize,
        "{}",
        h.prog.other_len()
    );
    let (k, _) = h.prog.host("keep.example").unwrap();
    assert_eq!(
        k.client_hellos, keeps,
        "a configured host's split hello is never lost to the flood"
    );
}
