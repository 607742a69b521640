//! What a connection needs from the outside world, as traits: a byte stream ([`Stream`]), a
//! way to dial a backend and register a socket with the event loop ([`Net`]), and the kernel
//! classifier's flow table ([`Flows`]). The worker passes mio sockets and the kernel's map;
//! the unit tests pass in-memory pipes and a table of their own.

use std::{
    io::{self, Read, Write},
    net::Shutdown,
};

use mio::{
    net::{TcpStream, UnixStream},
    Interest, Registry, Token,
};
use sni_common::flow::{Flow, FlowKey};

use crate::{config::Backend, kernel::flow_table::PinnedFlowTable};

/// A non-blocking byte stream: one side of a connection (the client or a backend).
pub trait Stream: Read + Write {
    /// Ends the write direction (TCP FIN); reading goes on.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Whether a connect started without blocking has finished: `Ok(true)` connected,
    /// `Ok(false)` still in progress, `Err` refused or unreachable.
    fn connect_state(&self) -> io::Result<bool>;
}

/// Dials backends and registers streams for readiness.
pub trait Net<S> {
    /// Starts connecting to `to` without blocking (never called for the built-in backend).
    fn dial(&self, to: &Backend) -> io::Result<S>;

    /// Asks for readiness events (read and write, edge-triggered) of `stream` under `token`.
    fn register(&self, stream: &mut S, token: Token) -> io::Result<()>;
}

/// The kernel classifier's record of flows, by 5-tuple.
pub trait Flows {
    /// The record of `key`, if the classifier made one.
    fn flow(&self, key: &FlowKey) -> Option<Flow>;
}

impl Flows for PinnedFlowTable {
    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.get(key)
    }
}

/// A socket of the worker's: the client's TCP connection, or a backend over TCP or Unix.
#[derive(Debug)]
pub enum Socket {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
}

impl Read for Socket {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Socket {
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(Shutdown::Write),
            Self::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    fn connect_state(&self) -> io::Result<bool> {
        let (error, peer) = match self {
            Self::Tcp(s) => (s.take_error(), s.peer_addr().map(|_| ())),
            Self::Unix(s) => (s.take_error(), s.peer_addr().map(|_| ())),
        };
        if let Some(e) = error? {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The worker's [`Net`]: real sockets, registered with its mio registry.
pub struct Sockets<'a> {
    /// The worker's registry.
    pub registry: &'a Registry,
}

impl Net<Socket> for Sockets<'_> {
    fn dial(&self, to: &Backend) -> io::Result<Socket> {
        match to {
            Backend::Tcp(addr) => TcpStream::connect(*addr).map(Socket::Tcp),
            Backend::Unix(path) => UnixStream::connect(path).map(Socket::Unix),
            Backend::Builtin => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn register(&self, stream: &mut Socket, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match stream {
            Socket::Tcp(s) => self.registry.register(s, token, interest),
            Socket::Unix(s) => self.registry.register(s, token, interest),
        }
    }
}
