//! Bytes moving both ways once a connection has its host: the client stream, the backend,
//! and one [`Half`] per direction. Shared by the states after routing; the client side is
//! read raw (passthrough, here) or through TLS ([`super::tls`]).

use std::{
    io,
    net::SocketAddr,
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
}

impl<S: Stream> Peer<S> {
    /// Dials `route`'s backend and registers it under `token`.
    pub fn open(
        route: &Route,
        net: &dyn Net<S>,
        token: mio::Token,
        sni: impl FnOnce() -> Option<String>,
    ) -> Result<Self, Close> {
        if route.backend == Backend::Builtin {
            return Ok(Self::Builtin { sni: sni() });
        }
        let mut stream = net
            .dial(&route.backend)
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
