//! ACME end to end (issue 18): hosts with `cert = "acme"` get certificates from Pebble (Let's
//! Encrypt's test CA, Debian's package) in the client namespace, whose TLS-ALPN-01 validation
//! reaches the terminator through the veth and the classifier. Issuance for two hosts (one
//! with two names), each verified by curl against Pebble's root; a restart that reuses the
//! account and the certificates without ordering; a renewal forced by a long `renew_before`
//! that swaps the certificate while a connection made before it goes on; and a refused
//! validation, reported with the CA's problem and counted, while the host is served with its
//! placeholder (against a Pebble that requires external account binding); and two machines
//! sharing the state directory, either answering the other's challenges.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use sni_tests::{
    edge::{Edge, Setup, PORT},
    netns::{wait_until, Pair, SERVER_V4},
    pebble::Pebble,
    require_root,
};

const ONE: &str = "one.sni-test.example";
const TWO: &str = "two.sni-test.example";
const WWW_TWO: &str = "www.two.sni-test.example";
/// A name Pebble's DNS does not know: its validation fails.
const NOWHERE: &str = "nowhere.sni-test.example";

/// An external account binding Pebble is given (the key: 48 random bytes, base64url).
const EAB_KID: &str = "sni-test-kid";
const EAB_KEY: &str = "MflbXTZcxYUnwl6_W59OQcIrZjvN7Z5bebaIXlI7U-TzVa8c2eZJAz2Vtl1thG9s";
/// The edge's metrics port (in the server namespace).
const METRICS_PORT: u16 = 9469;
/// How long an issuance may take (Pebble validates at once; the task orders at start).
const ISSUANCE: Duration = Duration::from_secs(60);

/// `[acme]` for `pebble`, then `hosts`.
fn config(pebble: &Pebble, state: &std::path::Path, extra: &str, hosts: &[&[&str]]) -> String {
    let mut body = format!(
        "[acme]\ndirectory = {:?}\ndirectory_ca = {:?}\nstate_dir = {:?}\n\
         contact = [\"mailto:ops@sni-test.example\"]\n{extra}",
        pebble.directory_url(),
        pebble.directory_ca().display().to_string(),
        state.display().to_string(),
    );
    for names in hosts {
        body += &format!("[[host]]\nnames = {names:?}\ncert = \"acme\"\nbackend = \"builtin\"\n");
    }
    body
}

/// Pebble in a new pair's client namespace (its DNS leading `known` to the server), and an
/// edge in the server one with `hosts` (each a list of names, `cert = "acme"`) and `extra`
/// in `[acme]`. Fields drop in order: the edge first.
struct World {
    edge: Edge,
    pebble: Pebble,
    state: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    fn start(setup: Setup, known: &[&str], hosts: &[&[&str]]) -> Self {
        Self::start_with(setup, known, hosts, None)
    }

    /// As [`World::start`], Pebble requiring external account binding with `eab` (key id,
    /// base64url MAC key), which the edge's `[acme]` then gives.
    fn start_with(
        setup: Setup,
        known: &[&str],
        hosts: &[&[&str]],
        eab: Option<(&str, &str)>,
    ) -> Self {
        require_root();
        let pair = Pair::new();
        let dir = tempfile::tempdir().unwrap();
        let pebble = Pebble::start_with(&pair, dir.path(), known, false, eab);
        let state = dir.path().join("state");
        let extra = eab.map_or_else(String::new, |(kid, key)| {
            format!("eab = {{ kid = {kid:?}, hmac_key = {key:?} }}\n")
        });
        let edge = Edge::start_in(pair, setup, &config(&pebble, &state, &extra, hosts));
        Self {
            edge,
            pebble,
            state,
            _dir: dir,
        }
    }

    /// The edge's log and Pebble's, for a failed assertion.
    fn why(&self) -> String {
        format!("{}\nPebble:\n{}", self.edge.log_text(), self.pebble.log())
    }
}

/// curl in the client namespace to `name`, trusting only Pebble's root: (success, output).
fn curl(edge: &Edge, pebble: &Pebble, name: &str) -> (bool, String) {
    let out = edge
        .pair
        .client
        .cmd(["curl", "-sS", "--max-time", "10", "--cacert"])
        .arg(pebble.root_path())
        .args(["--resolve", &format!("{name}:{PORT}:{SERVER_V4}")])
        .arg(format!("https://{name}:{PORT}/"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The serial and issuer of the certificate served for `name`.
fn served_cert(edge: &Edge, name: &str) -> String {
    let out = edge
        .pair
        .client
        .cmd([
            "sh",
            "-c",
            &format!(
                "timeout 10 openssl s_client -connect {SERVER_V4}:{PORT} -servername {name} \
                 </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer"
            ),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sni-user check` of the edge's config, in its namespace (`ip netns exec`, whose /sys
/// shows the namespace's interfaces).
fn check(edge: &Edge) -> String {
    let out = edge
        .pair
        .server
        .cmd([sni_tests::sni_user_bin()])
        .args(["check", "--config"])
        .arg(&edge.config)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How many lines of the edge's log contain `what`.
fn logged(edge: &Edge, what: &str) -> usize {
    edge.log_text().matches(what).count()
}

/// A TLS connection held open by `openssl s_client` in the client namespace, its output
/// read line by line.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    fn open(edge: &Edge, name: &str) -> Self {
        let mut child = edge
            .pair
            .client
            .cmd(["openssl", "s_client", "-quiet", "-connect"])
            .arg(format!("{SERVER_V4}:{PORT}"))
            .args(["-servername", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Sends a request for `name`; whether the builtin backend's answer came back.
    fn request(&mut self, name: &str) -> bool {
        let req = format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n");
        if self
            .child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(req.as_bytes())
            .is_err()
        {
            return false;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("you reached host") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn acme_hosts_are_issued_kept_across_a_restart_and_renewed_live() {
    let hosts: &[&[&str]] = &[&[ONE], &[TWO, WWW_TWO]];
    let mut world = World::start(
        Setup {
            pin_prefix: "snia",
            names: vec!["default.example"],
            metrics_port: Some(METRICS_PORT),
            ..Setup::default()
        },
        &[ONE, TWO, WWW_TWO],
        hosts,
    );
    let (pebble, state) = (&world.pebble, world.state.clone());
    let edge = &mut world.edge;
    let why = |edge: &Edge| format!("{}\nPebble:\n{}", edge.log_text(), pebble.log());
    assert!(
        wait_until(ISSUANCE, || logged(edge, "ACME certificate in use") >= 2),
        "no certificates: {}",
        why(edge)
    );
    // Each name is served its host's certificate, which Pebble's root vouches for.
    for (name, label) in [(ONE, ONE), (TWO, TWO), (WWW_TWO, TWO)] {
        let (ok, out) = curl(edge, pebble, name);
        assert!(
            ok && out.contains(&format!("you reached host {label:?}")),
            "{name}: {out}"
        );
    }
    let s = edge.stats();
    let g = &s["terminator"]["global"];
    assert!(g["acme_challenges"].as_u64().unwrap() >= 3, "{s}");
    // stats, metrics and check tell the state of each ACME host.
    for h in s["terminator"]["acme"].as_array().unwrap() {
        assert_eq!(h["placeholder"], false, "{s}");
        assert_eq!(h["issued"], 1, "{s}");
        assert!(
            h["not_after"].as_i64().unwrap() > h["last_issued"].as_i64().unwrap(),
            "{s}"
        );
    }
    let metrics = String::from_utf8_lossy(
        &edge
            .pair
            .client
            .cmd(["curl", "-sS", "--max-time", "10"])
            .arg(format!("http://{SERVER_V4}:{METRICS_PORT}/metrics"))
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    // Every ACME metric the alert rules use is served (`operations.rs` checks the others).
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/alerts.yml"),
    )
    .unwrap();
    for used in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sni_acme_"))
    {
        assert!(
            metrics.contains(&format!("\n{used}{{")),
            "{used} not served:\n{metrics}"
        );
    }
    for line in [
        format!("sni_acme_certificates_issued_total{{host=\"{ONE}\"}} 1"),
        format!("sni_acme_placeholder{{host=\"{TWO}\"}} 0"),
        format!("sni_tls_certificate_expiry_timestamp_seconds{{host=\"{TWO}\"}} "),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    let check = check(edge);
    assert!(
        check.contains(&format!("{ONE} ")) && check.contains("acme: "),
        "{check}"
    );
    assert!(!check.contains("placeholder"), "{check}");
    assert_eq!(logged(edge, "ACME account created"), 1, "{}", why(edge));
    // The state directory: private, with what a restart needs.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    for f in [
        "account.json",
        &format!("certs/{ONE}.pem"),
        &format!("certs/{TWO}.pem"),
    ] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A restart reuses the account and the certificates: nothing is ordered.
    let before = served_cert(edge, ONE);
    assert!(before.contains("serial="), "{before}");
    edge.restart();
    assert!(
        wait_until(Duration::from_secs(20), || logged(
            edge,
            "ACME account loaded"
        ) == 1),
        "{}",
        why(edge)
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(logged(edge, "ACME certificate issued"), 0, "{}", why(edge));
    assert_eq!(served_cert(edge, ONE), before);
    let (ok, out) = curl(edge, pebble, ONE);
    assert!(ok, "{out}");

    // A renewal: a connection made before it (handshake done, no request yet: the builtin
    // backend answers one request a connection) is served after it; new ones get the new
    // certificate.
    let mut held = Held::open(edge, ONE);
    assert!(
        wait_until(Duration::from_secs(10), || edge.stats()["terminator"]
            ["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == ONE && h["active"] == 1)),
        "the held connection"
    );
    // The reload also names a ticket key file, made unreadable as a key file right after:
    // taking the renewed certificates in (which reads it, as a reload does) fails until it
    // is mended, and is tried again meanwhile.
    let keys = state.with_file_name("ticket.keys");
    let key = sni_tests::netns::run(
        std::process::Command::new("sh").args(["-c", "openssl rand 80 | base64 -w0"]),
    )
    .stdout;
    std::fs::write(&keys, &key).unwrap();
    edge.rewrite(&format!(
        "ticket_keys = {:?}\n{}",
        keys.display().to_string(),
        config(pebble, &state, "renew_before = 20000.0\n", hosts)
    ));
    let out = edge.reload();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&keys, "not a key\n").unwrap();
    assert!(
        wait_until(ISSUANCE, || logged(
            edge,
            "ACME certificate not taken in yet"
        ) >= 1),
        "no failed swap: {}",
        why(edge)
    );
    assert_eq!(logged(edge, "ACME certificate in use"), 0, "{}", why(edge));
    std::fs::write(&keys, &key).unwrap();
    assert!(
        wait_until(ISSUANCE, || logged(edge, "ACME certificate in use") >= 2),
        "no renewal: {}",
        why(edge)
    );
    assert_eq!(
        logged(
            edge,
            "renew_before is longer than the certificate's lifetime"
        ),
        2,
        "{}",
        why(edge)
    );
    let after = served_cert(edge, ONE);
    assert!(
        after.contains("serial=") && after != before,
        "{before} / {after}"
    );
    let (ok, out) = curl(edge, pebble, ONE);
    assert!(ok, "{out}");
    assert!(held.request(ONE), "the connection made before the renewal");
}

#[test]
fn a_refused_validation_is_reported_and_the_placeholder_served_meanwhile() {
    // Pebble's DNS knows ONE, not NOWHERE: NOWHERE's validation cannot reach the edge. This
    // Pebble also requires external account binding, which the edge's `[acme] eab` gives.
    let world = World::start_with(
        Setup {
            pin_prefix: "snib",
            names: vec!["default.example"],
            ..Setup::default()
        },
        &[ONE],
        &[&[NOWHERE]],
        Some((EAB_KID, EAB_KEY)),
    );
    let edge = &world.edge;
    assert!(
        wait_until(ISSUANCE, || logged(edge, "ACME order failed") >= 1),
        "{}",
        world.why()
    );
    let log = edge.log_text();
    assert_eq!(logged(edge, "ACME account created"), 1, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("ACME order failed"))
        .unwrap();
    // The CA's problem document, and which name.
    assert!(
        line.contains(NOWHERE) && line.contains("urn:ietf:params:acme:error"),
        "{line}"
    );
    // Meanwhile the host is served with its self-signed placeholder, counted.
    let cert = served_cert(edge, NOWHERE);
    assert!(cert.contains("sni ACME placeholder"), "{cert}");
    let s = edge.stats();
    assert!(
        s["terminator"]["global"]["acme_placeholder_handshakes"]
            .as_u64()
            .unwrap()
            >= 1,
        "{s}"
    );
    assert_eq!(logged(edge, "ACME certificate in use"), 0, "{log}");
    let acme = &s["terminator"]["acme"][0];
    assert_eq!(acme["host"], NOWHERE, "{s}");
    assert_eq!(acme["placeholder"], true, "{s}");
    assert!(acme["failures"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        acme["last_error"]
            .as_str()
            .unwrap()
            .contains("urn:ietf:params:acme:error"),
        "{s}"
    );
    let table = std::process::Command::new(sni_tests::sni_user_bin())
        .args(["stats", "--pin-dir"])
        .arg(&*edge.pin_dir)
        .arg("--control")
        .arg(&edge.control)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("placeholder (none yet)") && table.contains("urn:ietf:params:acme:error"),
        "{table}"
    );
    let check = check(edge);
    assert!(
        check.contains("acme: none yet (self-signed placeholder)"),
        "{check}"
    );
}

/// Two machines sharing `state_dir` (here two processes in the server namespace): the one
/// that orders publishes its challenge there, and the other, which the name leads the CA to,
/// answers it.
#[test]
fn a_fleet_sharing_the_state_directory_answers_challenges_on_any_machine() {
    // The machine the name leads to (SERVER_V4, behind the classifier).
    let world = World::start(
        Setup {
            pin_prefix: "snic",
            names: vec!["default.example"],
            ..Setup::default()
        },
        &[ONE],
        &[&[ONE]],
    );
    let (edge, pebble, state) = (&world.edge, &world.pebble, &world.state);
    assert!(
        wait_until(ISSUANCE, || logged(edge, "ACME certificate in use") == 1),
        "{}",
        world.why()
    );
    let answered = |edge: &Edge| {
        edge.stats()["terminator"]["global"]["acme_challenges"]
            .as_u64()
            .unwrap()
    };
    let before = answered(edge);
    // Another machine of the fleet, which no validation reaches (it listens on the
    // namespace's loopback), renews: its challenge must be answered by the edge.
    let other = edge.pki.path("other.toml");
    std::fs::write(
        &other,
        format!(
            "control_socket = {:?}\n[[listen]]\naddress = \"127.0.0.1:18443\"\n\
             [default]\nreject = true\n{}",
            edge.pki.path("other.sock").display().to_string(),
            config(pebble, state, "renew_before = 20000.0\n", &[&[ONE]])
        ),
    )
    .unwrap();
    let log = edge.pki.path("other.log");
    let mut cmd = edge.pair.server.cmd_net_only([sni_tests::sni_user_bin()]);
    cmd.args(["run", "--config"]).arg(&other);
    let _other = sni_tests::netns::ChildGuard::spawn_ready(cmd, "other sni-user", &log, "ready;");
    let other_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(ISSUANCE, || other_log().contains("ACME certificate issued")
            || other_log().contains("ACME order failed")),
        "{}",
        other_log()
    );
    assert!(
        other_log().contains("ACME certificate issued"),
        "{}\nPebble:\n{}",
        other_log(),
        pebble.log()
    );
    assert!(answered(edge) > before, "the edge answered no challenge");
    assert!(
        !state.join("challenges").read_dir().unwrap().any(|_| true),
        "challenges left published"
    );
}
