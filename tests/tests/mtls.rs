//! Client certificates (mTLS) per host, against curl `--cert/--key` and `openssl s_client
//! -cert -key`: a good, an expired, a revoked, an other-CA and a missing certificate, for
//! `client_auth = "required"` and `"optional"`; the alert each refusal gets, its count under
//! the host's `failures.client_cert`; a host without `client_ca` beside them; a reload that
//! swaps in a CRL revoking the good certificate (a full handshake and a resumed session both
//! refused after it); `[default]` with a client CA; `check` on the CA and CRL files; and the
//! client CN in the PROXY v2 header.
//!
//! The client PKI is made with rcgen (openssl 3.0 cannot back-date a certificate without
//! `openssl ca`'s database); the servers' certificates come from the openssl test CA.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use sni_tests::{
    check_config, host,
    netns::run,
    pki::Pki,
    sni_user_bin,
    term::{curl, standard_pki, Term},
};

/// Serial numbers of the client certificates, as the CRLs name them.
const GOOD: u8 = 1;
const EXPIRED: u8 = 2;
const REVOKED: u8 = 3;

/// The test CA for the servers, plus the client side: `client-ca.pem` (the CA hosts trust),
/// `other-ca.pem` (one they do not), client certificates `good`, `expired`, `revoked`
/// (signed by the client CA) and `other` (by the other CA), each `NAME.pem` + `NAME.key`;
/// `client-ca.crl` revokes `revoked`, `client-ca-good.crl` revokes `good` as well.
fn mtls_pki() -> Pki {
    let pki = standard_pki();
    for (file, name) in [
        ("req", "req.example"),
        ("opt", "opt.example"),
        ("plain", "plain.example"),
    ] {
        pki.leaf(file, &[name]);
    }
    let write = |name: &str, text: &str| std::fs::write(pki.path(name), text).unwrap();
    let ca = |cn: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let client_ca = ca("sni-test-client-ca");
    let other_ca = ca("sni-test-other-ca");
    write("client-ca.pem", &client_ca.pem());
    write("other-ca.pem", &other_ca.pem());
    let leaf =
        |file: &str, serial: u8, years: (i32, i32), issuer: &CertifiedIssuer<'_, KeyPair>| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{file}-client"));
            params.serial_number = Some(SerialNumber::from_slice(&[serial]));
            params.not_before = date_time_ymd(years.0, 1, 1);
            params.not_after = date_time_ymd(years.1, 1, 1);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            write(&format!("{file}.pem"), &cert.pem());
            write(&format!("{file}.key"), &key.serialize_pem());
        };
    leaf("good", GOOD, (2024, 2099), &client_ca);
    leaf("expired", EXPIRED, (2020, 2021), &client_ca);
    leaf("revoked", REVOKED, (2024, 2099), &client_ca);
    leaf("other", GOOD, (2024, 2099), &other_ca);
    let crl = |file: &str, serials: &[u8]| {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from_slice(&[serials.len() as u8]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&[*s]),
                    revocation_time: date_time_ymd(2025, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        write(file, &params.signed_by(&client_ca).unwrap().pem().unwrap());
    };
    crl("client-ca.crl", &[REVOKED]);
    crl("client-ca-good.crl", &[REVOKED, GOOD]);
    pki
}

/// `req.example` requires a client certificate, `opt.example` asks for one, `plain.example`
/// does not; all three on the builtin backend.
const HOSTS: &str = r#"
[default]
cert = "default.pem"
key = "default.key"
[[host]]
names = ["req.example"]
cert = "req.pem"
key = "req.key"
backend = "builtin"
client_ca = "client-ca.pem"
client_crl = ["client-ca.crl"]
[[host]]
names = ["opt.example"]
cert = "opt.pem"
key = "opt.key"
backend = "builtin"
client_ca = "client-ca.pem"
client_auth = "optional"
client_crl = ["client-ca.crl"]
[[host]]
names = ["plain.example"]
cert = "plain.pem"
key = "plain.key"
backend = "builtin"
"#;

/// The client certificates and the alert each one's refusal gets, as OpenSSL names it
/// (curl prints OpenSSL's error too). rustls sends `certificate_expired` (45),
/// `certificate_revoked` (44), `unknown_ca` (48) and, when a required certificate is
/// missing, `certificate_required` (116).
const REFUSED: [(&str, &str); 3] = [
    ("expired", "certificate expired"),
    ("revoked", "certificate revoked"),
    ("other", "unknown ca"),
];

/// curl `--cert NAME.pem --key NAME.key` (no certificate for `None`) to `name`.
fn curl_cert(pki: &Pki, term: &Term, name: &str, cert: Option<&str>) -> (bool, String) {
    let (pem, key) = cert.map_or_else(Default::default, |c| {
        (
            pki.path(&format!("{c}.pem")).display().to_string(),
            pki.path(&format!("{c}.key")).display().to_string(),
        )
    });
    let args: Vec<&str> = if cert.is_some() {
        vec!["--http1.1", "--cert", &pem, "--key", &key]
    } else {
        vec!["--http1.1"]
    };
    let out = curl(pki, term, name, &args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `openssl s_client -cert NAME.pem -key NAME.key` to `name`, sending one HTTP request and
/// reading until the server closes (`-ign_eof`): so a TLS 1.3 client, whose handshake ends
/// before the server has checked its certificate, reads the alert. `extra`: more options.
fn s_client_cert(pki: &Pki, term: &Term, name: &str, cert: Option<&str>, extra: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{}", term.port()))
        .args(["-servername", name, "-CAfile"])
        .arg(pki.path("ca.pem"));
    if let Some(c) = cert {
        cmd.arg("-cert")
            .arg(pki.path(&format!("{c}.pem")))
            .arg("-key")
            .arg(pki.path(&format!("{c}.key")));
    }
    let mut child = cmd
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl s_client: {e} (is openssl installed?)"));
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n");
    // A refused client may be gone before it reads its input.
    let _ = child.stdin.take().unwrap().write_all(request.as_bytes());
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the builtin backend answers for `label`.
fn served(label: &str) -> String {
    format!("you reached host {label:?}")
}

fn counter(term: &Term, label: &str, path: &[&str]) -> u64 {
    let stats = term.stats();
    let mut v = host(&stats, label);
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{label}: {path:?} missing from {stats}"))
}

#[test]
fn required_serves_a_good_certificate_and_refuses_the_others_with_their_alert() {
    let pki = mtls_pki();
    let term = Term::start(&pki, HOSTS);
    let name = "req.example";
    let (ok, out) = curl_cert(&pki, &term, name, Some("good"));
    assert!(ok && out.contains(&served(name)), "curl, good: {out}");
    let out = s_client_cert(&pki, &term, name, Some("good"), &[]);
    assert!(out.contains(&served(name)), "s_client, good: {out}");
    // The server asked with its CA's name as the hint.
    assert!(out.contains("sni-test-client-ca"), "no CA hint: {out}");
    let mut refused = 0;
    for (cert, alert) in REFUSED
        .iter()
        .map(|(c, a)| (Some(*c), *a))
        .chain([(None, "certificate required")])
    {
        let (ok, out) = curl_cert(&pki, &term, name, cert);
        assert!(
            !ok && out.contains(alert),
            "curl, {cert:?}: want {alert:?}: {out}"
        );
        assert!(!out.contains(&served(name)), "curl, {cert:?}: {out}");
        let out = s_client_cert(&pki, &term, name, cert, &[]);
        assert!(
            out.contains(alert),
            "s_client, {cert:?}: want {alert:?}: {out}"
        );
        assert!(!out.contains(&served(name)), "s_client, {cert:?}: {out}");
        refused += 2;
    }
    // TLS 1.2: the alert comes within the handshake.
    for (cert, alert) in [(Some("other"), "unknown ca"), (None, "alert number 116")] {
        let out = s_client_cert(&pki, &term, name, cert, &["-tls1_2"]);
        assert!(
            out.contains(alert),
            "s_client -tls1_2, {cert:?}: want {alert:?}: {out}"
        );
        assert!(
            !out.contains(&served(name)),
            "s_client -tls1_2, {cert:?}: {out}"
        );
        refused += 1;
    }
    term.wait_stats("refusals counted under the host", |s| {
        let h = host(s, name);
        h["failures"]["client_cert"] == refused
            && h["handshakes"] == 2
            && h["client_certs"] == 2
            && h["active"] == 0
    });
    // Nothing else was counted as a failure of the host, nor of another host.
    let stats = term.stats();
    for (reason, n) in host(&stats, name)["failures"].as_object().unwrap() {
        assert!(reason == "client_cert" || *n == 0, "{reason}: {stats}");
    }
    // No log line per refused connection at info or warn.
    let log = std::fs::read_to_string(&term.log).unwrap();
    assert!(
        !log.lines()
            .any(|l| (l.contains("INFO") || l.contains("WARN")) && l.contains("connection")),
        "{log}"
    );
}

#[test]
fn optional_serves_no_certificate_but_refuses_a_bad_one_and_other_hosts_are_untouched() {
    let pki = mtls_pki();
    let term = Term::start(&pki, HOSTS);
    let name = "opt.example";
    for cert in [Some("good"), None] {
        let (ok, out) = curl_cert(&pki, &term, name, cert);
        assert!(ok && out.contains(&served(name)), "curl, {cert:?}: {out}");
        let out = s_client_cert(&pki, &term, name, cert, &[]);
        assert!(out.contains(&served(name)), "s_client, {cert:?}: {out}");
    }
    // A certificate that is sent is checked: a bad one is refused even here.
    for (cert, alert) in REFUSED {
        let (ok, out) = curl_cert(&pki, &term, name, Some(cert));
        assert!(
            !ok && out.contains(alert),
            "curl, {cert}: want {alert:?}: {out}"
        );
        let out = s_client_cert(&pki, &term, name, Some(cert), &[]);
        assert!(
            out.contains(alert),
            "s_client, {cert}: want {alert:?}: {out}"
        );
        assert!(!out.contains(&served(name)), "s_client, {cert}: {out}");
    }
    // A host without client_ca asks for nothing: any client certificate is beside the point.
    for cert in ["good", "expired", "revoked", "other"] {
        let (ok, out) = curl_cert(&pki, &term, "plain.example", Some(cert));
        assert!(
            ok && out.contains(&served("plain.example")),
            "curl, {cert}: {out}"
        );
        let out = s_client_cert(&pki, &term, "plain.example", Some(cert), &[]);
        assert!(
            out.contains(&served("plain.example")),
            "s_client, {cert}: {out}"
        );
        assert!(
            !out.contains("Acceptable client certificate CA names"),
            "{out}"
        );
    }
    term.wait_stats("counted per host", |s| {
        let opt = host(s, name);
        let plain = host(s, "plain.example");
        opt["failures"]["client_cert"] == 6
            && opt["handshakes"] == 4
            && opt["client_certs"] == 2
            && plain["handshakes"] == 8
            && plain["client_certs"] == 0
            && plain["failures"]["client_cert"] == 0
    });
}

#[test]
fn a_reload_swaps_in_a_crl_that_revokes_the_good_certificate() {
    let pki = mtls_pki();
    let term = Term::start(&pki, HOSTS);
    let name = "req.example";
    let (ok, out) = curl_cert(&pki, &term, name, Some("good"));
    assert!(ok && out.contains(&served(name)), "before: {out}");
    // A session to resume after the reload.
    let session = pki.path("good.session");
    let session = session.to_str().unwrap();
    let out = s_client_cert(&pki, &term, name, Some("good"), &["-sess_out", session]);
    assert!(out.contains(&served(name)), "before, s_client: {out}");
    let config = std::fs::read_to_string(&term.config).unwrap();
    let revoking = config.replacen("\"client-ca.crl\"", "\"client-ca-good.crl\"", 1);
    assert_ne!(config, revoking);
    std::fs::write(&term.config, revoking).unwrap();
    let out = run(Command::new(sni_user_bin())
        .args(["reload", "--control"])
        .arg(&term.control));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded"),
        "{out:?}"
    );
    let (ok, out) = curl_cert(&pki, &term, name, Some("good"));
    assert!(
        !ok && out.contains("certificate revoked"),
        "after, curl: {out}"
    );
    let out = s_client_cert(&pki, &term, name, Some("good"), &[]);
    assert!(
        out.contains("certificate revoked"),
        "after, s_client: {out}"
    );
    // The session made before resumes at the TLS level (the ticket key stays: no server
    // certificate changed), but its client certificate is checked again: closed, unserved.
    let out = s_client_cert(&pki, &term, name, Some("good"), &["-sess_in", session]);
    assert!(out.contains("Reused,"), "the session did not resume: {out}");
    assert!(
        !out.contains(&served(name)),
        "a revoked session was served: {out}"
    );
    // The other hosts and the optional one's clients without certificates go on.
    let (ok, out) = curl_cert(&pki, &term, "opt.example", None);
    assert!(ok && out.contains(&served("opt.example")), "{out}");
    term.wait_stats("refusals after the reload", |s| {
        let h = host(s, name);
        s["global"]["reloads"] == 1
            && h["failures"]["client_cert"] == 3
            && h["handshakes"] == 2
            && h["resumed"] == 0
    });
    assert_eq!(counter(&term, name, &["client_certs"]), 2);
}

#[test]
fn check_names_the_ca_and_crl_files_and_shows_the_mode() {
    let pki = mtls_pki();
    let path = pki.path("check.toml");
    let good = format!("[[listen]]\naddress = \"127.0.0.1:0\"\n{HOSTS}");
    std::fs::write(&path, &good).unwrap();
    let (ok, report) = check_config(&path);
    assert!(ok, "{report}");
    let row = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {report}"))
            .to_owned()
    };
    assert!(report.contains("CLIENT CERT"), "{report}");
    assert!(row("req.example").ends_with("required (1 CRL)"), "{report}");
    assert!(row("opt.example").ends_with("optional (1 CRL)"), "{report}");
    assert!(row("plain.example").ends_with(" -"), "{report}");
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    std::fs::write(pki.path("empty.pem"), "").unwrap();
    for (from, to, field, why) in [
        (
            "\"client-ca.pem\"",
            "\"missing-ca.pem\"",
            "host[0].client_ca",
            "cannot read",
        ),
        (
            "\"client-ca.pem\"",
            "\"empty.pem\"",
            "host[0].client_ca",
            "holds no CERTIFICATE",
        ),
        (
            "\"client-ca.crl\"",
            "\"ca.pem\"",
            "host[0].client_crl[0]",
            "holds no X509 CRL",
        ),
        (
            "\"client-ca.crl\"",
            "\"missing.crl\"",
            "host[0].client_crl[0]",
            "cannot read",
        ),
    ] {
        let text = good.replacen(from, to, 1);
        std::fs::write(&path, &text).unwrap();
        let (ok, report) = check_config(&path);
        let file = pki.path(to.trim_matches('"'));
        let want = format!(
            "{}:{}: {field}: {}: {why}",
            path.display(),
            line_of(&text, to),
            file.display()
        );
        assert!(!ok && report.starts_with(&want), "want {want}\n{report}");
    }
}

#[test]
fn default_takes_client_ca_too() {
    let pki = mtls_pki();
    let body = "[default]\ncert = \"default.pem\"\nkey = \"default.key\"\nbackend = \"builtin\"\n\
                client_ca = \"client-ca.pem\"\n";
    let term = Term::start(&pki, body);
    // A name not configured, and no name at all, reach [default] and its check.
    let (ok, out) = curl_cert(&pki, &term, "default.example", Some("good"));
    assert!(ok && out.contains(&served("default")), "curl, good: {out}");
    let out = s_client_cert(&pki, &term, "default.example", Some("other"), &[]);
    assert!(out.contains("unknown ca"), "s_client, other: {out}");
    let out = Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-ign_eof",
            "-noservername",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{}", term.port()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("openssl s_client: {e}"));
    let out =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("certificate required"),
        "s_client, no name, no certificate: {out}"
    );
    term.wait_stats("counted under default", |s| {
        let d = host(s, "default");
        d["failures"]["client_cert"] == 2 && d["handshakes"] == 1 && d["client_certs"] == 1
    });
}

/// PROXY v2 to the backend of an mTLS host: `PP2_TYPE_SSL` says a certificate was given on
/// this connection and verified, and carries its subject CN (`PP2_SUBTYPE_SSL_CN`); on a
/// host that asks but gets none, verify is not zero and there is no CN.
#[test]
fn proxy_v2_carries_the_verified_client_cn() {
    let pki = mtls_pki();
    let (tx, seen) = std::sync::mpsc::channel::<Vec<u8>>();
    let (addr, done) = sni_tests::term::backend(2, move |mut s| {
        use std::io::Read;
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        // The whole request, so that closing with none of it unread sends no RST.
        let mut rest = sni_tests::term::read_request(&mut s, len);
        rest.truncate(len);
        tx.send(rest).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            .unwrap();
    });
    let term = Term::start(
        &pki,
        &format!(
            "[default]\nreject = true\n\
             [[host]]\nnames = [\"opt.example\"]\ncert = \"opt.pem\"\nkey = \"opt.key\"\n\
             backend = \"{addr}\"\nproxy_protocol = true\n\
             client_ca = \"client-ca.pem\"\nclient_auth = \"optional\"\n"
        ),
    );
    let tlv = |kind: u8, value: &[u8]| {
        let mut v = vec![kind];
        v.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
        v.extend(value);
        v
    };
    for (cert, client, verify, cn) in [
        (Some("good"), 0x07, 0, Some("good-client")),
        (None, 0x01, 1, None),
    ] {
        let (ok, out) = curl_cert(&pki, &term, "opt.example", cert);
        assert!(ok && out.contains("ok"), "{cert:?}: {out}");
        let rest = seen
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let mut ssl = vec![client];
        ssl.extend(u32::to_be_bytes(verify));
        ssl.extend(tlv(0x21, b"TLSv1.3"));
        if let Some(cn) = cn {
            ssl.extend(tlv(0x22, cn.as_bytes()));
        }
        let mut want = tlv(0x02, b"opt.example");
        want.extend(tlv(0x20, &ssl));
        // After the 12 bytes of IPv4 addresses; no ALPN TLV: the host offers none.
        assert_eq!(&rest[12..], &want[..], "{cert:?}");
    }
    done.join().unwrap();
}

/// A host that verifies client certificates dials its backend only once the client showed
/// one: a client without (or with a refused one) costs the backend nothing.
#[test]
fn the_backend_is_dialled_only_for_a_client_that_showed_its_certificate() {
    use std::io::{Read, Write};
    let pki = mtls_pki();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let term = Term::start(
        &pki,
        &format!(
            "[default]\nreject = true\n\
             [[host]]\nnames = [\"req.example\"]\ncert = \"req.pem\"\nkey = \"req.key\"\n\
             backend = \"{addr}\"\nclient_ca = \"client-ca.pem\"\n"
        ),
    );
    for cert in [None, Some("other")] {
        let (ok, out) = curl_cert(&pki, &term, "req.example", cert);
        assert!(!ok, "{cert:?}: {out}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        listener.accept().is_err(),
        "the backend was dialled for a client that showed no good certificate"
    );
    let served = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the request ended early");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            .unwrap();
    });
    let (ok, out) = curl_cert(&pki, &term, "req.example", Some("good"));
    assert!(ok && out.contains("ok"), "{out}");
    served.join().unwrap();
}
