//! Network namespaces, veth pairs and child processes that clean up after themselves, even when
//! the test fails (their `Drop` runs during the panic's unwinding).

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{prefix}{pid % 10^5}x{n}` (≤ 15 bytes, so it
/// also fits an interface name).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop (which also destroys the veths inside it).
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        run(&mut ns.cmd(["ip", "link", "set", "lo", "up"]));
        ns
    }

    /// A command run in the namespace's network stack only, sharing this process's mounts
    /// (`ip netns exec` also remounts /sys, hiding the host's bpffs and its pins).
    pub fn cmd_net_only<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .args(args);
        c
    }

    /// A command to run inside the namespace.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Creates a veth pair `a_if` in `a` and `b_if` in `b`, both up with `mtu`, and assigns the
/// given addresses (CIDR) on each side.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
    mtu: u32,
) {
    run(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        &a.name,
        "mtu",
        &mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        &b.name,
        "mtu",
        &mtu.to_string(),
    ]));
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        // No duplicate address detection on the link, for the addresses below and for the
        // link-local one the kernel adds at link up: with it, that one is announced about 2 s
        // later, and a Chromium started in that window fails its page load with
        // ERR_NETWORK_CHANGED (one CI run). This way every address is usable at once and
        // every address event comes before `veth` returns.
        run(&mut ns.cmd([
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{ifname}.accept_dad=0"),
        ]));
        for addr in addrs {
            run(&mut ns.cmd(["ip", "addr", "add", addr, "dev", ifname]));
        }
        run(&mut ns.cmd(["ip", "link", "set", ifname, "up"]));
    }
}

/// The client address of [`Pair`] (IPv4).
pub const CLIENT_V4: &str = "198.18.0.1";
/// The server address of [`Pair`] (IPv4).
pub const SERVER_V4: &str = "198.18.0.2";
/// The client address of [`Pair`] (IPv6).
pub const CLIENT_V6: &str = "fd00:5e1::1";
/// The server address of [`Pair`] (IPv6).
pub const SERVER_V6: &str = "fd00:5e1::2";

/// A client and a server namespace joined by a veth pair at MTU 1500 (a typical edge link)
/// with [`CLIENT_V4`]/[`CLIENT_V6`] on one side and [`SERVER_V4`]/[`SERVER_V6`] on the other.
/// The namespaces, and so the veths, go on drop.
pub struct Pair {
    /// The client side.
    pub client: Netns,
    /// The server side.
    pub server: Netns,
    /// The veth end in the server namespace (where XDP attaches).
    pub server_if: String,
}

impl Pair {
    /// Creates both namespaces and the link.
    pub fn new() -> Self {
        crate::require_root();
        let client = Netns::new("snc");
        let server = Netns::new("sns");
        let client_if = unique("vc");
        let server_if = unique("vs");
        veth(
            &client,
            &client_if,
            &[&format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64")],
            &server,
            &server_if,
            &[&format!("{SERVER_V4}/24"), &format!("{SERVER_V6}/64")],
            1500,
        );
        Self {
            client,
            server,
            server_if,
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// A child process ended on drop: SIGTERM by its PID, then SIGKILL if it lingers.
pub struct ChildGuard {
    child: Option<Child>,
    label: String,
}

impl ChildGuard {
    /// Starts `cmd` with its output sent to `log`.
    pub fn spawn(mut cmd: Command, label: &str, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = file.try_clone().expect("dup log");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label} ({cmd:?}): {e}"));
        Self {
            child: Some(child),
            label: label.to_owned(),
        }
    }

    /// Starts `cmd` and waits (20 s at most) until `marker` appears in its log; panics with
    /// the log if it exits or stays silent.
    pub fn spawn_ready(cmd: Command, label: &str, log: &Path, marker: &str) -> Self {
        let mut child = Self::spawn(cmd, label, log);
        let ready = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(marker)
                || child.exited().is_some()
        });
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            ready && child.exited().is_none(),
            "{label} did not start:\n{text}"
        );
        child
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process and waits up to `timeout` for it.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                self.child = None;
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if child.try_wait().ok().flatten().is_some() {
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                eprintln!("{} did not stop on SIGTERM; killing", self.label);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Polls `ready` every 50 ms until it is true or `timeout` passes; returns whether it became
/// true.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
