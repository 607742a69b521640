//! One client connection through the terminator, as a state machine driven by readiness:
//! read the ClientHello (the shared `sni-common` parser), route it, then either terminate TLS
//! (rustls `Acceptor` → the host's `ServerConfig`) and move plaintext to the backend, or relay
//! the raw bytes (passthrough). Buffers are bounded both ways: a full buffer stops reading
//! from the side that fills it. Half-closes are passed on.
//!
//! - [`state`]: the states and their transitions; a step consumes a state.
//! - [`hand_off`]: the kernel classifier's record of the flow, checked against the TLS name.
//! - [`relay`]: the streams and queues of a routed connection, passthrough, the backend.
//! - [`proxy`]: the PROXY v2 header with the TLS facts, for backends that ask for it.
//! - [`tls`]: the client side through rustls.
//! - [`half`]: one direction's queue and end.
//! - [`close`]: who ended a connection and why, counted and logged in one place.
//! - [`io`]: the traits the connection's I/O goes through (sockets, or pipes in tests).
//!
//! [`Conn::pump`] moves bytes until nothing more can move (every socket at `WouldBlock` or a
//! buffer full), because readiness is edge-triggered; it gives up after a bounded number of
//! rounds and asks to be called again, so one busy connection cannot starve the others.

pub mod close;
pub mod half;
pub mod hand_off;
pub mod io;
pub mod proxy;
pub mod relay;
pub mod state;
pub mod tls;

#[cfg(test)]
mod tests;

use std::{net::SocketAddr, time::Instant};

use mio::Token;
use sni_common::flow::verdict;

use crate::{
    acme::challenges::Challenges,
    config::Limits,
    terminator::{
        conn::{
            close::{settle, Close, End, Why},
            io::{Flows, Net, Socket, Stream},
            state::{Meta, State, Step},
        },
        counters::GlobalCounters,
        routes::Routes,
    },
};

pub use hand_off::flow_key;

/// Age of a connection still without its ClientHello at which [`Conn::blocked`] first asks
/// the flow table.
const BLOCKED_FIRST_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Rounds of [`Conn::pump`] before yielding to other connections.
const PUMP_ROUNDS: usize = 16;

/// What a pump says about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for readiness.
    Idle,
    /// More work is ready: call again soon.
    Again,
    /// Finished (counted and logged): close it.
    Done,
}

/// What the pump needs from the worker.
pub struct Ctx<'a, S = Socket> {
    /// The routing table.
    pub routes: &'a Routes,
    /// Counters not of a host.
    pub global: &'a GlobalCounters,
    /// Limits.
    pub limits: &'a Limits,
    /// The kernel classifier's flow table, when it runs in this process.
    pub flows: Option<&'a dyn Flows>,
    /// Dials backends and registers their sockets.
    pub net: &'a dyn Net<S>,
    /// TLS-ALPN-01 challenges pending (ACME).
    pub challenges: &'a Challenges,
}

/// One client connection.
pub struct Conn<S = Socket> {
    meta: Meta,
    state: State<S>,
    /// When the connection must have made progress by (handshake or idle deadline).
    pub deadline: Instant,
    /// How often [`Conn::blocked`] asked the flow table.
    blocked_checks: u32,
}

impl<S: Stream> Conn<S> {
    /// A just-accepted client from `peer` to `local`: registers it under `client_token`; its
    /// backend, once dialled, is registered under `backend_token`.
    pub fn open(
        mut client: S,
        peer: SocketAddr,
        local: SocketAddr,
        (client_token, backend_token): (Token, Token),
        net: &dyn Net<S>,
        limits: &Limits,
    ) -> std::io::Result<Self> {
        net.register(&mut client, client_token)?;
        let now = Instant::now();
        Ok(Self {
            meta: Meta {
                peer,
                local,
                accepted: now,
                backend_token,
            },
            state: State::new(client, limits),
            deadline: now + secs(limits.handshake_timeout),
            blocked_checks: 0,
        })
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.meta.peer
    }

    /// Moves bytes until nothing more can move.
    pub fn pump(&mut self, ctx: &Ctx<'_, S>) -> Pumped {
        for _ in 0..PUMP_ROUNDS {
            let mut moved = false;
            let state = std::mem::replace(&mut self.state, State::Closed);
            match state.step(&self.meta, ctx, &mut moved) {
                Step::Next(next) => self.state = next,
                Step::End(end) => {
                    settle(end, self.meta.peer, ctx.global);
                    return Pumped::Done;
                }
            }
            if !moved {
                return Pumped::Idle;
            }
            if self.state.established() {
                self.deadline = Instant::now() + secs(ctx.limits.idle_timeout);
            }
        }
        Pumped::Again
    }

    /// Whether the kernel drops this connection's packets (its host's `action = "drop"`, or
    /// its ClientHello over the host's `hello_rate`) while it still waits for its
    /// ClientHello: that ClientHello will never come, and no packet will wake the
    /// connection, so the worker asks on its deadline tick. If so, it is counted
    /// (`xdp_blocked`) and logged, and the worker closes it.
    ///
    /// Asked at ages 50 ms, 100 ms, 200 ms, … doubling: a connection that sends nothing costs
    /// at most a handful of flow-table lookups before its deadline, not one per tick.
    pub fn blocked(&mut self, ctx: &Ctx<'_, S>) -> bool {
        if !self.state.reading_hello() {
            return false;
        }
        let due = BLOCKED_FIRST_CHECK.saturating_mul(1 << self.blocked_checks.min(16));
        if self.meta.accepted.elapsed() < due {
            return false;
        }
        self.blocked_checks = self.blocked_checks.saturating_add(1);
        let Some(flow) = hand_off::classified(ctx.flows, self.meta.peer, self.meta.local) else {
            return false;
        };
        if flow.verdict == verdict::PASS {
            return false;
        }
        self.state = State::Closed;
        settle(
            End {
                host: None,
                close: Some(Close::client(Why::Blocked)),
            },
            self.meta.peer,
            ctx.global,
        );
        true
    }

    /// The deadline passed: counts and logs why; the worker then closes it.
    pub fn expire(&mut self, ctx: &Ctx<'_, S>) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        settle(state.expire(), self.meta.peer, ctx.global);
    }
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.001))
}
