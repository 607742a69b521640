//! Routes by name and ALPN, and the PROXY v2 header's TLS facts (issue 17, items 3 and 4):
//! test-owned backends read what the terminator sends them, byte for byte; openssl s_client
//! offers the protocols; HAProxy (Debian's) consumes the header as a real backend would.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use sni_tests::{
    host,
    netns::{unique, wait_until, ChildGuard},
    term::{backend, curl, standard_pki, Term},
};

/// The PROXY v2 signature.
const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// openssl s_client to `name`, offering `alpn` (if any), sending `line`; its output.
fn client(term: &Term, name: &str, alpn: Option<&str>, extra: &[&str], line: &str) -> String {
    let connect = format!("127.0.0.1:{}", term.port());
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-quiet", "-connect", &connect])
        .args(["-servername", name])
        .args(extra);
    if let Some(alpn) = alpn {
        cmd.args(["-alpn", alpn]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(line.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads a PROXY v2 header whole (signature, 4 bytes, the length's worth).
fn read_proxy_header(s: &mut TcpStream) -> Vec<u8> {
    let mut head = vec![0u8; 16];
    s.read_exact(&mut head).expect("PROXY header");
    assert_eq!(&head[..12], SIGNATURE, "{head:?}");
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).expect("PROXY addresses and TLVs");
    head.extend(rest);
    head
}

/// A backend of `n` connections that answers `ping` lines with `pong from {tag}` and sends
/// what it read before them (a PROXY header when `proxy`) down `seen`.
fn tagged_backend(
    n: usize,
    tag: &'static str,
    proxy: bool,
) -> (SocketAddr, thread::JoinHandle<()>, mpsc::Receiver<Vec<u8>>) {
    let (tx, seen) = mpsc::channel();
    let (addr, handle) = backend(n, move |mut s| {
        let header = if proxy {
            read_proxy_header(&mut s)
        } else {
            Vec::new()
        };
        let mut line = [0u8; 5];
        s.read_exact(&mut line).expect("ping");
        assert_eq!(&line, b"ping\n");
        let _ = tx.send(header);
        s.write_all(format!("pong from {tag}\n").as_bytes())
            .expect("pong");
    });
    (addr, handle, seen)
}

/// The TLVs the terminator sends after the 12 IPv4 address bytes.
fn tlvs(header: &[u8]) -> &[u8] {
    header.get(28..).expect("IPv4 PROXY header")
}

/// One TLV, as the HAProxy spec lays it out.
fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
    v.extend(value);
    v
}

#[test]
fn alpn_picks_the_backend_of_a_terminated_host() {
    let pki = standard_pki();
    pki.leaf("r", &["r.example"]);
    let (main, main_done, _) = tagged_backend(3, "main", false);
    let (h2, h2_done, _) = tagged_backend(3, "h2", false);
    let term = Term::start(
        &pki,
        &format!(
            "[default]\nreject = true\n\
             [[host]]\nnames = [\"r.example\"]\ncert = \"r.pem\"\nkey = \"r.key\"\n\
             alpn = [\"h2\", \"http/1.1\"]\nbackend = \"{main}\"\n\
             [[host.route]]\nalpn = [\"h2\"]\nbackend = \"{h2}\"\n"
        ),
    );
    for (offered, reached) in [
        (Some("h2"), "h2"),
        (Some("http/1.1"), "main"),
        (None, "main"),
        // The server's order decides: h2 first, whatever the client prefers.
        (Some("http/1.1,h2"), "h2"),
        (Some("h2,http/1.1"), "h2"),
        (Some("spdy/1,http/1.1"), "main"),
    ] {
        let out = client(&term, "r.example", offered, &[], "ping\n");
        assert!(
            out.contains(&format!("pong from {reached}")),
            "{offered:?} should reach {reached}: {out}"
        );
    }
    main_done.join().unwrap();
    h2_done.join().unwrap();
    term.wait_stats("six handshakes of one host", |s| {
        host(s, "r.example")["handshakes"] == 6 && host(s, "r.example")["active"] == 0
    });
    // The route counts what it took: the three that negotiated h2.
    let s = term.stats();
    assert_eq!(
        host(&s, "r.example")["routes"],
        serde_json::json!([{ "alpn": "h2", "connections": 3 }]),
        "{s}"
    );
    // `check` shows the route.
    let out = Command::new(sni_tests::sni_user_bin())
        .args(["check", "--config"])
        .arg(&term.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("h2 → {h2}; else {main}")), "{text}");
}

#[test]
fn proxy_v2_carries_the_name_the_protocol_and_the_tls_version() {
    let pki = standard_pki();
    pki.leaf("p", &["p.example"]);
    let (addr, done, seen) = tagged_backend(2, "p", true);
    let term = Term::start(
        &pki,
        &format!(
            "[default]\nreject = true\n\
             [[host]]\nnames = [\"p.example\"]\ncert = \"p.pem\"\nkey = \"p.key\"\n\
             alpn = [\"h2\", \"http/1.1\"]\nbackend = \"{addr}\"\nproxy_protocol = true\n"
        ),
    );
    for (version, flag, alpn) in [
        ("TLSv1.3", "-tls1_3", "h2"),
        ("TLSv1.2", "-tls1_2", "http/1.1"),
    ] {
        let out = client(&term, "P.Example", Some(alpn), &[flag], "ping\n");
        assert!(out.contains("pong from p"), "{out}");
        let header = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        // v2 PROXY, TCP over IPv4, from 127.0.0.1 to the listener.
        assert_eq!(header[12..14], [0x21, 0x11]);
        assert_eq!(
            usize::from(u16::from_be_bytes([header[14], header[15]])),
            header.len() - 16
        );
        assert_eq!(header[16..24], [127, 0, 0, 1, 127, 0, 0, 1]);
        assert_eq!(
            u16::from_be_bytes([header[26], header[27]]).to_string(),
            term.port()
        );
        // PP2_TYPE_AUTHORITY (the name, as the parser normalised it), PP2_TYPE_ALPN, and
        // PP2_TYPE_SSL: client over TLS, no certificate (so verify is not zero), the version.
        let mut ssl = vec![0x01, 0, 0, 0, 1];
        ssl.extend(tlv(0x21, version.as_bytes()));
        let mut want = tlv(0x02, b"p.example");
        want.extend(tlv(0x01, alpn.as_bytes()));
        want.extend(tlv(0x20, &ssl));
        assert_eq!(tlvs(&header), &want[..], "{version}");
    }
    done.join().unwrap();
}

#[test]
fn passthrough_reads_name_and_alpn_from_the_client_hello() {
    let pki = standard_pki();
    // Passthrough backends: each reads the PROXY header and the ClientHello's record header.
    let passthrough_backend = || {
        let (tx, seen) = mpsc::channel::<(Vec<u8>, u8)>();
        let (addr, done) = backend(1, move |mut s| {
            let header = read_proxy_header(&mut s);
            let mut first = [0u8; 1];
            s.read_exact(&mut first).expect("ClientHello");
            let _ = tx.send((header, first[0]));
        });
        (addr, done, seen)
    };
    let (main, main_done, main_seen) = passthrough_backend();
    let (acme, acme_done, acme_seen) = passthrough_backend();
    let term = Term::start(
        &pki,
        &format!(
            "[default]\nreject = true\n\
             [[host]]\nnames = [\"pt.example\"]\nmode = \"passthrough\"\n\
             backend = \"{main}\"\nproxy_protocol = true\n\
             [[host.route]]\nalpn = [\"acme-tls/1\"]\nbackend = \"{acme}\"\n"
        ),
    );
    // The backends close after a byte: the clients fail, which is not what is tested.
    let _ = client(&term, "pt.example", Some("acme-tls/1"), &[], "");
    let (header, first) = acme_seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, 0x16, "the ClientHello follows the header untouched");
    let mut want = tlv(0x02, b"pt.example");
    want.extend(tlv(0x01, b"acme-tls/1"));
    assert_eq!(tlvs(&header), &want[..]);
    // No route matches: the host's backend, and the client's first protocol.
    let _ = client(&term, "pt.example", Some("h2,http/1.1"), &[], "");
    let (header, first) = main_seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, 0x16);
    let mut want = tlv(0x02, b"pt.example");
    want.extend(tlv(0x01, b"h2"));
    assert_eq!(tlvs(&header), &want[..]);
    main_done.join().unwrap();
    acme_done.join().unwrap();
}

#[test]
fn haproxy_reads_the_header_the_terminator_sends() {
    let pki = standard_pki();
    pki.leaf("hp", &["hp.example"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = pki.path(&format!("{}.cfg", unique("haproxy")));
    // HTTP mode with accept-proxy: HAProxy parses the whole header (TLVs included) and
    // answers with what it read.
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n\
             \x20 http-request return status 200 content-type text/plain lf-string \
             \"authority=%[fc_pp_authority] src=%[src] dst_port=%[dst_port]\\n\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let _haproxy = ChildGuard::spawn(cmd, "haproxy", &pki.path("haproxy.log"));
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "haproxy did not listen: {}",
        std::fs::read_to_string(pki.path("haproxy.log")).unwrap_or_default()
    );
    let term = Term::start(
        &pki,
        &format!(
            "[default]\nreject = true\n\
             [[host]]\nnames = [\"hp.example\"]\ncert = \"hp.pem\"\nkey = \"hp.key\"\n\
             alpn = [\"http/1.1\"]\nbackend = \"127.0.0.1:{port}\"\nproxy_protocol = true\n"
        ),
    );
    let out = curl(&pki, &term, "hp.example", &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "authority=hp.example src=127.0.0.1 dst_port={}\n",
            term.port()
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
