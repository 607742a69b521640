//! Session tickets shared across a fleet (`ticket_keys`): real `sni-user run` processes on
//! loopback and `openssl s_client` saving a session on one and resuming it on another, with
//! TLS 1.3 and TLS 1.2; key rotation through the file while they run; a bad file at start, at
//! a change and at a reload; and a certificate rotation, after which the old certificate's
//! sessions no longer resume while the keys stay.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use sni_tests::{
    check_config, host,
    netns::{run, unique},
    sni_user_bin,
    term::{standard_pki, Term, HOSTS},
};

/// The TLS versions tickets must work with, as s_client flags.
const VERSIONS: [&str; 2] = ["-tls1_3", "-tls1_2"];

/// A new key, made the way the README says: 80 random bytes in base64 on one line.
fn new_key() -> String {
    let out = run(Command::new("openssl").args(["rand", "-base64", "80"]));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect()
}

/// The first 16 bytes of a key (its name), as hex.
fn key_name(key: &str) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "printf %s '{key}' | base64 -d | head -c 16 | od -An -tx1"
    )));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect()
}

/// Writes the key file as an operator should: a new file renamed over the old one.
fn write_keys(path: &Path, lines: &[&str]) {
    let tmp = path.with_extension(unique("new"));
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `ticket_keys = "…"` for a config.
fn top(keys: &Path) -> String {
    format!("ticket_keys = {:?}\n", keys.display().to_string())
}

/// openssl s_client to `name` on the terminator, sending one HTTP request and reading until
/// the built-in backend's answer ends the connection: TLS 1.3 tickets come after the
/// handshake, and a client that left at once might not have read them. Stdout and stderr.
fn s_client(term: &Term, name: &str, args: &[&str]) -> String {
    let connect = format!("127.0.0.1:{}", term.port());
    let mut child = Command::new("timeout")
        .args([
            "10", "openssl", "s_client", "-connect", &connect, "-ign_eof",
        ])
        .args(["-servername", name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting openssl s_client: {e}"));
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("you reached host"),
        "{name} {args:?}: no answer from the backend:\n{text}"
    );
    text
}

/// A full handshake with `term` for `name`, saving the session in `sess`.
fn save_session(term: &Term, name: &str, version: &str, sess: &Path) -> String {
    let out = s_client(term, name, &[version, "-sess_out", sess.to_str().unwrap()]);
    assert!(out.contains("New, "), "{name} {version}: {out}");
    out
}

/// Offers the session in `sess` to `term`: whether it resumed ("Reused"), panicking unless
/// the handshake finished either way.
fn resumes(term: &Term, name: &str, version: &str, sess: &Path) -> bool {
    let out = s_client(term, name, &[version, "-sess_in", sess.to_str().unwrap()]);
    let reused = out.contains("Reused, ");
    assert!(reused || out.contains("New, "), "{name} {version}: {out}");
    reused
}

/// The key name of the TLS 1.2 session ticket s_client printed (its first 16 bytes), as hex.
fn ticket_name(s_client_out: &str) -> String {
    let dump = s_client_out
        .split("TLS session ticket:")
        .nth(1)
        .unwrap_or_else(|| panic!("no session ticket in: {s_client_out}"));
    // "0000 - 1a 2b … -… 3c   ascii": the first line, 16 bytes.
    dump.lines()
        .find(|l| l.trim_start().starts_with("0000 - "))
        .map(|l| {
            l.trim_start()["0000 - ".len()..]
                .split_whitespace()
                .take(17)
                .flat_map(|b| b.split('-'))
                .filter(|b| b.len() == 2)
                .take(16)
                .collect()
        })
        .unwrap_or_else(|| panic!("no ticket dump in: {s_client_out}"))
}

/// The number of `a.example`'s resumed handshakes.
fn resumed(term: &Term) -> u64 {
    host(&term.stats(), "a.example")["resumed"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_fleet_resumes_each_others_sessions_and_rotates_keys_through_the_file() {
    let pki = standard_pki();
    let keys = pki.path("fleet.keys");
    let (k1, k2) = (new_key(), new_key());
    write_keys(&keys, &["# the fleet's keys, oldest first", &k1]);
    let a = Term::start_top(&pki, &top(&keys), HOSTS);
    let b = Term::start_top(&pki, &top(&keys), HOSTS);
    let other_keys = pki.path("other.keys");
    write_keys(&other_keys, &[&new_key()]);
    let c = Term::start_top(&pki, &top(&other_keys), HOSTS);
    for t in [&a, &b, &c] {
        assert_eq!(t.stats()["global"]["ticket_keys"], 1);
    }
    let mut before = Vec::new();
    for version in VERSIONS {
        let sess = pki.path(&format!("{}.sess", unique("a")));
        let out = save_session(&a, "a.example", version, &sess);
        if version == "-tls1_2" {
            assert_eq!(ticket_name(&out), key_name(&k1), "the only key encrypts");
            assert!(out.contains("lifetime hint: 43200"), "{out}");
        }
        let resumed_before = resumed(&b);
        assert!(
            resumes(&b, "a.example", version, &sess),
            "{version}: a session from A resumes on B"
        );
        b.wait_stats("B counts the resumption", |s| {
            host(s, "a.example")["resumed"].as_u64() == Some(resumed_before + 1)
        });
        assert!(
            !resumes(&c, "a.example", version, &sess),
            "{version}: a process with another key file makes a full handshake"
        );
        before.push((version, sess));
    }

    // Rotation, step 1: a new key at the end encrypts; the old one still decrypts.
    write_keys(&keys, &[&k1, &k2]);
    for t in [&a, &b] {
        t.wait_stats("the new key is read", |s| {
            s["global"]["ticket_key_reloads"] == 1 && s["global"]["ticket_keys"] == 2
        });
    }
    let mut after = Vec::new();
    for (version, sess) in &before {
        assert!(
            resumes(&b, "a.example", version, sess),
            "{version}: a session made before the rotation still resumes"
        );
        let new = pki.path(&format!("{}.sess", unique("a")));
        let out = save_session(&a, "a.example", version, &new);
        if *version == "-tls1_2" {
            assert_eq!(ticket_name(&out), key_name(&k2), "the newest key encrypts");
        }
        assert!(
            resumes(&b, "a.example", version, &new),
            "{version}: a session made after the rotation resumes"
        );
        after.push(new);
    }

    // Step 2: the old key removed; its sessions make full handshakes, the new ones resume.
    write_keys(&keys, &[&k2]);
    for t in [&a, &b] {
        t.wait_stats("the old key is dropped", |s| {
            s["global"]["ticket_key_reloads"] == 2 && s["global"]["ticket_keys"] == 1
        });
    }
    for ((version, old), new) in before.iter().zip(&after) {
        assert!(
            !resumes(&b, "a.example", version, old),
            "{version}: a session under a removed key must not resume"
        );
        assert!(
            resumes(&a, "a.example", version, new),
            "{version}: a session under the remaining key resumes"
        );
    }
    for t in [&a, &b] {
        let log = std::fs::read_to_string(&t.log).unwrap();
        let changes = log
            .lines()
            .filter(|l| l.contains("session ticket keys changed"))
            .count();
        assert_eq!(changes, 2, "one log line per change:\n{log}");
        assert_eq!(t.stats()["global"]["ticket_key_failures"], 0);
    }
}

#[test]
fn without_ticket_keys_each_process_has_its_own_key() {
    let pki = standard_pki();
    let a = Term::start(&pki, HOSTS);
    let b = Term::start(&pki, HOSTS);
    assert_eq!(a.stats()["global"]["ticket_keys"], 0);
    for version in VERSIONS {
        let sess = pki.path(&format!("{}.sess", unique("a")));
        save_session(&a, "a.example", version, &sess);
        assert!(
            resumes(&a, "a.example", version, &sess),
            "{version}: the same process resumes"
        );
        assert!(
            !resumes(&b, "a.example", version, &sess),
            "{version}: another process must not resume A's session"
        );
    }
}

#[test]
fn a_bad_key_file_stops_the_start_and_is_refused_while_running() {
    let pki = standard_pki();
    let keys = pki.path("fleet.keys");
    let good = new_key();
    let short = "c2hvcnQ=";

    // At start: the file and the line are named, by `run` and by `check`.
    write_keys(&keys, &["# keys", &good, "not base64!"]);
    let config = pki.path("bad.toml");
    std::fs::write(
        &config,
        format!(
            "{}control_socket = {:?}\n[[listen]]\naddress = \"127.0.0.1:0\"\n{HOSTS}",
            top(&keys),
            pki.path("unused.sock").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(sni_user_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad key file");
    let at = format!("{}: line 3: not base64", keys.display());
    assert!(err.contains(&at), "expected {at:?} in: {err}");
    let (ok, text) = check_config(&config);
    assert!(!ok, "check accepted a bad key file: {text}");
    assert!(
        text.contains(&format!("bad.toml:1: ticket_keys: {at}")),
        "{text}"
    );
    write_keys(&keys, &[short]);
    let (ok, text) = check_config(&config);
    assert!(!ok && text.contains("line 1: a key of 5 bytes"), "{text}");

    // While running: a bad new version keeps the keys in use, once logged and counted.
    write_keys(&keys, &[&good]);
    let (ok, text) = check_config(&config);
    assert!(ok && text.contains("(1 key; the last encrypts)"), "{text}");
    let term = Term::start_top(&pki, &top(&keys), HOSTS);
    let sess = pki.path("a.sess");
    save_session(&term, "a.example", "-tls1_2", &sess);
    write_keys(&keys, &[&good, short]);
    term.wait_stats("the bad file is counted", |s| {
        s["global"]["ticket_key_failures"] == 1
    });
    assert!(
        resumes(&term, "a.example", "-tls1_2", &sess),
        "the keys in use stay"
    );
    let s = term.stats();
    assert_eq!(s["global"]["ticket_keys"], 1, "{s}");
    assert_eq!(s["global"]["ticket_key_reloads"], 0, "{s}");
    // A reload reads the file too, and is refused with its reason.
    run(Command::new("kill").args(["-HUP", &term.child.pid().to_string()]));
    term.wait_stats("the reload is refused", |s| {
        s["global"]["reload_failures"] == 1
    });
    let log = std::fs::read_to_string(&term.log).unwrap();
    let warned = log
        .lines()
        .filter(|l| l.contains("session ticket key file refused"))
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "one warning for one bad version:\n{log}");
    assert!(
        warned[0].contains(&format!("{}:2: a key of 5 bytes", keys.display())),
        "{}",
        warned[0]
    );
    let refused = log
        .lines()
        .rfind(|l| l.contains("reload refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(refused.contains("line 2: a key of 5 bytes"), "{refused}");
    assert!(resumes(&term, "a.example", "-tls1_2", &sess));

    // Fixed: a reload applies; sessions go on across it.
    write_keys(&keys, &[&good]);
    run(Command::new("kill").args(["-HUP", &term.child.pid().to_string()]));
    term.wait_stats("the reload applies", |s| s["global"]["reloads"] == 1);
    assert!(
        resumes(&term, "a.example", "-tls1_2", &sess),
        "sessions resume across a reload"
    );

    // A certificate rotation: the old certificate's sessions end, the keys and the other
    // hosts' sessions stay.
    let sess_b = pki.path("b.sess");
    save_session(&term, "b.example", "-tls1_2", &sess_b);
    pki.leaf("b", &["b.example"]);
    run(Command::new("kill").args(["-HUP", &term.child.pid().to_string()]));
    term.wait_stats("the renewed certificate is loaded", |s| {
        s["global"]["reloads"] == 2
    });
    assert!(
        !resumes(&term, "b.example", "-tls1_2", &sess_b),
        "a session made under the old certificate must not resume"
    );
    assert!(
        resumes(&term, "a.example", "-tls1_2", &sess),
        "another host's session still resumes"
    );
}
