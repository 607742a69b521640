//! The flood section (issue 16, item 3): what 1,000 connections a second to a host the
//! classifier drops cost the terminator, and what they take from the clients of another host.
//!
//! One terminator with the classifier attached serves `served.bench.test` and drops
//! `dropped.bench.test`. Rounds alternate between a quiet run (a closed loop of handshakes
//! to the served host) and a flooded one (the same loop, while another thread opens 1,000
//! connections a second to the dropped host, each sending its ClientHello and holding its
//! socket to the end of the run, as an attacker who never closes would). The terminator's
//! open descriptors and resident memory are sampled every 10 ms in both.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use rustls::{pki_types::ServerName, ClientConnection};
use sni_tests::{netns::Pair, PinDir};

use crate::{
    backend::Backend,
    load::{self, Op, Target},
    report::{Better, Row, Spread},
    servers::{self, Server, Xdp},
    tls::{client_sysctls, turn, Env, LOAD_CPU, SERVER_CPU},
};

/// Connections a second to the dropped host, as issue 16 names.
const FLOOD_RATE: u32 = 1000;

/// The most of what the sampler saw in one run.
#[derive(Clone, Copy, Default)]
struct Peak {
    fds: usize,
    rss: u64,
}

/// Samples `server` every 10 ms until `stop` is set.
fn sample(server: &Server, stop: &AtomicBool) -> Peak {
    let mut peak = Peak::default();
    while !stop.load(Ordering::Relaxed) {
        peak.fds = peak.fds.max(server.open_fds());
        peak.rss = peak.rss.max(server.rss_bytes());
        std::thread::sleep(Duration::from_millis(10));
    }
    peak
}

/// The ClientHello a client of `name` sends first.
fn client_hello(name: &ServerName<'static>) -> Result<Vec<u8>> {
    let mut conn = ClientConnection::new(load::client_config(false)?, name.clone())?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Opens [`FLOOD_RATE`] connections a second to `addr` for `run`, each sending `hello` and
/// held open until the end; returns how many connected.
fn flood(target: &Target, hello: &[u8], run: Duration) -> Result<usize> {
    target.enter()?;
    let start = Instant::now();
    let every = Duration::from_secs(1) / FLOOD_RATE;
    let mut held = Vec::new();
    for i in 0u32.. {
        let at = start + every * i;
        if at >= start + run {
            break;
        }
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Ok(mut s) = TcpStream::connect_timeout(&target.addr, Duration::from_secs(1)) else {
            continue;
        };
        if s.write_all(hello).is_ok() {
            held.push(s);
        }
    }
    Ok(held.len())
}

/// The rows: served handshakes/s flooded vs quiet, and the terminator's peak descriptors and
/// memory in both.
pub fn run(env: &Env) -> Result<Vec<Row>> {
    let pair = Pair::new();
    client_sysctls(&pair)?;
    let server_ns = PathBuf::from(format!("/run/netns/{}", pair.server.name));
    let client_ns = PathBuf::from(format!("/run/netns/{}", pair.client.name));
    let backend = Backend::start(Some(server_ns), LOAD_CPU)?;
    let mut hosts = servers::make_certs(
        &env.dir.join("flood-certs"),
        &[
            "served.bench.test".to_owned(),
            "dropped.bench.test".to_owned(),
        ],
    )?;
    if let Some(dropped) = hosts.get_mut(1) {
        dropped.drop = true;
    }
    let listen: SocketAddr = format!("{}:443", sni_tests::netns::SERVER_V4).parse()?;
    let served = Target {
        addr: listen,
        names: Arc::new(vec![ServerName::try_from("served.bench.test")?]),
        netns: Some(client_ns),
        cpu: LOAD_CPU,
    };
    let hello = client_hello(&ServerName::try_from("dropped.bench.test")?)?;
    let pins = PinDir::new("snif");
    let server = Server::terminator(
        &env.sni_user,
        &env.dir.join("flood"),
        listen,
        &hosts,
        backend.addr,
        Some(Xdp {
            interface: &pair.server_if,
            pin_dir: &pins,
        }),
        Some(&pair.server.name),
        SERVER_CPU,
    )?;
    let (mut rate, mut fds, mut rss) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    let mut connected = 0;
    for round in 0..env.rounds.max(2) {
        for flooded in [turn(round, 0) == 0, turn(round, 1) == 0] {
            let stop = AtomicBool::new(false);
            let (tally, peak, sent) = std::thread::scope(|s| -> Result<_> {
                let sampler = s.spawn(|| sample(&server, &stop));
                let attacker = flooded.then(|| s.spawn(|| flood(&served, &hello, env.run)));
                let tally = load::closed_loop(&served, false, Op::Handshake, env.threads, env.run);
                let sent = match attacker {
                    Some(a) => a
                        .join()
                        .map_err(|_| anyhow::anyhow!("the flood panicked"))??,
                    None => 0,
                };
                stop.store(true, Ordering::Relaxed);
                let peak = sampler
                    .join()
                    .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
                Ok((tally?, peak, sent))
            })?;
            connected += sent;
            let k = usize::from(flooded);
            rate[k].push(tally.rate());
            fds[k].push(peak.fds as f64);
            rss[k].push(peak.rss as f64 / f64::from(1 << 20));
        }
    }
    let n = rate[0].len();
    let sockets = connected / n.max(1);
    let [quiet_rate, flood_rate] = rate;
    let [quiet_fds, flood_fds] = fds;
    let [quiet_rss, flood_rss] = rss;
    let how = format!(
        "{n} alternating runs of {} s each, {} clients of the served host, median; the flood \
         connected {sockets} sockets a run, each held to the run's end",
        env.run.as_secs(),
        env.threads
    );
    drop(server);
    Ok(vec![
        Row {
            note: how,
            ..Row::compared(
                "flood",
                format!(
                    "handshakes/s to a served host during {FLOOD_RATE} connections/s to a \
                     dropped one"
                ),
                "handshakes/s",
                Better::Higher,
                &flood_rate,
                "no flood",
                &quiet_rate,
            )
        },
        Row {
            above: Some(Spread::paired(&flood_fds, &quiet_fds)),
            note: format!(
                "sampled every 10 ms; had the terminator held each dropped connection to \
                 its handshake deadline, the {sockets} sockets of a run's flood would all be \
                 open at its end"
            ),
            ..Row::compared(
                "flood",
                "the terminator's open descriptors at their peak, flooded vs quiet",
                "descriptors",
                Better::Lower,
                &flood_fds,
                "no flood",
                &quiet_fds,
            )
        },
        Row {
            above: Some(Spread::paired(&flood_rss, &quiet_rss)),
            note: "sampled every 10 ms, the same runs".into(),
            ..Row::compared(
                "flood",
                "the terminator's resident memory at its peak, flooded vs quiet",
                "MiB",
                Better::Lower,
                &flood_rss,
                "no flood",
                &quiet_rss,
            )
        },
    ])
}
