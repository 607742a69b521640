//! The terminator's workers: one mio event loop per thread, each with its own `SO_REUSEPORT`
//! listener on every `[[listen]]` address, so the kernel spreads connections across them.
//!
//! Tokens: connection `i` has its client socket at `2i` and its backend socket at `2i + 1`;
//! listeners and the waker sit at the top of the token space.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{Acquire, Relaxed, Release},
        },
        Arc, Mutex, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use mio::{net::TcpListener, Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, warn};

use crate::{
    acme::challenges::Challenges,
    config::{Config, Limits},
    kernel::flow_table::PinnedFlowTable,
    terminator::conn::{
        io::{Socket, Sockets},
        Conn, Ctx, Pumped,
    },
    terminator::counters::{GlobalCounters, HostSnapshot},
    terminator::routes::{CertSource, Route, Routes},
};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX / 2;
/// How often deadlines are checked, and connections waiting for their ClientHello asked
/// whether the classifier drops it (then nothing wakes them): a flood to a dropped host holds
/// about a tick's worth of connections, not a handshake deadline's.
const TICK: Duration = Duration::from_millis(100);
/// Pending connections per listener.
const BACKLOG: i32 = 4096;

/// Running workers.
pub struct Terminator {
    threads: Vec<JoinHandle<()>>,
    wakers: Vec<Arc<Waker>>,
    stop: Arc<AtomicBool>,
    /// Bound addresses (after port 0 is resolved), for logs and tests.
    pub addresses: Vec<SocketAddr>,
    shared: Arc<Shared>,
}

/// What the workers share.
pub struct Shared {
    /// Swapped whole by a reload. Workers keep their own copy of the `Arc` and take the new
    /// table when `generation` moves, so the packet path touches no lock and no shared count.
    routes: RwLock<Arc<Routes>>,
    generation: AtomicU64,
    flows: Option<PinnedFlowTable>,
    /// Counters not of a host.
    pub global: GlobalCounters,
    /// Routes of hosts removed by a reload while they had open connections: their counters
    /// are shown until the last one closes.
    retired: Mutex<Vec<Arc<Route>>>,
    limits: Limits,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// TLS-ALPN-01 challenges the ACME task asks the workers to answer.
    challenges: Arc<Challenges>,
    /// The ACME task's record of each host's orders.
    acme: Arc<crate::acme::client::Status>,
}

impl Shared {
    /// The challenge table the workers answer TLS-ALPN-01 from.
    pub fn challenges(&self) -> Arc<Challenges> {
        Arc::clone(&self.challenges)
    }

    /// The ACME task's record of its orders, shown with the counters.
    pub fn acme_status(&self) -> Arc<crate::acme::client::Status> {
        Arc::clone(&self.acme)
    }

    /// Each ACME host's state: its certificate (issued or the placeholder, and when it
    /// expires) and the task's record of its orders.
    pub fn acme_snapshot(&self) -> Vec<crate::acme::client::HostState> {
        let records: HashMap<String, crate::acme::client::HostStatus> =
            self.acme.snapshot().into_iter().collect();
        self.routes()
            .routes
            .iter()
            .filter(|r| matches!(r.source, CertSource::Acme | CertSource::AcmePlaceholder))
            .map(|r| crate::acme::client::HostState {
                host: r.label.clone(),
                placeholder: r.source == CertSource::AcmePlaceholder,
                not_after: if r.source == CertSource::Acme {
                    r.not_after
                } else {
                    None
                },
                orders: records.get(&r.label).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The routing table new connections get.
    pub fn routes(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn ctx<'a>(&'a self, routes: &'a Routes, net: &'a Sockets<'a>) -> Ctx<'a> {
        Ctx {
            routes,
            flows: self.flows.as_ref().map(|f| f as _),
            global: &self.global,
            limits: &self.limits,
            net,
            challenges: &self.challenges,
        }
    }
}

impl Terminator {
    /// Binds every listener (errors surface here) and starts the workers. With `flows`, the
    /// kernel classifier's flow table, each connection's host is taken from it at accept
    /// (hand-off) and checked against the name the TLS stack sees.
    pub fn start(
        config: &Config,
        routes: Arc<Routes>,
        flows: Option<PinnedFlowTable>,
    ) -> Result<Self> {
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if let (Some(xdp), true) = (&config.xdp, flows.is_some()) {
            for l in &config.listen {
                if !xdp.ports.contains(&l.address.port()) {
                    tracing::warn!(
                        address = %l.address,
                        "the classifier does not watch this port: no hand-off for it"
                    );
                }
            }
        }
        let shared = Arc::new(Shared {
            routes: RwLock::new(routes.clone()),
            generation: AtomicU64::new(0),
            flows,
            global: GlobalCounters::default(),
            retired: Mutex::new(Vec::new()),
            limits: config.limits.clone(),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            challenges: Arc::default(),
            acme: Arc::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut wakers = Vec::new();
        let mut addresses = Vec::new();
        // The first worker binds the configured addresses; later ones bind what it got, so a
        // port 0 in the config means the same ephemeral port for all.
        let mut bound: Vec<SocketAddr> = config.listen.iter().map(|l| l.address).collect();
        for addr in &bound {
            probe_free(*addr)?;
        }
        for w in 0..workers {
            let poll = Poll::new().context("creating a poll")?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating a waker")?);
            let mut listeners = Vec::new();
            for (i, addr) in bound.clone().iter().enumerate() {
                let mut listener = bind(*addr).with_context(|| format!("listening on {addr}"))?;
                let local = listener.local_addr()?;
                if w == 0 {
                    if let Some(b) = bound.get_mut(i) {
                        *b = local;
                    }
                    addresses.push(local);
                }
                poll.registry().register(
                    &mut listener,
                    Token(LISTENER_BASE + i),
                    Interest::READABLE,
                )?;
                listeners.push(listener);
            }
            let worker = Worker {
                poll,
                listeners,
                conns: Slab::new(),
                again: VecDeque::new(),
                shared: shared.clone(),
                routes: routes.clone(),
                generation: 0,
                stop: stop.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("sni-worker-{w}"))
                .spawn(move || worker.run())
                .context("starting a worker")?;
            threads.push(handle);
            wakers.push(waker);
        }
        tracing::info!(?addresses, workers, "terminator listening");
        Ok(Self {
            threads,
            wakers,
            stop,
            addresses,
            shared,
        })
    }

    /// Serves new connections from `routes`; connections already open keep their route
    /// (certificate, backend, counters) to their end. A host that keeps its label keeps its
    /// counters.
    pub fn reload(&self, mut routes: Routes) {
        let previous = self.shared.routes();
        routes.adopt_counters(&previous);
        let routes = Arc::new(routes);
        {
            let kept: std::collections::HashSet<&str> =
                routes.routes.iter().map(|r| r.label.as_str()).collect();
            let mut retired = lock(&self.shared.retired);
            retired.extend(
                previous
                    .routes
                    .iter()
                    .filter(|r| !kept.contains(r.label.as_str()))
                    .cloned(),
            );
            retired.retain(|r| r.counters.active.load(Relaxed) > 0);
        }
        match self.shared.routes.write() {
            Ok(mut r) => *r = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
        self.shared.generation.fetch_add(1, Release);
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// What the control socket and the metrics endpoint read.
    pub fn view(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops accepting and ends the workers (open connections are closed).
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Counters as JSON (`{"hosts":[…],"global":{…}}`).
    pub fn snapshot(&self) -> serde_json::Value {
        self.shared.snapshot()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    /// Every route with counters to show: the current ones, then removed hosts that still
    /// have open connections.
    pub fn counted_routes(&self) -> Vec<Arc<Route>> {
        let mut all: Vec<Arc<Route>> = self.routes().routes.clone();
        let mut retired = lock(&self.retired);
        retired.retain(|r| r.counters.active.load(Relaxed) > 0);
        all.extend(retired.iter().cloned());
        all
    }

    /// Counters as JSON (`{"hosts":[…],"global":{…}}`).
    pub fn snapshot(&self) -> serde_json::Value {
        let hosts: Vec<HostSnapshot> = self
            .counted_routes()
            .iter()
            .map(|r| {
                let mut snapshot = r.counters.snapshot(&r.label);
                snapshot.routes = r
                    .alpn_routes
                    .iter()
                    .map(|a| crate::terminator::counters::RouteSnapshot {
                        alpn: a.alpn_text(),
                        connections: a.connections.load(Relaxed),
                    })
                    .collect();
                snapshot
            })
            .collect();
        let global: serde_json::Map<String, serde_json::Value> = self
            .global
            .values()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let acme = self.acme_snapshot();
        if acme.is_empty() {
            serde_json::json!({ "hosts": hosts, "global": global })
        } else {
            serde_json::json!({ "hosts": hosts, "global": global, "acme": acme })
        }
    }
}

/// Fails when another socket listens on `addr` (or on its port at the wildcard address).
/// The workers' listeners use `SO_REUSEPORT`, which would otherwise let a second `sni-user`
/// (same user) bind beside a running one and silently take a share of its connections. The
/// probe binds without `SO_REUSEPORT`, so any listener there conflicts; with `SO_REUSEADDR`,
/// so connections in TIME_WAIT from an earlier run do not. Port 0 needs no probe.
fn probe_free(addr: SocketAddr) -> Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("listening on {addr}"))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "listening on {addr}: {e}: another process listens there (`ss -ltnp 'sport = :{}'` \
             names it); a second sni-user would share its connections",
            addr.port()
        )),
        Err(e) => Err(e).with_context(|| format!("listening on {addr}")),
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // So that "[::]:443" and "0.0.0.0:443" can both be configured.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

struct Worker {
    poll: Poll,
    listeners: Vec<TcpListener>,
    conns: Slab<Conn>,
    again: VecDeque<usize>,
    shared: Arc<Shared>,
    /// This worker's copy of the route table, as of `generation`.
    routes: Arc<Routes>,
    generation: u64,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        while !self.stop.load(Relaxed) {
            let timeout = if self.again.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(error = %e, "poll failed");
                }
                continue;
            }
            let generation = self.shared.generation.load(Acquire);
            if generation != self.generation {
                self.routes = self.shared.routes();
                self.generation = generation;
            }
            for event in &events {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(t) => self.pump(t / 2),
                }
            }
            for _ in 0..self.again.len() {
                if let Some(id) = self.again.pop_front() {
                    self.pump(id);
                }
            }
            if Instant::now() >= next_tick {
                self.expire();
                next_tick = Instant::now() + TICK;
            }
        }
        let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.close(id);
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: keep serving open connections; retry on the next
                    // readiness event.
                    warn!(error = %e, "accept failed");
                    return;
                }
            };
            let g = &self.shared.global;
            g.accepted.fetch_add(1, Relaxed);
            let limits = &self.shared.limits;
            {
                // Both caps are checked and taken under one lock: two workers cannot both
                // take the last place.
                let mut per_ip = match self.shared.per_ip.lock() {
                    Ok(m) => m,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if self.shared.open.load(Relaxed) >= limits.max_connections {
                    g.over_max_connections.fetch_add(1, Relaxed);
                    continue;
                }
                let n = per_ip.entry(peer.ip()).or_insert(0);
                if *n >= limits.max_connections_per_ip {
                    g.over_max_per_ip.fetch_add(1, Relaxed);
                    continue;
                }
                *n += 1;
                self.shared.open.fetch_add(1, Relaxed);
            }
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(peer);
            let entry = self.conns.vacant_entry();
            let id = entry.key();
            let net = Sockets {
                registry: self.poll.registry(),
            };
            let tokens = (Token(id * 2), Token(id * 2 + 1));
            let conn = match Conn::open(Socket::Tcp(stream), peer, local, tokens, &net, limits) {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "registering a connection");
                    self.release(peer.ip());
                    continue;
                }
            };
            entry.insert(conn);
            // Bytes may already be there: edge-triggered readiness reports only new ones.
            self.pump(id);
        }
    }

    fn pump(&mut self, id: usize) {
        let net = Sockets {
            registry: self.poll.registry(),
        };
        let ctx = self.shared.ctx(&self.routes, &net);
        let Some(conn) = self.conns.get_mut(id) else {
            return; // a stray event for a closed connection
        };
        match conn.pump(&ctx) {
            Pumped::Idle => {}
            Pumped::Again => self.again.push_back(id),
            Pumped::Done => self.close(id),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let net = Sockets {
            registry: self.poll.registry(),
        };
        let ctx = self.shared.ctx(&self.routes, &net);
        let blocked: Vec<usize> = match ctx.flows {
            Some(_) => self
                .conns
                .iter_mut()
                .filter_map(|(id, c)| c.blocked(&ctx).then_some(id))
                .collect(),
            None => Vec::new(),
        };
        let expired: Vec<usize> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, c)| {
                c.expire(&ctx);
                id
            })
            .collect();
        for id in blocked {
            self.close(id);
        }
        for id in expired {
            debug!(id, "deadline passed");
            self.close(id);
        }
    }

    /// Drops a connection: its sockets close (and leave the poll with their descriptors),
    /// and its host's `active` goes down with it.
    fn close(&mut self, id: usize) {
        let Some(conn) = self.conns.try_remove(id) else {
            return;
        };
        self.release(conn.peer().ip());
        self.again.retain(|a| *a != id);
    }

    fn release(&self, ip: IpAddr) {
        self.shared.open.fetch_sub(1, Relaxed);
        let mut per_ip = match self.shared.per_ip.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}
