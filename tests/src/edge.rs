//! A whole edge for the end-to-end tests: two network namespaces joined by a veth pair,
//! `sni-user run` in the server one with the classifier on its veth and the terminator behind
//! it, started from a config file the test can rewrite and reload. Stopped (by its PID), its
//! pins removed and its namespaces deleted on drop, whatever the test did.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus, Output},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    netns::{run, unique, wait_until, ChildGuard, Pair, SERVER_V4, SERVER_V6},
    pki::Pki,
    sni_user_bin, PinDir,
};

/// The terminator's port, watched by the classifier.
pub const PORT: u16 = 8443;

/// What differs between the tests' edges.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Prefix of the pin directory's name (tells whose pins are left after a crash).
    pub pin_prefix: &'static str,
    /// Names of the test certificate (`edge.pem`), which every host and `[default]` use.
    pub names: Vec<&'static str>,
    /// Also listen on the server's IPv6 address.
    pub listen_v6: bool,
    /// Serve `/metrics` on the server's IPv4 address at this port.
    pub metrics_port: Option<u16>,
    /// Switch to this user after start-up; the control socket is then in a directory of its
    /// own that `sni-user` makes (and hands over, to remove it at exit).
    pub user: Option<&'static str>,
    /// Environment of `sni-user run`.
    pub env: Vec<(&'static str, &'static str)>,
}

/// The namespaces, `sni-user run` and its files (fields drop in order: the process first,
/// the namespaces last).
pub struct Edge {
    run: Option<ChildGuard>,
    /// Where its maps are pinned.
    pub pin_dir: PinDir,
    /// Its control socket.
    pub control: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its standard output and error.
    pub log: PathBuf,
    /// The test CA, the certificate and the files of this edge.
    pub pki: Pki,
    setup: Setup,
    /// The namespaces and the veth.
    pub pair: Pair,
}

impl Edge {
    /// Starts the edge with `body`: top-level keys, then `[[host]]` blocks, where `CERT` and
    /// `KEY` stand for the test certificate and its key.
    pub fn start(setup: Setup, body: &str) -> Self {
        Self::start_in(Pair::new(), setup, body)
    }

    /// As [`Edge::start`], in namespaces the test made first (to start a peer in them, such
    /// as an ACME CA, before the edge).
    pub fn start_in(pair: Pair, setup: Setup, body: &str) -> Self {
        let pki = Pki::new();
        pki.leaf("edge", &setup.names);
        let pin_dir = PinDir::new(setup.pin_prefix);
        let control = match setup.user {
            None => pki.path(&format!("{}.sock", unique("ctl"))),
            Some(_) => PathBuf::from("/tmp")
                .join(unique("sni-run"))
                .join("ctl.sock"),
        };
        let config = pki.path("edge.toml");
        let log = pki.path("run.log");
        let mut edge = Self {
            run: None,
            pin_dir,
            control,
            config,
            log,
            pki,
            setup,
            pair,
        };
        edge.rewrite(body);
        edge.spawn();
        edge
    }

    fn spawn(&mut self) {
        let mut cmd = self.pair.server.cmd_net_only([sni_user_bin()]);
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.envs(self.setup.env.iter().copied());
        self.run = Some(ChildGuard::spawn_ready(
            cmd,
            "sni-user run",
            &self.log,
            "ready;",
        ));
    }

    /// Stops `sni-user run` (SIGTERM) and starts it again with the same config file; its log
    /// starts anew.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "stopping for a restart: {status:?}"
        );
        self.spawn();
    }

    /// The config around `body` (see [`Edge::start`]).
    pub fn config_text(&self, body: &str) -> String {
        // Top-level keys of `body` (before its first table) go first, as TOML wants.
        let split = if body.trim_start().starts_with('[') {
            0
        } else {
            body.find("\n[").map_or(body.len(), |i| i + 1)
        };
        let (top, body) = body.split_at(split);
        let cert = format!("{:?}", self.pki.path("edge.pem").display().to_string());
        let key = format!("{:?}", self.pki.path("edge.key").display().to_string());
        let mut head = String::from(top);
        if let Some(user) = self.setup.user {
            head += &format!("user = {user:?}\n");
        }
        if let Some(port) = self.setup.metrics_port {
            head += &format!("metrics = \"{SERVER_V4}:{port}\"\n");
        }
        let v6 = if self.setup.listen_v6 {
            format!("[[listen]]\naddress = \"[{SERVER_V6}]:{PORT}\"\n")
        } else {
            String::new()
        };
        format!(
            r#"{head}
pin_dir = {pin:?}
control_socket = {control:?}
workers = 2
[xdp]
interfaces = [{server_if:?}]
mode = "auto"
ports = [{PORT}]
[[listen]]
address = "{SERVER_V4}:{PORT}"
{v6}[default]
cert = {cert}
key = {key}
backend = "builtin"
{body}
"#,
            pin = self.pin_dir.display().to_string(),
            control = self.control.display().to_string(),
            server_if = self.pair.server_if,
            body = body.replace("CERT", &cert).replace("KEY", &key),
        )
    }

    /// Rewrites the config file around `body` (applied at start, or by a reload).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.config, self.config_text(body)).unwrap();
    }

    /// The PID of `sni-user run`.
    pub fn pid(&self) -> u32 {
        self.run.as_ref().expect("running").pid()
    }

    /// Stops `sni-user run` with SIGTERM; its exit status, if it exited within 10 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.run
            .take()
            .expect("running")
            .signal_and_wait("TERM", Duration::from_secs(10))
    }

    /// `sni-user reload --control` against the running process.
    pub fn reload(&self) -> Output {
        Command::new(sni_user_bin())
            .args(["reload", "--control"])
            .arg(&self.control)
            .output()
            .unwrap()
    }

    /// `sni-user stats --json`, classifier and terminator.
    pub fn stats(&self) -> Value {
        let out = run(Command::new(sni_user_bin())
            .args(["stats", "--json", "--pin-dir"])
            .arg(&*self.pin_dir)
            .arg("--control")
            .arg(&self.control));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits (10 s at most) until the terminator has no open connection, then a little for
    /// the last FIN/ACKs to pass the classifier; the counters then, and whether it got idle.
    pub fn settle(&self) -> (Value, bool) {
        let idle = wait_until(Duration::from_secs(10), || {
            self.stats()["terminator"]["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["active"] == 0)
        });
        thread::sleep(Duration::from_millis(300));
        (self.stats(), idle)
    }

    /// As [`Edge::settle`], failing the test when connections stay open.
    pub fn settled(&self) -> Value {
        let (s, idle) = self.settle();
        assert!(idle, "connections still open: {s}");
        s
    }

    /// curl in the client namespace, to `https://{name}:8443/` at `addr`, at most 10 s, the
    /// certificate checked against the test CA; add arguments before running it.
    pub fn curl_cmd(&self, name: &str, addr: &str) -> Command {
        let mut cmd = self
            .pair
            .client
            .cmd(["curl", "-sS", "--max-time", "10", "--cacert"]);
        cmd.arg(self.pki.path("ca.pem"))
            .args(["--resolve", &format!("{name}:{PORT}:{addr}")])
            .arg(format!("https://{name}:{PORT}/"));
        cmd
    }

    /// One request with curl to the IPv4 address; its output, whatever the exit status.
    pub fn curl(&self, name: &str) -> Output {
        self.curl_cmd(name, SERVER_V4).output().unwrap()
    }

    /// What `sni-user run` printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            let _ = run.signal_and_wait("TERM", Duration::from_secs(10));
        }
    }
}
