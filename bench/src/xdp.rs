//! XDP per-packet cost with `BPF_PROG_TEST_RUN`, beside a no-op XDP program built by the same
//! toolchain and run the same way.
//!
//! Two ways of running, and each case is compared with the no-op run the same way:
//! - **loop**: one call with `repeat` = N. The kernel runs the program N times on the same
//!   frame and reports the mean time per run in whole nanoseconds (its clock stops while the
//!   loop yields the CPU; the call's wall-clock time here was 40× the loop's, from those
//!   yields, so it is not used). Right for packets whose cost does not change with repetition:
//!   the program keeps no state for them, or (an already-classified flow) the state is what is
//!   measured.
//! - **fresh**: N calls of one run each, each on a new flow (another client address and port),
//!   timed by the kernel (its per-call figure includes one clock read, which the no-op's
//!   figure includes too). Needed where the first run changes what the next would do: a
//!   ClientHello is parsed once per flow, then its flow is in the flow table.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use sni_tests::{
    frame::{self, Seg, PSH_ACK},
    hellos,
    prog::{Prog, XDP_PASS},
};

use crate::report::{Better, Row};

/// The no-op program, loaded (not attached).
struct Noop {
    ebpf: Ebpf,
}

impl Noop {
    fn load(object: &Path) -> Result<Self> {
        let mut ebpf = Ebpf::load_file(object)
            .with_context(|| format!("loading the no-op program {}", object.display()))?;
        let program: &mut Xdp = ebpf
            .program_mut("sni_noop")
            .context("sni_noop is not in the no-op object")?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the no-op program")?;
        Ok(Self { ebpf })
    }

    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let program: &Xdp = self
            .ebpf
            .program("sni_noop")
            .context("sni_noop")?
            .try_into()?;
        let out = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN on the no-op program")?;
        Ok((out.return_value, out.duration))
    }
}

/// The classifier's config for the runs: port 443 watched, ten configured hosts.
fn config() -> String {
    let mut text =
        String::from("[xdp]\ninterfaces = [\"lo\"]\nports = [443]\nother_hosts_capacity = 65536\n");
    for i in 0..10 {
        text.push_str(&format!("[[host]]\nnames = [\"host{i}.bench.test\"]\n"));
    }
    text
}

/// Sets the frame's client address and port (IPv4 frames of `frame::v4_segment`) to the
/// `i`-th of a million distinct ones.
fn vary(frame: &mut [u8], i: u32) {
    let port = 1024 + (i % 60_000) as u16;
    let high = (i / 60_000) as u16;
    if let Some(ip) = frame.get_mut(28..30) {
        ip.copy_from_slice(&high.to_be_bytes());
    }
    if let Some(p) = frame.get_mut(34..36) {
        p.copy_from_slice(&port.to_be_bytes());
    }
}

/// Loop method: `rounds` calls of `reps` runs each for the classifier and for the no-op,
/// taken in turn (so that both see the same moments of a shared machine); the medians of the
/// kernel's ns per run, classifier then no-op.
fn looped(
    mut classifier: impl FnMut(&[u8], u32) -> Result<(u32, Duration)>,
    mut noop: impl FnMut(&[u8], u32) -> Result<(u32, Duration)>,
    frame: &[u8],
    reps: u32,
    rounds: usize,
) -> Result<(f64, f64)> {
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (run, out) in [
            (
                &mut classifier as &mut dyn FnMut(&[u8], u32) -> Result<(u32, Duration)>,
                &mut ours,
            ),
            (&mut noop, &mut base),
        ] {
            let (verdict, per_run) = run(frame, reps)?;
            if verdict != XDP_PASS {
                bail!("verdict {verdict}, not XDP_PASS");
            }
            out.push(per_run.as_nanos() as f64);
        }
    }
    Ok((median(&mut ours), median(&mut base)))
}

/// Fresh method: `n` calls of one run on new flows; the mean of the kernel's ns per call.
/// `before` runs (untimed) on each new flow first, e.g. a split ClientHello's first segment.
/// Flows are numbered from `base`, so that cases do not meet each other's flows.
fn fresh(
    mut run: impl FnMut(&[u8], u32) -> Result<(u32, Duration)>,
    before: Option<&[u8]>,
    frame: &[u8],
    n: u32,
    base: u32,
) -> Result<f64> {
    let mut frame = frame.to_vec();
    let mut first = before.map(<[u8]>::to_vec);
    let mut total = 0u128;
    for i in base..base + n {
        if let Some(f) = first.as_mut() {
            vary(f, i);
            run(f, 1)?;
        }
        vary(&mut frame, i);
        let (verdict, d) = run(&frame, 1)?;
        if verdict != XDP_PASS {
            bail!("verdict {verdict}, not XDP_PASS");
        }
        total += d.as_nanos();
    }
    Ok(total as f64 / f64::from(n))
}

/// Flow numbers per fresh case (more than any case runs).
const FLOWS: u32 = 1_100_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A UDP datagram to port 443 (QUIC-like), 100 bytes of payload.
fn udp_frame() -> Vec<u8> {
    let payload = [0x42u8; 100];
    let mut udp = Vec::new();
    udp.extend_from_slice(&40_000u16.to_be_bytes());
    udp.extend_from_slice(&443u16.to_be_bytes());
    udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    frame::ethernet(
        &[],
        frame::ETH_P_IP,
        &frame::ipv4(frame::IPPROTO_UDP, &frame::V4::default(), &udp),
    )
}

fn seg(src_port: u16, dst_port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    frame::v4_segment(
        &Seg {
            src_port,
            dst_port,
            seq,
            flags: PSH_ACK,
        },
        payload,
    )
}

/// A TLS application-data record of `len` bytes in all.
fn app_data(len: usize) -> Vec<u8> {
    let mut r = vec![0x17, 0x03, 0x03];
    r.extend_from_slice(&((len - 5) as u16).to_be_bytes());
    r.resize(len, 0xab);
    r
}

fn delta(after: &HashMap<&'static str, u64>, before: &HashMap<&'static str, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

/// Runs every case; returns the rows and the ClientHello cost (ns above the no-op) for the
/// terminator section's 1% goal.
/// The classifier is the object embedded in sni-user when it was built (SNI_EBPF_OBJECT at
/// build time: `cargo xtask bench` builds the object, then this binary).
pub fn run(noop_object: &Path, quick: bool) -> Result<(Vec<Row>, f64)> {
    let prog = Prog::with_config(&config());
    let noop = Noop::load(noop_object)?;
    // Fresh cases: `total` flows. Loop cases: `rounds` × `reps` runs, each side.
    let total: u32 = if quick { 30_000 } else { 1_000_000 };
    let rounds = 5;
    let reps: u32 = if quick { 20_000 } else { 1_000_000 };
    let classifier = |f: &[u8], r: u32| Ok(prog.run_timed(f, r));
    let baseline = |f: &[u8], r: u32| noop.run(f, r);
    let mut rows = Vec::new();

    let http =
        b"GET / HTTP/1.1\r\nHost: plain.bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let hello = hellos::rustls_hello("host1.bench.test");
    let browser = hellos::browser_size_hello("host2.bench.test");
    let mss = 1448;
    let (first, second) = browser.split_at(mss);
    let data = app_data(1400);

    // Stateless and flow-table cases: loop method.
    // A client address the fresh cases never use (they vary bytes 2-3 below 100).
    let classified_port = 50_000;
    let mut classified_hello = seg(classified_port, 443, 1, &hello);
    let mut classified = seg(classified_port, 443, 1 + hello.len() as u32, &data);
    for f in [&mut classified_hello, &mut classified] {
        if let Some(ip) = f.get_mut(28..30) {
            ip.copy_from_slice(&[0xff, 0xff]);
        }
    }
    prog.run(&classified_hello);
    let looped_cases: Vec<(&str, Vec<u8>, &str, u64)> = vec![
        ("non-TCP (UDP to :443, 142 B)", udp_frame(), "packets", 0),
        (
            "TCP to an unwatched port (:80, 100 B payload)",
            seg(40_001, 80, 1, &[0x42; 100]),
            "packets",
            0,
        ),
        (
            "TCP to a watched port, not TLS (HTTP request)",
            seg(40_002, 443, 1, http),
            "tcp_watched",
            1,
        ),
        (
            "TCP to a watched port, bare ACK of a flow not in the table",
            frame::v4_segment(
                &Seg {
                    src_port: 40_003,
                    dst_port: 443,
                    seq: 1,
                    flags: 0x10,
                },
                &[],
            ),
            "tcp_watched",
            1,
        ),
        (
            "already-classified flow (1,400 B TLS record)",
            classified,
            "flow_packets",
            1,
        ),
    ];
    for (case, frame, counter, per_run) in looped_cases {
        let before = prog.global();
        let (ns, base) = looped(classifier, baseline, &frame, reps, rounds)?;
        let after = prog.global();
        let runs = u64::from(reps) * rounds as u64;
        if per_run > 0 && delta(&after, &before, counter) != runs * per_run {
            bail!(
                "{case}: {counter} went up by {}, not {}: the case does not take the path it names",
                delta(&after, &before, counter),
                runs * per_run
            );
        }
        rows.push(Row {
            section: "xdp",
            case: case.to_owned(),
            unit: "ns/packet",
            value: ns,
            baseline_name: "no-op",
            baseline: Some(base),
            better: Better::Lower,
            goal: (case.starts_with("TCP to an unwatched")
                || case.starts_with("already-classified"))
            .then_some(1.2),
            note: format!("loop, {rounds} rounds of {reps} runs each side, in turn, median"),
        });
    }

    // Per-flow cases: fresh method.
    let noop_fresh = fresh(baseline, None, &seg(1, 443, 1, &hello), total, 0)?;
    let before = prog.global();
    let one = fresh(classifier, None, &seg(1, 443, 1, &hello), total, 0)?;
    let after = prog.global();
    if delta(&after, &before, "sni") != u64::from(total) {
        bail!(
            "ClientHello case: sni went up by {}, not {total}",
            delta(&after, &before, "sni")
        );
    }
    let fresh_row = |case: String, ns: f64| Row {
        section: "xdp",
        case,
        unit: "ns/packet",
        value: ns,
        baseline_name: "no-op",
        baseline: Some(noop_fresh),
        better: Better::Lower,
        goal: None,
        note: format!(
            "fresh, {total} new flows; {:.0} ns above the no-op",
            ns - noop_fresh
        ),
    };
    rows.push(fresh_row(
        format!(
            "ClientHello with SNI in its first segment ({} B, rustls, X25519MLKEM768)",
            hello.len()
        ),
        one,
    ));
    let hello_cost = one - noop_fresh;

    let first_frame = seg(1, 443, 1, first);
    let second_frame = seg(1, 443, 1 + mss as u32, second);
    let before = prog.global();
    let seg1 = fresh(classifier, None, &first_frame, total, 2 * FLOWS)?;
    let mid = prog.global();
    let seg2 = fresh(
        classifier,
        Some(&first_frame),
        &second_frame,
        total,
        4 * FLOWS,
    )?;
    let after = prog.global();
    if delta(&mid, &before, "split") != u64::from(total)
        || delta(&after, &mid, "sni") != u64::from(total)
    {
        bail!(
            "split case: split +{}, sni +{} (want {total} each)",
            delta(&mid, &before, "split"),
            delta(&after, &mid, "sni")
        );
    }
    rows.push(fresh_row(
        format!(
            "split browser-size ClientHello ({} B), first segment ({mss} B, state saved)",
            browser.len()
        ),
        seg1,
    ));
    rows.push(fresh_row(
        format!(
            "split browser-size ClientHello, second segment ({} B, SNI read)",
            second.len()
        ),
        seg2,
    ));
    Ok((rows, hello_cost.max(seg1 + seg2 - 2.0 * noop_fresh)))
}
