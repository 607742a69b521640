//! The backend both TLS servers forward to: one mio event loop answering HTTP/1.1 requests on
//! kept-alive connections. `GET /bulk` gets [`BULK_BYTES`] of body; anything else a 2-byte
//! body. It runs on the load generator's core, so it costs the servers under test nothing.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use mio::{
    net::{TcpListener, TcpStream},
    Events, Interest, Poll, Token,
};

/// Body bytes of one `GET /bulk` answer.
pub const BULK_BYTES: u64 = 16 << 20;
const SMALL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const LISTENER: Token = Token(usize::MAX);

/// A running backend; stops on drop.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts on 127.0.0.1 (an ephemeral port), in network namespace `netns` (its
    /// /run/netns path) if given, with the thread pinned to `cpu`.
    pub fn start(netns: Option<PathBuf>, cpu: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("backend".into())
            .spawn(move || {
                let setup = || -> Result<TcpListener> {
                    crate::load::pin_thread(cpu);
                    if let Some(ns) = &netns {
                        crate::load::enter_netns(ns)?;
                    }
                    Ok(TcpListener::bind("127.0.0.1:0".parse()?)?)
                };
                match setup() {
                    Ok(listener) => {
                        let _ = tx.send(listener.local_addr().map_err(anyhow::Error::from));
                        if let Err(e) = serve(listener, &flag) {
                            eprintln!("sni-bench: backend: {e:#}");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let addr = rx
            .recv()
            .context("the backend thread ended before it listened")??;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    /// Header bytes still to write, from `head_at`.
    head: &'static [u8],
    head_at: usize,
    /// Body bytes still to write (bulk).
    body_left: u64,
    /// Requests read and not yet answered (pipelined).
    queued: usize,
    queued_bulk: Vec<bool>,
}

fn serve(mut listener: TcpListener, stop: &AtomicBool) -> Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let bulk_chunk = vec![b'x'; 64 << 10];
    let bulk_head: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK_BYTES}\r\n\r\n").into_boxed_str(),
    )
    .as_bytes();
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in &events {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(
                                &mut stream,
                                Token(i),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            if let Some(slot) = conns.get_mut(i) {
                                *slot = Some(Conn {
                                    stream,
                                    inbuf: Vec::new(),
                                    head: &[],
                                    head_at: 0,
                                    body_left: 0,
                                    queued: 0,
                                    queued_bulk: Vec::new(),
                                });
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let i = ev.token().0;
            let Some(Some(conn)) = conns.get_mut(i) else {
                continue;
            };
            if !drive(conn, &mut buf, &bulk_chunk, bulk_head) {
                if let Some(Some(mut c)) = conns.get_mut(i).map(Option::take) {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                free.push(i);
            }
        }
    }
    Ok(())
}

/// Reads requests and writes answers until the socket would block; false once the
/// connection is over.
fn drive(c: &mut Conn, buf: &mut [u8], chunk: &[u8], bulk_head: &'static [u8]) -> bool {
    loop {
        let mut progressed = false;
        // Read what is there.
        match c.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                progressed = true;
                c.inbuf.extend_from_slice(buf.get(..n).unwrap_or_default());
                while let Some(end) = find(&c.inbuf, b"\r\n\r\n") {
                    c.queued_bulk.push(c.inbuf.starts_with(b"GET /bulk"));
                    c.queued += 1;
                    c.inbuf.drain(..end + 4);
                }
                if c.inbuf.len() > 64 << 10 {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
        // Write answers.
        loop {
            if c.head_at < c.head.len() {
                match c.stream.write(c.head.get(c.head_at..).unwrap_or_default()) {
                    Ok(n) => {
                        c.head_at += n;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
                continue;
            }
            if c.body_left > 0 {
                let n = chunk.len().min(c.body_left as usize);
                match c.stream.write(chunk.get(..n).unwrap_or_default()) {
                    Ok(n) => {
                        c.body_left -= n as u64;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
                continue;
            }
            if c.queued == 0 {
                break;
            }
            c.queued -= 1;
            let bulk = if c.queued_bulk.is_empty() {
                false
            } else {
                c.queued_bulk.remove(0)
            };
            c.head = if bulk { bulk_head } else { SMALL };
            c.head_at = 0;
            c.body_left = if bulk { BULK_BYTES } else { 0 };
        }
        if !progressed {
            return true;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
