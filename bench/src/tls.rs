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
    report::{Better, Goal, Row},
    servers::{self, HostCert, Server, Xdp},
};

/// Core of the servers under test.
const SERVER_CPU: usize = 0;
/// Core of the load generator and the backend.
const LOAD_CPU: usize = 1;

/// A client namespace fit for tens of thousands of connections a run: the client closes
/// first, so its ports wait in TIME_WAIT; without reuse they run out within seconds and
/// connect() crawls (seen here: 250 handshakes/s instead of 6,000). Namespace-local settings.
fn client_sysctls(pair: &Pair) -> Result<()> {
    let out = pair
        .client
        .cmd([
            "sysctl",
            "-w",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ])
        .output()
        .context("running sysctl in the client namespace")?;
    if !out.status.success() {
        bail!("sysctl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Settings shared by the sections.
pub struct Env {
    sni_user: PathBuf,
    quick: bool,
    dir: PathBuf,
    /// One timed run.
    run: Duration,
    /// Rounds per compared pair.
    rounds: usize,
    /// Client threads of a closed-loop run.
    threads: usize,
    /// Open files per process.
    nofile: u64,
    /// Only the idle-memory case of the terminator section (for profiling it).
    pub memory_only: bool,
}

impl Env {
    pub fn new(sni_user: &Path, quick: bool) -> Result<Self> {
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
            quick,
            dir,
            run: Duration::from_secs(if quick { 1 } else { 5 }),
            rounds: if quick { 1 } else { 3 },
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
fn turn(round: usize, k: usize) -> usize {
    (round + k) % 2
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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
    let (mut attached, mut detached) = (Vec::new(), Vec::new());
    let (mut cpu_att, mut cpu_det) = (Vec::new(), Vec::new());
    for round in 0..env.rounds.max(2) {
        for with_xdp in [turn(round, 0) == 0, turn(round, 1) == 0] {
            let pins = PinDir::new("snib");
            let server = Server::terminator(
                &env.sni_user,
                &env.dir.join(format!("live-{round}-{with_xdp}")),
                listen,
                &hosts,
                backend.addr,
                with_xdp.then_some(Xdp {
                    interface: &pair.server_if,
                    pin_dir: &pins,
                }),
                Some(&pair.server.name),
                SERVER_CPU,
            )?;
            let (rate, per_cpu, _) = measure(&server, &target, false, Op::Handshake, env)?;
            if with_xdp {
                attached.push(rate);
                cpu_att.push(per_cpu);
            } else {
                detached.push(rate);
                cpu_det.push(per_cpu);
            }
            drop(server);
        }
    }
    let n = attached.len();
    Ok(vec![
        Row {
            section: "live",
            case: "TLS handshakes/s through a veth, classifier attached vs detached".into(),
            unit: "handshakes/s",
            value: median(attached),
            baseline_name: "detached",
            baseline: Some(median(detached)),
            better: Better::Higher,
            goal: Some(Goal::Ratio(0.97)),
            spread: None,
            above: None,
            note: format!(
                "{n} alternating runs of {} s each, {} clients, median",
                env.run.as_secs(),
                env.threads
            ),
        },
        Row {
            section: "live",
            case: "the same, per server CPU-second".into(),
            unit: "handshakes/CPU-s",
            value: median(cpu_att),
            baseline_name: "detached",
            baseline: Some(median(cpu_det)),
            better: Better::Higher,
            goal: None,
            spread: None,
            above: None,
            note: "XDP runs in softirq, partly charged to whatever runs on the core".into(),
        },
    ])
}

/// The terminator against nginx (issue item 3).
pub fn terminator_vs_nginx(
    env: &Env,
    hello_cost_ns: Option<f64>,
) -> Result<(Vec<Row>, Vec<String>)> {
    let hosts = servers::make_certs(&env.dir.join("vs-certs"), &["bench.test".to_owned()])?;
    let host = hosts.first().context("a certificate")?;
    let backend = Backend::start(None, LOAD_CPU)?;
    let ours_addr: SocketAddr = format!("127.0.0.1:{}", servers::free_port()?).parse()?;
    let nginx_addr: SocketAddr = format!("127.0.0.1:{}", servers::free_port()?).parse()?;
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
    let target = |addr| Target {
        addr,
        names: names(&[host]),
        netns: None,
        cpu: LOAD_CPU,
    };
    let both = [(&ours, target(ours_addr)), (&nginx, target(nginx_addr))];
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let secs = env.run.as_secs();
    let how = format!(
        "{} alternating runs of {secs} s, {} clients, median",
        env.rounds, env.threads
    );

    if env.memory_only {
        return idle_memory(env, &both, &mut notes).map(|r| (vec![r], notes));
    }
    // Closed-loop cases, alternating servers each round.
    let mut full = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let mut resumed = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let mut requests = [Vec::new(), Vec::new()];
    let mut resumed_share = [1.0f64, 1.0f64];
    for round in 0..env.rounds {
        for k in 0..2 {
            let i = turn(round, k);
            let (server, t) = &both[i];
            let (r, c, _) = measure(server, t, false, Op::Handshake, env)?;
            full[i].0.push(r);
            full[i].1.push(c);
            let (r, c, share) = measure(server, t, true, Op::Handshake, env)?;
            resumed[i].0.push(r);
            resumed[i].1.push(c);
            resumed_share[i] = resumed_share[i].min(share);
            let (r, _, _) = measure(server, t, false, Op::Request, env)?;
            requests[i].push(r);
        }
    }
    for (i, s) in resumed_share.iter().enumerate() {
        if *s < 0.9 {
            bail!(
                "{}: only {:.0}% of the resumed-case handshakes resumed",
                both[i].0.name,
                s * 100.0
            );
        }
    }
    let [f0, f1] = full;
    let (ours_rate, ours_cpu) = (median(f0.0), median(f0.1));
    let (nginx_rate, nginx_cpu) = (median(f1.0), median(f1.1));
    let [r0, r1] = resumed;
    let [q0, q1] = requests;
    let row = |case: &str, unit, value, baseline, better, goal: Option<f64>, note: &str| Row {
        section: "terminator",
        case: case.to_owned(),
        unit,
        value,
        baseline_name: "nginx",
        baseline: Some(baseline),
        better,
        goal: goal.map(Goal::Ratio),
        spread: None,
        above: None,
        note: note.to_owned(),
    };
    rows.push(row(
        "full handshakes per second",
        "handshakes/s",
        ours_rate,
        nginx_rate,
        Better::Higher,
        None,
        &how,
    ));
    rows.push(row(
        "full handshakes per server CPU-second",
        "handshakes/CPU-s",
        ours_cpu,
        nginx_cpu,
        Better::Higher,
        Some(1.3),
        &how,
    ));
    rows.push(row(
        "resumed handshakes per second",
        "handshakes/s",
        median(r0.0),
        median(r1.0),
        Better::Higher,
        None,
        &how,
    ));
    rows.push(row(
        "resumed handshakes per server CPU-second",
        "handshakes/CPU-s",
        median(r0.1),
        median(r1.1),
        Better::Higher,
        Some(1.3),
        &format!(
            "{how}; ≥ {:.0}% resumed",
            resumed_share.iter().copied().fold(1.0, f64::min) * 100.0
        ),
    ));
    rows.push(row(
        "new connection per small HTTP request, to the backend and back",
        "requests/s",
        median(q0),
        median(q1),
        Better::Higher,
        Some(1.0),
        &how,
    ));

    // Bulk, kept alive.
    let mut bulk = [Vec::new(), Vec::new()];
    for round in 0..env.rounds {
        for k in 0..2 {
            let i = turn(round, k);
            let config = load::client_config(false)?;
            bulk[i].push(load::bulk(&both[i].1, &config, 4, env.run)? / 1e6);
        }
    }
    let [b0, b1] = bulk;
    rows.push(row(
        "kept-alive bulk download (16 MiB answers, 4 connections)",
        "MB/s",
        median(b0),
        median(b1),
        Better::Higher,
        Some(1.0),
        &format!("{} alternating runs of {secs} s, median", env.rounds),
    ));

    // Latency at half the slower server's peak, the same offered load for both.
    let rate = 0.5 * ours_rate.min(nginx_rate);
    let mut lat = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for round in 0..env.rounds {
        for k in 0..2 {
            let i = turn(round, k);
            let config = load::client_config(false)?;
            let (sorted, errors) = load::open_loop(&both[i].1, &config, rate, 32, env.run)?;
            if errors * 100 > sorted.len() as u64 {
                bail!(
                    "{}: {errors} failed handshakes at {rate:.0}/s",
                    both[i].0.name
                );
            }
            lat[i].0.push(load::percentile(&sorted, 50.0) / 1000.0);
            lat[i].1.push(load::percentile(&sorted, 99.0) / 1000.0);
        }
    }
    let [l0, l1] = lat;
    let lhow = format!("open loop at {rate:.0} handshakes/s (half the slower peak), from the scheduled start; {} runs of {secs} s, median", env.rounds);
    rows.push(row(
        "handshake latency p50",
        "ms",
        median(l0.0),
        median(l1.0),
        Better::Lower,
        None,
        &lhow,
    ));
    rows.push(row(
        "handshake latency p99",
        "ms",
        median(l0.1),
        median(l1.1),
        Better::Lower,
        Some(1.0),
        &lhow,
    ));

    rows.push(idle_memory(env, &both, &mut notes)?);

    if let Some(cost) = hello_cost_ns {
        let per_handshake_ns = 1e9 / ours_cpu.max(1e-9);
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
        "terminator vs nginx: both pinned to core {SERVER_CPU} with one worker, TLS 1.3, X25519, TLS_AES_128_GCM_SHA256 (the client offers only these), the same ECDSA P-256 certificate, logging off, the same backend; nginx {} with the stream module (TLS termination to a TCP backend, as the terminator does). The load generator (rustls client, no certificate check) and the backend run on core {LOAD_CPU}.",
        crate::report::command_line(&["nginx", "-v"]).trim_start_matches("nginx version: ")
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
        results.push((n, server.startup, rss, median(rates), picked.len()));
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
fn idle_memory(env: &Env, both: &[(&Server, Target); 2], notes: &mut Vec<String>) -> Result<Row> {
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
    let mut per_conn = [0.0f64; 2];
    for (i, (server, t)) in both.iter().enumerate() {
        let config = load::client_config(false)?;
        let before = server.rss_bytes();
        let held = load::idle(t, &config, n, 8)?;
        std::thread::sleep(Duration::from_millis(500));
        let after = server.rss_bytes();
        per_conn[i] = after.saturating_sub(before) as f64 / n as f64;
        drop(held);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Row {
        section: "terminator",
        case: format!("resident memory per idle TLS connection ({n} connections)"),
        unit: "bytes",
        value: per_conn[0],
        baseline_name: "nginx",
        baseline: Some(per_conn[1]),
        better: Better::Lower,
        goal: Some(Goal::Ratio(0.5)),
            spread: None,
            above: None,
        note: "server RSS (all its processes) with the connections open minus before, / n; each connection after one request".into(),
    })
}
