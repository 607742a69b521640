//! The real program on a real link: two network namespaces joined by a veth pair at MTU 1500,
//! `sni-user run` attached to the server side, an `openssl s_server` behind it, and real
//! clients (`openssl s_client`, `curl`) connecting with chosen names from the other side.
//! `sni-user stats --json`, run as another process, must show exactly what was sent.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use sni_common::maps::MAP_GLOBAL;
use sni_tests::{
    find_host,
    netns::{run, unique, wait_until, ChildGuard, Netns, Pair, SERVER_V4, SERVER_V6},
    pki::Pki,
    sni_user_bin, PinDir,
};

const PORT: &str = "8443";

/// Two namespaces, the veth between them, a TLS server, and a temp dir; all removed on drop.
struct Link {
    client: Netns,
    server: Netns,
    server_if: String,
    dir: tempfile::TempDir,
    _pki: Pki,
    _tls_server: ChildGuard,
}

impl Link {
    fn new() -> Self {
        let Pair {
            client,
            server,
            server_if,
        } = Pair::new();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        pki.leaf("server", &["sni-test"]);
        let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
        let mut cmd = server.cmd(["openssl", "s_server", "-accept", PORT, "-www", "-quiet"]);
        cmd.arg("-cert").arg(&cert).arg("-key").arg(&key);
        let tls_server =
            ChildGuard::spawn(cmd, "openssl s_server", &dir.path().join("s_server.log"));
        let listening = wait_until(Duration::from_secs(10), || {
            let out = server
                .cmd(["ss", "-Hltn", "sport", "=", ":8443"])
                .output()
                .unwrap();
            !out.stdout.is_empty()
        });
        assert!(listening, "openssl s_server did not listen on {PORT}");
        Self {
            client,
            server,
            server_if,
            dir,
            _pki: pki,
            _tls_server: tls_server,
        }
    }

    fn pin_dir(&self) -> PinDir {
        PinDir::new("sni-test-")
    }

    /// Starts `sni-user run` in the server namespace and waits until its maps are pinned.
    fn start_classifier(&self, pin_dir: &Path, known: &[&str]) -> ChildGuard {
        let config = self.dir.path().join(format!("{}.toml", unique("cfg")));
        // One [[host]] per name: each its own counters.
        let hosts: String = known
            .iter()
            .map(|n| format!("[[host]]\nnames = [{n:?}]\n"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "pin_dir = {:?}\ncontrol_socket = {:?}\n[xdp]\ninterfaces = [{:?}]\n\
                 mode = \"auto\"\nports = [{PORT}]\n{hosts}",
                pin_dir.display().to_string(),
                self.dir
                    .path()
                    .join(format!("{}.sock", unique("ctl")))
                    .display()
                    .to_string(),
                self.server_if,
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{}.log", unique("run")));
        let mut cmd = self.server.cmd_net_only([sni_user_bin()]);
        cmd.arg("run").arg("--config").arg(&config);
        // Ready once it says so (stale pins of a killed run may exist before that).
        let child = ChildGuard::spawn_ready(cmd, "sni-user run", &log, "ready;");
        assert!(pin_dir.join(MAP_GLOBAL).exists(), "ready but not pinned");
        child
    }

    fn s_client(&self, name: Option<&str>, addr: &str) {
        let connect = format!("{addr}:{PORT}");
        let mut cmd = self
            .client
            .cmd(["timeout", "10", "openssl", "s_client", "-connect", &connect]);
        match name {
            Some(n) => cmd.args(["-servername", n]),
            None => cmd.arg("-noservername"),
        };
        let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("BEGIN CERTIFICATE"),
            "no handshake with {name:?}: {text}"
        );
    }

    fn curl(&self, name: &str, addr: &str) {
        let resolve = format!("{name}:{PORT}:{addr}");
        let url = format!("https://{name}:{PORT}/");
        let out = run(&mut self.client.cmd([
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            &url,
        ]));
        assert!(!out.stdout.is_empty(), "empty answer for {name}");
    }

    fn xdp_attached(&self) -> bool {
        let out = run(&mut self
            .server
            .cmd(["ip", "-d", "link", "show", "dev", &self.server_if]));
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

fn stats(pin_dir: &Path) -> Value {
    let out = run(Command::new(sni_user_bin())
        .args(["stats", "--json", "--pin-dir"])
        .arg(pin_dir));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stats_show_exactly_the_client_hellos_sent() {
    let link = Link::new();
    let pin_dir = link.pin_dir();
    let mut classifier = link.start_classifier(&pin_dir, &["alpha.test", "idle.test"]);
    assert!(link.xdp_attached(), "no XDP program on {}", link.server_if);

    // A second classifier on the same pin directory is refused while the first runs.
    let out = link
        .server
        .cmd_net_only([sni_user_bin()])
        .arg("run")
        .args(["--iface", &link.server_if, "--pin-dir"])
        .arg(&*pin_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another sni-user is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for _ in 0..3 {
        link.s_client(Some("alpha.test"), SERVER_V4);
    }
    for _ in 0..2 {
        link.s_client(Some("Beta.Test."), SERVER_V4);
    }
    for _ in 0..2 {
        link.curl("gamma.test", SERVER_V4);
    }
    link.curl("v6.test", &format!("[{SERVER_V6}]"));
    link.s_client(Some("v6.test"), &format!("[{SERVER_V6}]"));
    link.s_client(None, SERVER_V4);

    let s = stats(&pin_dir);
    let expect = [
        ("alpha.test", 3, true),
        ("beta.test", 2, false),
        ("gamma.test", 2, false),
        ("v6.test", 2, false),
        ("idle.test", 0, true),
    ];
    for (name, hellos, configured) in expect {
        let h = find_host(&s, name).unwrap_or_else(|| panic!("{name} missing from {s}"));
        assert_eq!(h["client_hellos"], hellos, "{name}: {h}");
        // Every packet of the flows from the ClientHello on: at least the ClientHello and the
        // client's next segment (its Finished, or an ACK).
        assert!(
            h["packets"].as_u64().unwrap() >= 2 * hellos,
            "{name}: the flows' packets: {h}"
        );
        assert_eq!(h["configured"], configured, "{name}: {h}");
        assert_eq!(h["ech"], 0, "{name}: {h}");
        if hellos > 0 {
            assert!(h["bytes"].as_u64().unwrap() > 200 * hellos, "{name}: {h}");
        }
    }
    assert_eq!(s["hosts"].as_array().unwrap().len(), expect.len(), "{s}");
    let g = &s["global"];
    assert_eq!(g["client_hellos"], 10, "{s}");
    assert_eq!(g["sni"], 9, "{s}");
    assert_eq!(g["no_sni"], 1, "{s}");
    assert_eq!(g["ech"], 0, "{s}");
    assert_eq!(g["malformed"], 0, "{s}");
    assert_eq!(g["incomplete"], 0, "{s}");
    assert_eq!(g["errors"], 0, "{s}");
    let watched = g["tcp_watched"].as_u64().unwrap();
    assert!(watched >= 10 * 3, "{s}");
    assert!(g["packets"].as_u64().unwrap() >= watched, "{s}");

    // The table form names the hosts too.
    let out = run(Command::new(sni_user_bin())
        .args(["stats", "--pin-dir"])
        .arg(&*pin_dir));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().nth(1).unwrap().starts_with("alpha.test"),
        "{table}"
    );

    // SIGTERM: detached, pins removed, clean exit.
    let status = classifier
        .signal_and_wait("TERM", Duration::from_secs(10))
        .expect("sni-user stopped on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!link.xdp_attached(), "XDP still attached after SIGTERM");
    assert!(!pin_dir.join(MAP_GLOBAL).exists(), "pins left behind");
}

#[test]
fn a_failed_start_leaves_no_pin_directory() {
    let link = Link::new();
    let pin_dir = link.pin_dir();
    // The pin directory is made, then attaching fails: it is removed again, so that a later
    // run (as another user) does not find a root-owned directory it cannot clean.
    let out = link
        .server
        .cmd_net_only([sni_user_bin()])
        .arg("run")
        .args(["--iface", "nosuchif0", "--pin-dir"])
        .arg(&*pin_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nosuchif0"), "{err}");
    assert!(!pin_dir.exists(), "pin directory left after a failed start");
}

#[test]
fn killed_classifier_leaves_no_program_and_restarts() {
    let link = Link::new();
    let pin_dir = link.pin_dir();
    let mut first = link.start_classifier(&pin_dir, &["alpha.test"]);
    assert!(link.xdp_attached());
    first
        .signal_and_wait("KILL", Duration::from_secs(10))
        .expect("killed");
    // The bpf_link died with the process: nothing stays attached.
    assert!(
        wait_until(Duration::from_secs(5), || !link.xdp_attached()),
        "XDP program left attached after SIGKILL"
    );
    // Its pins are stale: `stats` says so rather than show counters that no longer move.
    assert!(pin_dir.join(MAP_GLOBAL).exists());
    let out = Command::new(sni_user_bin())
        .args(["stats", "--pin-dir"])
        .arg(&*pin_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no longer running"),
        "{err}"
    );
    // A new start replaces them and counts from zero.
    let mut second = link.start_classifier(&pin_dir, &["alpha.test"]);
    link.s_client(Some("alpha.test"), SERVER_V4);
    let s = stats(&pin_dir);
    assert_eq!(
        find_host(&s, "alpha.test").unwrap()["client_hellos"],
        1,
        "{s}"
    );
    second
        .signal_and_wait("TERM", Duration::from_secs(10))
        .expect("stopped");
}
