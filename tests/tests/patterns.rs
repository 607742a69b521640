//! The classifier and the terminator name the same host for every name a client can send:
//! the loaded XDP program reads a ClientHello from a frame under `BPF_PROG_TEST_RUN` and
//! records its flow's host, the terminator reads the same ClientHello with its reader and
//! resolves it with `Routes` loaded from the same config (certificates included). Edge cases:
//! case, trailing dots, empty labels, one label too many or too few, `*` itself sent, IDNs,
//! and names of 253 to 256 bytes.
#![allow(clippy::unwrap_used, reason = "tests")]

use sni_common::flow::kind;
use sni_tests::{
    frame::{self, Seg, PSH_ACK},
    hellos::named,
    pki::Pki,
    prog::{v4_key, Prog, XDP_PASS},
};
use sni_user::{
    config::Config,
    terminator::{
        hello_reader::{HelloReader, Step},
        routes::Routes,
    },
};

const PORT: u16 = 443;

/// Where a ClientHello ends up, as the route index of the terminator's table (the default's
/// is after the hosts').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reached {
    /// A route: a configured host, or the default.
    Route(usize),
    /// No name could be read (a malformed ClientHello): the connection is refused.
    Unread,
}

/// A parent of 251 bytes: four labels of 62 letters. `*.` and it make a 253-byte pattern; a
/// name one label below it is 253 to 255 bytes with a first label of 1 to 3 bytes.
fn long_parent() -> String {
    ["p"; 4].map(|c| c.repeat(62)).join(".")
}

fn config_text(pki: &Pki) -> String {
    pki.leaf(
        "example",
        &["example.com", "*.example.com", "exact.example.com"],
    );
    pki.leaf("default", &["default.test"]);
    let pem = |f: &str| pki.path(&format!("{f}.pem")).display().to_string();
    let key = |f: &str| pki.path(&format!("{f}.key")).display().to_string();
    let parent = long_parent();
    // The long names have labels the certificate probe refuses (a wildcard's probe name would
    // be past 253 bytes): those hosts pass through.
    format!(
        r#"
[xdp]
interfaces = ["lo"]
ports = [{PORT}]
[default]
cert = {dp:?}
key = {dk:?}
[[host]]
names = ["example.com"]
cert = {ep:?}
key = {ek:?}
[[host]]
names = ["*.Example.COM."]
cert = {ep:?}
key = {ek:?}
[[host]]
names = ["exact.example.com"]
cert = {ep:?}
key = {ek:?}
[[host]]
names = ["*.{parent}"]
mode = "passthrough"
backend = "127.0.0.1:9"
[[host]]
names = ["zzz.{parent}"]
mode = "passthrough"
backend = "127.0.0.1:9"
"#,
        dp = pem("default"),
        dk = key("default"),
        ep = pem("example"),
        ek = key("example"),
    )
}

/// Route indexes of the config above.
const APEX: usize = 0;
const WILD: usize = 1;
const EXACT: usize = 2;
const LONG_WILD: usize = 3;
const LONG_EXACT: usize = 4;
const DEFAULT: usize = 5;

/// Every name, with the host both sides must pick.
fn cases() -> Vec<(String, Reached)> {
    use Reached::{Route, Unread};
    let parent = long_parent();
    let mut cases: Vec<(String, Reached)> = [
        ("a.example.com", Route(WILD)),
        ("A.EXAMPLE.COM", Route(WILD)),
        ("a.example.com.", Route(WILD)),
        ("xn--bcher-kva.example.com", Route(WILD)),
        // The pattern itself, sent as a name: found as the exact key both tables hold.
        ("*.example.com", Route(WILD)),
        ("example.com", Route(APEX)),
        ("Example.Com.", Route(APEX)),
        ("exact.example.com", Route(EXACT)),
        ("EXACT.example.com.", Route(EXACT)),
        // One label too many.
        ("a.b.example.com", Route(DEFAULT)),
        ("*.*.example.com", Route(DEFAULT)),
        // An empty first label is no label: covered by no pattern.
        (".example.com", Route(DEFAULT)),
        ("..example.com", Route(DEFAULT)),
        // Empty labels further on: the pattern one label up is not `*.example.com`.
        ("a..example.com", Route(DEFAULT)),
        ("a.example..com", Route(DEFAULT)),
        // Two trailing dots: one goes, the other leaves an empty last label.
        ("a.example.com..", Route(DEFAULT)),
        ("example.com..", Route(DEFAULT)),
        (".", Unread),
        ("..", Route(DEFAULT)),
        ("a.", Route(DEFAULT)),
        ("*", Route(DEFAULT)),
        ("example.org", Route(DEFAULT)),
        ("aexample.com", Route(DEFAULT)),
    ]
    .into_iter()
    .map(|(n, r)| (n.to_owned(), r))
    .collect();
    for (name, reached) in [
        (format!("a.{parent}"), Route(LONG_WILD)),
        (format!("ab.{parent}"), Route(LONG_WILD)),
        (format!("abc.{parent}"), Route(LONG_WILD)),
        (format!("abc.{parent}."), Unread),
        (format!("abcd.{parent}"), Unread),
        (format!("zzz.{parent}"), Route(LONG_EXACT)),
        (format!("ZZZ.{parent}."), Unread),
        (format!("a.zzz.{parent}"), Unread),
        (format!(".{parent}"), Route(DEFAULT)),
        (format!("a..{parent}"), Route(DEFAULT)),
        (parent.clone(), Route(DEFAULT)),
    ] {
        cases.push((name, reached));
    }
    cases
}

/// The classifier's host for `hello`, on a flow of its own: the route the terminator's
/// hand-off takes from the flow record (its slot, else the default).
fn kernel(prog: &Prog, routes: &Routes, name: &str, hello: &[u8]) -> Reached {
    let port = frame::next_port();
    let seg = Seg {
        src_port: port,
        dst_port: PORT,
        seq: 1,
        flags: PSH_ACK,
    };
    assert_eq!(
        prog.run(&frame::v4_segment(&seg, hello)),
        XDP_PASS,
        "{name}"
    );
    let flow = prog
        .flow(&v4_key(port, PORT))
        .unwrap_or_else(|| panic!("{name}: no flow record"));
    match flow.kind {
        kind::CONFIGURED => Reached::Route(
            routes
                .by_slot(flow.slot)
                .unwrap_or_else(|| panic!("{name}: slot {} has no route", flow.slot)),
        ),
        kind::OTHER => {
            // Counted as a name of its own (`host` normalises as the parser does).
            let (_, configured) = prog
                .host(name)
                .unwrap_or_else(|| panic!("{name}: not counted as another name"));
            assert!(!configured, "{name}");
            Reached::Route(routes.resolve(None).unwrap())
        }
        k => {
            assert_eq!(k, kind::UNKNOWN, "{name}: a named ClientHello");
            Reached::Unread
        }
    }
}

/// The terminator's route for `hello`, as a connection picks it.
fn terminator(routes: &Routes, hello: &[u8]) -> Reached {
    let mut reader = HelloReader::new(16 * 1024);
    match reader.push(hello) {
        Step::Done => Reached::Route(routes.resolve(reader.name()).unwrap()),
        _ => Reached::Unread,
    }
}

#[test]
fn kernel_and_terminator_pick_the_same_host_for_every_name() {
    let pki = Pki::new();
    let text = config_text(&pki);
    let config = Config::parse(&text, std::path::Path::new("patterns.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let routes = Routes::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(routes.routes.len(), DEFAULT + 1);
    let prog = Prog::with_config(&text);
    let mut wrong = Vec::new();
    for (name, expected) in cases() {
        let hello = named(&name);
        let k = kernel(&prog, &routes, &name, &hello);
        let t = terminator(&routes, &hello);
        if (k, t) != (expected, expected) {
            wrong.push(format!(
                "{} ({} bytes): kernel {k:?}, terminator {t:?}, expected {expected:?}",
                name.escape_default(),
                name.len()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Each configured host counted its ClientHellos where the flow records said.
    let hellos = |n: &str| {
        let (h, configured) = prog.host(n).unwrap_or_else(|| panic!("{n}: not counted"));
        assert!(configured, "{n}");
        h.client_hellos
    };
    assert_eq!(hellos("*.example.com"), 5);
    assert_eq!(hellos("example.com"), 2);
    assert_eq!(hellos("exact.example.com"), 2);
    assert_eq!(hellos(&format!("*.{}", long_parent())), 3);
    assert_eq!(hellos(&format!("zzz.{}", long_parent())), 1);
}
