//! The TLS terminator against real clients (curl, openssl s_client) on loopback, with
//! certificates from a test CA made by openssl, and backends owned by the test: certificate
//! per name (exact, wildcard, default, reject), ALPN, PROXY v2, passthrough to a TLS backend,
//! a refused and a dying backend, no resumption across hosts, handshake deadline, caps.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use sni_tests::{
    host,
    netns::{run, unique, wait_until, ChildGuard},
    pki::rustls_client,
    sni_user_bin,
    term::{backend, curl, read_request, s_client, standard_pki, Term, HOSTS},
};

#[test]
fn each_name_gets_its_certificate_and_its_host() {
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    for (name, label) in [
        ("a.example", "a.example"),
        ("b.example", "b.example"),
        ("x.wild.example", "*.wild.example"),
    ] {
        let out = curl(&pki, &term, name, &["--http1.1"]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(body.contains(&format!("host {label:?}")), "{name}: {body}");
        assert!(
            body.contains(&format!("server_name {name:?}")),
            "{name}: {body}"
        );
    }
    // One label only: a.b.wild.example is not covered and gets the default certificate.
    let out = s_client(
        &term,
        &[
            "-servername",
            "a.b.wild.example",
            "-CAfile",
            pki.path("ca.pem").to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("CN=default.example") || out.contains("CN = default.example"),
        "{out}"
    );
    // No SNI at all: the default certificate, verified by the test CA.
    let out = s_client(
        &term,
        &[
            "-noservername",
            "-CAfile",
            pki.path("ca.pem").to_str().unwrap(),
        ],
    );
    assert!(out.contains("default.example"), "{out}");
    assert!(out.contains("Verify return code: 0"), "{out}");
    term.wait_stats("handshakes counted", |s| {
        let h = |l: &str| host(s, l)["handshakes"].as_u64().unwrap();
        h("a.example") == 1 && h("b.example") == 1 && h("*.wild.example") == 1 && h("default") == 2
    });
}

#[test]
fn reject_answers_unknown_names_with_unrecognized_name() {
    let pki = standard_pki();
    let body = HOSTS.replace(
        "[default]\ncert = \"default.pem\"\nkey = \"default.key\"",
        "[default]\nreject = true",
    );
    let term = Term::start(&pki, &body);
    let out = s_client(&term, &["-servername", "unknown.example"]);
    assert!(out.contains("unrecognized name"), "{out}");
    let out = s_client(&term, &["-noservername"]);
    assert!(out.contains("unrecognized name"), "{out}");
    // Known names still work.
    assert!(curl(&pki, &term, "b.example", &[]).status.success());
    term.wait_stats("rejections counted", |s| {
        s["global"]["rejected_unknown_name"] == 2
    });
}

#[test]
fn alpn_is_per_host() {
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    let out = s_client(&term, &["-servername", "a.example", "-alpn", "h2,http/1.1"]);
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    let out = s_client(&term, &["-servername", "b.example", "-alpn", "h2,http/1.1"]);
    assert!(out.contains("No ALPN negotiated"), "{out}");
}

#[test]
fn tcp_backend_with_proxy_protocol_v2() {
    let pki = standard_pki();
    let (addr, handle) = backend(1, |mut s| {
        // PROXY v2: signature, v2 PROXY, TCP over IPv4, then 12 address bytes (client
        // 127.0.0.1) and the TLVs (`routing.rs` checks those byte for byte).
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n", "{head:?}");
        assert_eq!(head[12], 0x21);
        assert_eq!(head[13], 0x11);
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        assert!(len > 12, "{len}");
        let req = read_request(&mut s, len);
        assert_eq!(&req[..4], &[127, 0, 0, 1]);
        let http = String::from_utf8_lossy(&req[len..]).into_owned();
        assert!(http.starts_with("GET / HTTP/1.1\r\n"), "{http}");
        assert!(http.contains("Host: p.example"), "{http}");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nproxy-ok\n")
            .unwrap();
    });
    pki.leaf("p", &["p.example"]);
    let body = format!(
        "{HOSTS}[[host]]\nnames = [\"p.example\"]\ncert = \"p.pem\"\nkey = \"p.key\"\nbackend = \"{addr}\"\nproxy_protocol = true\n"
    );
    let term = Term::start(&pki, &body);
    let out = curl(&pki, &term, "p.example", &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "proxy-ok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    handle.join().unwrap();
    term.wait_stats("bytes counted", |s| {
        let p = host(s, "p.example");
        p["handshakes"] == 1 && p["bytes_to_client"].as_u64().unwrap() > 0 && p["active"] == 0
    });
}

#[test]
fn refused_and_dying_backends_close_cleanly_and_are_counted() {
    let pki = standard_pki();
    // Nothing listens on the refused port: bind and drop to find a free one.
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (dying, handle) = backend(1, |mut s| {
        let _ = read_request(&mut s, 0);
        // Half a response, then a reset.
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            .unwrap();
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    pki.leaf("r", &["r.example"]);
    pki.leaf("d", &["d.example"]);
    let body = format!(
        "{HOSTS}[[host]]\nnames = [\"r.example\"]\ncert = \"r.pem\"\nkey = \"r.key\"\nbackend = \"{refused}\"\n\
         [[host]]\nnames = [\"d.example\"]\ncert = \"d.pem\"\nkey = \"d.key\"\nbackend = \"{dying}\"\n"
    );
    let term = Term::start(&pki, &body);
    let out = curl(&pki, &term, "r.example", &[]);
    assert!(!out.status.success());
    let out = curl(&pki, &term, "d.example", &[]);
    assert!(
        !out.status.success(),
        "a truncated body must not look complete"
    );
    handle.join().unwrap();
    term.wait_stats("backend failures counted", |s| {
        let f = |l: &str, k: &str| host(s, l)["failures"][k].as_u64().unwrap();
        f("r.example", "backend_refused") == 1
            && f("d.example", "backend_failed") + f("d.example", "client_gone") >= 1
    });
    // The terminator still serves others.
    assert!(curl(&pki, &term, "b.example", &[]).status.success());
}

#[test]
fn passthrough_relays_to_the_backend_tls_server() {
    let pki = standard_pki();
    pki.leaf("pass", &["pass.example"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_server",
        "-www",
        "-quiet",
        "-accept",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("-cert")
    .arg(pki.path("pass.pem"))
    .arg("-key")
    .arg(pki.path("pass.key"));
    let _server = ChildGuard::spawn(cmd, "openssl s_server", &pki.path("s_server.log"));
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        ("127.0.0.1", port)
    )
    .is_ok()));
    let body = format!("{HOSTS}[[host]]\nnames = [\"pass.example\"]\nmode = \"passthrough\"\nbackend = \"127.0.0.1:{port}\"\n");
    let term = Term::start(&pki, &body);
    let out = curl(&pki, &term, "pass.example", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // openssl's -www status page: the backend terminated TLS, with its own certificate.
    assert!(text.contains("s_server"), "{text}");
    term.wait_stats("passthrough counted", |s| {
        host(s, "pass.example")["handshakes"] == 1
    });
}

#[test]
fn sessions_do_not_resume_across_hosts() {
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    let sess = pki.path("a.sess");
    let sess_arg = sess.to_str().unwrap();
    let first = s_client(
        &term,
        &["-servername", "a.example", "-tls1_2", "-sess_out", sess_arg],
    );
    assert!(first.contains("New, "), "{first}");
    let again = s_client(
        &term,
        &["-servername", "a.example", "-tls1_2", "-sess_in", sess_arg],
    );
    assert!(again.contains("Reused, "), "the same host resumes: {again}");
    let other = s_client(
        &term,
        &["-servername", "b.example", "-tls1_2", "-sess_in", sess_arg],
    );
    assert!(
        other.contains("New, "),
        "another host must not resume a.example's session: {other}"
    );
    assert!(
        other.contains("CN=b.example") || other.contains("CN = b.example"),
        "{other}"
    );
}

#[test]
fn handshake_deadline_and_connection_caps() {
    let pki = standard_pki();
    let body = format!("{HOSTS}[limits]\nhandshake_timeout = 1.0\nmax_connections_per_ip = 3\n");
    let term = Term::start(&pki, &body);
    let addr = term.addr;
    // Three silent clients fill this IP's quota; a fourth is closed at once.
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut fourth = TcpStream::connect(addr).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(
        matches!(fourth.read(&mut buf), Ok(0) | Err(_)),
        "the fourth connection was not closed"
    );
    // The silent ones are closed by the handshake deadline, not later than a few ticks after.
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "deadline not applied"
    );
    term.wait_stats("limits counted", |s| {
        s["global"]["over_max_per_ip"] == 1 && s["global"]["client_hello_timeout"] == 3
    });
    // With the quota free again, a real client gets through.
    assert!(curl(&pki, &term, "b.example", &[]).status.success());
}

#[test]
fn bad_certificates_and_configs_fail_start_with_the_file_and_host() {
    let pki = standard_pki();
    let cases = [
        // Certificate does not cover the name.
        (
            HOSTS.replace("names = [\"b.example\"]", "names = [\"c.example\"]"),
            "does not cover \"c.example\"",
        ),
        // Key of another certificate.
        (
            HOSTS.replace("key = \"b.key\"", "key = \"a.key\""),
            "does not match",
        ),
        // Missing file.
        (
            HOSTS.replace("cert = \"b.pem\"", "cert = \"missing.pem\""),
            "missing.pem",
        ),
        // Bad backend syntax.
        (
            HOSTS.replace(
                "backend = \"builtin\"\n[[host]]\nnames = [\"*.wild",
                "backend = \"nowhere\"\n[[host]]\nnames = [\"*.wild",
            ),
            "host[1] (b.example).backend",
        ),
        // Not a certificate, not a key.
        (
            HOSTS.replace("cert = \"b.pem\"", "cert = \"b.key\""),
            "b.key",
        ),
        (HOSTS.replace("key = \"b.key\"", "key = \"b.pem\""), "b.pem"),
    ];
    std::fs::write(
        pki.path("garbage.pem"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    let cases = cases
        .into_iter()
        .map(|(b, e)| (String::new(), b, e))
        .chain([
            // A truncated PEM.
            (
                String::new(),
                HOSTS.replace("cert = \"b.pem\"", "cert = \"garbage.pem\""),
                "garbage.pem",
            ),
            // A user to switch to that does not exist: refused before anything is bound.
            (
                "user = \"no-such-sni-user\"\n".to_owned(),
                HOSTS.to_owned(),
                "user \"no-such-sni-user\" (config `user`) does not exist",
            ),
        ]);
    for (top, body, expect) in cases {
        let config = pki.path(&format!("{}.toml", unique("bad")));
        std::fs::write(&config, format!("{top}control_socket = \"/tmp/unused.sock\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n{body}")).unwrap();
        let out = Command::new(sni_user_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{expect}: started anyway");
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
    }
}

#[test]
fn a_second_instance_on_a_listening_address_is_refused() {
    let pki = standard_pki();
    let first = Term::start(&pki, HOSTS);
    // The same address, and the wildcard address of the same port: both refused at start,
    // though SO_REUSEPORT would let them bind and take a share of the first one's clients.
    for listen in [first.addr.to_string(), format!("0.0.0.0:{}", first.port())] {
        let config = pki.path(&format!("{}.toml", unique("second")));
        let control = pki.path(&format!("{}.sock", unique("ctl2")));
        std::fs::write(
            &config,
            format!(
                "control_socket = {:?}\n[[listen]]\naddress = {listen:?}\n{HOSTS}",
                control.display().to_string()
            ),
        )
        .unwrap();
        let out = Command::new("timeout")
            .arg("20")
            .arg(sni_user_bin())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{listen}: {err}");
        assert!(
            err.contains(&format!("listening on {listen}"))
                && err.contains("another process listens there"),
            "{listen}: {err}"
        );
    }
    // Every request still reaches the first one.
    for _ in 0..10 {
        let out = curl(&pki, &first, "b.example", &[]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("reached host \"b.example\""),
            "{out:?}"
        );
    }
    first.wait_stats("all ten on the first", |t| {
        host(t, "b.example")["handshakes"] == 10
    });
}

#[test]
fn ipv6_listener_python_ssl_and_post_quantum_key_exchange() {
    let pki = standard_pki();
    let term = Term::start_on(&pki, "[::1]:0", HOSTS);
    assert!(term.addr.is_ipv6(), "{}", term.addr);
    // curl over IPv6.
    let resolve = format!("b.example:{}:[::1]", term.port());
    let url = format!("https://b.example:{}/", term.port());
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &resolve, &url]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("host \"b.example\""));
    // Python's ssl module, verifying against the test CA.
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         with socket.create_connection(('::1', {port}), timeout=10) as s:\n\
         \x20   with ctx.wrap_socket(s, server_hostname='x.wild.example') as t:\n\
         \x20       t.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         \x20       print(t.version(), t.recv(4096).decode())\n",
        ca = pki.path("ca.pem").display().to_string(),
        port = term.port()
    );
    let out = run(Command::new("python3").arg("-c").arg(&script));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("TLSv1.3"), "{text}");
    assert!(text.contains("host \"*.wild.example\""), "{text}");
    // A rustls client offering X25519MLKEM768 first gets it.
    let config = rustls_client(&pki);
    let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(term.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let group = conn.negotiated_key_exchange_group().unwrap().name();
    assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
}

#[test]
fn unix_backend_and_half_close_both_ways() {
    use std::os::unix::net::UnixListener;
    let pki = standard_pki();
    pki.leaf("u", &["u.example"]);
    let sock = pki.path("backend.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    const BODY: usize = 300_000;
    let backend = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Reads to end of stream: the client's close_notify must arrive as a half-close.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .unwrap();
        // Dropping closes our side: the client must see the end after the answer.
    });
    let body = format!(
        "{HOSTS}[[host]]\nnames = [\"u.example\"]\ncert = \"u.pem\"\nkey = \"u.key\"\nbackend = \"unix:{}\"\n",
        sock.display()
    );
    let term = Term::start(&pki, &body);
    let config = rustls_client(&pki);
    let name = rustls::pki_types::ServerName::try_from("u.example").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(term.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let payload: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
    tls.write_all(&payload).unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("got {BODY} bytes"));
    backend.join().unwrap();
    term.wait_stats("bytes counted both ways", |s| {
        let u = host(s, "u.example");
        u["bytes_to_backend"] == BODY as u64 && u["active"] == 0
    });
}

/// The SHA-256 fingerprint of the certificate the terminator serves for `name`.
fn served_fingerprint(term: &Term, name: &str) -> String {
    let script = format!(
        "timeout 10 openssl s_client -connect 127.0.0.1:{} -servername {name} </dev/null \
         2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        term.port()
    );
    let out = run(Command::new("sh").arg("-c").arg(&script));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn file_fingerprint(pem: &std::path::Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn hangup(term: &Term) {
    run(Command::new("kill").args(["-HUP", &term.child.pid().to_string()]));
}

#[test]
fn reload_rotates_certificates_and_keeps_the_running_config_on_a_bad_file() {
    let pki = standard_pki();
    let term = Term::start(&pki, HOSTS);
    let first = served_fingerprint(&term, "b.example");
    assert_eq!(first, file_fingerprint(&pki.path("b.pem")));
    // A renewed certificate with a new key, then SIGHUP: new connections get it.
    pki.leaf("b", &["b.example"]);
    let renewed = file_fingerprint(&pki.path("b.pem"));
    assert_ne!(first, renewed);
    hangup(&term);
    term.wait_stats("reload applied", |s| s["global"]["reloads"] == 1);
    assert_eq!(served_fingerprint(&term, "b.example"), renewed);
    let good = std::fs::read_to_string(&term.config).unwrap();
    let log = || std::fs::read_to_string(&term.log).unwrap();
    // Each bad file is refused whole, says why, and the running config stays.
    let bad = [
        (format!("{good}\n[[host]\n"), "TOML"),
        (good.replace("\"b.key\"", "\"missing.key\""), "missing.key"),
        (good.replace("a.pem", "b.pem"), "a.example"),
        (
            good.replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\""),
            "[[listen]] changed, which needs a restart",
        ),
        (
            good.replace("workers = 2", "workers = 3"),
            "workers changed, which needs a restart",
        ),
    ];
    for (i, (text, why)) in bad.iter().enumerate() {
        std::fs::write(&term.config, text).unwrap();
        hangup(&term);
        term.wait_stats("reload refused", |s| {
            s["global"]["reload_failures"] == i as u64 + 1
        });
        let log = log();
        let line = log
            .lines()
            .rfind(|l| l.contains("reload refused"))
            .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
        assert!(
            line.contains(why) && line.contains(&*term.config.display().to_string()),
            "{why}: {line}"
        );
        assert_eq!(served_fingerprint(&term, "b.example"), renewed, "{why}");
        assert!(
            curl(&pki, &term, "b.example", &[]).status.success(),
            "{why}"
        );
    }
    assert_eq!(term.stats()["global"]["reloads"], 1);
}
