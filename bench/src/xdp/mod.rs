//! XDP per-packet cost with `BPF_PROG_TEST_RUN`, beside a no-op XDP program built by the same
//! toolchain and run the same way, in alternating rounds (the median and interquartile range
//! over the rounds are reported, and the difference to the no-op paired round by round).
//!
//! Two ways of running, and each case is compared with the no-op run the same way:
//! - **loop**: one call with `repeat` = N. The kernel runs the program N times on the same
//!   frame and reports the mean time per run in whole nanoseconds (its clock stops while the
//!   loop yields the CPU; the call's wall-clock time here was 40× the loop's, from those
//!   yields, so it is not used). Right for packets whose cost does not change with repetition:
//!   the program keeps no state for them, or (one hot classified flow) the state is what is
//!   measured.
//! - **per call**: one call of one run per packet, each frame its own (another flow, another
//!   kind of packet), timed by the kernel. Each call's figure includes the kernel's clock read
//!   and the run's setup, which the no-op's figure includes too: the difference is the
//!   program's. Needed where packets differ: a ClientHello is parsed once per flow, then its
//!   flow is in the flow table; a busy table is 100,000 flows, not one.
//! - **through a veth** (`veth.rs`): real frames through the kernel's receive path into the
//!   program attached in native mode, timed by the kernel's statistics of the program.
//!
//! The thread is pinned to one core, so that every run sees the same CPU's per-CPU maps (a
//! NIC's RSS keeps a flow on one core the same way).

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use sni_tests::{
    frame::PSH_ACK,
    hellos,
    prog::{Prog, XDP_PASS},
};

use crate::report::{Better, Goal, Row, Spread};

pub mod ab;
mod frames;
mod veth;

use frames::{app_data, seg, shuffled, udp_frame, vary, Busy, Frames, Kind, NewFlows};

/// Rounds per comparison (odd, so the median is a round's figure).
const ROUNDS: usize = 11;
/// Flows of the busy-table cases.
const BUSY_FLOWS: u32 = 100_000;
/// Core the runs are pinned to.
const CPU: usize = 1;
/// The TCP flags of a bare ACK and of a SYN.
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;

/// One of the bench's own programs (the no-op, the busy table's floor), loaded, not attached.
pub(crate) struct Plain {
    ebpf: Ebpf,
    name: &'static str,
}

impl Plain {
    /// Loads the program `name` of `object`.
    pub(crate) fn load(object: &Path, name: &'static str) -> Result<Self> {
        let mut ebpf = Ebpf::load_file(object)
            .with_context(|| format!("loading {name} from {}", object.display()))?;
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} is not in {}", object.display()))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel refused {name}"))?;
        Ok(Self { ebpf, name })
    }

    pub(crate) fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(self.name)
            .context(self.name)?
            .try_into()?)
    }

    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let out = self
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN on {}", self.name))?;
        Ok((out.return_value, out.duration))
    }
}

/// The two programs compared: the classifier and a baseline.
struct Pair<'a> {
    prog: &'a Prog,
    base: Base<'a>,
}

/// What the classifier is compared with.
enum Base<'a> {
    /// The no-op program.
    Noop(&'a Plain),
    /// The classifier loaded another way: JA4 fingerprinting off, or another build of it (the
    /// ab section).
    Classifier(&'a Prog),
}

impl Pair<'_> {
    /// One call of `repeat` runs of either program; the kernel's ns per run.
    fn run(&self, classifier: bool, frame: &[u8], repeat: u32) -> Result<f64> {
        let (verdict, d) = match (classifier, &self.base) {
            (true, _) => self.prog.run_timed(frame, repeat),
            (false, Base::Noop(noop)) => noop.run(frame, repeat)?,
            (false, Base::Classifier(prog)) => prog.run_timed(frame, repeat),
        };
        if verdict != XDP_PASS {
            bail!("verdict {verdict}, not XDP_PASS");
        }
        Ok(d.as_nanos() as f64)
    }

    /// Loop method: per round, one call of `reps` runs each, the two taking turns to go
    /// first. Per-round ns per run, classifier then no-op.
    fn looped(&self, frame: &[u8], reps: u32) -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            for first in [round % 2 == 0, round % 2 == 1] {
                let ns = self.run(first, frame, reps)?;
                if first { &mut ours } else { &mut base }.push(ns);
            }
        }
        Ok((ours, base))
    }

    /// Per-call method: per round, the classifier runs once on each of `calls` frames, then
    /// the no-op on the same frames (or the other way round, in turn). Frame `i` of round `r`
    /// is `frames.frame(r * calls + i)`; `frames.before`, if any, runs (untimed) through the
    /// classifier just before it. Per-round mean ns per packet, classifier then no-op.
    fn per_call(&self, frames: &dyn Frames, calls: u64) -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        for round in 0..ROUNDS as u64 {
            for classifier in [round % 2 == 0, round % 2 == 1] {
                let mut total = 0.0;
                // The untimed frame goes to whichever classifier is timed next.
                let stateful = classifier || matches!(self.base, Base::Classifier(_));
                for i in round * calls..(round + 1) * calls {
                    if stateful && frames.before(i, &mut buf) {
                        self.run(classifier, &buf, 1)?;
                    }
                    frames.frame(i, &mut buf);
                    total += self.run(classifier, &buf, 1)?;
                }
                if classifier { &mut ours } else { &mut base }.push(total / calls as f64);
            }
        }
        Ok((ours, base))
    }
}

/// The classifier's config for the runs: port 443 watched, ten configured hosts, the default
/// flow table.
fn config() -> String {
    let mut text =
        String::from("[xdp]\ninterfaces = [\"lo\"]\nports = [443]\nother_hosts_capacity = 65536\n");
    for i in 0..10 {
        text.push_str(&format!("[[host]]\nnames = [\"host{i}.bench.test\"]\n"));
    }
    text
}

/// [`config`] with JA4 fingerprinting off.
fn config_ja4_off() -> String {
    config().replacen("[xdp]\n", "[xdp]\nja4 = false\n", 1)
}

/// The per-case figures: medians, spreads, the paired difference.
fn row(case: String, (ours, base): (Vec<f64>, Vec<f64>), goal: Option<Goal>, how: &str) -> Row {
    Row {
        goal,
        above: Some(Spread::paired(&ours, &base)),
        note: how.to_owned(),
        ..Row::compared(
            "xdp",
            case,
            "ns/packet",
            Better::Lower,
            &ours,
            "no-op",
            &base,
        )
    }
}

/// Runs ClientHellos of flows `first..first + count` (`vary`) through a classifier; how many
/// flows its table then holds.
fn run_hellos(prog: &Prog, hello: &[u8], first: u64, count: u64) -> usize {
    let mut f = seg(0, 443, 1, PSH_ACK, hello);
    for n in first..first + count {
        vary(&mut f, n);
        prog.run(&f);
    }
    prog.flows_len()
}

/// Fills a classifier's flow table with the busy table's flows: a ClientHello each.
fn fill_busy(prog: &Prog, hello: &[u8]) -> Result<()> {
    let live = run_hellos(prog, hello, 0, u64::from(BUSY_FLOWS));
    if live != BUSY_FLOWS as usize {
        bail!("busy table: {live} flows in the table after {BUSY_FLOWS} ClientHellos");
    }
    Ok(())
}

/// Flow numbers of the flows that fill a table (`fill_table`), past every other case's.
const FILL_BASE: u64 = 60_000 * 60_000;

/// Fills a classifier's flow table with ClientHellos of flows no case sends, until every
/// entry is taken (new flows then replace the ones used longest ago, as on a busy edge):
/// twice as many as it has entries (at least 99% of the entries taken, checked).
fn fill_table(prog: &Prog, hello: &[u8]) -> Result<()> {
    let entries = prog.flow_table().entries();
    let taken = run_hellos(prog, hello, FILL_BASE, 2 * u64::from(entries));
    if taken < entries as usize * 99 / 100 {
        bail!("full table: {taken} of {entries} entries taken");
    }
    Ok(())
}

/// The traffic mix's kinds of packet, per 100: 90 data records and 8 bare ACKs of busy flows,
/// 1 ClientHello of a new flow, 1 packet to another port; spread (call i takes kind
/// (i × 37) mod 100) so that the ClientHellos are not bunched.
fn mix_kinds(hello: &[u8], data: &[u8]) -> Vec<(Kind, Vec<u8>)> {
    let data_seq = 1 + hello.len() as u32;
    let kinds: Vec<_> = (0..100)
        .map(|k| match k {
            0..90 => (Kind::Busy, seg(0, 443, data_seq, PSH_ACK, data)),
            90..98 => (Kind::Busy, seg(0, 443, data_seq, ACK, &[])),
            98 => (Kind::New, seg(0, 443, 1, PSH_ACK, hello)),
            _ => (Kind::Fixed, seg(40_001, 80, 1, PSH_ACK, &[0x42; 100])),
        })
        .collect();
    (0..100).map(|i| kinds[(i * 37) % 100].clone()).collect()
}

/// Global counters' deltas, to check that each case took the path it names.
struct Expect<'a> {
    prog: &'a Prog,
    before: std::collections::HashMap<&'static str, u64>,
}

impl<'a> Expect<'a> {
    fn start(prog: &'a Prog) -> Self {
        Self {
            prog,
            before: prog.global(),
        }
    }

    fn check(&self, case: &str, counter: &str, want: u64) -> Result<()> {
        let after = self.prog.global();
        let got = after.get(counter).copied().unwrap_or(0)
            - self.before.get(counter).copied().unwrap_or(0);
        if got != want {
            bail!("{case}: {counter} went up by {got}, not {want}: the case does not take the path it names");
        }
        Ok(())
    }
}

/// Runs every case; returns the rows, the ClientHello cost (ns above the no-op, the larger
/// of one segment and both segments of a split one) for the terminator section's goal, and a
/// note naming the ClientHellos the cases send.
/// The classifier is the object embedded in sni-user when it was built (SNI_EBPF_OBJECT at
/// build time: `cargo xtask bench` builds the object, then this binary).
pub fn run(noop_object: &Path, quick: bool) -> Result<(Vec<Row>, f64, String)> {
    let _pinned = Pinned::to(CPU)?;
    let noop = Plain::load(noop_object, "sni_noop")?;
    let plan = Runs::new(quick);
    let (reps, calls, loop_how) = (plan.reps, plan.calls, &plan.loop_how);
    let call_how = |what: &str| plan.call_how(what);
    let mut rows = Vec::new();

    let http =
        b"GET / HTTP/1.1\r\nHost: plain.bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let (hello, browser, hellos_note) = bench_hellos();
    let mss = 1448;
    let data = app_data(1400);
    let data_seq = 1 + hello.len() as u32;

    // Stateless cases and one hot classified flow: loop method.
    {
        let prog = Prog::with_config(&config());
        let pair = Pair {
            prog: &prog,
            base: Base::Noop(&noop),
        };
        // One classified flow (`hot_frames`), and a bare ACK of it.
        let (f, hot_data) = hot_frames(&hello, &data);
        prog.run(&f);
        let mut hot_ack = seg(0, 443, data_seq, ACK, &[]);
        vary(&mut hot_ack, HOT_FLOW);
        let cases: Vec<(&str, Vec<u8>, &str, Option<Goal>)> = vec![
            ("non-TCP (UDP to :443, 142 B)", udp_frame(), "packets", None),
            (
                "TCP to an unwatched port (:80, 100 B payload)",
                seg(40_001, 80, 1, PSH_ACK, &[0x42; 100]),
                "packets",
                Some(Goal::Above(5.0)),
            ),
            (
                "TCP to a watched port, not TLS (HTTP request)",
                seg(40_002, 443, 1, PSH_ACK, http),
                "tcp_watched",
                None,
            ),
            (
                "TCP to a watched port, bare ACK of a flow not in the table",
                seg(40_003, 443, 1, ACK, &[]),
                "tcp_watched",
                None,
            ),
            (
                "classified flow, one hot flow: bare ACK",
                hot_ack,
                "flow_packets",
                None,
            ),
            (
                "classified flow, one hot flow: 1,400 B TLS record",
                hot_data,
                "flow_packets",
                Some(Goal::Above(10.0)),
            ),
        ];
        for (case, frame, counter, goal) in cases {
            let path = Expect::start(&prog);
            let runs = pair.looped(&frame, reps)?;
            path.check(case, counter, u64::from(reps) * ROUNDS as u64)?;
            let r = row(case.to_owned(), runs, goal, loop_how);
            print_row(&r);
            rows.push(r);
        }
        // The harness checked against a measurement it has no part in: bpftool's own
        // BPF_PROG_TEST_RUN of the same no-op object on the same frame.
        let frame = seg(40_001, 80, 1, PSH_ACK, &[0x42; 100]);
        let independent = bpftool_noop(noop_object, &frame, reps)?;
        let harness = rows
            .get(1)
            .and_then(|r| r.baseline)
            .context("the loop cases' no-op")?;
        let r = Row {
            section: "xdp",
            case: "check: the no-op timed by `bpftool prog run` (not this harness)".to_owned(),
            unit: "ns/packet",
            value: Spread::of(&independent).median,
            baseline_name: "no-op in this harness",
            baseline: Some(harness),
            better: Better::Lower,
            goal: None,
            spread: Some(Spread::of(&independent)),
            above: None,
            note: format!(
                "bpftool prog run … repeat {reps}, {ROUNDS} rounds, the unwatched-port frame"
            ),
        };
        print_row(&r);
        rows.push(r);
        // The same hot flow, one call per packet: what the per-call method itself adds (a
        // cold start each call), to read the busy table's figure against.
        let hot_calls = Busy {
            order: vec![u32::try_from(HOT_FLOW).unwrap_or(0)],
            kinds: vec![(Kind::Busy, seg(0, 443, data_seq, PSH_ACK, &data))],
            new_base: 0,
        };
        let case =
            "classified flow, one hot flow, one call per packet (control for the busy table)";
        let path = Expect::start(&prog);
        let runs = pair.per_call(&hot_calls, calls)?;
        path.check(case, "flow_packets", calls * ROUNDS as u64)?;
        let r = row(case.to_owned(), runs, None, &call_how("the same flow each"));
        print_row(&r);
        rows.push(r);
    }

    // A busy table: 100,000 live flows, packets spread over all of them; and a traffic mix
    // over the same table.
    {
        let prog = Prog::with_config(&config());
        let pair = Pair {
            prog: &prog,
            base: Base::Noop(&noop),
        };
        fill_busy(&prog, &hello)?;
        let order = shuffled(BUSY_FLOWS);
        let busy = Busy {
            order: order.clone(),
            kinds: vec![(Kind::Busy, seg(0, 443, data_seq, PSH_ACK, &data))],
            new_base: 0,
        };
        let case = "classified flow, busy table: 1,400 B TLS records of 100,000 live flows";
        let path = Expect::start(&prog);
        let runs = pair.per_call(&busy, calls)?;
        path.check(case, "flow_packets", calls * ROUNDS as u64)?;
        let r = row(
            case.to_owned(),
            runs,
            Some(Goal::Above(25.0)),
            &call_how("flows in a shuffled order"),
        );
        print_row(&r);
        rows.push(r);

        // 90% data of classified flows, 8% their bare ACKs, 1% ClientHellos of new flows, 1%
        // packets to another port, interleaved.
        let mix = Busy {
            order,
            kinds: mix_kinds(&hello, &data),
            new_base: u64::from(BUSY_FLOWS),
        };
        let runs = pair.per_call(&mix, calls)?;
        let r = row(
            "traffic mix: 90% data and 8% ACKs of 100,000 classified flows, 1% ClientHellos, 1% other"
                .to_owned(),
            runs,
            None,
            &call_how("kinds interleaved"),
        );
        print_row(&r);
        rows.push(r.clone());
        // Packets per second per core: the loop no-op's ns per packet (no per-call setup)
        // plus the mix's paired difference.
        let noop_loop = rows
            .first()
            .and_then(|r| r.baseline)
            .context("the loop cases' no-op")?;
        let above = r.difference().unwrap_or(0.0);
        let pps = Row {
            section: "xdp",
            case: "traffic mix, packets per second per core".to_owned(),
            unit: "packets/s",
            value: 1e9 / (noop_loop + above),
            baseline_name: "no-op",
            baseline: Some(1e9 / noop_loop),
            better: Better::Higher,
            goal: None,
            spread: None,
            above: None,
            note: format!(
                "derived: 1e9 / (the no-op's {noop_loop:.1} ns in the loop + the mix's {above:.1} ns above it)"
            ),
        };
        print_row(&pps);
        rows.push(pps);
    }

    // New flows: a SYN flood, ClientHellos in one segment and split over two; the ClientHellos
    // with JA4 fingerprinting on (the default), then off, so that its cost shows beside.
    let prog = Prog::with_config(&config());
    fill_table(&prog, &hello)?;
    let pair = Pair {
        prog: &prog,
        base: Base::Noop(&noop),
    };
    let flows_per_case = calls * ROUNDS as u64;
    let syn = NewFlows {
        template: seg(0, 443, 0, SYN, &[]),
        base: 0,
        before: None,
    };
    let path = Expect::start(&prog);
    let runs = pair.per_call(&syn, calls)?;
    path.check("SYN flood", "tcp_watched", flows_per_case)?;
    let r = row(
        "SYN flood: SYNs of new 5-tuples".to_owned(),
        runs,
        None,
        &call_how("a new 5-tuple each"),
    );
    print_row(&r);
    rows.push(r);
    let cases = Hellos {
        one: &hello,
        browser: &browser,
        mss,
        calls,
        how: &call_how("a new flow each"),
        after_first: &call_how("the first segment run untimed before each"),
    };
    // Flows 0 to flows_per_case were the SYN flood's; each `rows` takes three times that.
    let on = cases.rows(&pair, "", true, flows_per_case)?;
    let off_prog = Prog::with_config(&config_ja4_off());
    fill_table(&off_prog, &hello)?;
    let off_pair = Pair {
        prog: &off_prog,
        base: Base::Noop(&noop),
    };
    let off = cases.rows(&off_pair, ", fingerprinting off", false, flows_per_case)?;
    // JA4's own cost: fingerprinting on against off, paired round by round.
    let ja4_pair = Pair {
        prog: &prog,
        base: Base::Classifier(&off_prog),
    };
    let ja4 = cases.rows(&ja4_pair, "", false, 4 * flows_per_case)?;
    let hello_one = on[0].difference().unwrap_or(0.0);
    let split_both = on[3].difference().unwrap_or(0.0);
    for i in [0, 3] {
        let mut cost = ja4[i].clone();
        cost.case = format!("JA4 fingerprinting's cost: {}", ja4[i].case);
        cost.baseline_name = "fingerprinting off";
        cost.goal = Some(Goal::Above(200.0));
        print_row(&cost);
        rows.extend([on[i].clone(), off[i].clone(), cost]);
    }
    rows.extend([on[1].clone(), on[2].clone(), off[1].clone(), off[2].clone()]);
    drop((prog, off_prog));

    rows.extend(profile(&noop, &hello, &data, &plan)?);

    // The same kinds of packet through a veth, timed by the kernel's own statistics.
    let payloads = veth::Payloads {
        hello: &hello,
        browser: &browser,
        mss,
        data: &data,
    };
    let floor_object = noop_object.with_file_name("sni-floor");
    let plains = veth::Plains {
        noop: &noop,
        floor: &Plain::load(&floor_object, "sni_floor")?,
        floor_insert: &Plain::load(&floor_object, "sni_floor_insert")?,
    };
    rows.extend(veth::rows(&plains, &payloads, calls).context("through a veth")?);
    Ok((rows, hello_one.max(split_both), hellos_note))
}

/// The ClientHellos the cases send (`sni_tests::hellos::bench_hellos`), and a note naming
/// them and their extensions' order.
fn bench_hellos() -> (Vec<u8>, Vec<u8>, String) {
    let (hello, browser) = hellos::bench_hellos();
    let note = format!(
        "ClientHellos: rustls (X25519MLKEM768), {} bytes, extensions {:04x?}; browser-size {} bytes, extensions {:04x?}",
        hello.len(),
        hellos::extension_types(&hello),
        browser.len(),
        hellos::extension_types(&browser),
    );
    (hello, browser, note)
}

/// How many runs the cases make, and how the rows say so.
struct Runs {
    /// Runs per round of a loop case.
    reps: u32,
    /// Calls per round of a per-call case.
    calls: u64,
    /// How a loop case was run.
    loop_how: String,
}

impl Runs {
    fn new(quick: bool) -> Self {
        let reps = if quick { 20_000 } else { 1_000_000 };
        Self {
            reps,
            calls: if quick { 2_000 } else { 40_000 },
            loop_how: format!(
                "loop: {ROUNDS} alternating rounds of {reps} runs each side; median (IQR)"
            ),
        }
    }

    /// How a per-call case was run, its frames being `what`.
    fn call_how(&self, what: &str) -> String {
        format!(
            "per call: {ROUNDS} alternating rounds of {} calls each side, {what}; median (IQR)",
            self.calls
        )
    }
}

/// The hot flow's frames, on a client address the per-call cases never use: its ClientHello
/// (run once, it classifies the flow) and a data segment of `data` after it.
fn hot_frames(hello: &[u8], data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut hello_frame = seg(0, 443, 1, PSH_ACK, hello);
    vary(&mut hello_frame, HOT_FLOW);
    let mut data_frame = seg(0, 443, 1 + hello.len() as u32, PSH_ACK, data);
    vary(&mut data_frame, HOT_FLOW);
    (hello_frame, data_frame)
}

/// The hot flow's number for [`vary`]: a client address the per-call cases never reach.
const HOT_FLOW: u64 = u16::MAX as u64 * 60_000;

/// The profile by stage: the classifier stopped after each stage in turn
/// (`sni_common::maps::profile_stop`), each against the no-op; a stage costs the difference
/// between its row and the one before it in the same group. Three groups: one hot classified
/// flow (loop); the same ClientHello read again and again, stopped inside the ClientHello
/// stage (loop; with JA4, then its last two stops without); one-segment ClientHellos of new
/// flows (per call; on a table whose every entry is taken for the last stop, the one that
/// inserts).
fn profile(noop: &Plain, hello: &[u8], data: &[u8], runs: &Runs) -> Result<Vec<Row>> {
    use sni_common::maps::profile_stop as stop;
    let stopped = |config: &str, at: u8| {
        Prog::with_options(
            config,
            sni_user::kernel::loader::StartOptions {
                profile_stop: at,
                ..Default::default()
            },
        )
    };
    let mut rows = Vec::new();
    let mut push = |case: String, runs: (Vec<f64>, Vec<f64>), how: &str| {
        let r = row(case, runs, None, how);
        print_row(&r);
        rows.push(r);
    };
    let (hello_frame, data_frame) = hot_frames(hello, data);
    for (at, stage) in [
        (
            stop::ENTRY,
            "the entry (the packet counter, the ports' lookup)",
        ),
        (stop::HEADERS, "the headers stage"),
        (stop::NONE, "every stage (the flow stage last)"),
    ] {
        let prog = stopped(&config(), at);
        prog.run(&hello_frame);
        let pair = Pair {
            prog: &prog,
            base: Base::Noop(noop),
        };
        push(
            format!(
                "profile: classified flow, one hot flow: 1,400 B TLS record, stopped after {stage}"
            ),
            pair.looped(&data_frame, runs.reps)?,
            &runs.loop_how,
        );
    }
    // The ClientHello stage alone, with and without its JA4: stopped before the insert, the
    // program remembers nothing, so every run reads the same ClientHello again (its bytes and
    // the scratch warm in the cache). The stage's own cost, step by step, without the new
    // flow's misses.
    let ja4_off = config_ja4_off();
    for (config, at, stage) in [
        (config(), stop::FLOW, "the flow stage"),
        (
            config(),
            stop::PENDING,
            "the pending map's lookup (the ClientHello stage's start)",
        ),
        (
            config(),
            stop::SCRATCH,
            "setting up the parser's state in the scratch",
        ),
        (
            config(),
            stop::HELLO,
            "reading it (copied, parsed with its JA4)",
        ),
        (
            ja4_off.clone(),
            stop::SCRATCH,
            "setting up the parser's state in the scratch, fingerprinting off",
        ),
        (
            ja4_off,
            stop::HELLO,
            "reading it (copied, parsed up to its name), fingerprinting off",
        ),
    ] {
        let prog = stopped(&config, at);
        let pair = Pair {
            prog: &prog,
            base: Base::Noop(noop),
        };
        push(
            format!(
                "profile: the same ClientHello ({} B) again and again, stopped after {stage}",
                hello.len()
            ),
            pair.looped(&hello_frame, runs.reps)?,
            &runs.loop_how,
        );
    }
    // Each stop's program has maps of its own.
    for (at, stage) in [
        (stop::HEADERS, "the headers stage"),
        (
            stop::FLOW,
            "the flow stage (the cache and the flow table looked up)",
        ),
        (
            stop::HELLO,
            "reading the ClientHello (copied, parsed with its JA4)",
        ),
        (
            stop::FINGERPRINT,
            "its fingerprint (the key, its entry among the others)",
        ),
        (
            stop::HOST,
            "its host (the name's hashes and lookup, the verdict, the host's counters)",
        ),
        (
            stop::COUNTED,
            "the fingerprint's counters (its own, the host's row of it)",
        ),
        (
            stop::NONE,
            "every stage (the flow table's insert and the verdict last)",
        ),
    ] {
        let prog = stopped(&config(), at);
        // A full flow table, as in the ClientHello rows (stopped before the insert, the
        // program leaves the table empty; a lookup then reads the same two tag lines).
        if at == stop::NONE {
            fill_table(&prog, hello)?;
        }
        let pair = Pair {
            prog: &prog,
            base: Base::Noop(noop),
        };
        let one = NewFlows {
            template: seg(0, 443, 1, PSH_ACK, hello),
            base: 1 << 20,
            before: None,
        };
        push(
            format!(
                "profile: ClientHello with SNI in its first segment ({} B), stopped after {stage}",
                hello.len()
            ),
            pair.per_call(&one, runs.calls)?,
            &runs.call_how("a new flow each"),
        );
    }
    Ok(rows)
}

/// The ClientHello cases: one in one segment, a browser-size one split in two.
struct Hellos<'a> {
    one: &'a [u8],
    browser: &'a [u8],
    mss: usize,
    calls: u64,
    how: &'a str,
    after_first: &'a str,
}

impl Hellos<'_> {
    /// Rows, in this order: one segment, split first segment, split second segment, split
    /// both segments; each case's label ends with `suffix`. Goals apply when `goals`.
    /// Flows are numbered from `first_flow` on: a classifier given the same 5-tuples again
    /// would find them in its flow table.
    fn rows(
        &self,
        pair: &Pair<'_>,
        suffix: &str,
        goals: bool,
        first_flow: u64,
    ) -> Result<Vec<Row>> {
        let flows_per_case = self.calls * ROUNDS as u64;
        let (first, second) = self.browser.split_at(self.mss);
        let one = NewFlows {
            template: seg(0, 443, 1, PSH_ACK, self.one),
            base: first_flow,
            before: None,
        };
        let path = Expect::start(pair.prog);
        let runs = pair.per_call(&one, self.calls)?;
        path.check("ClientHello", "sni", flows_per_case)?;
        let mut rows = vec![row(
            format!(
                "ClientHello with SNI in its first segment ({} B, rustls, X25519MLKEM768){suffix}",
                self.one.len()
            ),
            runs,
            goals.then_some(Goal::Above(800.0)),
            self.how,
        )];
        let first_frame = seg(0, 443, 1, PSH_ACK, first);
        let second_frame = seg(0, 443, 1 + self.mss as u32, PSH_ACK, second);
        let split1 = NewFlows {
            template: first_frame.clone(),
            base: first_flow + flows_per_case,
            before: None,
        };
        let path = Expect::start(pair.prog);
        let runs1 = pair.per_call(&split1, self.calls)?;
        path.check("split, first segment", "split", flows_per_case)?;
        let split2 = NewFlows {
            template: second_frame,
            base: first_flow + 2 * flows_per_case,
            before: Some(first_frame),
        };
        let path = Expect::start(pair.prog);
        let runs2 = pair.per_call(&split2, self.calls)?;
        path.check("split, second segment", "sni", flows_per_case)?;
        // Both segments: round by round, the sum of the two cases' rounds.
        let sum =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
        let both = (sum(&runs1.0, &runs2.0), sum(&runs1.1, &runs2.1));
        rows.extend([
            row(
                format!(
                    "split browser-size ClientHello ({} B), first segment ({} B, state saved){suffix}",
                    self.browser.len(),
                    self.mss
                ),
                runs1,
                None,
                self.how,
            ),
            row(
                format!(
                    "split browser-size ClientHello, second segment ({} B, SNI read){suffix}",
                    second.len()
                ),
                runs2,
                None,
                self.after_first,
            ),
            row(
                format!("split browser-size ClientHello, both segments{suffix}"),
                both,
                goals.then_some(Goal::Above(1200.0)),
                "the two rows above added round by round",
            ),
        ]);
        for r in &rows {
            print_row(r);
        }
        Ok(rows)
    }
}

fn print_row(r: &Row) {
    eprintln!(
        "  {:<90} {:>16} vs {:>16}  {}",
        r.case,
        crate::report::number(r.value, r.unit),
        r.baseline
            .map_or_else(|| "—".into(), |b| crate::report::number(b, r.unit)),
        r.difference()
            .map_or_else(String::new, |d| format!("{d:+.1} above"))
    );
}

/// `bpftool prog run` of the no-op object, `ROUNDS` times: its ns per run.
fn bpftool_noop(object: &Path, frame: &[u8], reps: u32) -> Result<Vec<f64>> {
    let dir = sni_tests::PinDir::new("sni-bench-noop");
    sni_user::kernel::loader::ensure_bpffs(&dir)?;
    let pin = dir.join("prog");
    let frame_file = std::env::temp_dir().join(format!("sni-bench-frame-{}", std::process::id()));
    std::fs::write(&frame_file, frame)?;
    let bpftool = |args: &[&std::ffi::OsStr]| -> Result<String> {
        let mut cmd = std::process::Command::new("bpftool");
        cmd.args(args);
        let out =
            crate::cmd::checked(cmd).context("running bpftool (cargo xtask bench installs it)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let os = std::ffi::OsStr::new;
    let result = (|| {
        bpftool(&[
            os("prog"),
            os("load"),
            object.as_os_str(),
            pin.as_os_str(),
            os("type"),
            os("xdp"),
        ])?;
        let mut ns = Vec::new();
        for _ in 0..ROUNDS {
            let text = bpftool(&[
                os("prog"),
                os("run"),
                os("pinned"),
                pin.as_os_str(),
                os("data_in"),
                frame_file.as_os_str(),
                os("repeat"),
                os(&reps.to_string()),
            ])?;
            // "Return value: 2, duration (average): 6ns"
            let v = text
                .split("duration (average):")
                .nth(1)
                .and_then(|t| t.trim().trim_end_matches("ns").trim().parse::<f64>().ok())
                .with_context(|| format!("no duration in bpftool's answer: {text}"))?;
            ns.push(v);
        }
        Ok(ns)
    })();
    let _ = std::fs::remove_file(&frame_file);
    result
}

/// This thread, pinned to one core until dropped (then free to run anywhere it could).
struct Pinned {
    before: nix::sched::CpuSet,
}

impl Pinned {
    fn to(cpu: usize) -> Result<Self> {
        let me = nix::unistd::Pid::from_raw(0);
        let before = nix::sched::sched_getaffinity(me).context("reading this thread's cores")?;
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).context("CPU set")?;
        nix::sched::sched_setaffinity(me, &set)
            .with_context(|| format!("pinning the XDP runs to core {cpu}"))?;
        Ok(Self { before })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.before);
    }
}
