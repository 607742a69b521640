//! The servers under test, each started pinned to the server core with logging off: the
//! terminator (`sni-user run`, one worker) and nginx (Debian's, one worker, stream module),
//! with the same certificate, the same TLS settings and the same backend. Ended by PID.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use sni_tests::netns::ChildGuard;

/// A host's certificate and key files.
#[derive(Clone, Debug)]
pub struct HostCert {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether the classifier drops it (`action = "drop"`).
    pub drop: bool,
}

/// Makes an ECDSA P-256 self-signed certificate for each name, in `dir`.
pub fn make_certs(dir: &Path, names: &[String]) -> Result<Vec<HostCert>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = rcgen::CertificateParams::new(vec![name.clone()])?.self_signed(&key)?;
        let cert_path = dir.join(format!("h{i}.pem"));
        let key_path = dir.join(format!("h{i}.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        out.push(HostCert {
            name: name.clone(),
            cert: cert_path,
            key: key_path,
            drop: false,
        });
    }
    Ok(out)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running server.
pub struct Server {
    pub name: &'static str,
    guard: ChildGuard,
    /// Time from spawn to the first finished handshake.
    pub startup: Duration,
}

/// The classifier to attach along with the terminator.
pub struct Xdp<'a> {
    pub interface: &'a str,
    pub pin_dir: &'a Path,
}

impl Server {
    /// `sni-user run` with one worker on the server core; in `netns` (its name) if given.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per case, all named"
    )]
    pub fn terminator(
        bin: &Path,
        dir: &Path,
        listen: SocketAddr,
        hosts: &[HostCert],
        backend: SocketAddr,
        xdp: Option<Xdp<'_>>,
        netns: Option<&str>,
        cpu: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut text = String::new();
        let _ = writeln!(text, "workers = 1");
        let _ = writeln!(
            text,
            "control_socket = {:?}",
            dir.join("control.sock").display().to_string()
        );
        if let Some(x) = &xdp {
            let _ = writeln!(text, "pin_dir = {:?}", x.pin_dir.display().to_string());
            let _ = writeln!(
                text,
                "[xdp]\ninterfaces = [{:?}]\nports = [{}]",
                x.interface,
                listen.port()
            );
        }
        let _ = writeln!(
            text,
            "[limits]\nmax_connections = 1000000\nmax_connections_per_ip = 1000000\nhandshake_timeout = 30.0"
        );
        let _ = writeln!(text, "[[listen]]\naddress = \"{listen}\"");
        let _ = writeln!(text, "[default]\nreject = true");
        for h in hosts {
            let _ = writeln!(
                text,
                "[[host]]\nnames = [{:?}]\ncert = {:?}\nkey = {:?}\nbackend = \"{backend}\"",
                h.name,
                h.cert.display().to_string(),
                h.key.display().to_string()
            );
            if h.drop {
                let _ = writeln!(text, "action = \"drop\"");
            }
        }
        let config = dir.join("sni.toml");
        std::fs::write(&config, text)?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg("taskset");
                c
            }
            None => Command::new("taskset"),
        };
        cmd.arg("-c").arg(cpu.to_string());
        // A profiler to run the terminator under, e.g. "valgrind --tool=dhat".
        if let Ok(wrap) = std::env::var("SNI_BENCH_WRAP") {
            cmd.args(wrap.split_whitespace());
        }
        cmd.arg(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "off");
        Self::start(
            "sni",
            cmd,
            dir,
            listen,
            &hosts.first().map(|h| h.name.clone()).unwrap_or_default(),
            netns,
        )
    }

    /// nginx: one worker on the server core, TLS 1.3 with X25519, stream proxy to `backend`,
    /// no access log, errors only at `crit`.
    pub fn nginx(
        dir: &Path,
        listen: SocketAddr,
        host: &HostCert,
        backend: SocketAddr,
        cpu: usize,
        nofile: u64,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
        if !Path::new(module).is_file() {
            bail!("{module} is missing: install libnginx-mod-stream (cargo xtask bench does)");
        }
        let mask: String = format!("{:b}", 1u64 << cpu);
        let text = format!(
            "load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity {mask};
worker_rlimit_nofile {nofile};
pid {pid};
error_log {err} crit;
events {{ worker_connections 100000; }}
stream {{
    server {{
        listen {listen} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_session_tickets on;
        proxy_pass {backend};
    }}
}}
",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("error.log").display(),
            cert = host.cert.display(),
            key = host.key.display(),
        );
        let config = dir.join("nginx.conf");
        std::fs::write(&config, text)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .arg("nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"));
        Self::start("nginx", cmd, dir, listen, &host.name, None)
    }

    /// Debian's HAProxy terminating TLS in `mode tcp` to `backend`: one thread on `cpu`,
    /// TLS 1.3 with X25519 only (as the terminator and nginx here), tickets on (HAProxy's
    /// default), no logging.
    pub fn haproxy(
        dir: &Path,
        listen: SocketAddr,
        host: &HostCert,
        backend: SocketAddr,
        cpu: usize,
        nofile: u64,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // HAProxy takes the chain and the key in one file.
        let pem = dir.join("haproxy.pem");
        let mut both = std::fs::read(&host.cert)?;
        both.extend_from_slice(&std::fs::read(&host.key)?);
        std::fs::write(&pem, both)?;
        // Two descriptors a connection (client and backend), within the open-file limit,
        // which HAProxy otherwise tries to raise and refuses to start when it cannot.
        let maxconn = nofile.saturating_sub(100) / 2;
        let text = format!(
            "global
    nbthread 1
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind {listen} ssl crt {pem} ssl-min-ver TLSv1.3 curves X25519
    default_backend plain
backend plain
    server backend {backend}
",
            pem = pem.display(),
        );
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, text)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .arg("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config);
        Self::start("haproxy", cmd, dir, listen, &host.name, None)
    }

    fn start(
        name: &'static str,
        cmd: Command,
        dir: &Path,
        addr: SocketAddr,
        sni: &str,
        netns: Option<&str>,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let t = Instant::now();
        let mut guard = ChildGuard::spawn(cmd, name, &log);
        let config = crate::load::client_config(false)?;
        let server_name = rustls::pki_types::ServerName::try_from(sni.to_owned())?;
        let ns_path = netns.map(|n| PathBuf::from(format!("/run/netns/{n}")));
        // Wait (bounded) for a first full handshake, from the client side's namespace.
        let deadline = t + Duration::from_secs(600);
        loop {
            if let Some(status) = guard.exited() {
                bail!(
                    "{name} exited ({status}) while starting:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let attempt = std::thread::scope(|s| {
                s.spawn(|| -> Result<()> {
                    if let Some(ns) = &ns_path {
                        crate::load::enter_netns(ns)?;
                    }
                    // A short connect timeout: attaching XDP to a veth resets its queues,
                    // and a SYN lost then would wait out TCP's 1 s and 3 s retransmissions.
                    crate::load::handshake_within(
                        &config,
                        &server_name,
                        addr,
                        Duration::from_millis(100),
                    )
                    .map(|_| ())
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
            });
            if attempt.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not answer a handshake within 600 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            name,
            startup: t.elapsed(),
            guard,
        })
    }

    /// The server's processes: the one started, or for nginx its master and workers.
    fn pids(&self) -> Vec<u32> {
        let top = self.guard.pid();
        let mut pids = vec![top];
        // taskset/nsenter exec the server, so `top` is the server itself; nginx's workers
        // are its children.
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                    == Some(top)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// CPU seconds (user + system) used so far by the server's processes.
    pub fn cpu_seconds(&self) -> f64 {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                // Fields after the command: state(0) ppid(1) ... utime(11) stime(12).
                let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                (u + s) / tick
            })
            .sum()
    }

    /// Descriptors open in the server's processes (its sockets, listeners and files).
    pub fn open_fds(&self) -> usize {
        self.pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map(Iterator::count)
            .sum()
    }

    /// Resident memory of the server's processes, bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .sum()
    }
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}
