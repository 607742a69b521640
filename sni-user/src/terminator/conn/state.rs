//! The connection's states. Each holds only its own data, and a step consumes one and gives
//! back the next, or the connection's [`End`]:
//!
//! ```text
//! Hello ──passthrough──────────────────────────→ Passthrough ──┐
//!   ├───terminate──→ Handshake ──handshake done──→ Terminate ──┴─→ End (both ends passed on)
//!   └───TLS-ALPN-01 challenge──→ Validation ──handshake done──→ End (closed: RFC 8737 §3)
//! any state ──failure or deadline──→ End (Close { side, why })
//! ```

use std::{
    io,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Instant,
};

use mio::Token;
use sni_common::{flow::Flow, hello::alert, HostKey};

use crate::{
    config::{Backend, HostMode, Limits},
    terminator::{
        conn::{
            close::{Close, End, Host, Side, Why},
            half::Half,
            hand_off::{self, HandOff},
            io::Stream,
            proxy,
            relay::{Peer, Relay},
            tls::Tls,
            Ctx,
        },
        counters::{Failure, GlobalCounters, HostCounters},
        hello_reader::{self, HelloReader, Refused},
        routes::{CertSource, Route},
    },
};

/// A fatal TLS alert record: content type 21, TLS 1.2 record version, length 2, level 2
/// (fatal), then `description` (RFC 8446 §6). Sent as one record before the connection
/// closes, so that a client tells "refused" from "network broke".
pub const fn fatal_alert(description: u8) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description]
}

/// What every state may need about its connection.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    /// When it was accepted (handshake duration).
    pub accepted: Instant,
    /// The backend socket's token.
    pub backend_token: Token,
}

/// Where a connection is.
pub enum State<S> {
    /// Reading the ClientHello.
    Hello(Hello<S>),
    /// Routed to a terminated host, TLS handshake under way; the backend dialled.
    Handshake(Handshake<S>),
    /// An ACME CA's TLS-ALPN-01 validation, served the challenge certificate: closed once
    /// the handshake is done, counted apart (`acme_challenges`), not as the host's.
    Validation(Tls<S>),
    /// TLS terminated, plaintext relayed.
    Terminate(Tls<S>),
    /// Routed to a passthrough host, bytes relayed as they are.
    Passthrough(Relay<S>),
    /// Ended (counted and logged already).
    Closed,
}

/// What a step gives back.
pub enum Step<S> {
    /// The next state.
    Next(State<S>),
    /// The end.
    End(End),
}

/// Reading the ClientHello with the shared parser (the bytes are kept for rustls or the
/// backend).
pub struct Hello<S> {
    client: S,
    reader: HelloReader,
    /// The classifier's record of the flow, once found.
    xdp: Option<Flow>,
    /// A backend dialled from that record, before the ClientHello was read.
    early: Option<(Arc<Route>, Peer<S>)>,
}

/// A TLS handshake under way (the backend dialled, or for a host that verifies client
/// certificates, [`Peer::Later`]).
pub struct Handshake<S> {
    tls: Tls<S>,
    /// Counted with the handshake, once it is done.
    hand_off: HandOff,
    /// The classifier's fingerprint against the ClientHello's, counted with it.
    ja4: HandOff,
    /// The ClientHello's name, kept for the PROXY header (only when the host sends one).
    authority: Option<Box<HostKey>>,
}

impl<S: Stream> State<S> {
    /// A just-accepted client.
    pub fn new(client: S, limits: &Limits) -> Self {
        Self::Hello(Hello {
            client,
            reader: HelloReader::new(limits.max_client_hello),
            xdp: None,
            early: None,
        })
    }

    /// One step: moves what can move, sets `moved` if anything did.
    pub fn step(self, meta: &Meta, ctx: &Ctx<'_, S>, moved: &mut bool) -> Step<S> {
        match self {
            Self::Hello(h) => h.step(meta, ctx, moved),
            Self::Handshake(h) => h.step(meta, ctx, moved),
            Self::Validation(mut v) => match v.round(false, moved) {
                Err(close) => end(Some(v.relay.host), close),
                Ok(()) if v.conn.is_handshaking() => Step::Next(Self::Validation(v)),
                Ok(()) => {
                    ctx.global.acme_challenges.fetch_add(1, Relaxed);
                    v.say_goodbye();
                    orderly(v.relay.host)
                }
            },
            Self::Terminate(mut t) => match t.round(true, moved) {
                Err(close) => end(Some(t.relay.host), close),
                Ok(()) if t.relay.finished() => orderly(t.relay.host),
                Ok(()) => Step::Next(Self::Terminate(t)),
            },
            Self::Passthrough(mut r) => match r.raw_round(moved) {
                Err(close) => end(Some(r.host), close),
                Ok(()) if r.finished() => orderly(r.host),
                Ok(()) => Step::Next(Self::Passthrough(r)),
            },
            Self::Closed => Step::End(End {
                host: None,
                close: None,
            }),
        }
    }

    /// The deadline passed: why, by state. An idle terminated connection gets a
    /// close_notify first.
    pub fn expire(self) -> End {
        let (host, close) = match self {
            Self::Hello(_) => (None, Close::client(Why::HelloTimeout)),
            Self::Handshake(Handshake { tls, .. }) | Self::Validation(tls) => (
                Some(tls.relay.host),
                Close::host(Side::Client, Failure::HandshakeTimeout),
            ),
            Self::Terminate(mut t) => {
                t.say_goodbye();
                (
                    Some(t.relay.host),
                    Close::host(Side::Internal, Failure::IdleTimeout),
                )
            }
            Self::Passthrough(r) => (
                Some(r.host),
                Close::host(Side::Internal, Failure::IdleTimeout),
            ),
            Self::Closed => {
                return End {
                    host: None,
                    close: None,
                }
            }
        };
        End {
            host,
            close: Some(close),
        }
    }

    /// Whether the ClientHello is still being read.
    pub fn reading_hello(&self) -> bool {
        matches!(self, Self::Hello(_))
    }

    /// Whether bytes are relayed (the idle deadline applies).
    pub fn established(&self) -> bool {
        matches!(self, Self::Terminate(_) | Self::Passthrough(_))
    }
}

fn end<S>(host: Option<Host>, close: Close) -> Step<S> {
    Step::End(End {
        host,
        close: Some(close),
    })
}

fn orderly<S>(host: Host) -> Step<S> {
    Step::End(End {
        host: Some(host),
        close: None,
    })
}

impl<S: Stream> Hello<S> {
    /// Reads until the ClientHello is whole, then routes.
    fn step(mut self, meta: &Meta, ctx: &Ctx<'_, S>, moved: &mut bool) -> Step<S> {
        if self.xdp.is_none() {
            self.look_up(meta, ctx);
        }
        let mut chunk = [0u8; 4096];
        while self.reader.step() == hello_reader::Step::NeedMore {
            match self.client.read(&mut chunk) {
                Ok(0) => return end(None, Close::client(Why::GoneBeforeHello)),
                Ok(n) => {
                    *moved = true;
                    let bytes = chunk.get(..n).unwrap_or_default();
                    if self.reader.push(bytes) == hello_reader::Step::TooLarge {
                        // Longer than any ClientHello this server reads: a field's length
                        // cannot be taken as it stands.
                        let _ = self.client.write(&fatal_alert(alert::DECODE_ERROR));
                        return end(None, Close::client(Why::HelloTooLarge));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Next(State::Hello(self))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return end(None, Close::client(Why::GoneBeforeHello)),
            }
        }
        // A name already read is enough only once the hello is whole: rustls needs it all.
        if self.reader.step() != hello_reader::Step::Done {
            if let Some(description) = self.reader.parser().refusal_alert() {
                let _ = self.client.write(&fatal_alert(description));
            }
            return end(None, Close::client(Why::BadHello));
        }
        // The last segments may have come in while this loop read, after the lookup above:
        // the kernel has seen them all by now, so its record is complete.
        if self.xdp.is_none() {
            self.xdp = hand_off::classified(ctx.flows, meta.peer, meta.local);
        }
        self.route(meta, ctx)
    }

    /// Hand-off: asks the kernel's flow table for this connection's host. The XDP program
    /// has seen every segment in the socket by now, so once the whole ClientHello can be
    /// read the flow is there (unless the classifier could not read it). A host found this
    /// way gets its backend dialled at once, while the ClientHello and handshake go on. A
    /// dial that fails at once is forgotten: the backend is dialled again once routed.
    fn look_up(&mut self, meta: &Meta, ctx: &Ctx<'_, S>) {
        let Some(flow) = hand_off::classified(ctx.flows, meta.peer, meta.local) else {
            return;
        };
        self.xdp = Some(flow);
        // A flow the kernel drops gets no backend: it is closed on the next tick.
        if flow.verdict != sni_common::flow::verdict::PASS {
            return;
        }
        let Some(route) =
            hand_off::flow_route(&flow, ctx.routes).and_then(|i| ctx.routes.routes.get(i))
        else {
            return;
        };
        // A host whose ALPN picks the backend waits for the ClientHello; one that verifies
        // client certificates, for the handshake.
        if route.backend == Backend::Builtin
            || !route.alpn_routes.is_empty()
            || route.client_auth.is_some()
        {
            return;
        }
        if let Ok(peer) = Peer::open(&route.backend, ctx.net, meta.backend_token, || None) {
            self.early = Some((Arc::clone(route), peer));
        }
    }

    /// Routes the whole ClientHello: passthrough, or rustls takes it. The backend is dialled
    /// once the ALPN that chooses it is known: offered, for passthrough; negotiated, once
    /// rustls has read the ClientHello, for terminated hosts.
    fn route(mut self, meta: &Meta, ctx: &Ctx<'_, S>) -> Step<S> {
        let name = self.reader.name().copied();
        let Some(index) = ctx.routes.resolve(name.as_ref()) else {
            let _ = self.client.write(&fatal_alert(alert::UNRECOGNIZED_NAME));
            return end(None, Close::client(Why::UnknownName));
        };
        let Some(route) = ctx.routes.routes.get(index) else {
            return end(None, Close::host(Side::Internal, Failure::Internal));
        };
        let host = Host::new(Arc::clone(route));
        let ja4 = hand_off::compare_ja4(meta.peer, self.xdp.as_ref(), self.reader.ja4());
        let hello = self.reader.take_bytes();
        let counters = &route.counters;
        match route.mode {
            HostMode::Passthrough => {
                let offered = if route.alpn_routes.is_empty() && !route.proxy_protocol {
                    Vec::new()
                } else {
                    hello_reader::offered_alpn(&hello)
                };
                let pick = route.pick_offered(&offered);
                pick.count(route);
                let backend = match self.dial(route, pick.backend, meta, ctx) {
                    Ok(peer) => peer,
                    Err(close) => return end(Some(host), close),
                };
                let mut up = Half::new(ctx.limits.buffer_size);
                if route.proxy_protocol {
                    let facts = proxy::Facts {
                        authority: name.as_ref().map(HostKey::as_bytes),
                        alpn: pick.alpn,
                        tls: None,
                    };
                    let Some(header) = proxy::header(meta.peer, meta.local, &facts) else {
                        return end(Some(host), Close::host(Side::Internal, Failure::Internal));
                    };
                    up.buf.extend(&header);
                }
                up.buf.extend(&hello);
                let hand_off = hand_off::compare(
                    meta.peer,
                    self.xdp.as_ref(),
                    name.as_ref(),
                    index,
                    ctx.routes,
                );
                let compared = (hand_off, ja4);
                handshake_done(ctx.global, counters, compared, meta.accepted, false);
                Step::Next(State::Passthrough(Relay {
                    host,
                    client: self.client,
                    backend,
                    up,
                    down: Half::new(ctx.limits.buffer_size),
                }))
            }
            HostMode::Terminate => {
                let Some(config) = route.tls.clone() else {
                    return end(Some(host), Close::host(Side::Internal, Failure::Internal));
                };
                let accepted = match hello_reader::accept(&hello) {
                    Ok(a) => a,
                    Err(refused) => {
                        match refused {
                            Refused::Alert(_, mut alert) => {
                                let _ = alert.write_all(&mut self.client);
                            }
                            // Bytes the shared parser read whole that rustls cannot frame.
                            Refused::Read | Refused::Incomplete => {
                                let _ = self.client.write(&fatal_alert(alert::DECODE_ERROR));
                            }
                        }
                        return end(Some(host), Close::host(Side::Client, Failure::Tls));
                    }
                };
                // The name as rustls reads it, normalised like the kernel's.
                let seen = hello_reader::rustls_name(&accepted);
                let hand_off = hand_off::compare(
                    meta.peer,
                    self.xdp.as_ref(),
                    seen.as_ref(),
                    index,
                    ctx.routes,
                );
                // A TLS-ALPN-01 challenge pending for this name, asked for with
                // `acme-tls/1`: its certificate, and no backend (RFC 8737 §3: the CA closes
                // once the handshake is done).
                let challenge = ctx.challenges.for_hello(&accepted);
                let is_challenge = challenge.is_some();
                let mut conn = match accepted.into_connection(challenge.unwrap_or(config)) {
                    Ok(conn) => conn,
                    Err((_, mut alert)) => {
                        let _ = alert.write_all(&mut self.client);
                        return end(Some(host), Close::host(Side::Client, Failure::Tls));
                    }
                };
                conn.set_buffer_limit(Some(ctx.limits.buffer_size));
                let relay = |host, client, backend| Relay {
                    host,
                    client,
                    backend,
                    up: Half::new(ctx.limits.buffer_size),
                    down: Half::new(ctx.limits.buffer_size),
                };
                if is_challenge {
                    return Step::Next(State::Validation(Tls {
                        conn: Box::new(conn),
                        relay: relay(host, self.client, Peer::Builtin { sni: None }),
                    }));
                }
                let pick = route.pick_negotiated(conn.alpn_protocol());
                pick.count(route);
                let backend = if route.client_auth.is_some() && *pick.backend != Backend::Builtin {
                    // A host that verifies client certificates: no backend connection for a
                    // client that has not shown one.
                    Peer::Later {
                        backend: pick.backend.clone(),
                    }
                } else {
                    match self.dial(route, pick.backend, meta, ctx) {
                        Ok(peer) => peer,
                        Err(close) => return end(Some(host), close),
                    }
                };
                Step::Next(State::Handshake(Handshake {
                    tls: Tls {
                        conn: Box::new(conn),
                        relay: relay(host, self.client, backend),
                    },
                    hand_off,
                    ja4,
                    authority: name.filter(|_| route.proxy_protocol).map(Box::new),
                }))
            }
        }
    }

    /// The backend `backend` of `route`: the one dialled early if it is that one, else
    /// dialled now (an early one for another host or backend closes as it drops).
    fn dial(
        &mut self,
        route: &Arc<Route>,
        backend: &Backend,
        meta: &Meta,
        ctx: &Ctx<'_, S>,
    ) -> Result<Peer<S>, Close> {
        match self.early.take() {
            Some((early, peer)) if Arc::ptr_eq(&early, route) && early.backend == *backend => {
                Ok(peer)
            }
            _ => {
                let name = self.reader.name();
                let sni = || name.map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned());
                Peer::open(backend, ctx.net, meta.backend_token, sni)
            }
        }
    }
}

impl<S: Stream> Handshake<S> {
    /// One round; once rustls is done, the handshake is counted and the relay begins.
    fn step(mut self, meta: &Meta, ctx: &Ctx<'_, S>, moved: &mut bool) -> Step<S> {
        let global = ctx.global;
        if let Err(close) = self.tls.round(false, moved) {
            return end(Some(self.tls.relay.host), close);
        }
        if self.tls.conn.is_handshaking() {
            return Step::Next(State::Handshake(self));
        }
        let resumed = self.tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let route = Arc::clone(self.tls.relay.route());
        let client_cert = self.tls.conn.peer_certificates();
        if let Some(check) = &route.client_auth {
            // rustls verified the certificate of a full handshake; a resumed session's is
            // checked again against the host's CA and CRLs of now. rustls sends no alert of
            // our choosing once the handshake is done: the connection just closes.
            if resumed && !check.admits_resumed(client_cert) {
                return end(
                    Some(self.tls.relay.host),
                    Close::host(Side::Client, Failure::ClientCert),
                );
            }
        }
        let verified = route.client_auth.is_some() && client_cert.is_some();
        if let Peer::Later { backend } = &self.tls.relay.backend {
            match Peer::open(backend, ctx.net, meta.backend_token, || None) {
                Ok(peer) => self.tls.relay.backend = peer,
                Err(close) => return end(Some(self.tls.relay.host), close),
            }
        }
        if route.proxy_protocol {
            // Before any plaintext: the round leaves it in rustls until the handshake is
            // counted (`through`).
            let facts = proxy::Facts {
                authority: self.authority.as_deref().map(HostKey::as_bytes),
                alpn: self.tls.conn.alpn_protocol(),
                tls: Some(proxy::TlsFacts::of(
                    &self.tls.conn,
                    route.client_auth.is_some(),
                )),
            };
            let Some(header) = proxy::header(meta.peer, meta.local, &facts) else {
                return end(
                    Some(self.tls.relay.host),
                    Close::host(Side::Internal, Failure::Internal),
                );
            };
            self.tls.relay.up.buf.prepend(&header);
        }
        let counters = &route.counters;
        let compared = (self.hand_off, self.ja4);
        handshake_done(global, counters, compared, meta.accepted, resumed);
        if route.source == CertSource::AcmePlaceholder {
            global.acme_placeholder_handshakes.fetch_add(1, Relaxed);
        }
        if verified {
            counters.client_certs.fetch_add(1, Relaxed);
        }
        Step::Next(State::Terminate(self.tls))
    }
}

/// A handshake is done (or a passthrough connection routed): counts it with its hand-off
/// results, the host's and the fingerprint's, so that agreed + disagreed + unknown =
/// handshakes for each.
fn handshake_done(
    g: &GlobalCounters,
    counters: &HostCounters,
    (hand_off, ja4): (HandOff, HandOff),
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
    match ja4 {
        HandOff::Agreed => g.ja4_agreed.fetch_add(1, Relaxed),
        HandOff::Disagreed => g.ja4_disagreed.fetch_add(1, Relaxed),
        HandOff::Unknown => g.ja4_unknown.fetch_add(1, Relaxed),
    };
}
