//! `sni-user run` as a TLS terminator on loopback, with the clients and backends the tests
//! drive it with.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    netns::{run, unique, wait_until, ChildGuard},
    pki::Pki,
    sni_user_bin,
};

/// `sni-user run` with a terminator-only config; stopped (by PID) on drop.
pub struct Term {
    /// The running process.
    pub child: ChildGuard,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its control socket.
    pub control: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Its config file.
    pub config: PathBuf,
}

impl Term {
    /// Starts with `body` (TOML after the generated `[[listen]]` and `control_socket`).
    pub fn start(pki: &Pki, body: &str) -> Self {
        Self::start_on(pki, "127.0.0.1:0", body)
    }

    /// Starts listening on `listen` (port 0: any free port).
    pub fn start_on(pki: &Pki, listen: &str, body: &str) -> Self {
        Self::start_env(pki, listen, body, &[])
    }

    /// As [`Term::start_on`], with environment variables for the process (e.g. RUST_LOG).
    pub fn start_env(pki: &Pki, listen: &str, body: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(pki, listen, "", body, env)
    }

    /// As [`Term::start`], with top-level keys (`top`, e.g. `ticket_keys = "…"`) before the
    /// first table.
    pub fn start_top(pki: &Pki, top: &str, body: &str) -> Self {
        Self::spawn(pki, "127.0.0.1:0", top, body, &[])
    }

    fn spawn(pki: &Pki, listen: &str, top: &str, body: &str, env: &[(&str, &str)]) -> Self {
        let control = pki.path(&format!("{}.sock", unique("ctl")));
        let config = pki.path(&format!("{}.toml", unique("term")));
        std::fs::write(
            &config,
            format!(
                "{top}control_socket = {:?}\nworkers = 2\n[[listen]]\naddress = {listen:?}\n{body}",
                control.display().to_string()
            ),
        )
        .unwrap();
        let log = pki.path(&format!("{}.log", unique("run")));
        let mut cmd = Command::new(sni_user_bin());
        cmd.arg("run").arg("--config").arg(&config);
        cmd.envs(env.iter().copied());
        let child = ChildGuard::spawn_ready(cmd, "sni-user run (terminator)", &log, "ready;");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // "terminator listening addresses=[127.0.0.1:PORT] …" or "addresses=[[::1]:PORT] …"
        let addr = text
            .split("addresses=[")
            .nth(1)
            .and_then(|r| r.split_once("] "))
            .map(|(a, _)| a)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listening address in:\n{text}"));
        Self {
            child,
            addr,
            control,
            log,
            config,
        }
    }

    /// The listening port.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// The terminator part of `sni-user stats --json`.
    pub fn stats(&self) -> Value {
        let out = run(Command::new(sni_user_bin())
            .args(["stats", "--json", "--pin-dir", "/nonexistent", "--control"])
            .arg(&self.control));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["terminator"].clone()
    }

    /// Waits until `check` holds on the stats (counters settle after connections close).
    pub fn wait_stats(&self, what: &str, check: impl Fn(&Value) -> bool) {
        let ok = wait_until(Duration::from_secs(10), || check(&self.stats()));
        assert!(
            ok,
            "{what}: {}\nlog:\n{}",
            self.stats(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.child.signal_and_wait("TERM", Duration::from_secs(10));
    }
}

/// curl to `name` on the terminator, trusting the test CA.
pub fn curl(pki: &Pki, term: &Term, name: &str, extra: &[&str]) -> Output {
    let resolve = format!("{name}:{}:127.0.0.1", term.port());
    let url = format!("https://{name}:{}/", term.port());
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &resolve])
        .args(extra)
        .arg(&url)
        .output()
        .unwrap()
}

/// openssl s_client to the terminator; stdout and stderr.
pub fn s_client(term: &Term, args: &[&str]) -> String {
    let connect = format!("127.0.0.1:{}", term.port());
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &connect])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A CA with leaves a, b, *.wild and default.example.
pub fn standard_pki() -> Pki {
    let pki = Pki::new();
    pki.leaf("a", &["a.example"]);
    pki.leaf("b", &["b.example"]);
    pki.leaf("wild", &["*.wild.example"]);
    pki.leaf("default", &["default.example"]);
    pki
}

/// Hosts of [`standard_pki`], builtin backends.
pub const HOSTS: &str = r#"
[default]
cert = "default.pem"
key = "default.key"
[[host]]
names = ["a.example"]
cert = "a.pem"
key = "a.key"
backend = "builtin"
alpn = ["h2", "http/1.1"]
[[host]]
names = ["b.example"]
cert = "b.pem"
key = "b.key"
backend = "builtin"
[[host]]
names = ["*.wild.example"]
cert = "wild.pem"
key = "wild.key"
backend = "builtin"
"#;

/// A backend owned by the test: accepts `n` connections, hands each to `serve`.
pub fn backend(
    n: usize,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        for _ in 0..n {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            serve(s);
        }
    });
    (addr, handle)
}

/// Reads until the end of the HTTP head that starts `skip` bytes in (after a PROXY header).
pub fn read_request(s: &mut TcpStream, skip: usize) -> Vec<u8> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req
        .get(skip..)
        .is_some_and(|r| r.windows(4).any(|w| w == b"\r\n\r\n"))
    {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    req
}
