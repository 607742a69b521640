//! The state machine over in-memory pipes: no socket, no poll, no kernel. This file is the
//! harness (pipes, a dialer, a flow table, hosts, a rustls client); the tests are by topic.

mod close;
mod hand_off;
mod relay;
mod terminate;

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io::{self, Read, Write},
    rc::Rc,
    sync::{atomic::Ordering::Relaxed, Arc, OnceLock},
};

use mio::Token;
use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, RootCertStore};
use sni_common::{
    flow::{kind, Flow, FlowKey},
    HostKey, Parser,
};

use super::{
    io::{Flows, Net, Stream},
    state::State,
    Conn, Ctx, Pumped,
};
use crate::{
    config::{Config, Limits},
    terminator::{
        counters::{Failure, GlobalCounters},
        hello_reader::tests::hello,
        routes::Routes,
    },
};

// ---- In-memory pipes ----------------------------------------------------------------------

/// One direction of a pipe.
#[derive(Default)]
struct Chan {
    data: VecDeque<u8>,
    /// Most bytes it holds (0: unbounded).
    cap: usize,
    /// The writer shut it (FIN).
    shut: bool,
    /// The reader's end was dropped: writes fail.
    reader_gone: bool,
    /// The next read fails with this (a reset).
    fail: Option<io::ErrorKind>,
}

type Shared = Rc<RefCell<Chan>>;

/// One end of a pipe: reads `rx`, writes `tx`.
struct End {
    rx: Shared,
    tx: Shared,
    /// What `connect_state` answers (a dialled backend).
    connect: Rc<Cell<Option<bool>>>,
}

/// Two connected ends; `cap_ab` bounds what `a` writes to `b`, `cap_ba` the other way.
fn pipe(cap_ab: usize, cap_ba: usize) -> (End, End) {
    let ab = Rc::new(RefCell::new(Chan {
        cap: cap_ab,
        ..Chan::default()
    }));
    let ba = Rc::new(RefCell::new(Chan {
        cap: cap_ba,
        ..Chan::default()
    }));
    let connect = Rc::new(Cell::new(Some(true)));
    (
        End {
            rx: ba.clone(),
            tx: ab.clone(),
            connect: connect.clone(),
        },
        End {
            rx: ab,
            tx: ba,
            connect,
        },
    )
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if let Some(kind) = rx.fail.take() {
            return Err(kind.into());
        }
        if rx.data.is_empty() {
            return if rx.shut {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(rx.data.len());
        for (d, s) in buf.iter_mut().zip(rx.data.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Write for End {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut tx = self.tx.borrow_mut();
        if tx.reader_gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = if tx.cap == 0 {
            usize::MAX
        } else {
            tx.cap.saturating_sub(tx.data.len())
        };
        if room == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(room);
        tx.data.extend(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for End {
    fn shutdown_write(&self) -> io::Result<()> {
        self.tx.borrow_mut().shut = true;
        Ok(())
    }

    fn connect_state(&self) -> io::Result<bool> {
        self.connect
            .get()
            .ok_or_else(|| io::ErrorKind::ConnectionRefused.into())
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.rx.borrow_mut().reader_gone = true;
        self.tx.borrow_mut().shut = true;
    }
}

impl End {
    fn send(&mut self, bytes: &[u8]) {
        assert_eq!(self.write(bytes).expect("room"), bytes.len());
    }

    /// Everything readable now.
    fn drain_all(&mut self) -> Vec<u8> {
        self.rx.borrow_mut().data.drain(..).collect()
    }

    /// Whether the other end shut its write side and everything was read.
    fn at_eof(&self) -> bool {
        let rx = self.rx.borrow();
        rx.shut && rx.data.is_empty()
    }

    /// Bytes this end wrote that the other has not read.
    fn unread(&self) -> usize {
        self.tx.borrow().data.len()
    }
}

/// Dials pipes; the test holds their far ends.
#[derive(Default)]
struct TestNet {
    backends: RefCell<Vec<End>>,
    refuse: Cell<bool>,
    /// What new backends' connects answer.
    connecting: Cell<Option<bool>>,
    fail_register: Cell<bool>,
    registered: RefCell<Vec<Token>>,
    /// Bound of each new backend pipe, both ways (0: unbounded).
    cap: Cell<usize>,
}

impl TestNet {
    fn new() -> Self {
        let net = Self::default();
        net.connecting.set(Some(true));
        net
    }

    fn backend(&self, i: usize) -> std::cell::RefMut<'_, End> {
        std::cell::RefMut::map(self.backends.borrow_mut(), |b| &mut b[i])
    }

    fn dialled(&self) -> usize {
        self.backends.borrow().len()
    }
}

impl Net<End> for TestNet {
    fn dial(&self, _to: &crate::config::Backend) -> io::Result<End> {
        if self.refuse.get() {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (near, far) = pipe(self.cap.get(), self.cap.get());
        near.connect.set(self.connecting.get());
        self.backends.borrow_mut().push(far);
        Ok(near)
    }

    fn register(&self, _stream: &mut End, token: Token) -> io::Result<()> {
        if self.fail_register.get() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        self.registered.borrow_mut().push(token);
        Ok(())
    }
}

/// A flow table with one record, for any key.
struct OneFlow(Flow, RefCell<Vec<FlowKey>>);

impl Flows for OneFlow {
    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.1.borrow_mut().push(*key);
        Some(self.0)
    }
}

// ---- Hosts ---------------------------------------------------------------------------------

const PEER: &str = "192.0.2.1:40000";
const LOCAL: &str = "192.0.2.2:443";

/// A CA and one leaf for the terminated names, made once per test run: the leaf's PEM, its
/// key's PEM, and the CA's DER.
fn pki() -> &'static (String, String, Vec<u8>) {
    static PKI: OnceLock<(String, String, Vec<u8>)> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let names = ["t.example", "b.example", "u.example"].map(String::from);
        let leaf = CertificateParams::new(names.to_vec())
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("leaf");
        (leaf.pem(), key.serialize_pem(), ca_cert.der().to_vec())
    })
}

/// Route 0 `t.example` (terminate, TCP backend), 1 `b.example` (terminate, TCP), 2
/// `u.example` (terminate, built-in), 3 `p.example` (passthrough), no default. Slots are
/// route index + 1. The certificate files live only while the routes load.
fn routes() -> Routes {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let (cert, key, _) = pki();
    let dir = std::env::temp_dir().join(format!(
        "sni-conn-tests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("t.pem"), cert).expect("write");
    std::fs::write(dir.join("t.key"), key).expect("write");
    let text = "[default]\nreject = true\n\
        [[host]]\nnames = [\"t.example\"]\ncert = \"t.pem\"\nkey = \"t.key\"\nbackend = \"127.0.0.1:9\"\n\
        [[host]]\nnames = [\"b.example\"]\ncert = \"t.pem\"\nkey = \"t.key\"\nbackend = \"127.0.0.1:10\"\n\
        [[host]]\nnames = [\"u.example\"]\ncert = \"t.pem\"\nkey = \"t.key\"\n\
        [[host]]\nnames = [\"p.example\"]\nmode = \"passthrough\"\nbackend = \"127.0.0.1:11\"\n";
    let config = Config::parse(text, &dir.join("t.toml"));
    let loaded = config.map(|c| Routes::load(&c));
    let _ = std::fs::remove_dir_all(&dir);
    loaded.expect("config").expect("routes")
}

const T: usize = 0;
const B: usize = 1;
const U: usize = 2;
const P: usize = 3;

/// Everything a test connection needs.
struct World {
    routes: Routes,
    global: GlobalCounters,
    limits: Limits,
    net: TestNet,
    flows: Option<OneFlow>,
    challenges: crate::acme::challenges::Challenges,
}

impl World {
    fn new() -> Self {
        Self {
            routes: routes(),
            global: GlobalCounters::default(),
            limits: Limits::default(),
            net: TestNet::new(),
            flows: None,
            challenges: crate::acme::challenges::Challenges::default(),
        }
    }

    fn ctx(&self) -> Ctx<'_, End> {
        Ctx {
            routes: &self.routes,
            global: &self.global,
            limits: &self.limits,
            flows: self.flows.as_ref().map(|f| f as &dyn Flows),
            net: &self.net,
            challenges: &self.challenges,
        }
    }

    /// A connection and the client's end of it.
    fn open(&self) -> (Conn<End>, End) {
        let (near, far) = pipe(0, 0);
        (self.open_on(near), far)
    }

    /// A connection accepted on `near`, a pipe the test made.
    fn open_on(&self, near: End) -> Conn<End> {
        Conn::open(
            near,
            PEER.parse().expect("addr"),
            LOCAL.parse().expect("addr"),
            (Token(0), Token(1)),
            &self.net,
            &self.limits,
        )
        .expect("open")
    }

    fn failures(&self, route: usize, why: Failure) -> u64 {
        self.routes.routes[route].counters.failures[why as usize].load(Relaxed)
    }

    /// Client aborts of a route's host.
    fn aborts(&self, route: usize) -> u64 {
        self.routes.routes[route]
            .counters
            .client_aborts
            .load(Relaxed)
    }

    /// Failures of every reason, all hosts.
    fn all_failures(&self) -> u64 {
        self.routes
            .routes
            .iter()
            .flat_map(|r| r.counters.failures.iter())
            .map(|f| f.load(Relaxed))
            .sum()
    }

    fn active(&self, route: usize) -> u64 {
        self.routes.routes[route].counters.active.load(Relaxed)
    }

    fn handshakes(&self, route: usize) -> u64 {
        self.routes.routes[route].counters.handshakes.load(Relaxed)
    }

    /// A flow record the classifier would make for `name`, as host slot `route + 1`.
    fn classify(&mut self, name: &str, route: usize, kind: u8) {
        let hash = HostKey::from_name(name.as_bytes()).expect("name").hash64();
        let slot = u32::try_from(route + 1).expect("small");
        self.flows = Some(OneFlow(
            Flow {
                name_hash: hash,
                slot,
                kind,
                ..Flow::default()
            },
            RefCell::new(Vec::new()),
        ));
    }

    /// The classifier's record (made by [`Self::classify`]) carries `ja4` as its fingerprint.
    fn fingerprint(&mut self, ja4: u64) {
        self.flows.as_mut().expect("classify first").0.ja4 = ja4;
    }
}

/// The fingerprint the classifier records for the ClientHello `bytes` (`Flow::ja4`): its
/// `Ja4Key::hash64`, read by the shared parser in JA4 mode, as the kernel reads it.
fn ja4_of(bytes: &[u8]) -> u64 {
    let mut parser = Parser::new(true);
    parser.feed(bytes);
    parser
        .ja4()
        .expect("a ClientHello read whole")
        .key()
        .hash64()
}

fn state_name(conn: &Conn<End>) -> &'static str {
    match conn.state {
        State::Hello(_) => "hello",
        State::Handshake(_) => "handshake",
        State::Validation(_) => "validation",
        State::Terminate(_) => "terminate",
        State::Passthrough(_) => "passthrough",
        State::Closed => "closed",
    }
}

/// Pumps until idle or done (never "again" forever).
fn settle(conn: &mut Conn<End>, w: &World) -> Pumped {
    loop {
        match conn.pump(&w.ctx()) {
            Pumped::Again => {}
            other => return other,
        }
    }
}

// ---- A TLS client over a pipe --------------------------------------------------------------

struct Client {
    tls: ClientConnection,
    end: End,
}

impl Client {
    fn new(name: &str, end: End) -> Self {
        let (_, _, ca) = pki();
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = ServerName::try_from(name.to_owned()).expect("name");
        let tls = ClientConnection::new(Arc::new(config), server).expect("client");
        Self { tls, end }
    }

    /// Records out, records in.
    fn exchange(&mut self) {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.end).expect("unbounded pipe");
        }
        loop {
            match self.tls.read_tls(&mut self.end) {
                Ok(0) => break,
                Ok(_) => {
                    self.tls.process_new_packets().expect("server's records");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Runs the handshake with `conn` to its end.
    fn handshake(&mut self, conn: &mut Conn<End>, w: &World) {
        for _ in 0..10 {
            self.exchange();
            settle(conn, w);
            if !self.tls.is_handshaking() && state_name(conn) == "terminate" {
                return;
            }
        }
        panic!("no handshake: {}", state_name(conn));
    }

    fn plaintext(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.tls.reader().read_to_end(&mut out);
        out
    }
}
