//! The TLS sections: the classifier's live cost, the terminator against nginx, and scale.
//! Servers run on core 0; the load generator and the backend on core 1. Runs of the things
//! compared alternate, and each figure is the median of its rounds.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use sni_tests::{netns::Pair, PinDir};

use crate::{
    backend::Backend,
    load::{self, Op, Target},
    report::{Better, Goal, Row, Spread},
    servers::{self, HostCert, Server, Xdp},
};

/// Core of the servers under test.
pub const SERVER_CPU: usize = 0;
/// Core of the load generator and the backend.
pub const LOAD_CPU: usize = 1;

/// A client namespace fit for tens of thousands of connections a run: the client closes
/// first, so its ports wait in TIME_WAIT; without reuse they run out within seconds and
/// connect() crawls (seen here: 250 handshakes/s instead of 6,000). Namespace-local settings.
pub fn client_sysctls(pair: &Pair) -> Result<()> {
    crate::cmd::checked(pair.client.cmd([
        "sysctl",
        "-w",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ]))
    .context("sysctl in the client namespace")?;
    Ok(())
}

/// Settings shared by the sections.
pub struct Env {
    pub sni_user: PathBuf,
    /// The no-op XDP object (the live section's baseline for the veth's XDP path).
    pub noop: PathBuf,
    quick: bool,
    pub dir: PathBuf,
    /// One timed run.
    pub run: Duration,
    /// Rounds per compared pair.
    pub rounds: usize,
    /// Client threads of a closed-loop run.
    pub threads: usize,
    /// Open files per process.
    nofile: u64,
    /// Only the idle-memory case of the terminator section (for profiling it).
    pub memory_only: bool,
}

impl Env {
    pub fn new(sni_user: &Path, noop: &Path, quick: bool) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if cores < 2 {
            bail!(
                "the TLS benchmarks need 2 cores (server and load apart); this machine has {cores}"
            );
        }
        if !sni_user.is_file() {
            bail!(
                "{} is missing (cargo xtask bench builds it)",
                sni_user.display()
            );
        }
        let nofile = load::raise_nofile()?;
        let dir = std::env::temp_dir().join(format!("sni-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            sni_user: sni_user.to_path_buf(),
            noop: noop.to_path_buf(),
            quick,
            dir,
            // At least 10 rounds a comparison (servers in turn), each short: a median over
            // many short runs shows the spread that three long ones hid.
            run: Duration::from_secs(if quick { 1 } else { 2 }),
            rounds: if quick { 2 } else { 10 },
            threads: 24,
            nofile,
            memory_only: false,
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which of two things compared goes `k`-th (0 or 1) in `round`: they take turns going first.
pub fn turn(round: usize, k: usize) -> usize {
    (round + k) % 2
}

fn names(list: &[&HostCert]) -> Arc<Vec<ServerName<'static>>> {
    Arc::new(
        list.iter()
            .filter_map(|h| ServerName::try_from(h.name.clone()).ok())
            .collect(),
    )
}

/// A closed-loop run against `server`: (connections per second, per server CPU-second,
/// resumed share).
fn measure(
    server: &Server,
    target: &Target,
    resume: bool,
    op: Op,
    env: &Env,
) -> Result<(f64, f64, f64)> {
    let cpu0 = server.cpu_seconds();
    let tally = load::closed_loop(target, resume, op, env.threads, env.run)
        .with_context(|| format!("{}: {op:?}", server.name))?;
    let cpu = server.cpu_seconds() - cpu0;
    let per_cpu = if cpu > 0.0 {
        tally.ok as f64 / cpu
    } else {
        0.0
    };
    Ok((
        tally.rate(),
        per_cpu,
        tally.resumed as f64 / tally.ok.max(1) as f64,
    ))
}

/// Live cost of XDP (issue item 2): handshakes per second through a veth to the terminator,
/// with the classifier attached (in the same process, hand-off on) and without, alternating.
pub fn live(env: &Env) -> Result<Vec<Row>> {
    let pair = Pair::new();
    client_sysctls(&pair)?;
    let server_ns = PathBuf::from(format!("/run/netns/{}", pair.server.name));
    let client_ns = PathBuf::from(format!("/run/netns/{}", pair.client.name));
    let backend = Backend::start(Some(server_ns), LOAD_CPU)?;
    let hosts = servers::make_certs(&env.dir.join("live-certs"), &["live.bench.test".to_owned()])?;
    let listen: SocketAddr = format!("{}:443", sni_tests::netns::SERVER_V4).parse()?;
    let target = Target {
        addr: listen,
        names: names(&hosts.iter().collect::<Vec<_>>()),
        netns: Some(client_ns),
        cpu: LOAD_CPU,
    };
    // Each mode's handshakes/s and per server CPU-second, a value per round.
    let mut rates: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    // Each mode's XDP run time per handshake (µs), from the kernel's statistics of the
    // attached program, a value per round.
    let mut xdp_time: [Vec<f64>; 3] = Default::default();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("turning on the kernel's program statistics (BPF_ENABLE_STATS)")?;
    let noop = crate::xdp::Plain::load(&env.noop, "sni_noop")?;
    // Each setup goes first as often as the others.
    let rounds = env.rounds.max(2).next_multiple_of(LIVE_MODES.len());
    for round in 0..rounds {
        for k in 0..LIVE_MODES.len() {
            let mode = LIVE_MODES[(round + k) % LIVE_MODES.len()];
            let pins = PinDir::new("snib");
            let server = Server::terminator(
                &env.sni_user,
                &env.dir.join(format!("live-{round}-{k}")),
                listen,
                &hosts,
                backend.addr,
                (mode == Live::Classifier).then_some(Xdp {
                    interface: &pair.server_if,
                    pin_dir: &pins,
                }),
                Some(&pair.server.name),
                SERVER_CPU,
            )?;
            if mode == Live::Noop {
                crate::cmd::attach(&pair.server, &pair.server_if, noop.program()?)?;
            }
            let before = attached_run_time(&pair)?;
            let measured = measure(&server, &target, false, Op::Handshake, env);
            let after = attached_run_time(&pair)?;
            let detached = if mode == Live::Noop {
                crate::cmd::detach(&pair.server, &pair.server_if)
            } else {
                Ok(())
            };
            let (rate, per_cpu, _) = measured?;
            detached?;
            let (r, c) = &mut rates[mode as usize];
            r.push(rate);
            c.push(per_cpu);
            if let (Some(before), Some(after)) = (before, after) {
                let handshakes = rate * env.run.as_secs_f64();
                let us = after.saturating_sub(before).as_secs_f64() * 1e6;
                xdp_time[mode as usize].push(us / handshakes.max(1.0));
            }
            drop(server);
        }
    }
    let [detached, noop_attached, attached] = rates;
    let [_, noop_time, classifier_time] = xdp_time;
    let n = attached.0.len();
    let how = format!(
        "{n} rounds of {} s each, the three setups in turn, {} clients, median",
        env.run.as_secs(),
        env.threads
    );
    let row = |case: &str, ours: &[f64], base: &[f64], base_name: &'static str, goal, unit| Row {
        goal,
        note: how.clone(),
        ..Row::compared("live", case, unit, Better::Higher, ours, base_name, base)
    };
    let per_cpu = "handshakes/CPU-s";
    let mut cpu_row = row(
        "the same, per server CPU-second",
        &attached.1,
        &detached.1,
        "detached",
        None,
        per_cpu,
    );
    cpu_row.note = "XDP runs in softirq, partly charged to whatever runs on the core".into();
    Ok(vec![
        row(
            "TLS handshakes/s through a veth, classifier attached vs detached",
            &attached.0,
            &detached.0,
            "detached",
            Some(Goal::Ratio(0.97)),
            "handshakes/s",
        ),
        cpu_row,
        row(
            "TLS handshakes/s through a veth, the no-op XDP program attached vs detached (the veth's XDP path)",
            &noop_attached.0,
            &detached.0,
            "detached",
            None,
            "handshakes/s",
        ),
        row(
            "TLS handshakes/s through a veth, classifier attached vs the no-op attached (the classifier's own cost)",
            &attached.0,
            &noop_attached.0,
            "no-op attached",
            None,
            "handshakes/s",
        ),
        Row {
            note: "the attached program's run time (BPF_ENABLE_STATS) over a round, per handshake completed in it; it runs on the sending core, the load generator's".into(),
            ..Row::compared(
                "live",
                "XDP run time per handshake, the classifier (vs the no-op), from the kernel's statistics",
                "µs/handshake",
                Better::Lower,
                &classifier_time,
                "no-op",
                &noop_time,
            )
        },
    ])
}

/// The kernel's total run time of the XDP program attached to the server's veth, if one is.
fn attached_run_time(pair: &Pair) -> Result<Option<Duration>> {
    let out =
        crate::cmd::checked(
            pair.server
                .cmd(["ip", "-j", "link", "show", "dev", &pair.server_if]),
        )?;
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("ip -j link show's answer")?;
    let Some(id) = links
        .get(0)
        .and_then(|l| l.pointer("/xdp/prog/id"))
        .and_then(serde_json::Value::as_u64)
    else {
        return Ok(None);
    };
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the loaded programs")?;
        if u64::from(info.id()) == id {
            return Ok(Some(info.run_time()));
        }
    }
    Ok(None)
}

/// What the live section's server side runs, in the order of `rates`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    /// No XDP program on the veth.
    Detached = 0,
    /// The no-op XDP program: a veth with any XDP program takes another receive path (NAPI,
    /// frames copied for XDP), which costs without the classifier.
    Noop = 1,
    /// The classifier, attached by the terminator (hand-off on).
    Classifier = 2,
}

const LIVE_MODES: [Live; 3] = [Live::Detached, Live::Noop, Live::Classifier];

/// One server's figures in the terminator section, a value per round.
#[derive(Default)]
struct Figures {
    full: (Vec<f64>, Vec<f64>),
    resumed: (Vec<f64>, Vec<f64>),
    resumed_share: Vec<f64>,
    requests: (Vec<f64>, Vec<f64>),
    /// Load generator and backend CPU-seconds (this process) per request.
    client_cpu: Vec<f64>,
    /// wrk: requests per second and per server CPU-second.
    wrk: (Vec<f64>, Vec<f64>),
    bulk: (Vec<f64>, Vec<f64>),
    p50: Vec<f64>,
    p99: Vec<f64>,
}

/// The terminator against nginx's stream module and HAProxy (`mode tcp` with `ssl`), each
/// on the same core with one worker, in turns: each round runs every case on each server, the
/// servers taking turns to go first.
pub fn terminator_vs_nginx(
    env: &Env,
    hello_cost_ns: Option<f64>,
) -> Result<(Vec<Row>, Vec<String>)> {
    let hosts = servers::make_certs(&env.dir.join("vs-certs"), &["bench.test".to_owned()])?;
    let host = hosts.first().context("a certificate")?;
    let backend = Backend::start(None, LOAD_CPU)?;
    let addr =
        || -> Result<SocketAddr> { Ok(format!("127.0.0.1:{}", servers::free_port()?).parse()?) };
    let (ours_addr, nginx_addr, haproxy_addr) = (addr()?, addr()?, addr()?);
    let ours = Server::terminator(
        &env.sni_user,
        &env.dir.join("ours"),
        ours_addr,
        &hosts,
        backend.addr,
        None,
        None,
        SERVER_CPU,
    )?;
    let nginx = Server::nginx(
        &env.dir.join("nginx"),
        nginx_addr,
        host,
        backend.addr,
        SERVER_CPU,
        env.nofile,
    )?;
    let haproxy = Server::haproxy(
        &env.dir.join("haproxy"),
        haproxy_addr,
        host,
        backend.addr,
        SERVER_CPU,
        env.nofile,
    )?;
    let target = |addr| Target {
        addr,
        names: names(&[host]),
        netns: None,
        cpu: LOAD_CPU,
    };
    let servers = [
        (&ours, target(ours_addr)),
        (&nginx, target(nginx_addr)),
        (&haproxy, target(haproxy_addr)),
    ];
    let mut notes = Vec::new();
    if env.memory_only {
        return idle_memory(env, &servers, &mut notes).map(|r| (r, notes));
    }
    let secs = env.run.as_secs_f64();
    let how = format!(
        "{} rounds of {secs} s, servers in turn, {} clients; median (IQR)",
        env.rounds, env.threads
    );

    // The closed-loop cases, then bulk, each round.
    let mut figs: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
    for round in 0..env.rounds {
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            let (server, t) = &servers[i];
            let f = &mut figs[i];
            let (r, c, _) = measure(server, t, false, Op::Handshake, env)?;
            f.full.0.push(r);
            f.full.1.push(c);
            let (r, c, share) = measure(server, t, true, Op::Handshake, env)?;
            f.resumed.0.push(r);
            f.resumed.1.push(c);
            f.resumed_share.push(share);
            let me0 = load::own_cpu_seconds();
            let cpu0 = server.cpu_seconds();
            let tally = load::closed_loop(t, false, Op::Request, env.threads, env.run)
                .with_context(|| format!("{}: requests", server.name))?;
            let (cpu, me) = (server.cpu_seconds() - cpu0, load::own_cpu_seconds() - me0);
            f.requests.0.push(tally.rate());
            f.requests.1.push(tally.ok as f64 / cpu.max(1e-9));
            f.client_cpu.push(me / tally.ok.max(1) as f64 * 1e6);
            let cpu0 = server.cpu_seconds();
            let rate = load::wrk(t.addr, &host.name, env.threads, env.run, LOAD_CPU, &env.dir)
                .with_context(|| format!("{}: wrk", server.name))?;
            let cpu = server.cpu_seconds() - cpu0;
            f.wrk.0.push(rate);
            f.wrk.1.push(rate * secs / cpu.max(1e-9));
            let config = load::client_config(false)?;
            let cpu0 = server.cpu_seconds();
            let bytes_per_s = load::bulk(t, &config, 4, env.run)?;
            let cpu = server.cpu_seconds() - cpu0;
            f.bulk.0.push(bytes_per_s / 1e6);
            f.bulk.1.push(bytes_per_s * secs / 1e6 / cpu.max(1e-9));
        }
    }
    for (i, f) in figs.iter().enumerate() {
        let least = f.resumed_share.iter().copied().fold(1.0, f64::min);
        if least < 0.9 {
            bail!(
                "{}: only {:.0}% of the resumed-case handshakes resumed",
                servers[i].0.name,
                least * 100.0
            );
        }
    }
    // Latency at half the slowest server's peak: the same offered load for all.
    let rate = 0.5
        * figs
            .iter()
            .map(|f| Spread::of(&f.full.0).median)
            .fold(f64::INFINITY, f64::min);
    for round in 0..env.rounds {
        for k in 0..servers.len() {
            let i = (round + k) % servers.len();
            let config = load::client_config(false)?;
            let (sorted, errors) = load::open_loop(&servers[i].1, &config, rate, 32, env.run)?;
            if errors * 100 > sorted.len() as u64 {
                bail!(
                    "{}: {errors} failed handshakes at {rate:.0}/s",
                    servers[i].0.name
                );
            }
            figs[i].p50.push(load::percentile(&sorted, 50.0) / 1000.0);
            figs[i].p99.push(load::percentile(&sorted, 99.0) / 1000.0);
        }
    }

    let lhow = format!(
        "open loop at {rate:.0} handshakes/s (half the slowest peak), from the scheduled start; {} rounds of {secs} s; median (IQR)",
        env.rounds
    );
    let ours_figs = &figs[0];
    let mut rows = Vec::new();
    for (b, base) in figs.iter().enumerate().skip(1) {
        let name = servers[b].0.name;
        let row = |case: &str,
                   unit: &'static str,
                   ours: &[f64],
                   theirs: &[f64],
                   better: Better,
                   goal: Option<f64>,
                   note: &str| Row {
            goal: goal.map(Goal::Ratio),
            note: note.to_owned(),
            ..Row::compared("terminator", case, unit, better, ours, name, theirs)
        };
        let o = ours_figs;
        rows.extend([
            row(
                "full handshakes per second",
                "handshakes/s",
                &o.full.0,
                &base.full.0,
                Better::Higher,
                None,
                &how,
            ),
            row(
                "full handshakes per server CPU-second",
                "handshakes/CPU-s",
                &o.full.1,
                &base.full.1,
                Better::Higher,
                Some(1.3),
                &how,
            ),
            row(
                "resumed handshakes per second",
                "handshakes/s",
                &o.resumed.0,
                &base.resumed.0,
                Better::Higher,
                None,
                &how,
            ),
            row(
                "resumed handshakes per server CPU-second",
                "handshakes/CPU-s",
                &o.resumed.1,
                &base.resumed.1,
                Better::Higher,
                Some(1.3),
                &how,
            ),
            row(
                "new connection per small HTTP request, to the backend and back, per second",
                "requests/s",
                &o.requests.0,
                &base.requests.0,
                Better::Higher,
                None,
                &how,
            ),
            row(
                "the same, per server CPU-second",
                "requests/CPU-s",
                &o.requests.1,
                &base.requests.1,
                Better::Higher,
                Some(1.0),
                &how,
            ),
            row(
                "the same, load generator and backend CPU per request (this process, core 1)",
                "µs/request",
                &o.client_cpu,
                &base.client_cpu,
                Better::Lower,
                None,
                &format!("{how}; what the server's way of answering costs the other side"),
            ),
            row(
                "new connection per small HTTP request, wrk (an independent load generator), per second",
                "requests/s",
                &o.wrk.0,
                &base.wrk.0,
                Better::Higher,
                None,
                &format!("{how}; wrk 4.1 (OpenSSL), `Connection: close`, one thread on core {LOAD_CPU}"),
            ),
            row(
                "the same, per server CPU-second",
                "requests/CPU-s",
                &o.wrk.1,
                &base.wrk.1,
                Better::Higher,
                None,
                &how,
            ),
            row(
                "kept-alive bulk download (16 MiB answers, 4 connections), per second",
                "MB/s",
                &o.bulk.0,
                &base.bulk.0,
                Better::Higher,
                Some(1.0),
                &how,
            ),
            row(
                "the same, per server CPU-second",
                "MB/CPU-s",
                &o.bulk.1,
                &base.bulk.1,
                Better::Higher,
                None,
                &how,
            ),
            row(
                "handshake latency p50",
                "ms",
                &o.p50,
                &base.p50,
                Better::Lower,
                None,
                &lhow,
            ),
            row(
                "handshake latency p99",
                "ms",
                &o.p99,
                &base.p99,
                Better::Lower,
                Some(1.0),
                &lhow,
            ),
        ]);
    }
    rows.extend(idle_memory(env, &servers, &mut notes)?);

    if let Some(cost) = hello_cost_ns {
        let per_handshake_ns = 1e9 / Spread::of(&ours_figs.full.1).median.max(1e-9);
        rows.push(Row {
            section: "terminator",
            case: "XDP cost of a ClientHello vs terminator CPU per full handshake".into(),
            unit: "ns",
            value: cost,
            baseline_name: "terminator",
            baseline: Some(per_handshake_ns),
            better: Better::Lower,
            goal: Some(Goal::Ratio(0.005)),
            spread: None,
            above: None,
            note: "the larger of the one-segment and split (both segments) ClientHello costs above the no-op".into(),
        });
    }
    notes.push(format!(
        "terminator vs nginx and HAProxy: all pinned to core {SERVER_CPU} with one worker or thread, TLS 1.3 with X25519 (the client offers only TLS_AES_128_GCM_SHA256), the same ECDSA P-256 certificate, logging off, the same backend; nginx {} with the stream module and {} in `mode tcp` with `ssl` (TLS termination to a TCP backend, as the terminator does). The load generator (rustls client, no certificate check) and the backend run on core {LOAD_CPU}. Per-second figures on 2 cores are often bound by the client's core: read them beside the per-CPU-second ones.",
        crate::report::command_line(&["nginx", "-v"]).trim_start_matches("nginx version: "),
        crate::report::command_line(&["haproxy", "-v"])
            .split(" - ")
            .next()
            .unwrap_or("HAProxy")
    ));
    Ok((rows, notes))
}

/// Scale (issue item 4): 10, 1,000 and 100,000 configured hosts, each with its own
/// certificate, the classifier attached (as operators run it): start-up, memory, rate.
pub fn scale(env: &Env) -> Result<Vec<Row>> {
    let counts: &[usize] = if env.quick {
        &[10, 1_000, 10_000]
    } else {
        &[10, 1_000, 100_000]
    };
    let max = counts.iter().copied().max().unwrap_or(10);
    let t = Instant::now();
    let all_names: Vec<String> = (0..max).map(|i| format!("h{i}.scale.bench.test")).collect();
    let certs = servers::make_certs(&env.dir.join("scale-certs"), &all_names)?;
    eprintln!(
        "  {max} certificates made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let pair = Pair::new();
    client_sysctls(&pair)?;
    let server_ns = PathBuf::from(format!("/run/netns/{}", pair.server.name));
    let client_ns = PathBuf::from(format!("/run/netns/{}", pair.client.name));
    let backend = Backend::start(Some(server_ns), LOAD_CPU)?;
    let listen: SocketAddr = format!("{}:443", sni_tests::netns::SERVER_V4).parse()?;
    let mut results = Vec::new();
    for &n in counts {
        let hosts = certs.get(..n).context("certificates")?;
        let pins = PinDir::new("snis");
        let server = Server::terminator(
            &env.sni_user,
            &env.dir.join(format!("scale-{n}")),
            listen,
            hosts,
            backend.addr,
            Some(Xdp {
                interface: &pair.server_if,
                pin_dir: &pins,
            }),
            Some(&pair.server.name),
            SERVER_CPU,
        )?;
        let rss = server.rss_bytes();
        // Names spread over all the hosts (each connection another host, round-robin).
        let step = (n / 997).max(1);
        let picked: Vec<&HostCert> = hosts.iter().step_by(step).collect();
        let target = Target {
            addr: listen,
            names: names(&picked),
            netns: Some(client_ns.clone()),
            cpu: LOAD_CPU,
        };
        let mut rates = Vec::new();
        for _ in 0..env.rounds {
            rates.push(measure(&server, &target, false, Op::Handshake, env)?.0);
        }
        results.push((
            n,
            server.startup,
            rss,
            Spread::of(&rates).median,
            picked.len(),
        ));
        drop(server);
    }
    let Some(&(_, start10, rss10, rate10, _)) = results.first() else {
        bail!("no scale result");
    };
    let mut rows = Vec::new();
    for &(n, startup, rss, rate, spread) in &results {
        rows.push(Row {
            section: "scale",
            case: format!("{n} hosts: handshakes/s"),
            unit: "handshakes/s",
            value: rate,
            baseline_name: "10 hosts",
            baseline: Some(rate10),
            better: Better::Higher,
            goal: (n >= 100_000).then_some(Goal::Ratio(0.95)),
            spread: None,
            above: None,
            note: format!(
                "names round-robin over {spread} of the hosts, spread evenly; {} runs of {} s, median",
                env.rounds,
                env.run.as_secs()
            ),
        });
        rows.push(Row {
            section: "scale",
            case: format!("{n} hosts: start-up to the first handshake"),
            unit: "s",
            value: startup.as_secs_f64(),
            baseline_name: "10 hosts",
            baseline: Some(start10.as_secs_f64()),
            better: Better::Lower,
            goal: None,
            spread: None,
            above: None,
            note: format!("{:.1} µs per host", startup.as_secs_f64() * 1e6 / n as f64),
        });
        rows.push(Row {
            section: "scale",
            case: format!("{n} hosts: resident memory after start-up"),
            unit: "MiB",
            value: rss as f64 / 1048576.0,
            baseline_name: "10 hosts",
            baseline: Some(rss10 as f64 / 1048576.0),
            better: Better::Lower,
            goal: None,
            spread: None,
            above: None,
            note: format!("{:.1} KiB per host", rss as f64 / 1024.0 / n as f64),
        });
    }
    Ok(rows)
}

/// Resident memory per idle connection, one server at a time holding them.
fn idle_memory(
    env: &Env,
    servers: &[(&Server, Target)],
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    // Each connection is two sockets in the server (client and backend) and two here (client
    // and backend): the open-file limit caps n, which only ever lowers it a little.
    let cap = usize::try_from(env.nofile.saturating_sub(200) / 2).unwrap_or(usize::MAX);
    let n = if env.quick { 1_000 } else { 10_000 }.min(cap);
    if n < 10_000 && !env.quick {
        notes.push(format!(
            "idle memory: {n} connections, not 10,000: the open-file limit here is {} per process and cannot be raised (no CAP_SYS_RESOURCE); each connection holds two sockets in the server and two in the bench process",
            env.nofile
        ));
    }
    let mut per_conn = Vec::new();
    for (server, t) in servers {
        let config = load::client_config(false)?;
        let before = server.rss_bytes();
        let held = load::idle(t, &config, n, 8)?;
        std::thread::sleep(Duration::from_millis(500));
        let after = server.rss_bytes();
        per_conn.push(after.saturating_sub(before) as f64 / n as f64);
        drop(held);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(servers
        .iter()
        .zip(&per_conn)
        .skip(1)
        .map(|((server, _), theirs)| Row {
            section: "terminator",
            case: format!("resident memory per idle TLS connection ({n} connections)"),
            unit: "bytes",
            value: per_conn[0],
            baseline_name: server.name,
            baseline: Some(*theirs),
            better: Better::Lower,
            goal: Some(Goal::Ratio(0.5)),
            spread: None,
            above: None,
            note: "server RSS (all its processes) with the connections open minus before, / n; each connection after one request".into(),
        })
        .collect())
}
