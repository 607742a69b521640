//! One client connection through the terminator, as a state machine driven by readiness:
//! peek the ClientHello (the shared `sni-common` parser), route it, then either terminate TLS
//! (rustls `Acceptor` → the host's `ServerConfig`) and move plaintext to the backend, or relay
//! the raw bytes (passthrough). Buffers are bounded both ways: a full buffer stops reading
//! from the side that fills it. Half-closes are passed on.
//!
//! [`Conn::pump`] moves bytes until nothing more can move (every socket at `WouldBlock` or a
//! buffer full), because readiness is edge-triggered; it gives up after a bounded number of
//! rounds and asks to be called again, so one busy connection cannot starve the others.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Instant,
};

use mio::net::{TcpStream, UnixStream};
use rustls::server::ServerConnection;
use sni_common::{
    flow::{kind, Flow, FlowKey},
    HostKey,
};

use crate::{
    config::{Backend, HostMode, Limits},
    kernel::loader::FlowTable,
    terminator::buf::Buf,
    terminator::counters::{Failure, GlobalCounters, HostCounters},
    terminator::hello_reader::{self, HelloReader, Refused, Step},
    terminator::routes::{Route, Routes},
};

/// Rounds of [`Conn::pump`] before yielding to other connections.
const PUMP_ROUNDS: usize = 16;
/// The TLS alert record `unrecognized_name` (fatal): content type 21, TLS 1.2 record version,
/// length 2, level 2 (fatal), description 112 (RFC 8446 §6, RFC 6066 §3).
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// What a pump says about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for readiness.
    Idle,
    /// More work is ready: call again soon.
    Again,
    /// Finished: close it.
    Done,
}

/// Where the connection is.
enum Stage {
    /// Reading the ClientHello with the shared parser; the bytes are kept.
    Peek(HelloReader),
    /// TLS terminated here.
    Tls(Box<ServerConnection>),
    /// Bytes relayed as they are.
    Raw,
}

/// The backend side.
enum BackendIo {
    /// Not chosen yet.
    None,
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
    /// The built-in responder.
    Builtin,
}

/// One client connection.
pub struct Conn {
    /// The client socket.
    pub client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    stage: Stage,
    /// The route, once known: kept by the connection across reloads.
    route: Option<Arc<Route>>,
    /// When it was accepted (handshake duration).
    accepted: Instant,
    /// The name the client sent (for the built-in responder and logs).
    sni: Option<String>,
    /// The backend socket, registered by the worker once it exists.
    backend: BackendIo,
    /// Whether the worker has registered the backend socket.
    pub backend_registered: bool,
    backend_connected: bool,
    to_backend: Buf,
    to_client: Buf,
    client_eof: bool,
    backend_eof: bool,
    backend_write_shut: bool,
    client_write_shut: bool,
    established: bool,
    /// When the connection must have made progress by (handshake or idle deadline).
    pub deadline: Instant,
    /// Whether it counts toward its route's `active`.
    counted_active: bool,
    /// The classifier's record of this flow, once found (hand-off).
    xdp: Option<Flow>,
    /// The route whose backend was dialled from the classifier's record, before the
    /// ClientHello was read.
    early_route: Option<Arc<Route>>,
    /// How the classifier's record compared with the TLS stack's name.
    hand_off: HandOff,
}

/// The hand-off result of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandOff {
    /// Same host.
    Agreed,
    /// Another host (the TLS stack's name wins).
    Disagreed,
    /// No record.
    Unknown,
}

/// What the pump needs from the worker.
pub struct Ctx<'a> {
    /// The routing table.
    pub routes: &'a Routes,
    /// Counters not of a host.
    pub global: &'a GlobalCounters,
    /// Limits.
    pub limits: &'a Limits,
    /// The kernel classifier's flow table, when it runs in this process.
    pub flows: Option<&'a FlowTable>,
}

impl Conn {
    /// A just-accepted client.
    pub fn new(client: TcpStream, peer: SocketAddr, limits: &Limits) -> Self {
        let local = client.local_addr().unwrap_or(peer);
        Self {
            client,
            peer,
            local,
            stage: Stage::Peek(HelloReader::new(limits.max_client_hello)),
            route: None,
            accepted: Instant::now(),
            sni: None,
            backend: BackendIo::None,
            backend_registered: false,
            backend_connected: false,
            to_backend: Buf::new(limits.buffer_size),
            to_client: Buf::new(limits.buffer_size),
            client_eof: false,
            backend_eof: false,
            backend_write_shut: false,
            client_write_shut: false,
            established: false,
            deadline: Instant::now() + secs(limits.handshake_timeout),
            counted_active: false,
            xdp: None,
            early_route: None,
            hand_off: HandOff::Unknown,
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The backend socket as a mio source, if there is one to register.
    pub fn backend_source(&mut self) -> Option<&mut dyn mio::event::Source> {
        match &mut self.backend {
            BackendIo::Tcp(s) => Some(s),
            BackendIo::Unix(s) => Some(s),
            BackendIo::None | BackendIo::Builtin => None,
        }
    }

    /// The deadline passed: count why, and let the worker close it.
    pub fn expire(&mut self, ctx: &Ctx<'_>) {
        match (&self.route, self.established) {
            (None, _) => {
                ctx.global.client_hello_timeout.fetch_add(1, Relaxed);
            }
            (Some(r), false) => r.counters.fail(Failure::HandshakeTimeout),
            (Some(r), true) => {
                r.counters.fail(Failure::IdleTimeout);
                // An orderly end for the client: close_notify (best effort, never blocks),
                // then the worker closes the socket.
                if let Stage::Tls(tls) = &mut self.stage {
                    tls.send_close_notify();
                    let _ = tls.write_tls(&mut self.client);
                }
            }
        }
    }

    /// The connection is being closed: settle its counters.
    pub fn finish(&mut self) {
        if self.counted_active {
            if let Some(r) = &self.route {
                r.counters.active.fetch_sub(1, Relaxed);
            }
            self.counted_active = false;
        }
    }

    /// Moves bytes until nothing more can move.
    pub fn pump(&mut self, ctx: &Ctx<'_>) -> Pumped {
        for _ in 0..PUMP_ROUNDS {
            match self.round(ctx) {
                Ok(true) => {
                    if self.established {
                        self.deadline = Instant::now() + secs(ctx.limits.idle_timeout);
                    }
                }
                Ok(false) => {
                    return if self.finished() {
                        Pumped::Done
                    } else {
                        Pumped::Idle
                    }
                }
                Err(()) => return Pumped::Done,
            }
        }
        Pumped::Again
    }

    fn finished(&self) -> bool {
        self.client_write_shut && self.backend_write_shut
    }

    /// One round over every direction; Ok(true) if anything moved.
    fn round(&mut self, ctx: &Ctx<'_>) -> Result<bool, ()> {
        let mut moved = false;
        if matches!(self.stage, Stage::Peek(_)) {
            moved |= self.peek(ctx)?;
            if matches!(self.stage, Stage::Peek(_)) {
                return Ok(moved);
            }
        }
        moved |= self.client_io(ctx)?;
        moved |= self.backend_io()?;
        moved |= self.half_close()?;
        Ok(moved)
    }

    /// Hand-off: before reading, asks the kernel's flow table for this connection's host. The
    /// XDP program has seen every segment that is in the socket by now, so once the whole
    /// ClientHello can be read the flow is there (unless the classifier could not read it).
    /// A host found this way gets its backend dialled at once, while the handshake runs.
    fn look_up_flow(&mut self, ctx: &Ctx<'_>) -> Result<(), ()> {
        if self.xdp.is_some() {
            return Ok(());
        }
        let Some(flow) = classified_flow(ctx, self.peer, self.local) else {
            return Ok(());
        };
        self.xdp = Some(flow);
        let Some(index) = flow_route(&flow, ctx.routes) else {
            return Ok(());
        };
        let Some(route) = ctx.routes.routes.get(index) else {
            return Ok(());
        };
        self.early_route = Some(Arc::clone(route));
        self.connect_backend(route.backend.clone(), route.proxy_protocol, &route.counters)
    }

    /// Hand-off check: the name the TLS stack saw (`seen`, routed to `route`) against the
    /// classifier's record of the flow. Counted once the handshake is done, so that the
    /// three counters add up to the handshakes.
    fn check_hand_off(&mut self, seen: Option<&HostKey>, route: usize, routes: &Routes) {
        let Some(flow) = self.xdp else {
            self.hand_off = HandOff::Unknown;
            return;
        };
        let same_name = match seen {
            Some(name) => flow.kind != kind::NO_NAME && flow.name_hash == name.hash64(),
            None => flow.kind == kind::NO_NAME,
        };
        let same_route = flow_route(&flow, routes) == Some(route);
        self.hand_off = if same_name && same_route {
            HandOff::Agreed
        } else {
            tracing::debug!(peer = %self.peer, ?flow, ?seen, route, "classifier disagreed");
            HandOff::Disagreed
        };
    }

    /// Reads the ClientHello and routes the connection.
    fn peek(&mut self, ctx: &Ctx<'_>) -> Result<bool, ()> {
        self.look_up_flow(ctx)?;
        let Stage::Peek(reader) = &mut self.stage else {
            return Ok(false);
        };
        let mut chunk = [0u8; 4096];
        let mut moved = false;
        while reader.step() == Step::NeedMore {
            match self.client.read(&mut chunk) {
                Ok(0) => {
                    ctx.global.client_gone_before_hello.fetch_add(1, Relaxed);
                    return Err(());
                }
                Ok(n) => {
                    moved = true;
                    let bytes = chunk.get(..n).unwrap_or_default();
                    if reader.push(bytes) == Step::TooLarge {
                        ctx.global.client_hello_too_large.fetch_add(1, Relaxed);
                        return Err(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    ctx.global.client_gone_before_hello.fetch_add(1, Relaxed);
                    return Err(());
                }
            }
        }
        match reader.step() {
            Step::Done => {
                // The last segments may have come in while this loop read, after the lookup
                // above: the kernel has seen them all by now, so its record is complete.
                if self.xdp.is_none() {
                    self.xdp = classified_flow(ctx, self.peer, self.local);
                }
            }
            // A name already read is enough only once the hello is whole: rustls needs it all.
            _ => {
                ctx.global.bad_client_hello.fetch_add(1, Relaxed);
                return Err(());
            }
        }
        let Some(route_index) = ctx.routes.resolve(reader.name()) else {
            ctx.global.rejected_unknown_name.fetch_add(1, Relaxed);
            let _ = self.client.write(&ALERT_UNRECOGNIZED_NAME);
            return Err(());
        };
        let hello = reader.take_bytes();
        let peeked = reader.name().copied();
        self.sni = peeked
            .as_ref()
            .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned());
        let route = Arc::clone(ctx.routes.routes.get(route_index).ok_or(())?);
        self.route = Some(Arc::clone(&route));
        let counters = &route.counters;
        counters.active.fetch_add(1, Relaxed);
        self.counted_active = true;
        if !self
            .early_route
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(e, &route))
        {
            // Not dialled yet, or dialled for another host from a record that did not agree
            // (its socket closes as it drops; the PROXY header it queued goes too).
            self.backend = BackendIo::None;
            self.backend_registered = false;
            self.backend_connected = false;
            self.to_backend.consume(self.to_backend.len());
            self.connect_backend(route.backend.clone(), route.proxy_protocol, counters)?;
        }
        match route.mode {
            HostMode::Passthrough => {
                self.check_hand_off(peeked.as_ref(), route_index, ctx.routes);
                self.to_backend.extend(&hello);
                self.stage = Stage::Raw;
                self.established = true;
                handshake_done(ctx.global, counters, self.hand_off, self.accepted, false);
            }
            HostMode::Terminate => {
                let config = route.tls.clone().ok_or(())?;
                let accepted = match hello_reader::accept(&hello) {
                    Ok(a) => a,
                    Err(refused) => {
                        counters.fail(Failure::Tls);
                        if let Refused::Alert(_, mut alert) = refused {
                            let _ = alert.write_all(&mut self.client);
                        }
                        return Err(());
                    }
                };
                // The name as rustls reads it, normalised like the kernel's.
                let seen = hello_reader::rustls_name(&accepted);
                self.check_hand_off(seen.as_ref(), route_index, ctx.routes);
                match accepted.into_connection(config) {
                    Ok(mut tls) => {
                        tls.set_buffer_limit(Some(ctx.limits.buffer_size));
                        self.stage = Stage::Tls(Box::new(tls));
                    }
                    Err((_, mut alert)) => {
                        counters.fail(Failure::Tls);
                        let _ = alert.write_all(&mut self.client);
                        return Err(());
                    }
                }
            }
        }
        Ok(true)
    }

    /// Starts connecting to the backend while the handshake runs.
    fn connect_backend(
        &mut self,
        backend: Backend,
        proxy_protocol: bool,
        counters: &HostCounters,
    ) -> Result<(), ()> {
        let io = match &backend {
            Backend::Tcp(addr) => TcpStream::connect(*addr).map(BackendIo::Tcp),
            Backend::Unix(path) => UnixStream::connect(path).map(BackendIo::Unix),
            Backend::Builtin => Ok(BackendIo::Builtin),
        };
        match io {
            Ok(io) => {
                self.backend_connected = matches!(io, BackendIo::Builtin);
                self.backend = io;
            }
            Err(_) => {
                counters.fail(Failure::BackendRefused);
                return Err(());
            }
        }
        if proxy_protocol {
            self.to_backend
                .prepend(&proxy_v2_header(self.peer, self.local));
        }
        Ok(())
    }

    /// Client side: TLS records or raw bytes in and out.
    fn client_io(&mut self, ctx: &Ctx<'_>) -> Result<bool, ()> {
        let route = self.route.as_ref().ok_or(())?;
        let counters = &route.counters;
        let mut moved = false;
        match &mut self.stage {
            Stage::Peek(_) => {}
            Stage::Tls(tls) => {
                // Records in.
                while !self.client_eof && !self.to_backend.is_full() && tls.wants_read() {
                    match tls.read_tls(&mut self.client) {
                        Ok(0) => self.client_eof = true,
                        Ok(_) => {
                            moved = true;
                            if tls.process_new_packets().is_err() {
                                // Send the alert rustls queued, as a last gasp.
                                let _ = tls.write_tls(&mut self.client);
                                counters.fail(if self.established {
                                    Failure::ClientGone
                                } else {
                                    Failure::Tls
                                });
                                return Err(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            if !self.established {
                                counters.fail(Failure::ClientGone);
                            }
                            return Err(());
                        }
                    }
                }
                if self.client_eof && tls.is_handshaking() {
                    counters.fail(Failure::ClientGone);
                    return Err(());
                }
                if !self.established && !tls.is_handshaking() {
                    self.established = true;
                    let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    handshake_done(ctx.global, counters, self.hand_off, self.accepted, resumed);
                    self.deadline = Instant::now() + secs(ctx.limits.idle_timeout);
                }
                // Plaintext out of TLS (a close_notify ends the client's stream).
                let n = self
                    .to_backend
                    .fill(&mut tls.reader(), &mut self.client_eof)
                    .map_err(|_| ())?;
                if n > 0 {
                    moved = true;
                    counters.bytes_to_backend.fetch_add(n as u64, Relaxed);
                }
                // Backend bytes into TLS (bounded by rustls' buffer limit).
                if !self.to_client.is_empty() && !tls.is_handshaking() {
                    if let Ok(n) = tls.writer().write(self.to_client.as_slice()) {
                        if n > 0 {
                            moved = true;
                            counters.bytes_to_client.fetch_add(n as u64, Relaxed);
                            self.to_client.consume(n);
                        }
                    }
                }
                // Records out.
                while tls.wants_write() {
                    match tls.write_tls(&mut self.client) {
                        Ok(_) => moved = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Err(()),
                    }
                }
            }
            Stage::Raw => {
                let read = self
                    .to_backend
                    .fill(&mut self.client, &mut self.client_eof)
                    .map_err(|_| ())?;
                let wrote = self.to_client.flush_to(&mut self.client).map_err(|_| ())?;
                counters.bytes_to_backend.fetch_add(read as u64, Relaxed);
                counters.bytes_to_client.fetch_add(wrote as u64, Relaxed);
                moved |= read + wrote > 0;
            }
        }
        Ok(moved)
    }

    /// Backend side: connect completion, bytes in and out.
    fn backend_io(&mut self) -> Result<bool, ()> {
        let route = self.route.as_ref().ok_or(())?;
        let counters = &route.counters;
        if !self.backend_registered && !matches!(self.backend, BackendIo::Builtin) {
            return Ok(false);
        }
        if !self.backend_connected {
            let state = match &self.backend {
                BackendIo::Tcp(s) => connect_state(s.take_error(), s.peer_addr().map(|_| ())),
                BackendIo::Unix(s) => connect_state(s.take_error(), s.peer_addr().map(|_| ())),
                _ => Ok(true),
            };
            match state {
                Ok(true) => self.backend_connected = true,
                Ok(false) => return Ok(false),
                Err(()) => {
                    counters.fail(Failure::BackendRefused);
                    return Err(());
                }
            }
        }
        let mut moved = false;
        let result = match &mut self.backend {
            BackendIo::Tcp(s) => pipe(
                s,
                &mut self.to_backend,
                &mut self.to_client,
                &mut self.backend_eof,
            ),
            BackendIo::Unix(s) => pipe(
                s,
                &mut self.to_backend,
                &mut self.to_client,
                &mut self.backend_eof,
            ),
            BackendIo::Builtin => {
                let label = route.label.as_str();
                Ok(builtin_respond(
                    &mut self.to_backend,
                    &mut self.to_client,
                    label,
                    self.sni.as_deref(),
                    &mut self.backend_eof,
                    self.client_eof,
                ))
            }
            BackendIo::None => Ok(false),
        };
        match result {
            Ok(m) => moved |= m,
            Err(_) => {
                counters.fail(Failure::BackendFailed);
                return Err(());
            }
        }
        Ok(moved)
    }

    /// Passes each side's end of stream on once its buffer has drained.
    fn half_close(&mut self) -> Result<bool, ()> {
        let mut moved = false;
        if self.client_eof
            && self.to_backend.is_empty()
            && !self.backend_write_shut
            && self.backend_connected
        {
            match &self.backend {
                BackendIo::Tcp(s) => {
                    let _ = s.shutdown(Shutdown::Write);
                }
                BackendIo::Unix(s) => {
                    let _ = s.shutdown(Shutdown::Write);
                }
                _ => {}
            }
            self.backend_write_shut = true;
            moved = true;
        }
        if self.backend_eof && self.to_client.is_empty() && !self.client_write_shut {
            match &mut self.stage {
                Stage::Tls(tls) => {
                    if tls.is_handshaking() {
                        return Ok(moved);
                    }
                    tls.send_close_notify();
                    while tls.wants_write() {
                        match tls.write_tls(&mut self.client) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                            Err(_) => break,
                        }
                    }
                }
                Stage::Raw => {}
                Stage::Peek(_) => return Ok(moved),
            }
            let _ = self.client.shutdown(Shutdown::Write);
            self.client_write_shut = true;
            moved = true;
        }
        Ok(moved)
    }
}

/// The route of a flow the classifier named, by its host slot; a name not configured (or
/// none) goes to the default, if there is one.
fn flow_route(flow: &Flow, routes: &Routes) -> Option<usize> {
    match flow.kind {
        kind::CONFIGURED => routes.by_slot(flow.slot),
        _ => routes.resolve(None),
    }
}

/// A handshake is done (or a passthrough connection routed): counts it with its hand-off
/// result, so that agreed + disagreed + unknown = handshakes.
/// The kernel's record of a connection's flow, once the classifier has placed it.
fn classified_flow(ctx: &Ctx<'_>, peer: SocketAddr, local: SocketAddr) -> Option<Flow> {
    let flow = ctx.flows?.get(&flow_key(peer, local), 0).ok()?;
    (flow.kind != kind::UNKNOWN).then_some(flow)
}

fn handshake_done(
    g: &GlobalCounters,
    counters: &HostCounters,
    hand_off: HandOff,
    accepted: Instant,
    resumed: bool,
) {
    counters.handshakes.fetch_add(1, Relaxed);
    if resumed {
        counters.resumed.fetch_add(1, Relaxed);
    }
    counters.handshake_seconds.observe(accepted.elapsed());
    match hand_off {
        HandOff::Agreed => g.xdp_agreed.fetch_add(1, Relaxed),
        HandOff::Disagreed => g.xdp_disagreed.fetch_add(1, Relaxed),
        HandOff::Unknown => g.xdp_unknown.fetch_add(1, Relaxed),
    };
}

/// The key of the kernel's flow table for a connection from `peer` to `local`.
pub fn flow_key(peer: SocketAddr, local: SocketAddr) -> FlowKey {
    let mut key = FlowKey {
        src_port: peer.port(),
        dst_port: local.port(),
        ..FlowKey::default()
    };
    match (peer, local) {
        (SocketAddr::V4(p), SocketAddr::V4(l)) => {
            key.family = 4;
            key.src[..4].copy_from_slice(&p.ip().octets());
            key.dst[..4].copy_from_slice(&l.ip().octets());
        }
        (p, l) => {
            key.family = 6;
            key.src = to_v6(p.ip()).octets();
            key.dst = to_v6(l.ip()).octets();
        }
    }
    key
}

fn to_v6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    }
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.001))
}

/// Ok(true) connected, Ok(false) still connecting, Err(()) failed.
fn connect_state(err: io::Result<Option<io::Error>>, peer: io::Result<()>) -> Result<bool, ()> {
    match err {
        Ok(Some(_)) | Err(_) => return Err(()),
        Ok(None) => {}
    }
    match peer {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => Ok(false),
        Err(_) => Err(()),
    }
}

/// Moves bytes both ways between the buffers and a backend socket; whether any moved.
fn pipe(
    s: &mut (impl Read + Write),
    to_backend: &mut Buf,
    to_client: &mut Buf,
    eof: &mut bool,
) -> io::Result<bool> {
    let wrote = to_backend.flush_to(s)?;
    let read = to_client.fill(s, eof)?;
    Ok(wrote + read > 0)
}

/// The built-in backend: answers each whole HTTP request with the host that was reached, then
/// ends the stream.
fn builtin_respond(
    request: &mut Buf,
    response: &mut Buf,
    label: &str,
    sni: Option<&str>,
    eof: &mut bool,
    client_eof: bool,
) -> bool {
    if *eof {
        return false;
    }
    let whole = request.as_slice().windows(4).any(|w| w == b"\r\n\r\n");
    if !whole && !client_eof {
        return false;
    }
    let body = format!(
        "sni: you reached host {label:?} (client sent server_name {:?})\n",
        sni.unwrap_or("")
    );
    response.extend(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    request.consume(request.len());
    *eof = true;
    true
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4 or IPv6) for `src` → `dst`.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    // Signature (12 bytes), version 2 + PROXY command.
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            h.push(0x21); // AF_INET6, STREAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_header_layout() {
        let h = proxy_v2_header(
            "192.0.2.1:40000".parse().expect("addr"),
            "192.0.2.2:443".parse().expect("addr"),
        );
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        let h6 = proxy_v2_header(
            "[2001:db8::1]:1".parse().expect("addr"),
            "[2001:db8::2]:2".parse().expect("addr"),
        );
        assert_eq!(h6.len(), 16 + 36);
        assert_eq!(h6[13], 0x21);
    }
}
