//! One direction of a connection: the bytes queued toward one side, whether the other side's
//! stream has ended, and whether that end has been passed on.

use std::io::{self, Read, Write};

use crate::terminator::buf::Buf;

/// One direction (client → backend, or backend → client).
#[derive(Debug)]
pub struct Half {
    /// Bytes read from the source, not yet written to the destination. Bounded: once full,
    /// the source is not read (backpressure).
    pub buf: Buf,
    /// The source's stream has ended (EOF, or a TLS close_notify).
    pub eof: bool,
    /// The end has been passed on: the destination's write side is shut.
    pub shut: bool,
}

impl Half {
    /// An open direction that queues at most `cap` bytes (allocated only while queued).
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Buf::new(cap),
            eof: false,
            shut: false,
        }
    }

    /// Reads from `src` until it would block, the queue is full or the stream ends.
    #[inline]
    pub fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
        self.buf.fill(src, &mut self.eof)
    }

    /// Writes the queue to `dst` until it would block or the queue is empty.
    #[inline]
    pub fn flush(&mut self, dst: &mut impl Write) -> io::Result<usize> {
        self.buf.flush_to(dst)
    }

    /// Whether the source ended and every byte was delivered, but the end not passed on yet.
    pub fn ready_to_shut(&self) -> bool {
        self.eof && self.buf.is_empty() && !self.shut
    }
}
