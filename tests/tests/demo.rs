//! `sni-user run` without a config: the printed curl commands work as printed, and both the
//! kernel's and the terminator's counters show them.

use std::{process::Command, time::Duration};

use serde_json::Value;
use sni_tests::{
    find_host,
    netns::{run, wait_until, ChildGuard},
    require_root, sni_user_bin, PinDir,
};

#[test]
fn demo_works_as_printed() {
    require_root();
    let state = tempfile::tempdir().unwrap();
    // Removed even when the test fails.
    let pin_dir = PinDir::new("sni-demo-");
    let out_log = state.path().join("demo.out");
    let mut cmd = Command::new(sni_user_bin());
    cmd.args(["run", "--pin-dir"])
        .arg(&*pin_dir)
        .arg("--state-dir")
        .arg(state.path());
    let mut demo = ChildGuard::spawn_ready(cmd, "sni-user run (demo)", &out_log, "ready;");
    let text = std::fs::read_to_string(&out_log).unwrap();
    let curls: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl --cacert "))
        .collect();
    assert_eq!(curls.len(), 3, "{text}");
    for line in &curls {
        // The printed line, word for word (no argument has spaces).
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = run(Command::new(words[0]).args(&words[1..]).arg("-sS"));
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("you reached host"), "{line}: {body}");
    }
    let out = run(Command::new(sni_user_bin())
        .args(["stats", "--json", "--pin-dir"])
        .arg(&*pin_dir));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The wildcard host (shop.apps.demo.test was asked for) counts under its first name, as
    // the terminator's does.
    for name in ["alpha.demo.test", "beta.demo.test", "*.apps.demo.test"] {
        let h = find_host(&s, name);
        assert_eq!(
            h.map(|h| h["client_hellos"].clone()),
            Some(1.into()),
            "{name} in XDP counters: {s}"
        );
    }
    for label in ["alpha.demo.test", "beta.demo.test", "*.apps.demo.test"] {
        let h = find_host(&s["terminator"], label);
        assert_eq!(
            h.map(|h| h["handshakes"].clone()),
            Some(1.into()),
            "{label} in terminator counters: {s}"
        );
    }
    // The terminator took each connection's host from the kernel and agreed.
    assert_eq!(s["terminator"]["global"]["xdp_agreed"], 3, "{s}");
    // The metrics line works as printed too.
    let metrics = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl http://"))
        .unwrap_or_else(|| panic!("no metrics line: {text}"));
    let words: Vec<&str> = metrics.split_whitespace().collect();
    let out = run(Command::new(words[0]).args(&words[1..]).arg("-sS"));
    let body = String::from_utf8_lossy(&out.stdout);
    for series in [
        "sni_xdp_host_client_hellos_total{host=\"alpha.demo.test\",configured=\"true\"} 1",
        "sni_tls_handshakes_total{host=\"*.apps.demo.test\"} 1",
    ] {
        assert!(body.contains(series), "{series}: {body}");
    }
    // It reloads (its certificates are read again), by SIGHUP and by `sni-user reload`, and
    // still serves the printed commands afterwards.
    run(Command::new("kill").args(["-HUP", &demo.pid().to_string()]));
    let out = run(Command::new(sni_user_bin()).arg("reload"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "reloaded {} (3 hosts)\n",
            state.path().join("demo").display()
        )
    );
    let words: Vec<&str> = curls[0].split_whitespace().collect();
    let out = run(Command::new(words[0]).args(&words[1..]).arg("-sS"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("you reached host"));
    // Both reloads counted (the SIGHUP may be handled after the socket's one), none refused.
    let stats = || -> Value {
        let out = run(Command::new(sni_user_bin())
            .args(["stats", "--json", "--pin-dir"])
            .arg(&*pin_dir));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut s = stats();
    wait_until(Duration::from_secs(10), || {
        s = stats();
        s["terminator"]["global"]["reloads"] == 2
    });
    assert_eq!(s["terminator"]["global"]["reloads"], 2, "{s}");
    assert_eq!(s["terminator"]["global"]["reload_failures"], 0, "{s}");
    assert!(demo
        .signal_and_wait("TERM", Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}
