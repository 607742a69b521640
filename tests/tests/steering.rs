//! Steering end to end: two network namespaces joined by a veth pair at MTU 1500, `sni-user
//! run` on the server side with the classifier attached to its veth and the terminator
//! listening behind it, and real clients on the other side: headless Chromium (its
//! post-quantum ClientHello spans two segments on about half of connections), curl and
//! openssl. A tcpdump capture of the same traffic is read back by `sni-user classify`.

use std::{
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use sni_tests::{
    edge::{Edge, Setup, PORT},
    host,
    netns::{run, wait_until, ChildGuard, SERVER_V4, SERVER_V6},
    sni_user_bin,
};

/// Chromium runs per test: each is a new browser with a new profile, so a new connection
/// with a full handshake. Chrome puts server_name in the second segment on about half of
/// them; 16 runs all missing it happen once in 65,536.
const CHROMIUM_RUNS: usize = 16;

/// The edge of these tests: IPv4 and IPv6 listeners, the hosts of [`HOSTS`] (or others).
fn edge(hosts: &str, user: Option<&'static str>) -> Edge {
    Edge::start(
        Setup {
            pin_prefix: "sni-steer-",
            names: vec![
                "alpha.test",
                "beta.test",
                "drop.test",
                "rate.test",
                "*.apps.test",
                "default.test",
            ],
            listen_v6: true,
            user,
            ..Setup::default()
        },
        hosts,
    )
}

/// Headless Chromium in the client namespace loading `https://{name}:8443/`; the page.
fn chromium(edge: &Edge, name: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("https://{name}:{PORT}/");
    let out = edge
        .pair
        .client
        .cmd(["timeout", "60", "chromium"])
        .args(sni_tests::CHROMIUM_HEADLESS)
        .arg(format!("--host-resolver-rules=MAP *.test {SERVER_V4}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    if page.is_empty() {
        // Its own diagnostics (dbus complaints of a machine without a session bus left
        // out), for the failure message.
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err.lines().filter(|l| !l.contains("dbus")).collect();
        return format!("(no page; {}; stderr:\n{})", out.status, err.join("\n"));
    }
    page
}

/// curl in the client namespace (certificate not checked); its output, whatever the exit
/// status.
fn curl(edge: &Edge, name: &str, addr: &str, max_time: u32) -> Output {
    edge.curl_cmd(name, addr)
        .args(["-k", "--max-time", &max_time.to_string()])
        .output()
        .unwrap()
}

/// A host in the classifier's counters.
fn xdp_host<'a>(s: &'a Value, name: &str) -> &'a Value {
    host(s, name)
}

/// A host in the terminator's counters.
fn term_host<'a>(s: &'a Value, name: &str) -> &'a Value {
    host(&s["terminator"], name)
}

const HOSTS: &str = r#"
[[host]]
names = ["alpha.test"]
cert = CERT
key = KEY
backend = "builtin"
alpn = ["http/1.1"]
[[host]]
names = ["beta.test", "*.apps.test"]
cert = CERT
key = KEY
backend = "builtin"
alpn = ["http/1.1"]
[[host]]
names = ["drop.test"]
cert = CERT
key = KEY
backend = "builtin"
action = "drop"
[[host]]
names = ["rate.test"]
cert = CERT
key = KEY
backend = "builtin"
hello_rate = 1
hello_burst = 2
"#;

#[test]
fn chromium_over_mtu_1500_is_attributed_on_every_connection() {
    let edge = edge(HOSTS, None);
    // Capture the server side of the veth while Chromium runs, for `classify` below.
    let capture = edge.pki.path("edge.pcap");
    let mut tcpdump = ChildGuard::spawn(
        {
            let mut c = edge.pair.server.cmd([
                "tcpdump",
                "-i",
                &edge.pair.server_if,
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
            ]);
            c.arg(&capture).args(["tcp", "port", &PORT.to_string()]);
            c
        },
        "tcpdump",
        &edge.pki.path("tcpdump.log"),
    );
    let listening = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(edge.pki.path("tcpdump.log"))
            .unwrap_or_default()
            .contains("listening on")
    });
    assert!(listening, "tcpdump did not start");

    let names = ["alpha.test", "beta.test", "x1.apps.test", "unknown.test"];
    for i in 0..CHROMIUM_RUNS {
        let name = names[i % names.len()];
        let page = chromium(&edge, name);
        let expect = match name {
            "x1.apps.test" => "beta.test",
            "unknown.test" => "default",
            n => n,
        };
        assert!(
            page.contains(&format!("reached host \"{expect}\"")),
            "Chromium run {i} for {name}: {page}"
        );
    }
    let s = edge.settle().0;
    // tcpdump writes each packet as it comes (-U, --immediate-mode); give the last ones time
    // to reach the file before it stops.
    thread::sleep(Duration::from_secs(1));
    let status = tcpdump
        .signal_and_wait("INT", Duration::from_secs(10))
        .unwrap();
    assert!(status.success(), "tcpdump: {status}");

    let g = &s["global"];
    let t = &s["terminator"]["global"];
    // Every connection attributed: none incomplete, none malformed, none unknown to the
    // terminator, and the kernel's host is the one rustls saw on every handshake.
    assert_eq!(g["incomplete"], 0, "{s}");
    assert_eq!(g["malformed"], 0, "{s}");
    assert!(
        g["split"].as_u64().unwrap() > 0,
        "no ClientHello needed its second segment: is Chromium sending X25519MLKEM768? {s}"
    );
    let handshakes: u64 = s["terminator"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["handshakes"].as_u64().unwrap())
        .sum();
    assert!(handshakes >= CHROMIUM_RUNS as u64, "{s}");
    assert_eq!(t["xdp_agreed"], handshakes, "{s}");
    assert_eq!(t["xdp_disagreed"], 0, "{s}");
    assert_eq!(t["xdp_unknown"], 0, "{s}");
    // And its JA4 fingerprint of each ClientHello is the terminator's.
    assert_eq!(t["ja4_agreed"], handshakes, "{s}");
    assert_eq!(t["ja4_disagreed"], 0, "{s}");
    assert_eq!(t["ja4_unknown"], 0, "{s}");
    // Per host, the kernel saw a ClientHello for every connection the terminator handled.
    for (xdp, term) in [("alpha.test", "alpha.test"), ("beta.test", "beta.test")] {
        let x = xdp_host(&s, xdp);
        let h = term_host(&s, term);
        let failed: u64 = h["failures"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            x["client_hellos"].as_u64().unwrap(),
            h["handshakes"].as_u64().unwrap() + failed,
            "{xdp}: {s}"
        );
        assert!(x["packets"].as_u64().unwrap() > 3 * x["client_hellos"].as_u64().unwrap());
    }
    assert_eq!(xdp_host(&s, "unknown.test")["configured"], false, "{s}");

    // The capture, read offline with the same state machine, says the same per host.
    let out = run(Command::new(sni_user_bin())
        .args(["classify", "--json", "--port", &PORT.to_string()])
        .arg(&capture));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flows = report["flows"].as_array().unwrap();
    assert_eq!(report["skipped"], 0, "{report}");
    assert_eq!(
        flows.len() as u64,
        g["client_hellos"].as_u64().unwrap(),
        "{report}\n{s}"
    );
    for h in s["hosts"].as_array().unwrap() {
        let n = h["client_hellos"].as_u64().unwrap();
        let name = h["host"].as_str().unwrap();
        // Configured hosts are counted under their first name; the capture has the name sent.
        let offline = flows
            .iter()
            .filter(|f| match name {
                "beta.test" => f["sni"] == "beta.test" || f["sni"] == "x1.apps.test",
                n => f["sni"] == n,
            })
            .count() as u64;
        assert_eq!(offline, n, "{name}: classify {report}\nlive {s}");
    }
    let split = flows
        .iter()
        .filter(|f| f["segments"].as_u64().unwrap() > 1)
        .count() as u64;
    assert_eq!(split, g["split"].as_u64().unwrap(), "{report}\n{s}");
    // One browser, one set of cipher suites (JA4_b): Chrome shuffles its extensions, JA4 sorts
    // them (tests/ja4.rs checks Chromium's against the independent reference). A resumed
    // connection adds pre_shared_key, so JA4_a and JA4_c may take a second value.
    let ja4s: std::collections::BTreeSet<&str> = flows
        .iter()
        .map(|f| f["ja4"].as_str().unwrap_or("(none)"))
        .collect();
    let ciphers: std::collections::BTreeSet<&str> =
        ja4s.iter().filter_map(|j| j.get(11..23)).collect();
    assert_eq!(ciphers.len(), 1, "{ja4s:?}: {report}");
    assert!(ja4s.len() <= 2, "{ja4s:?}: {report}");
    assert!(
        ja4s.iter().all(|j| j.starts_with("t13d") && j.len() == 36),
        "{ja4s:?}"
    );

    // The text form: one line per ClientHello and a summary.
    let out = run(Command::new(sni_user_bin()).arg("classify").arg(&capture));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alpha.test  ech="), "{text}");
    assert!(
        text.lines().last().unwrap().contains("incomplete=0"),
        "{text}"
    );
}

#[test]
fn drop_and_rate_limit_are_seen_by_clients_and_counters() {
    let edge = edge(HOSTS, None);
    // Dropped in XDP at the ClientHello: the client never gets a ServerHello.
    let out = curl(&edge, "drop.test", SERVER_V4, 2);
    assert!(!out.status.success(), "a dropped host answered");
    // Another host on the same edge is served.
    let out = curl(&edge, "alpha.test", &format!("[{SERVER_V6}]"), 10);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reached host \"alpha.test\""),
        "{out:?}"
    );

    // Six ClientHellos at once for a host limited to a burst of 2 at 1 per second.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            edge.pair
                .client
                .cmd(["curl", "-sS", "-k", "--max-time", "3"])
                .args(["--resolve", &format!("rate.test:{PORT}:{SERVER_V4}")])
                .arg(format!("https://rate.test:{PORT}/"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let served = clients
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("reached host \"rate.test\""))
        .count() as u64;
    // The burst passes; a third may pass if a second went by while they started.
    assert!((2..=3).contains(&served), "{served} of 6 served");

    let s = edge.settle().0;
    let drop = xdp_host(&s, "drop.test");
    assert_eq!(drop["client_hellos"], 1, "{s}");
    // The ClientHello and its retransmissions, all dropped.
    assert!(drop["dropped"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(term_host(&s, "drop.test")["handshakes"], 0, "{s}");
    let rate = xdp_host(&s, "rate.test");
    assert_eq!(rate["client_hellos"], 6, "{s}");
    assert!(rate["rate_limited"].as_u64().unwrap() >= 6 - served, "{s}");
    assert_eq!(term_host(&s, "rate.test")["handshakes"], served, "{s}");
    assert_eq!(xdp_host(&s, "alpha.test")["dropped"], 0, "{s}");
    let g = &s["global"];
    assert_eq!(
        g["dropped"].as_u64().unwrap(),
        drop["dropped"].as_u64().unwrap(),
        "{s}"
    );
    assert_eq!(
        g["rate_limited"].as_u64().unwrap(),
        rate["rate_limited"].as_u64().unwrap(),
        "{s}"
    );
    let t = &s["terminator"]["global"];
    assert_eq!(t["xdp_agreed"].as_u64().unwrap(), served + 1, "{s}");
}

/// Fields of /proc/PID/status (or of a thread's).
fn proc_status(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn privileges_are_dropped_once_attached_and_bound() {
    let uid = String::from_utf8(run(Command::new("id").args(["-u", "nobody"])).stdout).unwrap();
    let gid = String::from_utf8(run(Command::new("id").args(["-g", "nobody"])).stdout).unwrap();
    let (uid, gid) = (uid.trim().to_owned(), gid.trim().to_owned());
    let mut edge = edge(
        "[[host]]\nnames = [\"alpha.test\"]\ncert = CERT\nkey = KEY\nbackend = \"builtin\"\n",
        Some("nobody"),
    );
    let pid = edge.pid();
    // Every thread (event loops, control, runtime) runs as the user, with no capability.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() >= 3, "{tasks:?}");
    for task in tasks {
        let status = proc_status(&format!("{}/status", task.display()));
        let field = |k: &str| status.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let ids = |v: String| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(ids(field("Uid")), vec![uid.clone(); 4], "{task:?}");
        assert_eq!(ids(field("Gid")), vec![gid.clone(); 4], "{task:?}");
        assert_eq!(field("Groups"), gid, "{task:?}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(field(caps), "0000000000000000", "{caps} of {task:?}");
        }
        assert_eq!(field("NoNewPrivs"), "1", "{task:?}");
    }
    // The keys are in a root-only directory: the log says a reload could not read them.
    let log = edge.log_text();
    assert!(
        log.contains("privileges dropped") && log.contains("a reload could not read this file"),
        "{log}"
    );
    // Still classifying, terminating and answering stats.
    let out = curl(&edge, "alpha.test", SERVER_V4, 10);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reached host \"alpha.test\""),
        "{out:?}"
    );
    let s = edge.settle().0;
    assert_eq!(xdp_host(&s, "alpha.test")["client_hellos"], 1, "{s}");
    assert_eq!(term_host(&s, "alpha.test")["handshakes"], 1, "{s}");
    assert_eq!(s["terminator"]["global"]["xdp_agreed"], 1, "{s}");
    // And it still cleans up after itself: detached, pins and control socket removed.
    let status = edge.stop().expect("stopped");
    assert!(status.success(), "{status}");
    let link =
        run(&mut edge
            .pair
            .server
            .cmd(["ip", "-d", "link", "show", "dev", &edge.pair.server_if]));
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "XDP left attached by the unprivileged process"
    );
    let left: Vec<_> = std::fs::read_dir(&*edge.pin_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left: {left:?}");
    assert!(!edge.control.exists(), "control socket left");
    assert!(
        !edge.control.parent().unwrap().exists(),
        "control directory left"
    );
}

/// A Python client in the client namespace: `n` connections to `name` at about `rate` per
/// second, each sending a ClientHello and then holding its socket open until all are sent
/// (so that only the terminator can end them early); prints how many connected.
const FLOOD: &str = r#"
import socket, ssl, sys, time
addr, port, name, n, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
held, start = [], time.monotonic()
for i in range(n):
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s = socket.create_connection((addr, port), timeout=5)
    s.sendall(out.read())
    held.append(s)
    time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
print(len(held))
time.sleep(2)
"#;

#[test]
fn connections_to_a_dropped_host_are_released_at_once() {
    const N: u64 = 1000;
    let edge = edge(HOSTS, None);
    let flood = edge
        .pair
        .client
        .cmd(["timeout", "60", "python3", "-c", FLOOD])
        .args([
            SERVER_V4,
            &PORT.to_string(),
            "drop.test",
            &N.to_string(),
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the flood runs, the terminator's open sockets (its descriptors) are sampled: held
    // to the handshake deadline, the flood's 1,000 connections would all be open at its end.
    let pid = edge.pid();
    let sampler = thread::spawn(move || {
        let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        let mut most = 0;
        for _ in 0..30 {
            most = most.max(fds());
            thread::sleep(Duration::from_millis(50));
        }
        most
    });
    let idle_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Other hosts are served meanwhile.
    thread::sleep(Duration::from_millis(300));
    let out = curl(&edge, "alpha.test", SERVER_V4, 10);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reached host \"alpha.test\""),
        "{out:?}"
    );
    let most_fds = sampler.join().unwrap();
    assert!(
        most_fds < idle_fds + 400,
        "{most_fds} descriptors open during the flood ({idle_fds} before it)"
    );
    let out = flood.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), N.to_string());
    // The flood took about a second and held its sockets two more: far under the handshake
    // deadline (10 s), every connection was closed by the terminator once the classifier's
    // flow table said drop.
    let s = edge.stats();
    let t = &s["terminator"]["global"];
    assert_eq!(t["xdp_blocked"].as_u64().unwrap(), N, "{s}");
    assert_eq!(t["client_hello_timeout"], 0, "{s}");
    assert_eq!(xdp_host(&s, "drop.test")["client_hellos"], N, "{s}");
    assert_eq!(term_host(&s, "drop.test")["active"], 0, "{s}");
}
