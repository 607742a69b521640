//! XDP per-packet cost on a real receive path: frames sent by tcpreplay (a Debian package, not
//! this project's code) through a veth pair into the program attached in native mode, timed by
//! the kernel's own statistics of the program (`BPF_ENABLE_STATS`: its run time and run
//! count), beside the no-op attached the same way, in alternating rounds on the same frames.
//!
//! What runs between two packets is the kernel's send and receive path, not a system call into
//! the test-run code with its clock reads and setup per call: a busy table is priced as the
//! kernel's receive loop sees it. The kernel times each run with two reads of its clock, which
//! the no-op's figure includes too, so the difference is the program's.
//!
//! tcpreplay inherits the bench thread's core, and a veth delivers a frame on the sending
//! core: every run sees the same core's per-CPU maps, as a NIC's RSS keeps a flow on one core.

use std::{os::fd::OwnedFd, path::PathBuf};

use anyhow::{bail, Context, Result};
use aya::{
    programs::Xdp,
    sys::{enable_stats, Stats},
};
use sni_tests::{
    frame::PSH_ACK,
    netns::{self, Netns},
    pcap,
    prog::Prog,
};

use super::{
    config, fill_busy, mix_kinds, print_row, row, Busy, Expect, Frames, Kind, NewFlows, Plain,
    ROUNDS,
};
use crate::{
    cmd::{attach, checked, detach},
    report::{Goal, Row},
    xdp::frames::{seg, shuffled, Split},
};

/// A sender and a receiver namespace joined by a veth pair, the kernel's program statistics on
/// while it lives. Dropping it deletes the namespaces, and so the veths and any attachment.
struct Link {
    sender: Netns,
    receiver: Netns,
    sender_if: String,
    receiver_if: String,
    /// The capture tcpreplay sends: one round's frames.
    pcap: PathBuf,
    _stats: OwnedFd,
}

impl Link {
    fn new() -> Result<Self> {
        let sender = Netns::new("sbs");
        let receiver = Netns::new("sbr");
        // Nothing but the frames sent may reach the program: no IPv6 (its link-local address
        // would send neighbour and router solicitations), no IPv4 address.
        for ns in [&sender, &receiver] {
            checked(ns.cmd([
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]))?;
        }
        let sender_if = netns::unique("vbs");
        let receiver_if = netns::unique("vbr");
        // An MTU above 1500: the one-segment post-quantum ClientHello's frame is 1,527 bytes.
        netns::veth(&sender, &sender_if, &[], &receiver, &receiver_if, &[], 1600);
        let stats = enable_stats(Stats::RunTime)
            .context("turning on the kernel's program statistics (BPF_ENABLE_STATS)")?;
        let pcap = std::env::temp_dir().join(format!("{}.pcap", netns::unique("sni-bench-veth")));
        Ok(Self {
            sender,
            receiver,
            sender_if,
            receiver_if,
            pcap,
            _stats: stats,
        })
    }

    /// Writes the frames of calls `from..to` as the capture to send.
    fn write(&self, frames: &dyn Frames, from: u64, to: u64) {
        let mut all = Vec::new();
        for i in from..to {
            let mut buf = Vec::new();
            frames.frame(i, &mut buf);
            all.push(buf);
        }
        pcap::write_pcap(&self.pcap, &all);
    }

    /// Attaches `prog` in native mode, sends the capture, detaches; the kernel's mean ns per
    /// run of `prog`, after checking that it ran once per frame sent and for nothing else.
    fn time(&self, prog: &Xdp, frames: u64) -> Result<f64> {
        attach(&self.receiver, &self.receiver_if, prog)?;
        let timed = self.send_counted(prog);
        let detached = detach(&self.receiver, &self.receiver_if);
        let (sent, runs, ns) = timed?;
        detached?;
        if sent != frames || runs != frames {
            bail!("{frames} frames in the capture, {sent} sent, {runs} runs of the program: frames were lost, or other traffic reached it");
        }
        Ok(ns as f64 / runs as f64)
    }

    /// Sends the capture through attached `prog`: the frames sent, and the program's runs and
    /// nanoseconds meanwhile. The last frames may still be in the receive path when tcpreplay
    /// exits: the runs are read until they stop rising.
    fn send_counted(&self, prog: &Xdp) -> Result<(u64, u64, u128)> {
        let info = || prog.info().context("the program's info");
        let before = info()?;
        let sent = self.send()?;
        let mut after = info()?;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            let again = info()?;
            if again.run_count() == after.run_count() {
                break;
            }
            after = again;
        }
        let runs = after.run_count() - before.run_count();
        let ns = after
            .run_time()
            .saturating_sub(before.run_time())
            .as_nanos();
        Ok((sent, runs, ns))
    }

    /// Sends the capture as fast as it goes; the packets tcpreplay reports sent.
    fn send(&self) -> Result<u64> {
        let pcap = self.pcap.to_string_lossy();
        let out = checked(self.sender.cmd_net_only([
            "tcpreplay",
            "--topspeed",
            "--preload-pcap",
            &format!("--intf1={}", self.sender_if),
            &pcap,
        ]))
        .context("sending with tcpreplay (cargo xtask bench installs it)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |label: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
            line.split(':').nth(1)?.trim().parse().ok()
        };
        match (count("Successful packets"), count("Failed packets")) {
            (Some(sent), Some(0)) => Ok(sent),
            _ => bail!("tcpreplay did not send every frame:\n{text}"),
        }
    }

    /// Per round, the round's `calls` frames written once, then sent to both programs, the two
    /// taking turns to go first. Per-round mean ns per packet, `ours` then `base`.
    fn rounds(
        &self,
        ours: &Xdp,
        base: &Xdp,
        frames: &dyn Frames,
        calls: u64,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS as u64 {
            self.write(frames, round * calls, (round + 1) * calls);
            for first in [round % 2 == 0, round % 2 == 1] {
                let ns = self.time(if first { ours } else { base }, calls)?;
                if first { &mut a } else { &mut b }.push(ns);
            }
        }
        Ok((a, b))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pcap);
    }
}

/// The ClientHellos and the data record the cases send.
pub(super) struct Payloads<'a> {
    pub(super) hello: &'a [u8],
    pub(super) browser: &'a [u8],
    pub(super) mss: usize,
    pub(super) data: &'a [u8],
}

/// The veth rows: one hot flow, the busy table, the traffic mix, ClientHellos of new flows in
/// one segment and split in two, each against the no-op.
/// The bench's own programs the classifier is set beside.
pub(super) struct Plains<'a> {
    pub(super) noop: &'a Plain,
    /// A known flow's floor (`sni_floor`).
    pub(super) floor: &'a Plain,
    /// A new flow's floor (`sni_floor_insert`).
    pub(super) floor_insert: &'a Plain,
}

pub(super) fn rows(plains: &Plains<'_>, p: &Payloads<'_>, calls: u64) -> Result<Vec<Row>> {
    let link = Link::new()?;
    let noop = plains.noop.program()?;
    let floor = plains.floor.program()?;
    let floor_insert = plains.floor_insert.program()?;
    let prog = Prog::with_config(&config());
    fill_busy(&prog, p.hello)?;
    let classifier = prog.program();
    let per_round = ROUNDS as u64 * calls;
    let data_seq = 1 + p.hello.len() as u32;
    let data = seg(0, 443, data_seq, PSH_ACK, p.data);
    let how = |what: &str| {
        format!("through a veth: {ROUNDS} alternating rounds of {calls} frames each side sent by tcpreplay, {what}; the kernel's run time per run (BPF_ENABLE_STATS); median (IQR)")
    };
    let mut rows = Vec::new();
    let order = shuffled(super::BUSY_FLOWS);
    let hot = Busy {
        order: vec![order[0]],
        kinds: vec![(Kind::Busy, data.clone())],
        new_base: 0,
    };
    let busy = Busy {
        order: order.clone(),
        kinds: vec![(Kind::Busy, data.clone())],
        new_base: 0,
    };
    // A tenth of the table: its flows' cache entries and table entries stay in the CPU's
    // caches far more, so the two rows show what the table's size costs.
    let tenth = Busy {
        order: order
            .iter()
            .copied()
            .filter(|&n| n < super::BUSY_FLOWS / 10)
            .collect(),
        kinds: vec![(Kind::Busy, data.clone())],
        new_base: 0,
    };
    // New flows are numbered past the busy table's.
    let new_base = u64::from(super::BUSY_FLOWS);
    let mix = Busy {
        order,
        kinds: mix_kinds(p.hello, p.data),
        new_base,
    };
    let one = NewFlows {
        template: seg(0, 443, 1, PSH_ACK, p.hello),
        base: new_base + per_round,
        before: None,
    };
    // The new flow's floor on a full table: filled first, with flows no case sends.
    let filler = NewFlows {
        template: seg(0, 443, 1, PSH_ACK, p.hello),
        base: new_base + 4 * per_round,
        before: None,
    };
    let mut buf = Vec::new();
    for i in 0..u64::from(FLOOR_FLOWS) {
        filler.frame(i, &mut buf);
        plains.floor_insert.run(&buf, 1)?;
    }
    let floor_one = NewFlows {
        template: seg(0, 443, 1, PSH_ACK, p.hello),
        base: new_base + 3 * per_round,
        before: None,
    };
    let (first, second) = p.browser.split_at(p.mss);
    let split = Split {
        first: seg(0, 443, 1, PSH_ACK, first),
        second: seg(0, 443, 1 + p.mss as u32, PSH_ACK, second),
        base: new_base + 2 * per_round,
    };
    let flows = "flows in a shuffled order";
    let hellos = |name: &str| format!("{name} ({} B, rustls, X25519MLKEM768)", p.hello.len());
    let cases = [
        Case::new("classified flow, one hot flow: 1,400 B TLS records", &hot)
            .path("flow_packets", per_round)
            .goal(10.0)
            .how("the same flow each"),
        Case::new("classified flow, 1,400 B TLS records of 10,000 of the busy table's flows", &tenth)
            .path("flow_packets", per_round)
            .how(flows),
        Case::new("classified flow, busy table: 1,400 B TLS records of 100,000 live flows", &busy)
            .path("flow_packets", per_round)
            .goal(25.0)
            .how(flows),
        Case::new("floor (`sni-floor`: one 64-byte line per flow in a plain array, incremented): the 10,000 flows", &tenth).under(Under::Floor)
            .how(flows),
        Case::new("floor (`sni-floor`): the busy table's 100,000 flows", &busy).under(Under::Floor).how(flows),
        Case::new("traffic mix: 90% data and 8% ACKs of 100,000 classified flows, 1% ClientHellos, 1% other", &mix)
            .how("kinds interleaved"),
        Case::new(&hellos("ClientHello with SNI in its first segment"), &one)
            .path("sni", per_round)
            .goal(800.0)
            .how("a new flow each, on the busy table's flows (a table not full at first)"),
        Case::new(&format!("split browser-size ClientHello ({} B), both segments", p.browser.len()), &split)
            .path("sni", per_round / 2)
            .goal(1200.0)
            .how("a new flow per two frames, its segments back to back; per ClientHello (twice the mean per frame)")
            .per(2.0),
        Case::new(&hellos("a new flow's insert into an LRU hash (`sni_floor_insert`: its 5-tuple into an LRU hash of 131,072 entries, full, as the flow table was before it became buckets in an array), the frames of a ClientHello"), &floor_one).under(Under::FloorInsert)
        .how("a new flow each"),
    ];
    for case in cases {
        let path = Expect::start(&prog);
        let ours = match case.under {
            Under::Classifier => classifier,
            Under::Floor => floor,
            Under::FloorInsert => floor_insert,
        };
        let (ours, base) = link.rounds(ours, noop, case.frames, calls)?;
        if let Some((counter, want)) = case.path {
            path.check(&case.name, counter, want)?;
        }
        let scale = |v: Vec<f64>| v.into_iter().map(|x| x * case.per).collect();
        let r = row(
            format!("through a veth: {}", case.name),
            (scale(ours), scale(base)),
            case.goal.map(Goal::Above),
            &how(case.how),
        );
        print_row(&r);
        rows.push(r);
    }
    Ok(rows)
}

/// Entries of `sni_floor_insert`'s table (the flow table's default capacity).
const FLOOR_FLOWS: u32 = sni_common::maps::FLOWS_DEFAULT_ENTRIES;

/// Which program a case times against the no-op.
#[derive(Clone, Copy)]
enum Under {
    Classifier,
    Floor,
    FloorInsert,
}

/// A veth case: frames sent to the classifier (or the floor) and to the no-op.
struct Case<'a> {
    name: String,
    frames: &'a dyn Frames,
    /// The program timed against the no-op.
    under: Under,
    /// The global counter that proves the classifier took the case's path, and its rise.
    path: Option<(&'static str, u64)>,
    goal: Option<f64>,
    how: &'a str,
    /// Frames per figure (a split ClientHello's cost is that of its two segments).
    per: f64,
}

impl<'a> Case<'a> {
    /// A case of the classifier (see `under`).
    fn new(name: &str, frames: &'a dyn Frames) -> Self {
        Self {
            name: name.to_owned(),
            frames,
            under: Under::Classifier,
            path: None,
            goal: None,
            how: "",
            per: 1.0,
        }
    }

    fn under(self, under: Under) -> Self {
        Self { under, ..self }
    }

    fn path(self, counter: &'static str, rise: u64) -> Self {
        Self {
            path: Some((counter, rise)),
            ..self
        }
    }

    fn goal(self, above: f64) -> Self {
        Self {
            goal: Some(above),
            ..self
        }
    }

    fn how(self, how: &'a str) -> Self {
        Self { how, ..self }
    }

    fn per(self, frames: f64) -> Self {
        Self {
            per: frames,
            ..self
        }
    }
}
