//! The load generator: blocking rustls clients on threads pinned to the load core. The same
//! generator drives every server, so the servers are the only thing that differs.
//!
//! Why our own: the cases need TLS 1.3 with X25519 alone, SNI, a new connection per request,
//! resumed sessions, handshake latency from a fixed schedule and 10,000 idle connections; wrk
//! cannot restrict the groups or resume, and h2load speaks HTTP/2 (the backend here is plain
//! TCP behind TLS). The client checks no certificate (it is not what is measured, and keeps the
//! load core's work per handshake below the server's): a benchmark client only.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Moves the calling thread into the network namespace at `path` (/run/netns/NAME).
pub fn enter_netns(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))?;
    Ok(())
}

/// Debian's wrk (OpenSSL) against `addr` for `duration`: `conns` connections on one thread on
/// core `cpu`, every request on a new connection (`Connection: close`), the ClientHello
/// naming `name`. wrk takes the name from the URL, so it runs in a mount namespace of its
/// own where a hosts file maps `name` to the address (bind-mounted over /etc/hosts for that
/// process alone). Requests per second.
pub fn wrk(
    addr: SocketAddr,
    name: &str,
    conns: usize,
    duration: Duration,
    cpu: usize,
    dir: &Path,
) -> Result<f64> {
    let hosts = dir.join("wrk-hosts");
    std::fs::write(&hosts, format!("{} {name}\n", addr.ip()))?;
    let url = format!("https://{name}:{}/", addr.port());
    let script = format!(
        "mount --bind {} /etc/hosts && exec taskset -c {cpu} wrk -t1 -c{conns} -d{}s -H 'Connection: close' {url}",
        hosts.display(),
        duration.as_secs().max(1)
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .context("running wrk (cargo xtask bench installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk reported failures: {}\n{text}", line.trim());
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
}

/// CPU seconds (user + system) this process has used so far: the load generator's threads
/// and the in-process backend.
pub fn own_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns
/// the limit. (Raising the hard limit needs CAP_SYS_RESOURCE, which this machine kind's root
/// does not have: its hard limit is 20,000.)
pub fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

/// Accepts any certificate: see the module comment.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// TLS 1.3, X25519 only, AES-128-GCM only; session resumption on or off.
pub fn client_config(resume: bool) -> Result<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Where and how the clients connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// SNI names, used round-robin.
    pub names: Arc<Vec<ServerName<'static>>>,
    /// The client namespace, if not this one.
    pub netns: Option<PathBuf>,
    /// The load core.
    pub cpu: usize,
}

impl Target {
    /// Readies the calling client thread: pinned to the load core, in the client namespace.
    pub fn enter(&self) -> Result<()> {
        pin_thread(self.cpu);
        match &self.netns {
            Some(ns) => enter_netns(ns),
            None => Ok(()),
        }
    }
}

/// One connection's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Handshake, close_notify, and read to the server's close.
    Handshake,
    /// Handshake, one small request and its answer through to the backend, close.
    Request,
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// A finished handshake.
pub fn handshake(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    addr: SocketAddr,
) -> Result<(ClientConnection, TcpStream)> {
    handshake_within(config, name, addr, IO_TIMEOUT)
}

/// A finished handshake, giving up on the connect after `connect_timeout`.
pub fn handshake_within(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<(ClientConnection, TcpStream)> {
    let mut stream = connect(addr, connect_timeout)?;
    let mut conn = ClientConnection::new(config.clone(), name.clone())?;
    while conn.is_handshaking() {
        let (rd, wr) = conn.complete_io(&mut stream)?;
        if rd == 0 && wr == 0 && conn.is_handshaking() {
            bail!("the server closed during the handshake");
        }
    }
    // Flush our Finished.
    while conn.wants_write() {
        conn.write_tls(&mut stream)?;
    }
    Ok((conn, stream))
}

/// Sends `request` and reads until `want` bytes of answer (head and body) have come.
fn exchange(
    conn: &mut ClientConnection,
    stream: &mut TcpStream,
    request: &[u8],
    want: u64,
) -> Result<u64> {
    conn.writer().write_all(request)?;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while got < want {
        while conn.wants_write() {
            conn.write_tls(stream)?;
        }
        if conn.read_tls(stream)? == 0 {
            bail!("the server closed after {got} of {want} bytes");
        }
        conn.process_new_packets()?;
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => bail!("close_notify after {got} of {want} bytes"),
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(got)
}

/// The answer to [`REQUEST`]: head and 2-byte body.
const SMALL_ANSWER: u64 = 40;

/// One connection doing `op`.
pub fn one(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    addr: SocketAddr,
    op: Op,
) -> Result<()> {
    one_counted(config, name, addr, op).map(|_| ())
}

/// What a closed-loop run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub errors: u64,
    pub resumed: u64,
    pub elapsed: Duration,
}

impl Tally {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `threads` clients doing `op` back to back for `duration`. Each has its own client
/// config, so with `resume` each resumes from the tickets of its own last connection (a
/// shared store keeps only a few tickets per name, too few for all the threads).
pub fn closed_loop(
    target: &Target,
    resume: bool,
    op: Op,
    threads: usize,
    duration: Duration,
) -> Result<Tally> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tally = Tally::default();
    let mut first_error = None;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<(Tally, Option<String>)> {
                    target.enter()?;
                    let config = client_config(resume)?;
                    let mut mine = Tally::default();
                    let mut first = None;
                    let mut i = t;
                    while Instant::now() < deadline {
                        let name = &target.names[i % target.names.len()];
                        i += threads;
                        match one_counted(&config, name, target.addr, op) {
                            Ok(was_resumed) => {
                                mine.ok += 1;
                                mine.resumed += u64::from(was_resumed);
                            }
                            Err(e) => {
                                mine.errors += 1;
                                first.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    }
                    Ok((mine, first))
                })
            })
            .collect();
        for h in handles {
            let (mine, first) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
            tally.ok += mine.ok;
            tally.errors += mine.errors;
            tally.resumed += mine.resumed;
            if first_error.is_none() {
                first_error = first;
            }
        }
        Ok(())
    })?;
    tally.elapsed = start.elapsed();
    if tally.ok == 0 || tally.errors * 100 > tally.ok {
        bail!(
            "{} of {} connections failed (first: {})",
            tally.errors,
            tally.ok + tally.errors,
            first_error.unwrap_or_default()
        );
    }
    Ok(tally)
}

/// One connection doing `op`; whether its handshake resumed a session.
fn one_counted(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    addr: SocketAddr,
    op: Op,
) -> Result<bool> {
    let (mut conn, mut stream) = handshake(config, name, addr)?;
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    finish(&mut conn, &mut stream, op)?;
    Ok(resumed)
}

fn finish(conn: &mut ClientConnection, stream: &mut TcpStream, op: Op) -> Result<()> {
    match op {
        Op::Handshake => {
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(stream)?;
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Read to the server's close, through TLS (its session tickets are kept for
            // resumption): the server's side of the connection is then done too.
            loop {
                match conn.read_tls(stream) {
                    Ok(0) => break,
                    Ok(_) => {
                        if conn.process_new_packets().is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Op::Request => {
            exchange(conn, stream, REQUEST, SMALL_ANSWER)?;
            conn.send_close_notify();
            let _ = conn.write_tls(stream);
        }
    }
    Ok(())
}

/// Kept-alive bulk download: `conns` connections each asking for `/bulk` again and again
/// for `duration`; bytes of answer per second.
pub fn bulk(
    target: &Target,
    config: &Arc<ClientConfig>,
    conns: usize,
    duration: Duration,
) -> Result<f64> {
    let bytes = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + duration;
    let want = crate::backend::BULK_BYTES
        + format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            crate::backend::BULK_BYTES
        )
        .len() as u64;
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for t in 0..conns {
            let target = target.clone();
            let config = config.clone();
            let bytes = &bytes;
            handles.push(s.spawn(move || -> Result<()> {
                target.enter()?;
                let name = &target.names[t % target.names.len()];
                let (mut conn, mut stream) = handshake(&config, name, target.addr)?;
                while Instant::now() < deadline {
                    let n = exchange(
                        &mut conn,
                        &mut stream,
                        b"GET /bulk HTTP/1.1\r\nHost: bench\r\n\r\n",
                        want,
                    )?;
                    bytes.fetch_add(n, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a bulk client panicked"))??;
        }
        Ok(())
    })?;
    Ok(bytes.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Open loop: handshakes started on a fixed schedule of `rate` per second for `duration`,
/// spread over `threads`; each one's latency is counted from its scheduled start (so a
/// server that falls behind is charged for the wait). Returns sorted latencies in µs and
/// the failures.
pub fn open_loop(
    target: &Target,
    config: &Arc<ClientConfig>,
    rate: f64,
    threads: usize,
    duration: Duration,
) -> Result<(Vec<u64>, u64)> {
    let interval = Duration::from_secs_f64(threads as f64 / rate);
    let per_thread = (duration.as_secs_f64() * rate / threads as f64).ceil() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let errors = AtomicU64::new(0);
    let mut all = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let target = target.clone();
            let config = config.clone();
            let errors = &errors;
            handles.push(s.spawn(move || -> Result<Vec<u64>> {
                target.enter()?;
                let offset = interval.mul_f64(t as f64 / threads as f64);
                let mut lat = Vec::with_capacity(per_thread as usize);
                for j in 0..per_thread {
                    let at = start + offset + interval.mul_f64(j as f64);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let name = &target.names[(t + j as usize) % target.names.len()];
                    match one(&config, name, target.addr, Op::Handshake) {
                        Ok(()) => lat.push(at.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(lat)
            }));
        }
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            );
        }
        Ok(())
    })?;
    all.sort_unstable();
    Ok((all, errors.load(Ordering::Relaxed)))
}

/// The `p`-th percentile (0..=100) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64
}

/// `n` connections, each through a handshake and one request, then left idle; held until
/// the returned value drops.
pub fn idle(
    target: &Target,
    config: &Arc<ClientConfig>,
    n: usize,
    threads: usize,
) -> Result<Vec<(ClientConnection, TcpStream)>> {
    let mut held = Vec::with_capacity(n);
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let target = target.clone();
            let config = config.clone();
            let count = n / threads + usize::from(t < n % threads);
            handles.push(
                s.spawn(move || -> Result<Vec<(ClientConnection, TcpStream)>> {
                    target.enter()?;
                    let mut mine = Vec::with_capacity(count);
                    for j in 0..count {
                        let name = &target.names[(t + j) % target.names.len()];
                        let (mut conn, mut stream) = handshake(&config, name, target.addr)
                            .with_context(|| format!("idle connection {}", mine.len()))?;
                        exchange(&mut conn, &mut stream, REQUEST, SMALL_ANSWER)?;
                        mine.push((conn, stream));
                    }
                    Ok(mine)
                }),
            );
        }
        for h in handles {
            held.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            );
        }
        Ok(())
    })?;
    Ok(held)
}
