//! TLS posture of the terminator as testssl.sh (Debian's package) sees it, and how it holds
//! its private keys: read once at start, never logged, world-readable ones warned about.

use std::{os::unix::fs::PermissionsExt, process::Command};

use serde_json::Value;
use sni_tests::term::{curl, standard_pki, Term, HOSTS};

/// testssl.sh's findings (flat JSON) against `name` on the terminator.
fn testssl(term: &Term, ca: &std::path::Path, name: &str, out: &std::path::Path) -> Vec<Value> {
    let url = format!("https://{name}:{}/", term.port());
    let result = Command::new("timeout")
        .args([
            "600",
            "testssl",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
        ])
        .args(["--openssl-timeout", "30", "--ip", "127.0.0.1", "--add-ca"])
        .arg(ca)
        .arg("--jsonfile")
        .arg(out)
        .arg(&url)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no JSON ({e}); status {}:\n{}\n{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        )
    });
    let findings: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(findings.len() > 50, "too few findings: {text}");
    findings
}

fn finding<'a>(findings: &'a [Value], id: &str) -> &'a str {
    findings
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} finding"))["finding"]
        .as_str()
        .unwrap()
}

#[test]
fn testssl_finds_nothing_high_or_critical() {
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    let findings = testssl(
        &term,
        &pki.path("ca.pem"),
        "a.example",
        &pki.path("testssl.json"),
    );
    let bad: Vec<&Value> = findings
        .iter()
        .filter(|f| f["severity"] == "HIGH" || f["severity"] == "CRITICAL")
        .collect();
    assert!(
        bad.is_empty(),
        "testssl findings of severity HIGH or CRITICAL: {bad:#?}"
    );
    // It did test: the scan ran to the end without a fatal error.
    assert!(
        !findings.iter().any(|f| f["severity"] == "FATAL"),
        "{findings:#?}"
    );
    // Only TLS 1.2 and 1.3.
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            finding(&findings, old).starts_with("not offered"),
            "{old}: {}",
            finding(&findings, old)
        );
    }
    assert!(
        finding(&findings, "TLS1_2").starts_with("offered"),
        "{}",
        finding(&findings, "TLS1_2")
    );
    assert!(
        finding(&findings, "TLS1_3").starts_with("offered"),
        "{}",
        finding(&findings, "TLS1_3")
    );
    // No renegotiation of any kind.
    let client_renego = finding(&findings, "secure_client_renego");
    assert!(client_renego.contains("not vulnerable"), "{client_renego}");
    eprintln!(
        "{}",
        findings
            .iter()
            .filter(|f| f["severity"] != "INFO" && f["severity"] != "OK")
            .map(|f| format!("{} {} {}", f["severity"], f["id"], f["finding"]))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn keys_are_read_once_never_logged_and_world_readable_ones_warned_about() {
    let pki = standard_pki();
    std::fs::set_permissions(pki.path("b.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let keys = ["a.key", "b.key", "wild.key", "default.key"];
    let bodies: Vec<String> = keys
        .iter()
        .flat_map(|k| {
            std::fs::read_to_string(pki.path(k))
                .unwrap()
                .lines()
                .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    // The keys' DER bytes, as a log line could show them: hex either case, or a Debug list.
    let mut forms = Vec::new();
    for k in keys {
        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
        let der = PrivateKeyDer::from_pem_file(pki.path(k)).unwrap();
        let der = der.secret_der();
        for window in [&der[8..24], &der[der.len() - 16..]] {
            let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
            forms.push(hex.to_uppercase());
            forms.push(hex);
            let list: Vec<String> = window[..8].iter().map(u8::to_string).collect();
            forms.push(list.join(", "));
        }
    }
    // Trace logging everywhere, rustls' own included.
    let term = Term::start_env(&pki, "127.0.0.1:0", HOSTS, &[("RUST_LOG", "trace")]);
    // (b.example: a.example offers h2, which the builtin backend does not speak.)
    let out = curl(&pki, &term, "b.example", &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&term.log).unwrap()
    );
    // Read once: with the key files gone, handshakes go on.
    for key in keys {
        std::fs::remove_file(pki.path(key)).unwrap();
    }
    for name in ["b.example", "x.wild.example", "default.example"] {
        let out = curl(&pki, &term, name, &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(&term.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("private key is world-readable") && l.contains("b.key")),
        "no warning for the world-readable key:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("a.key") && l.contains("world-readable")),
        "warned about a private key that is not world-readable"
    );
    // Never logged: no line of any key's PEM body appears in the trace log.
    assert!(!log.contains("PRIVATE KEY"), "a key was logged");
    assert!(!bodies.is_empty());
    for line in &bodies {
        assert!(
            !log.contains(line.as_str()),
            "a line of a key's PEM is in the log"
        );
    }
    assert!(log.lines().count() > 10, "trace logging was not on:\n{log}");
}
