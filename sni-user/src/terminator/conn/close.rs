//! How a connection ends: which side ended it and why, counted and logged in one place
//! ([`settle`]), so that a counter or a log line always says who failed.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use crate::terminator::{
    counters::{Failure, GlobalCounters},
    routes::Route,
};

/// The side whose doing ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client (downstream).
    Client,
    /// The backend (upstream).
    Backend,
    /// The terminator itself: a deadline, a socket it could not register.
    Internal,
}

/// Why a connection ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Before a host was chosen, counted in the global counters: the client left first.
    GoneBeforeHello,
    /// The ClientHello was larger than the cap.
    HelloTooLarge,
    /// The first bytes were not a ClientHello, or a malformed one.
    BadHello,
    /// No host for the name (and no default): `unrecognized_name` was sent.
    UnknownName,
    /// No whole ClientHello within the handshake deadline.
    HelloTimeout,
    /// The kernel classifier drops the flow (its host's `action = "drop"`, or over its
    /// `hello_rate`): its ClientHello will never come.
    Blocked,
    /// The client's socket failed once the connection was through (after the handshake, or
    /// routed in passthrough): counted under the host, apart from its failures.
    ClientAborted,
    /// Once a host was chosen, counted under it.
    Host(Failure),
}

/// A connection's bad end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// Who.
    pub side: Side,
    /// Why.
    pub why: Why,
}

impl Close {
    /// The client's doing.
    pub fn client(why: Why) -> Self {
        Self {
            side: Side::Client,
            why,
        }
    }

    /// A host's failure on `side`.
    pub fn host(side: Side, failure: Failure) -> Self {
        Self {
            side,
            why: Why::Host(failure),
        }
    }
}

/// A connection routed to a host: counted in the host's `active` while it lives.
#[derive(Debug)]
pub struct Host(Arc<Route>);

impl Host {
    /// Counts one more active connection of `route`.
    pub fn new(route: Arc<Route>) -> Self {
        route.counters.active.fetch_add(1, Relaxed);
        Self(route)
    }

    /// The route.
    pub fn route(&self) -> &Arc<Route> {
        &self.0
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Relaxed);
    }
}

/// What a finished state machine hands back: the host, if it had one, and the bad end, if it
/// was one (`None`: both directions ended in order).
#[derive(Debug)]
pub struct End {
    /// The host; dropped after the end is counted.
    pub host: Option<Host>,
    /// The bad end.
    pub close: Option<Close>,
}

/// Counts and logs a connection's end: the only place that does.
pub fn settle(end: End, peer: SocketAddr, global: &GlobalCounters) {
    let Some(close) = end.close else {
        return;
    };
    let route = end.host.as_ref().map(Host::route);
    let counter = match close.why {
        Why::GoneBeforeHello => Some(&global.client_gone_before_hello),
        Why::HelloTooLarge => Some(&global.client_hello_too_large),
        Why::BadHello => Some(&global.bad_client_hello),
        Why::UnknownName => Some(&global.rejected_unknown_name),
        Why::HelloTimeout => Some(&global.client_hello_timeout),
        Why::Blocked => Some(&global.xdp_blocked),
        Why::ClientAborted => route.map(|r| &r.counters.client_aborts),
        Why::Host(failure) => {
            if let Some(r) = route {
                r.counters.fail(failure);
            }
            None
        }
    };
    if let Some(c) = counter {
        c.fetch_add(1, Relaxed);
    }
    let host = route.map_or("", |r| r.label.as_str());
    if close.side == Side::Internal && close.why == Why::Host(Failure::Internal) {
        tracing::warn!(%peer, host, side = ?close.side, why = ?close.why, "connection closed");
    } else {
        tracing::debug!(%peer, host, side = ?close.side, why = ?close.why, "connection closed");
    }
}
