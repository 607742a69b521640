//! JA4 fingerprints end to end (issue 19), in two network namespaces joined by a veth (the
//! classifier on the server's veth, the terminator behind it): real clients (curl, and curl
//! speaking HTTP/1.1 only, whose ClientHello offers another ALPN and so has another JA4), the
//! daemon learning their JA4 strings from the kernel's ring buffer, `sni-user stats --json`
//! showing them, a `[[fingerprint]] action = "drop"` for curl's JA4 failing curl while the
//! other client passes, and reloads adding and removing that action in place.

use std::{process::Output, time::Duration};

use serde_json::Value;
use sni_common::ja4::Ja4;
use sni_tests::{
    edge::{Edge, Setup},
    host,
    netns::{wait_until, SERVER_V4},
};

const HOST: &str = r#"
[[host]]
names = ["fp.test"]
cert = CERT
key = KEY
backend = "builtin"
"#;

/// Where the metrics endpoint listens (on the server's address).
const METRICS_PORT: u16 = 9100;

/// How long a test waits for the daemon to learn a key or for counters to settle.
const WAIT: Duration = Duration::from_secs(10);

fn edge(body: &str) -> Edge {
    Edge::start(
        Setup {
            pin_prefix: "sni-fp-",
            names: vec!["fp.test"],
            ..Setup::default()
        },
        body,
    )
}

/// curl with its defaults (it offers h2 and http/1.1), at most 3 s.
fn curl(edge: &Edge) -> Output {
    edge.curl_cmd("fp.test", SERVER_V4)
        .args(["--max-time", "3"])
        .output()
        .unwrap()
}

/// curl offering http/1.1 only: another ClientHello, another JA4.
fn curl_http1(edge: &Edge) -> Output {
    edge.curl_cmd("fp.test", SERVER_V4)
        .args(["--max-time", "3", "--http1.1"])
        .output()
        .unwrap()
}

fn ok(out: &Output) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("fp.test")
}

/// The fingerprints section of `stats --json`.
fn fingerprints(edge: &Edge) -> Value {
    edge.stats()["fingerprints"].clone()
}

/// The fingerprints section of `stats --json --config`: the configured fingerprints from the
/// file are listed even before a client with them came.
fn fingerprints_by_config(edge: &Edge) -> Value {
    let out = sni_tests::netns::run(
        std::process::Command::new(sni_tests::sni_user_bin())
            .args(["stats", "--json", "--config"])
            .arg(&edge.config),
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["fingerprints"].clone()
}

/// The row of `ja4` in `rows` (an array of rows with a `ja4` key).
fn row<'a>(rows: &'a Value, ja4: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["ja4"] == ja4)
}

/// The JA4 strings of the other fingerprints seen, with their ClientHellos.
fn others(f: &Value) -> Vec<(String, u64)> {
    f["other"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["ja4"].as_str().unwrap().to_owned(),
                r["client_hellos"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Learns the JA4 of curl (`h2` ALPN, `…h2_`) and of curl --http1.1 (`…h1_`) from the
/// daemon: one request each, then their rows in `stats`.
fn learn_curl(edge: &Edge) -> (String, String) {
    let first = curl(edge);
    assert!(ok(&first), "curl: {first:?}\n{}", edge.log_text());
    let other = curl_http1(edge);
    assert!(ok(&other), "curl --http1.1: {other:?}");
    let mut found = (None, None);
    let learned = wait_until(WAIT, || {
        let seen = others(&fingerprints(edge));
        let of = |alpn: &str| {
            seen.iter()
                .find(|(j, n)| *n == 1 && j.len() == 36 && j[8..10] == *alpn)
                .map(|(j, _)| j.clone())
        };
        found = (of("h2"), of("h1"));
        found.0.is_some() && found.1.is_some()
    });
    assert!(
        learned,
        "the daemon did not name both clients' fingerprints: {}\n{}",
        fingerprints(edge),
        edge.log_text()
    );
    let (Some(h2), Some(h1)) = found else {
        unreachable!("checked above")
    };
    (h2, h1)
}

/// The config of the edge with a `[[fingerprint]]` for each of `drop`.
fn with_drops(drop: &[&str]) -> String {
    let mut body = String::from(HOST);
    for ja4 in drop {
        body += &format!("[[fingerprint]]\nja4 = \"{ja4}\"\naction = \"drop\"\n");
    }
    body
}

fn reload(edge: &Edge) {
    let out = edge.reload();
    assert!(
        out.status.success(),
        "reload refused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `ja4`'s configured row has `hellos` ClientHellos and `dropped` drops.
fn configured_counts(edge: &Edge, ja4: &str, hellos: u64, dropped: u64) -> Value {
    let mut last = Value::Null;
    let settled = wait_until(WAIT, || {
        last = fingerprints(edge);
        row(&last["configured"], ja4).is_some_and(|r| {
            r["client_hellos"] == hellos && r["dropped"] == dropped && r["learned"] == true
        })
    });
    assert!(
        settled,
        "{ja4}: wanted {hellos} ClientHellos, {dropped} dropped: {last}"
    );
    last
}

#[test]
fn stats_and_metrics_show_each_clients_ja4_with_its_counts_per_host() {
    let edge = Edge::start(
        Setup {
            pin_prefix: "sni-fp-",
            names: vec!["fp.test"],
            metrics_port: Some(METRICS_PORT),
            ..Setup::default()
        },
        HOST,
    );
    let (h2, h1) = learn_curl(&edge);
    for _ in 0..2 {
        assert!(ok(&curl(&edge)));
    }
    let stats = edge.settled();
    let f = &stats["fingerprints"];
    for ja4 in [&h2, &h1] {
        let parsed = Ja4::parse(ja4).unwrap_or_else(|e| panic!("{ja4}: {e}"));
        assert_eq!(parsed.as_str(), ja4);
        // TLS 1.3 over TCP with a server_name.
        assert!(ja4.starts_with("t13d"), "{ja4}");
    }
    assert_ne!(h2[..10], h1[..10], "the ALPN differs in JA4_a");
    assert_eq!(row(&f["other"], &h2).unwrap()["client_hellos"], 3, "{f}");
    assert_eq!(row(&f["other"], &h1).unwrap()["client_hellos"], 1, "{f}");
    assert!(f["configured"].as_array().unwrap().is_empty(), "{f}");
    // Per host: both, the most frequent first.
    let hosts = f["hosts"].as_array().unwrap();
    let fp = hosts
        .iter()
        .find(|h| h["host"] == "fp.test")
        .unwrap_or_else(|| panic!("fp.test missing: {f}"));
    assert_eq!(fp["configured"], true);
    assert_eq!(fp["top"][0]["ja4"], h2.as_str(), "{fp}");
    assert_eq!(fp["top"][0]["client_hellos"], 3, "{fp}");
    assert_eq!(fp["top"][1]["ja4"], h1.as_str(), "{fp}");
    assert_eq!(fp["rest_fingerprints"], 0);
    // Every fingerprint the kernel met came up the ring buffer, and every ClientHello of the
    // host was fingerprinted.
    let g = &stats["global"];
    assert_eq!(g["ja4_new"], 2, "{g}");
    assert_eq!(g["ja4_lost"], 0, "{g}");
    assert_eq!(
        g["ja4"],
        host(&stats, "fp.test")["client_hellos"],
        "{stats}"
    );
    // The text table names them too.
    let out = sni_tests::netns::run(
        std::process::Command::new(sni_tests::sni_user_bin())
            .args(["stats", "--pin-dir"])
            .arg(&*edge.pin_dir),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&h2) && text.contains(&h1), "{text}");
    // Metrics: by JA4 string, the rest folded into ja4="other"; what learning did.
    let out = edge
        .pair
        .client
        .cmd(["curl", "-sS", "--max-time", "10"])
        .arg(format!("http://{SERVER_V4}:{METRICS_PORT}/metrics"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("sni_ja4_client_hellos_total{{ja4=\"{h2}\",configured=\"false\"}} 3"),
        format!("sni_ja4_client_hellos_total{{ja4=\"{h1}\",configured=\"false\"}} 1"),
        format!("sni_ja4_dropped_total{{ja4=\"{h2}\",configured=\"false\"}} 0"),
        "sni_ja4_client_hellos_total{ja4=\"other\",configured=\"false\"} 0".to_owned(),
        "sni_ja4_events_total 2".to_owned(),
        "sni_ja4_events_malformed_total 0".to_owned(),
        "sni_ja4_learned_keys_total 0".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

#[test]
fn a_drop_fingerprint_learned_from_the_ring_buffer_fails_curl_while_another_client_passes() {
    let mut edge = edge(HOST);
    let (h2, h1) = learn_curl(&edge);
    // From a fresh start the daemon knows no key: it learns curl's from its first
    // ClientHello, which gets the host's verdict (pass).
    edge.rewrite(&with_drops(&[&h2]));
    edge.restart();
    let f = fingerprints_by_config(&edge);
    let c = row(&f["configured"], &h2).unwrap_or_else(|| panic!("{h2} not listed: {f}"));
    assert_eq!(
        (c["action"].as_str(), &c["learned"]),
        (Some("drop"), &Value::Bool(false))
    );
    assert!(ok(&curl(&edge)), "curl before its key was learned");
    configured_counts(&edge, &h2, 1, 0);
    for _ in 0..2 {
        let out = curl(&edge);
        assert!(
            !out.status.success(),
            "curl passed a drop fingerprint: {out:?}"
        );
    }
    assert!(ok(&curl_http1(&edge)), "the other client is not dropped");
    let f = configured_counts(&edge, &h2, 3, 2);
    assert_eq!(row(&f["other"], &h1).unwrap()["client_hellos"], 1, "{f}");
    assert!(row(&f["other"], &h2).is_none(), "{h2} counted twice: {f}");
    let stats = edge.settled();
    assert!(
        host(&stats, "fp.test")["dropped"].as_u64().unwrap() >= 2,
        "the host's flows were dropped: {stats}"
    );
    assert_eq!(stats["global"]["ja4_lost"], 0);
}

#[test]
fn reload_adds_and_removes_a_fingerprint_action_in_place() {
    let edge = edge(HOST);
    let (h2, h1) = learn_curl(&edge);
    // Added by a reload: the daemon named curl's key already, so it is acted on at once,
    // and the ClientHello counted before moves to it.
    edge.rewrite(&with_drops(&[&h2]));
    reload(&edge);
    let out = curl(&edge);
    assert!(
        !out.status.success(),
        "curl passed after the reload: {out:?}"
    );
    assert!(ok(&curl_http1(&edge)));
    let f = configured_counts(&edge, &h2, 2, 1);
    assert!(row(&f["other"], &h2).is_none(), "{f}");
    // Removed by a reload: curl passes again, counted among the others from scratch.
    edge.rewrite(HOST);
    reload(&edge);
    assert!(
        ok(&curl(&edge)),
        "curl still dropped after the fingerprint was removed"
    );
    let mut last = Value::Null;
    let back = wait_until(WAIT, || {
        last = fingerprints(&edge);
        last["configured"].as_array().is_some_and(Vec::is_empty)
            && row(&last["other"], &h2).is_some_and(|r| r["client_hellos"] == 1)
    });
    assert!(back, "{h2} not back among the others: {last}");
    assert_eq!(row(&last["other"], &h1).unwrap()["client_hellos"], 2);
    // And back again: learned keys of a fingerprint kept stay across an unrelated reload.
    edge.rewrite(&with_drops(&[&h2, &h1]));
    reload(&edge);
    edge.rewrite(&with_drops(&[&h2]));
    reload(&edge);
    assert!(!curl(&edge).status.success());
    assert!(ok(&curl_http1(&edge)), "h1 was removed again");
    let f = configured_counts(&edge, &h2, 2, 1);
    assert_eq!(f["configured"].as_array().unwrap().len(), 1, "{f}");
}
