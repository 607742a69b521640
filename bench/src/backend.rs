//! The backend both TLS servers forward to: one mio event loop answering HTTP/1.1 requests on
//! kept-alive connections. `GET /bulk` gets [`BULK_BYTES`] of body; anything else a 2-byte
//! body, and the connection closes after it if the request said `Connection: close`. It runs on the load generator's core, so it costs the servers under test nothing.

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
/// The small answer to a request that asked to close (wrk's new connection per request).
const SMALL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// What a request asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// The 2-byte answer, the connection kept.
    Small,
    /// The 2-byte answer, then the connection closed (`Connection: close`).
    SmallClose,
    /// `GET /bulk`.
    Bulk,
}

impl Ask {
    fn of(head: &[u8]) -> Self {
        if head.starts_with(b"GET /bulk") {
            Self::Bulk
        } else if head
            .windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"connection: close"))
        {
            Self::SmallClose
        } else {
            Self::Small
        }
    }
}
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
    /// Requests read and not yet answered (pipelined), oldest first.
    asks: std::collections::VecDeque<Ask>,
    /// The answer being written asked to close the connection after it.
    closing: bool,
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
                                    asks: std::collections::VecDeque::new(),
                                    closing: false,
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
                    c.asks
                        .push_back(Ask::of(c.inbuf.get(..end).unwrap_or_default()));
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
            if c.closing {
                // The answer that asked to close is out.
                return false;
            }
            let Some(ask) = c.asks.pop_front() else {
                break;
            };
            c.head = match ask {
                Ask::Bulk => bulk_head,
                Ask::SmallClose => SMALL_CLOSE,
                Ask::Small => SMALL,
            };
            c.head_at = 0;
            c.body_left = if ask == Ask::Bulk { BULK_BYTES } else { 0 };
            c.closing = ask == Ask::SmallClose;
        }
        if !progressed {
            return true;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
