//! The packaging in `packaging/`, checked with the tools operators use: the systemd unit by
//! `systemd-analyze` (syntax and exposure score) and its capability set by running
//! `sni-user run` under exactly that bounding set (and failing without any one of them); the
//! example configs by `sni-user check`; the Prometheus config and alert rules by `promtool`;
//! the Kubernetes DaemonSet against the unit and its own config; the Grafana dashboard's
//! shape. (`operations.rs` checks that the dashboard and the rules use only metrics served.)

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sni_tests::{
    check_config,
    netns::{unique, wait_until, ChildGuard, Pair, SERVER_V4},
    pki::Pki,
    require_root, sni_user_bin, PinDir,
};
use yaml_rust2::{Yaml, YamlLoader};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(packaging(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `CapabilityBoundingSet=` of the unit, without the `CAP_` prefixes.
fn unit_capabilities() -> BTreeSet<String> {
    let unit = read("systemd/sni.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_scores_well() {
    let dir = tempfile::tempdir().unwrap();
    // systemd-analyze wants the binary to exist: the unit as installed, pointing at this build.
    let unit = read("systemd/sni.service").replace(
        "/usr/local/bin/sni-user",
        &sni_user_bin().display().to_string(),
    );
    let path = dir.path().join("sni.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask test` installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for sni.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // 3.1 when written ("OK"); anything above 4 would be "MEDIUM".
    assert!(score <= 3.5, "exposure {score}:\n{text}");
    // The sysusers line makes the user the example config runs as.
    let sysusers = read("systemd/sni.sysusers");
    assert!(
        sysusers.lines().any(|l| l.starts_with("u sni ")),
        "{sysusers}"
    );
    assert!(read("sni.example.toml").contains("\nuser = \"sni\"\n"));
}

/// A config for `sni-user run` on the server side of `pair`, as `nobody`, port 443, in `dir`
/// with its certificate and key, all readable by `nobody` (so that reloads can read them).
fn edge_config(pki: &Pki, dir: &Path, pair: &Pair, pin_dir: &Path, control: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["edge.pem", "edge.key"] {
        std::fs::copy(pki.path(file), dir.join(file)).unwrap();
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let config = dir.join(format!("{}.toml", unique("caps")));
    std::fs::write(
        &config,
        format!(
            r#"pin_dir = {pin:?}
control_socket = {control:?}
user = "nobody"
workers = 1
metrics = "{SERVER_V4}:9100"
[xdp]
interfaces = [{iface:?}]
ports = [443]
[[listen]]
address = "{SERVER_V4}:443"
[default]
cert = "edge.pem"
key = "edge.key"
backend = "builtin"
"#,
            pin = pin_dir.display().to_string(),
            control = control.display().to_string(),
            iface = pair.server_if,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    config
}

/// `setpriv` with only `caps` in the bounding set (root's capabilities are then exactly
/// those), running `args`.
fn setpriv(mut cmd: Command, caps: &BTreeSet<String>) -> Command {
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    cmd.arg(format!("--bounding-set=-all,{}", set.join(",")))
        .arg("--inh-caps=-all")
        .arg("--")
        .arg(sni_user_bin());
    cmd
}

/// `sni-user run` in the server namespace under `setpriv` with only `caps`.
fn run_with(pair: &Pair, caps: &BTreeSet<String>, config: &Path) -> std::process::Command {
    let mut cmd = setpriv(pair.server.cmd_net_only(["setpriv"]), caps);
    cmd.args(["run", "--config"]).arg(config);
    cmd
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    require_root();
    let caps = unit_capabilities();
    assert_eq!(
        caps,
        [
            "BPF",
            "CHOWN",
            "NET_ADMIN",
            "NET_BIND_SERVICE",
            "PERFMON",
            "SETGID",
            "SETUID",
            "DAC_OVERRIDE",
        ]
        .map(String::from)
        .into_iter()
        .collect::<BTreeSet<_>>()
    );
    let pair = Pair::new();
    let pki = Pki::new();
    pki.leaf("edge", &["edge.test"]);
    let dir = tempfile::tempdir().unwrap();
    // Each run without one of the start-up capabilities fails at start.
    for missing in caps.iter().filter(|c| *c != "DAC_OVERRIDE") {
        let pin_dir = PinDir::new("sni-caps-");
        let control = PathBuf::from("/tmp")
            .join(unique("sni-caps"))
            .join("ctl.sock");
        let config = edge_config(&pki, dir.path(), &pair, &pin_dir, &control);
        let mut fewer = caps.clone();
        fewer.remove(missing);
        let out = run_with(&pair, &fewer, &config).output().unwrap();
        assert!(
            !out.status.success(),
            "ran without CAP_{missing}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(dir) = control.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // With all of them: attached, serving, unprivileged, and clean at exit.
    let pin_dir = PinDir::new("sni-caps-");
    let control = PathBuf::from("/tmp")
        .join(unique("sni-caps"))
        .join("ctl.sock");
    let config = edge_config(&pki, dir.path(), &pair, &pin_dir, &control);
    let log = pki.path("run.log");
    let mut run = ChildGuard::spawn_ready(
        run_with(&pair, &caps, &config),
        "sni-user run (unit capabilities)",
        &log,
        "ready;",
    );
    let out = pair
        .client
        .cmd(["curl", "-sS", "-k", "--max-time", "5"])
        .args(["--resolve", &format!("edge.test:443:{SERVER_V4}")])
        .arg("https://edge.test/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("you reached host"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(sni_user_bin())
        .args(["stats", "--json", "--pin-dir"])
        .arg(&*pin_dir)
        .arg("--control")
        .arg(&control)
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["global"]["sni"], 1, "{stats}");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("privileges dropped user=nobody"),
        "{log_text}"
    );
    let status = run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let gone = wait_until(Duration::from_secs(5), || {
        !pin_dir.exists() && !control.exists()
    });
    assert!(
        gone,
        "pins or socket left:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    if let Some(dir) = control.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `text` with its paths pointed at `pki`'s certificates and its interface at `lo`, checked
/// by `sni-user check`; the report.
fn check_example(pki: &Pki, text: &str) -> String {
    for (file, names) in [
        ("default", &["default.example"][..]),
        (
            "example.com",
            &["example.com", "www.example.com", "*.example.com"][..],
        ),
        ("old.example.org", &["old.example.org"][..]),
    ] {
        pki.leaf(file, names);
    }
    let text = text
        .replace("/etc/sni/certs/", &format!("{}/", pki.path("").display()))
        .replace("[\"eth0\"]", "[\"lo\"]")
        .replace("user = \"sni\"", "user = \"nobody\"");
    let path = pki.path(&format!("{}.toml", unique("example")));
    std::fs::write(&path, text).unwrap();
    let (ok, report) = check_config(&path);
    assert!(ok, "{report}");
    report
}

#[test]
fn the_example_configs_pass_check() {
    let pki = Pki::new();
    let report = check_example(&pki, &read("sni.example.toml"));
    for needle in [
        "OK: 3 hosts, 5 names",
        "*.example.com",
        "api.example.net",
        "passthrough",
        "old.example.org",
        "drop",
        "pass, 500/s burst 1000",
        "metrics: http://127.0.0.1:9100/metrics",
        "runs as: nobody",
    ] {
        assert!(report.contains(needle), "{needle}:\n{report}");
    }
    // Every key the loader knows is in the example (commented out or set).
    let example = read("sni.example.toml");
    for key in [
        "pin_dir",
        "control_socket",
        "user",
        "workers",
        "metrics",
        "metrics_other_hosts",
        "interfaces",
        "mode",
        "ports",
        "other_hosts_capacity",
        "flows_capacity",
        "pending_capacity",
        "hosts_capacity",
        "address",
        "cert",
        "key",
        "backend",
        "reject",
        "action",
        "hello_rate",
        "hello_burst",
        "client_ca",
        "client_auth",
        "client_crl",
        "names",
        "alpn",
        "proxy_protocol",
        "handshake_timeout",
        "idle_timeout",
        "max_connections",
        "max_connections_per_ip",
        "max_client_hello",
        "buffer_size",
    ] {
        assert!(
            example
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
            "{key} is not in the example"
        );
    }
    // The DaemonSet's ConfigMap holds a config that passes too.
    let docs = YamlLoader::load_from_str(&read("kubernetes/daemonset.yaml")).unwrap();
    let config_map = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .expect("a ConfigMap");
    let text = config_map["data"]["sni.toml"].as_str().unwrap();
    let report = check_example(&pki, text);
    assert!(report.contains("OK: 1 host, 2 names"), "{report}");
}

#[test]
fn the_daemonset_matches_the_unit_and_its_config() {
    let docs = YamlLoader::load_from_str(&read("kubernetes/daemonset.yaml")).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    let ds = &docs[2];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let container = &spec["containers"][0];
    let security = &container["securityContext"];
    let added: BTreeSet<String> = security["capabilities"]["add"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        added,
        unit_capabilities(),
        "the same capabilities as the unit"
    );
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    // The node's bpffs, mounted where pin_dir is.
    let mounts = container["volumeMounts"].as_vec().unwrap();
    let bpf = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/sys/fs/bpf"))
        .expect("a /sys/fs/bpf mount");
    let volume = spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == bpf["name"])
        .unwrap();
    assert_eq!(volume["hostPath"]["path"].as_str(), Some("/sys/fs/bpf"));
    // Scrape annotations and probes on the config's metrics port; the args' config file is
    // where the ConfigMap is mounted.
    let config = docs[1]["data"]["sni.toml"].as_str().unwrap();
    let port = config
        .lines()
        .find_map(|l| l.strip_prefix("metrics = \""))
        .and_then(|r| r.trim_end_matches('"').rsplit(':').next())
        .unwrap();
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(port));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].as_i64(),
        port.parse().ok()
    );
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_mount = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(
        args,
        ["run", "--config", &format!("{config_mount}/sni.toml")]
    );
    // The Kubernetes scrape job parses and keeps annotated pods.
    let scrape = YamlLoader::load_from_str(&read("prometheus/kubernetes-scrape.yml")).unwrap();
    let job = &scrape[0]["scrape_configs"][0];
    assert_eq!(
        job["kubernetes_sd_configs"][0]["role"].as_str(),
        Some("pod")
    );
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alert_rules() {
    for args in [
        ["check", "config", "prometheus/prometheus.yml"],
        ["check", "rules", "prometheus/alerts.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(packaging(""))
            .output()
            .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_dashboard_is_well_formed() {
    let d: Value = serde_json::from_str(&read("grafana/sni-dashboard.json")).unwrap();
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let mut queries = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("sni_"), "{expr}");
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries}");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "host"]);
}
