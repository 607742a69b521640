//! Bytes moving both ways once a connection has its host: the client stream, the backend,
//! and one [`Half`] per direction. Shared by the states after routing; the client side is
//! read raw (passthrough, here) or through TLS ([`super::tls`]).

use std::{
    io,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use crate::{
    config::Backend,
    terminator::{
        conn::{
            close::{Close, Host, Side, Why},
            half::Half,
            io::{Net, Stream},
        },
        counters::Failure,
        routes::Route,
    },
};

/// A routed connection's streams and queues.
pub struct Relay<S> {
    /// The host (counted active while this lives).
    pub host: Host,
    /// The client stream.
    pub client: S,
    /// Where the client's bytes go.
    pub backend: Peer<S>,
    /// Client → backend.
    pub up: Half,
    /// Backend → client.
    pub down: Half,
}

/// The backend end of a relay.
pub enum Peer<S> {
    /// A socket, dialled without blocking and registered.
    Socket {
        /// The stream.
        stream: S,
        /// Whether its connect has finished.
        connected: bool,
    },
    /// The built-in responder, answering with the host reached and the name sent.
    Builtin {
        /// The server_name the client sent.
        sni: Option<String>,
    },
    /// Not dialled yet: once the handshake is done (a host that verifies client
    /// certificates dials only for a client that showed one).
    Later {
        /// What to dial.
        backend: Backend,
    },
}

impl<S: Stream> Peer<S> {
    /// Dials `backend` (a host's, or one of its ALPN routes') and registers it under `token`.
    pub fn open(
        backend: &Backend,
        net: &dyn Net<S>,
        token: mio::Token,
        sni: impl FnOnce() -> Option<String>,
    ) -> Result<Self, Close> {
        if *backend == Backend::Builtin {
            return Ok(Self::Builtin { sni: sni() });
        }
        let mut stream = net
            .dial(backend)
            .map_err(|_| Close::host(Side::Backend, Failure::BackendRefused))?;
        net.register(&mut stream, token)
            .map_err(|_| Close::host(Side::Internal, Failure::Internal))?;
        Ok(Self::Socket {
            stream,
            connected: false,
        })
    }
}

impl<S: Stream> Relay<S> {
    /// Backend side: connect completion, bytes both ways, then the client's end passed on
    /// once every byte before it was delivered.
    pub fn backend_round(&mut self, moved: &mut bool) -> Result<(), Close> {
        match &mut self.backend {
            Peer::Socket { stream, connected } => {
                if !*connected {
                    match stream.connect_state() {
                        Ok(true) => *connected = true,
                        Ok(false) => return Ok(()),
                        Err(_) => return Err(Close::host(Side::Backend, Failure::BackendRefused)),
                    }
                }
                let failed = |_: io::Error| Close::host(Side::Backend, Failure::BackendFailed);
                let wrote = self.up.flush(stream).map_err(failed)?;
                let read = self.down.fill(stream).map_err(failed)?;
                *moved |= wrote + read > 0;
                if self.up.ready_to_shut() {
                    let _ = stream.shutdown_write();
                    self.up.shut = true;
                    *moved = true;
                }
            }
            // Nothing to move: plaintext waits in rustls until the handshake is done.
            Peer::Later { .. } => {}
            Peer::Builtin { sni } => {
                let label = self.host.route().label.as_str();
                *moved |= builtin_respond(&mut self.up, &mut self.down, label, sni.as_deref());
                if self.up.ready_to_shut() {
                    self.up.shut = true;
                    *moved = true;
                }
            }
        }
        Ok(())
    }

    /// Passthrough: one round of raw bytes both ways.
    pub fn raw_round(&mut self, moved: &mut bool) -> Result<(), Close> {
        let failed = |_: io::Error| Close::client(Why::ClientAborted);
        let read = self.up.fill(&mut self.client).map_err(failed)?;
        let wrote = self.down.flush(&mut self.client).map_err(failed)?;
        let counters = &self.host.route().counters;
        counters.bytes_to_backend.fetch_add(read as u64, Relaxed);
        counters.bytes_to_client.fetch_add(wrote as u64, Relaxed);
        *moved |= read + wrote > 0;
        self.backend_round(moved)?;
        if self.down.ready_to_shut() {
            let _ = self.client.shutdown_write();
            self.down.shut = true;
            *moved = true;
        }
        Ok(())
    }

    /// Both ends passed on: the connection is over.
    pub fn finished(&self) -> bool {
        self.up.shut && self.down.shut
    }

    /// The route.
    pub fn route(&self) -> &Arc<Route> {
        self.host.route()
    }
}

/// The built-in backend: answers a whole HTTP request (or whatever came before the client's
/// end) with the host that was reached, then ends its stream.
fn builtin_respond(
    request: &mut Half,
    response: &mut Half,
    label: &str,
    sni: Option<&str>,
) -> bool {
    if response.eof {
        return false;
    }
    let whole = request.buf.as_slice().windows(4).any(|w| w == b"\r\n\r\n");
    if !whole && !request.eof {
        return false;
    }
    let body = format!(
        "sni: you reached host {label:?} (client sent server_name {:?})\n",
        sni.unwrap_or("")
    );
    response.buf.extend(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    request.buf.consume(request.buf.len());
    response.eof = true;
    true
}
