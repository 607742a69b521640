//! The bounded byte queue between the two sides of a terminator connection.
//!
//! Allocated on first use (a connection that never moves data holds none), filled at the back
//! straight from the socket or TLS reader, drained from the front without moving the rest, and
//! compacted only when its back is full.

use std::io::{self, Read, Write};

/// A bounded byte queue.
#[derive(Debug)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
}

impl Buf {
    /// An empty queue that [`fill`](Self::fill) grows to at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            data: Vec::new(),
            start: 0,
            end: 0,
            cap,
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether [`fill`](Self::fill) would read nothing more.
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// The queued bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.data.get(self.start..self.end).unwrap_or_default()
    }

    /// Drops the first `n` queued bytes.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends `bytes` whatever the bound (for headers and built-in responses, which are
    /// bounded by their makers).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.data.truncate(self.end);
        self.data.extend_from_slice(bytes);
        self.end = self.data.len();
    }

    /// Puts `bytes` before what is queued.
    pub fn prepend(&mut self, bytes: &[u8]) {
        let rest = self.as_slice().to_vec();
        self.start = 0;
        self.end = 0;
        self.extend(bytes);
        self.extend(&rest);
    }

    /// Reads from `src` until it would block, the queue is full, or the stream ends (then
    /// `eof` is set; an `UnexpectedEof` error, rustls' word for a close without close_notify,
    /// ends it too). Returns the bytes read.
    pub fn fill(&mut self, src: &mut impl Read, eof: &mut bool) -> io::Result<usize> {
        let mut total = 0;
        while !*eof && !self.is_full() {
            self.make_room();
            let Some(dst) = self.data.get_mut(self.end..) else {
                break;
            };
            match src.read(dst) {
                Ok(0) => *eof = true,
                Ok(n) => {
                    self.end += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => *eof = true,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Writes to `dst` until it would block or the queue is empty. Returns the bytes written.
    pub fn flush_to(&mut self, dst: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            match dst.write(self.as_slice()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.consume(n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Makes the back writable: allocate up to `cap` on first use, or move the queued bytes
    /// to the front once the back is reached.
    fn make_room(&mut self) {
        if self.data.len() < self.cap {
            self.data.resize(self.cap, 0);
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields its chunks one read at a time, then WouldBlock, then (if `ends`) end of stream.
    struct Chunks(Vec<Vec<u8>>, bool);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.first_mut() {
                None if self.1 => Ok(0),
                None => Err(io::ErrorKind::WouldBlock.into()),
                Some(chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    chunk.drain(..n);
                    if chunk.is_empty() {
                        self.0.remove(0);
                    }
                    Ok(n)
                }
            }
        }
    }

    /// Accepts at most `per_write` bytes per call, and `budget` in all, then WouldBlock.
    struct Slow {
        got: Vec<u8>,
        per_write: usize,
        budget: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.per_write).min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounded_fill_and_order_kept_across_compaction() {
        let mut b = Buf::new(8);
        assert!(b.data.is_empty(), "nothing allocated before use");
        let mut eof = false;
        let mut src = Chunks(vec![b"abcdefghij".to_vec()], false);
        assert_eq!(b.fill(&mut src, &mut eof).expect("fill"), 8);
        assert!(b.is_full());
        let mut dst = Slow {
            got: Vec::new(),
            per_write: 3,
            budget: 5,
        };
        assert_eq!(b.flush_to(&mut dst).expect("flush"), 5);
        assert_eq!(b.as_slice(), b"fgh");
        // The back is full: the next fill compacts, then reads the rest.
        assert_eq!(b.fill(&mut src, &mut eof).expect("fill"), 2);
        assert_eq!(b.as_slice(), b"fghij");
        assert!(!eof);
        let mut src = Chunks(vec![], true);
        b.fill(&mut src, &mut eof).expect("fill");
        assert!(eof);
        dst.budget = 100;
        b.flush_to(&mut dst).expect("flush");
        assert_eq!(dst.got, b"abcdefghij");
        assert!(b.is_empty());
    }

    #[test]
    fn prepend_and_extend_ignore_the_bound() {
        let mut b = Buf::new(4);
        b.extend(b"hello");
        b.prepend(b"PROXY ");
        assert_eq!(b.as_slice(), b"PROXY hello");
        b.consume(6);
        assert_eq!(b.as_slice(), b"hello");
        b.consume(100);
        assert!(b.is_empty());
    }
}
