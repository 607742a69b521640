//! Operations end to end, in two network namespaces joined by a veth (the classifier on the
//! server's veth, the terminator behind it, the metrics endpoint on the server address):
//! `/metrics` against `sni-user stats` and scraped by a real Prometheus server; label
//! cardinality under a scan of random names; reloads under load with zero failed requests
//! (certificate rotation, hosts added and removed, an action changed in the kernel's maps);
//! `sni-user check` on good and broken configs; JSON logs.

use std::{
    collections::{BTreeSet, HashMap},
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use sni_tests::{
    check_config,
    edge::{Edge, Setup, PORT},
    find_host, hellos, host,
    netns::{wait_until, ChildGuard, Netns, SERVER_V4},
    pki::{rustls_client, Pki},
    sni_user_bin, Rng,
};

const METRICS_PORT: u16 = 9100;

/// A classifier + terminator + metrics endpoint in a server namespace, clients in another;
/// `body` as for [`Edge::start`].
fn site(body: &str, env: &[(&'static str, &'static str)]) -> Edge {
    Edge::start(
        Setup {
            pin_prefix: "sni-ops-",
            names: vec![
                "alpha.test",
                "beta.test",
                "gamma.test",
                "delta.test",
                "echo.test",
                "nobody.test",
                "default.test",
                "*.apps.test",
            ],
            metrics_port: Some(METRICS_PORT),
            env: env.to_vec(),
            ..Setup::default()
        },
        body,
    )
}

/// `sni-user reload --config FILE`: the socket is found through the config file.
fn reload_by_config(site: &Edge) -> Output {
    Command::new(sni_user_bin())
        .args(["reload", "--config"])
        .arg(&site.config)
        .output()
        .unwrap()
}

/// GET /metrics from the client namespace.
fn scrape(site: &Edge) -> String {
    let out = site
        .pair
        .client
        .cmd(["curl", "-sS", "--max-time", "10", "-D", "/dev/stderr"])
        .arg(format!("http://{SERVER_V4}:{METRICS_PORT}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let headers = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `f` on a thread inside `ns`'s network stack.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The samples of an exposition: `name{labels}` → value.
/// One sample: metric name, labels, value.
type Sample = (String, BTreeSet<(String, String)>, f64);

fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut set = BTreeSet::new();
        // Values here have no comma or escaped quote (host names of the test).
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            set.insert((k.to_owned(), v.trim_end_matches('"').to_owned()));
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        out.push((name.to_owned(), set, value));
    }
    out
}

/// The value of `name` with (at least) `labels`; panics if there is not exactly one.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, set, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| set.contains(&((*k).to_owned(), (*v).to_owned())))
        })
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}\n{text}");
    found[0]
}

const HOSTS: &str = r#"
[[host]]
names = ["alpha.test"]
cert = CERT
key = KEY
backend = "builtin"
[[host]]
names = ["beta.test", "*.apps.test"]
cert = CERT
key = KEY
backend = "builtin"
"#;

#[test]
fn metrics_agree_with_stats_and_a_prometheus_server_scrapes_them() {
    let site = site(HOSTS, &[("SNI_LOG_FORMAT", "json")]);
    for name in [
        "alpha.test",
        "alpha.test",
        "alpha.test",
        "beta.test",
        "shop.apps.test",
        "nobody.test",
    ] {
        let out = site.curl(name);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = site.settle().0;
    let text = scrape(&site);

    // The classifier, host by host and globally.
    for row in stats["hosts"].as_array().unwrap() {
        let h = row["host"].as_str().unwrap();
        for (metric_name, field) in [
            ("sni_xdp_host_client_hellos_total", "client_hellos"),
            ("sni_xdp_host_packets_total", "packets"),
            ("sni_xdp_host_bytes_total", "bytes"),
            ("sni_xdp_host_dropped_packets_total", "dropped"),
        ] {
            let configured = if row["configured"] == true {
                "true"
            } else {
                "false"
            };
            assert_eq!(
                metric(
                    &text,
                    metric_name,
                    &[("host", h), ("configured", configured)]
                ),
                row[field].as_u64().unwrap() as f64,
                "{metric_name} of {h}"
            );
        }
    }
    assert_eq!(
        metric(
            &text,
            "sni_xdp_host_client_hellos_total",
            &[("host", "alpha.test")]
        ),
        3.0
    );
    for name in [
        "client_hellos",
        "sni",
        "no_sni",
        "malformed",
        "dropped",
        "errors",
    ] {
        assert_eq!(
            metric(&text, &format!("sni_xdp_{name}_total"), &[]),
            stats["global"][name].as_u64().unwrap() as f64,
            "sni_xdp_{name}_total"
        );
    }
    // The terminator.
    let term = &stats["terminator"];
    for (label, handshakes) in [("alpha.test", 3.0), ("beta.test", 2.0), ("default", 1.0)] {
        assert_eq!(host(term, label)["handshakes"], handshakes as u64);
        assert_eq!(
            metric(&text, "sni_tls_handshakes_total", &[("host", label)]),
            handshakes
        );
        // Every handshake is in the histogram once.
        assert_eq!(
            metric(
                &text,
                "sni_tls_handshake_duration_seconds_count",
                &[("host", label)]
            ),
            handshakes
        );
        assert_eq!(
            metric(
                &text,
                "sni_tls_handshake_duration_seconds_bucket",
                &[("host", label), ("le", "+Inf")]
            ),
            handshakes
        );
        let sum = metric(
            &text,
            "sni_tls_handshake_duration_seconds_sum",
            &[("host", label)],
        );
        assert!(sum > 0.0 && sum < 10.0 * handshakes, "{label}: {sum}");
        assert_eq!(
            metric(
                &text,
                "sni_tls_failures_total",
                &[("host", label), ("reason", "tls")]
            ),
            0.0
        );
        // The test PKI's leaves last 90 days.
        let expiry = metric(
            &text,
            "sni_tls_certificate_expiry_timestamp_seconds",
            &[("host", label)],
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            expiry > now + 80.0 * 86_400.0 && expiry < now + 100.0 * 86_400.0,
            "{expiry}"
        );
    }
    assert_eq!(
        metric(&text, "sni_tls_accepted_total", &[]),
        term["global"]["accepted"].as_u64().unwrap() as f64
    );
    assert_eq!(metric(&text, "sni_tls_xdp_agreed_total", &[]), 6.0);
    assert_eq!(
        metric(
            &text,
            "sni_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");

    // A real Prometheus server in the client namespace scrapes the endpoint.
    let dir = tempfile::tempdir().unwrap();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sni\n    \
             static_configs:\n      - targets: [\"{SERVER_V4}:{METRICS_PORT}\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = site.pair.client.cmd(["prometheus"]);
    cmd.arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090");
    let prom_log = dir.path().join("prometheus.log");
    let _prometheus = ChildGuard::spawn_ready(
        cmd,
        "prometheus",
        &prom_log,
        "Server is ready to receive web requests",
    );
    let query = |q: &str| -> Value {
        let out = site
            .pair
            .client
            .cmd(["curl", "-sS", "--max-time", "5", "-G"])
            .arg("http://127.0.0.1:9090/api/v1/query")
            .args(["--data-urlencode", &format!("query={q}")])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let value =
        |v: &Value| -> Option<f64> { v["data"]["result"][0]["value"][1].as_str()?.parse().ok() };
    let mut last = Value::Null;
    let scraped = wait_until(Duration::from_secs(30), || {
        last = query("sni_tls_handshakes_total{host=\"alpha.test\"}");
        value(&last) == Some(3.0)
    });
    assert!(
        scraped,
        "Prometheus never got alpha.test's handshakes: {last}\n{}",
        std::fs::read_to_string(&prom_log).unwrap_or_default()
    );
    assert_eq!(value(&query("up{job=\"sni\"}")), Some(1.0));
    // Prometheus parsed the whole exposition: no scrape error on the target.
    let out = site
        .pair
        .client
        .cmd([
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:9090/api/v1/targets",
        ])
        .output()
        .unwrap();
    let targets: Value = serde_json::from_slice(&out.stdout).unwrap();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
    assert_eq!(
        value(&query("sum(sni_xdp_host_client_hellos_total)")),
        Some(stats["global"]["sni"].as_u64().unwrap() as f64)
    );
    let p100 = value(&query(
        "histogram_quantile(1, sum by (le) (sni_tls_handshake_duration_seconds_bucket{host=\"alpha.test\"}))",
    ));
    assert!(p100.is_some_and(|v| v > 0.0 && v <= 10.0), "{p100:?}");

    // The Grafana dashboard and the alert rules use only metrics that exist.
    let served: BTreeSet<String> = samples(&text)
        .into_iter()
        .map(|(n, _, _)| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_owned()
        })
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "packaging/grafana/sni-dashboard.json",
        "packaging/prometheus/alerts.yml",
    ] {
        let body = std::fs::read_to_string(root.join(file)).unwrap();
        let used: BTreeSet<String> = body
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sni_"))
            .map(|w| {
                w.trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum")
                    .to_owned()
            })
            .collect();
        assert!(!used.is_empty(), "{file} uses no sni_ metric");
        // The ACME families have samples only with ACME hosts: `acme.rs` checks that the
        // ones the alert rules use are served there.
        let unknown: Vec<&String> = used
            .iter()
            .filter(|u| !served.contains(*u) && !u.starts_with("sni_acme_"))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics not served: {unknown:?}"
        );
    }

    // JSON logs: every line is one object with a level and a message.
    let log = site.log_text();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 4, "{log}");
    assert!(
        log.contains("\"message\":\"metrics endpoint listening (GET /metrics)\""),
        "{log}"
    );
}

#[test]
fn metrics_labels_stay_bounded_under_a_scan_of_random_names() {
    const SCAN: usize = 3_000;
    let body = format!("metrics_other_hosts = 5\n{HOSTS}");
    let site = site(&body, &[]);
    // The map of other names is smaller than the scan: it evicts, the kernel keeps counting.
    // A hot name not configured is among the top N.
    in_netns(&site.pair.client, move || {
        let mut rng = Rng::new(7);
        let send = |name: &str| {
            let mut s = TcpStream::connect((SERVER_V4, PORT)).unwrap();
            s.write_all(&hellos::named(name)).unwrap();
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            while let Ok(n) = s.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        };
        for _ in 0..7 {
            send("hot.example");
        }
        for _ in 0..SCAN {
            let label: String = (0..12)
                .map(|_| char::from(b'a' + (rng.below(26) as u8)))
                .collect();
            send(&format!("{label}.scan.example"));
        }
    });
    let stats = site.settle().0;
    let text = scrape(&site);
    let hosts: BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|(n, _, _)| n == "sni_xdp_host_client_hellos_total")
        .filter_map(|(_, set, _)| set.into_iter().find(|(k, _)| k == "host").map(|(_, v)| v))
        .collect();
    // alpha, beta, 5 other names, "other".
    assert_eq!(hosts.len(), 2 + 5 + 1, "{hosts:?}");
    assert!(
        hosts.contains("hot.example") && hosts.contains("other"),
        "{hosts:?}"
    );
    assert_eq!(
        metric(
            &text,
            "sni_xdp_host_client_hellos_total",
            &[("host", "hot.example")]
        ),
        7.0
    );
    // Nothing is lost by folding: the series add up to what stats shows for every name.
    let stats_total: u64 = stats["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["client_hellos"].as_u64().unwrap())
        .sum();
    let metrics_total: f64 = samples(&text)
        .into_iter()
        .filter(|(n, _, _)| n == "sni_xdp_host_client_hellos_total")
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(metrics_total, stats_total as f64);
    let tracked = metric(&text, "sni_xdp_other_hosts_tracked", &[]);
    let folded = metric(&text, "sni_xdp_other_hosts_folded", &[]);
    assert!(tracked > 1_000.0, "the scan reached the map: {tracked}");
    assert_eq!(folded, tracked - 5.0);
    // The scrape's size does not grow with the scan.
    let lines = text.lines().count();
    assert!(lines < 400, "{lines} lines");
    assert_eq!(
        stats["global"]["sni"].as_u64().unwrap(),
        (SCAN + 7) as u64,
        "every scanned ClientHello was read"
    );
}

/// New connections from `threads` threads in the client namespace, each a full handshake and
/// one request to alpha.test; plus one long connection to an echo backend that sends a line
/// every 20 ms. Every failure is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    echoes: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    /// SHA-256 prefix (first 8 bytes, hex) of the leaf alpha.test served, by count.
    seen_certs: Arc<Mutex<HashMap<String, u64>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(site: &Edge, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let echoes = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen_certs = Arc::new(Mutex::new(HashMap::new()));
        let config = rustls_client(&site.pki);
        let mut handles = Vec::new();
        let ns = format!("/run/netns/{}", site.pair.client.name);
        for t in 0..threads {
            let (stop, ok, failures, seen, config, ns) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                seen_certs.clone(),
                config.clone(),
                ns.clone(),
            );
            handles.push(thread::spawn(move || {
                let file = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    i += 1;
                    match request(&config, "alpha.test") {
                        Ok(cert) => {
                            ok.fetch_add(1, Relaxed);
                            *seen.lock().unwrap().entry(cert).or_insert(0) += 1;
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("thread {t} #{i}: {e}")),
                    }
                }
            }));
        }
        {
            let (stop, echoes, failures, config) = (
                stop.clone(),
                echoes.clone(),
                failures.clone(),
                config.clone(),
            );
            handles.push(thread::spawn(move || {
                let file = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                if let Err(e) = long_connection(&config, &stop, &echoes) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("long connection: {e}"));
                }
            }));
        }
        Self {
            stop,
            ok,
            echoes,
            failures,
            seen_certs,
            threads: handles,
        }
    }

    fn finish(self) -> (u64, u64, Vec<String>, HashMap<String, u64>) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        let seen = self.seen_certs.lock().unwrap().clone();
        (
            self.ok.load(Relaxed),
            self.echoes.load(Relaxed),
            failures,
            seen,
        )
    }
}

fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let sock = TcpStream::connect_timeout(
        &format!("{SERVER_V4}:{PORT}").parse().unwrap(),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name.to_owned().try_into().unwrap())
        .map_err(|e| format!("client: {e}"))?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// One request on a new connection; the served leaf's fingerprint.
fn request(config: &Arc<rustls::ClientConfig>, name: &str) -> Result<String, String> {
    request_kind(config, name).map(|(cert, _)| cert)
}

/// As [`request`], with whether the handshake resumed a session.
fn request_kind(config: &Arc<rustls::ClientConfig>, name: &str) -> Result<(String, bool), String> {
    let mut tls = tls_connect(config, name)?;
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {name}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut body = Vec::new();
    match tls.read_to_end(&mut body) {
        Ok(_) => {}
        // The builtin backend closes after its answer; a missing close_notify is not a loss.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !body.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") || !text.contains(&format!("server_name {name:?}")) {
        return Err(format!("answer: {text}"));
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    let digest = aws_lc_rs_digest(leaf.as_ref());
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok((digest, resumed))
}

/// A short fingerprint of a certificate (FNV-1a 64; enough to tell two test leaves apart).
fn aws_lc_rs_digest(der: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in der {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One connection to echo.test kept open, a line every 20 ms, each echoed back.
fn long_connection(
    config: &Arc<rustls::ClientConfig>,
    stop: &AtomicBool,
    echoes: &AtomicU64,
) -> Result<(), String> {
    let mut tls = tls_connect(config, "echo.test")?;
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        let line = format!("line {n}\n");
        tls.write_all(line.as_bytes())
            .map_err(|e| format!("write {n}: {e}"))?;
        let mut back = vec![0u8; line.len()];
        tls.read_exact(&mut back)
            .map_err(|e| format!("read {n}: {e}"))?;
        if back != line.as_bytes() {
            return Err(format!("echo {n}: {:?}", String::from_utf8_lossy(&back)));
        }
        echoes.fetch_add(1, Relaxed);
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An echo server in the server namespace; its port.
fn echo_backend(site: &Edge) -> u16 {
    let ns = format!("/run/netns/{}", site.pair.server.name);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        // Bounded: the test makes one long connection (and the listener goes with the
        // namespace).
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

#[test]
fn reloads_under_load_lose_no_request_and_update_the_kernel_in_place() {
    // Starts with a placeholder echo port; the real one is known once the namespace exists.
    let site = site(HOSTS, &[]);
    let echo_port = echo_backend(&site);
    let echo_host = format!(
        "[[host]]\nnames = [\"echo.test\"]\ncert = CERT\nkey = KEY\nbackend = \"127.0.0.1:{echo_port}\"\n"
    );
    let removed_host =
        "[[host]]\nnames = [\"delta.test\"]\ncert = CERT\nkey = KEY\nbackend = \"builtin\"\n";
    site.rewrite(&format!("{HOSTS}{echo_host}{removed_host}"));
    let out = site.reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(site.curl("delta.test").status.success());

    let first_leaf = aws_lc_rs_digest(&pem_der(&site.pki.path("edge.pem")));
    let load = Load::start(&site, 3);
    // After each step: 20 more new connections served, and the long connection's next
    // lines echoed (it is alive across the reload).
    let progress = |what: &str, before: u64| {
        let echoed = load.echoes.load(Relaxed);
        let ok = wait_until(Duration::from_secs(10), || {
            load.ok.load(Relaxed) >= before + 20 && load.echoes.load(Relaxed) >= echoed + 3
        });
        assert!(
            ok,
            "no progress {what}: {} requests, {} echoes, {:?}",
            load.ok.load(Relaxed),
            load.echoes.load(Relaxed),
            load.failures.lock().unwrap()
        );
    };
    progress("before the reloads", 0);

    // Clients holding sessions from before a reload: one per reload below.
    let before_rotation = rustls_client(&site.pki);
    let before_hosts = rustls_client(&site.pki);
    let resumes = |config: &Arc<rustls::ClientConfig>| {
        let config = config.clone();
        in_netns(&site.pair.client, move || {
            request_kind(&config, "alpha.test")
        })
        .unwrap()
    };
    assert!(
        !resumes(&before_rotation).1,
        "a first connection is a full handshake"
    );

    // 1. Certificate rotation: a new leaf for alpha.test, in new files.
    site.pki.leaf("rotated", &["alpha.test"]);
    let rotated = HOSTS.replacen(
        "cert = CERT\nkey = KEY",
        &format!(
            "cert = {:?}\nkey = {:?}",
            site.pki.path("rotated.pem").display().to_string(),
            site.pki.path("rotated.key").display().to_string()
        ),
        1,
    );
    let second_leaf = aws_lc_rs_digest(&pem_der(&site.pki.path("rotated.pem")));
    assert_ne!(first_leaf, second_leaf);
    site.rewrite(&format!("{rotated}{echo_host}{removed_host}"));
    let out = site.reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The process says which file it read (its own: the same one here, so no note).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("reloaded {} (4 hosts)\n", site.config.display())
    );
    progress("after the rotation", load.ok.load(Relaxed));
    // A session made under the old certificate does not resume under the new one.
    assert_eq!(resumes(&before_rotation), (second_leaf.clone(), false));
    assert!(!resumes(&before_hosts).1);

    // 2. A host added (a new kernel slot), one removed, beta.test now dropped in XDP.
    let gamma =
        "[[host]]\nnames = [\"gamma.test\"]\ncert = CERT\nkey = KEY\nbackend = \"builtin\"\n";
    let beta_dropped = rotated.replace(
        "names = [\"beta.test\", \"*.apps.test\"]",
        "names = [\"beta.test\", \"*.apps.test\"]\naction = \"drop\"",
    );
    site.rewrite(&format!("{beta_dropped}{echo_host}{gamma}"));
    let out = site.reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    progress("after the host changes", load.ok.load(Relaxed));
    // No certificate changed: sessions from before this reload resume after it.
    assert_eq!(resumes(&before_hosts), (second_leaf.clone(), true));

    // 3. A broken file is refused whole and reported; service goes on. The TOML error is
    // below the top-level keys, so `reload --config` still finds the socket and the running
    // process is the one that refuses (and counts it).
    let good = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, format!("{good}[[host]\nnames = 1\n")).unwrap();
    let out = reload_by_config(&site);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload refused")
            && err.contains("edge.toml")
            && err.contains("not valid TOML"),
        "{err}"
    );
    progress("after a refused reload", load.ok.load(Relaxed));

    let (ok, echoes, failures, seen) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(ok >= 80, "{ok} requests");
    assert!(
        echoes >= 12,
        "the long connection echoed {echoes} lines across the reloads"
    );
    // Both leaves were served: the old one before the rotation, the new one after.
    assert!(seen.get(&first_leaf).copied().unwrap_or(0) > 0, "{seen:?}");
    assert!(seen.get(&second_leaf).copied().unwrap_or(0) > 0, "{seen:?}");
    let config = rustls_client(&site.pki);
    let now = in_netns(&site.pair.client, move || request(&config, "alpha.test"));
    assert_eq!(
        now.unwrap(),
        second_leaf,
        "new connections get the rotated certificate"
    );

    // The kernel's maps were changed in place.
    assert!(site.curl("gamma.test").status.success());
    let beta = site.curl("beta.test");
    assert!(!beta.status.success(), "beta.test is dropped in XDP now");
    let delta = site.curl("delta.test");
    assert!(
        delta.status.success(),
        "a removed host's name goes to the default"
    );
    assert!(String::from_utf8_lossy(&delta.stdout).contains("host \"default\""));
    let stats = site.settle().0;
    let gamma_row = find_host(&stats, "gamma.test").expect("gamma.test has its own row");
    assert_eq!(gamma_row["configured"], true);
    assert_eq!(gamma_row["client_hellos"], 1);
    let beta_row = host(&stats, "beta.test");
    assert!(beta_row["dropped"].as_u64().unwrap() > 0, "{beta_row}");
    assert!(find_host(&stats, "delta.test").is_some_and(|r| r["configured"] == false));
    // alpha.test kept its slot: its kernel count went on across the reloads and matches the
    // terminator's handshakes (both count every connection since start).
    let alpha = host(&stats, "alpha.test")["client_hellos"]
        .as_u64()
        .unwrap();
    let alpha_term = host(&stats["terminator"], "alpha.test")["handshakes"]
        .as_u64()
        .unwrap();
    assert_eq!(alpha, alpha_term);
    assert!(alpha > ok, "{alpha} vs {ok}");
    let text = scrape(&site);
    assert_eq!(metric(&text, "sni_config_reloads_total", &[]), 3.0);
    assert_eq!(metric(&text, "sni_config_reload_failures_total", &[]), 1.0);
    let log = site.log_text();
    assert!(log.contains("reload refused"), "{log}");
}

fn pem_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let first: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
    first.as_ref().to_vec()
}

/// `sni-user check` on `text` written next to the test PKI; (exit ok, stdout + stderr).
fn check(pki: &Pki, name: &str, text: &str) -> (bool, String, PathBuf) {
    let path = pki.path(name);
    std::fs::write(&path, text).unwrap();
    let (ok, report) = check_config(&path);
    (ok, report, path)
}

#[test]
fn check_prints_the_routing_table_or_file_and_line_of_each_error() {
    let pki = Pki::new();
    pki.leaf("a", &["a.example", "*.wild.example"]);
    pki.leaf("other", &["other.example"]);
    let cert = pki.path("a.pem").display().to_string();
    let key = pki.path("a.key").display().to_string();
    let good = format!(
        r#"metrics = "127.0.0.1:9100"
[xdp]
interfaces = ["lo"]
ports = [443]
[[listen]]
address = "127.0.0.1:443"
[[host]]
names = ["a.example", "*.wild.example"]
cert = {cert:?}
key = {key:?}
backend = "127.0.0.1:8080"
hello_rate = 50
[[host]]
names = ["x.wild.example"]
mode = "passthrough"
backend = "127.0.0.1:8443"
action = "drop"
[default]
reject = true
"#
    );
    let (ok, out, path) = check(&pki, "good.toml", &good);
    assert!(ok, "{out}");
    let p = path.display().to_string();
    assert!(out.contains(&format!("{p}: OK: 2 hosts, 3 names")), "{out}");
    // The overlap is a warning at the exact name's line.
    assert!(
        out.contains(&format!("{p}:14: warning: host[1].names[0]: \"x.wild.example\" is also covered by \"*.wild.example\" of host[0]")),
        "{out}"
    );
    for row in [
        "a.example",
        "*.wild.example",
        "x.wild.example",
        "127.0.0.1:8080",
        "passthrough",
        "pass, 50/s burst 50",
        "drop",
        "rejected: unrecognized_name",
        "metrics: http://127.0.0.1:9100/metrics",
    ] {
        assert!(out.contains(row), "{row}: {out}");
    }

    // Each broken variant: (what changes, the FILE:LINE: prefix and text expected).
    let cases: Vec<(String, String)> = vec![
        (good.replace("[[listen]]", "[[listen]"), ":5: ".into()),
        (
            good.replace("names = [\"x.wild.example\"]", "names = [\"A.example\"]"),
            ":14: host[1].names[0]: \"A.example\" is already a name of host[0]".into(),
        ),
        (
            good.replace("ports = [443]", "ports = [443, 0]"),
            ":4: xdp.ports[1]: 0 is not a TCP port".into(),
        ),
        (
            good.replace("backend = \"127.0.0.1:8080\"", "backend = \"localhost\""),
            ":11: host[0] (a.example).backend: \"localhost\" is not IP:PORT".into(),
        ),
        (
            good.replace(
                "names = [\"a.example\", \"*.wild.example\"]",
                "names = [\"a.example\", \"b.example\"]",
            ),
            format!(":8: host[0].names: {cert}: the certificate does not cover \"b.example\""),
        ),
        (
            good.replacen(
                &format!("key = {key:?}"),
                &format!("key = {:?}", pki.path("other.key").display().to_string()),
                1,
            ),
            ":10: host[0].key: ".into(),
        ),
        (
            good.replacen(&format!("cert = {cert:?}"), "cert = \"missing.pem\"", 1),
            ":9: host[0].cert: ".into(),
        ),
        (
            good.replace(
                "interfaces = [\"lo\"]",
                "interfaces = [\"lo\", \"nosuch0\"]",
            ),
            ":3: xdp.interfaces[1]: no interface named \"nosuch0\"".into(),
        ),
        (
            format!("user = \"no-such-user-here\"\n{good}"),
            ":1: user: ".into(),
        ),
        (
            format!("pin_dir = \"/tmp/sni-not-bpffs/pins\"\n{good}"),
            ":1: pin_dir: /tmp/sni-not-bpffs/pins is not on a bpf filesystem".into(),
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let (ok, out, path) = check(&pki, &format!("bad{i}.toml"), text);
        assert!(!ok, "case {i} passed:\n{out}");
        let want = format!("{}{expected}", path.display());
        assert!(
            out.starts_with(&want),
            "case {i}: want {want:?}\n got {out}"
        );
        assert!(out.contains("not valid"), "case {i}: {out}");
    }
    // The key mismatch says so.
    let (_, out, _) = check(&pki, "bad5.toml", &cases[5].0);
    assert!(
        out.contains("does not match") && out.contains("it is the key of another certificate"),
        "{out}"
    );
    // h2 offered in front of the HTTP/1.1-only builtin backend: valid, with a warning.
    let h2 = good.replace(
        "backend = \"127.0.0.1:8080\"",
        "backend = \"builtin\"\nalpn = [\"h2\", \"http/1.1\"]",
    );
    let (ok, out, path) = check(&pki, "h2.toml", &h2);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{}:12: warning: host[0].alpn: offers \"h2\", but the builtin backend",
            path.display()
        )),
        "{out}"
    );
}
