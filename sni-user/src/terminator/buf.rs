//! The bounded byte queue between the two sides of a terminator connection.
//!
//! Holds memory only while bytes are queued: allocated when a fill starts (16 KiB, grown while
//! the other side is slower, up to the bound), released as soon as the last byte is drained.
//! An idle connection, the common case at the edge, so holds none. Filled at the back straight
//! from the socket or TLS reader, drained from the front without moving the rest, and compacted
//! only when its back is full.

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

    /// Drops the first `n` queued bytes; the memory goes with the last one.
    pub fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        self.release_if_empty();
    }

    /// Bytes allocated now.
    pub fn allocated(&self) -> usize {
        self.data.capacity()
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
                Err(e) => {
                    self.release_if_empty();
                    return Err(e);
                }
            }
        }
        self.release_if_empty();
        Ok(total)
    }

    /// Gives the memory back when nothing is queued (a fill that found nothing to read).
    fn release_if_empty(&mut self) {
        if self.start == self.end && self.data.capacity() > 0 {
            self.start = 0;
            self.end = 0;
            self.data = Vec::new();
        }
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

    /// Makes the back writable: a first block of [`FIRST_BLOCK`] (or `cap`, if smaller), then
    /// once the back is reached, the queued bytes moved to the front, or if they fill the
    /// block, a block twice as large, up to `cap`.
    fn make_room(&mut self) {
        if self.end < self.data.len() {
            return;
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else {
            let size = (self.data.len() * 2).clamp(FIRST_BLOCK.min(self.cap), self.cap);
            self.data.resize(size, 0);
        }
    }
}

/// The first allocation of a queue: one TLS record's worth.
const FIRST_BLOCK: usize = 16 * 1024;

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
    fn memory_only_while_bytes_are_queued() {
        let cap = 64 * 1024;
        let mut b = Buf::new(cap);
        let mut eof = false;
        let mut src = Chunks(vec![vec![7u8; 100]], false);
        b.fill(&mut src, &mut eof).expect("fill");
        assert_eq!(
            b.allocated(),
            FIRST_BLOCK,
            "a small read takes the first block only"
        );
        let mut dst = Slow {
            got: Vec::new(),
            per_write: usize::MAX,
            budget: usize::MAX,
        };
        b.flush_to(&mut dst).expect("flush");
        assert_eq!(b.allocated(), 0, "drained: released");
        let mut nothing = Chunks(vec![], false);
        assert_eq!(b.fill(&mut nothing, &mut eof).expect("fill"), 0);
        assert_eq!(b.allocated(), 0, "a fill that reads nothing keeps nothing");
        // A slow destination: the queue grows block by block to the bound, no further.
        let mut src = Chunks(vec![vec![1u8; 200 * 1024]], false);
        assert_eq!(b.fill(&mut src, &mut eof).expect("fill"), cap);
        assert_eq!(b.allocated(), cap);
        assert!(b.is_full());
        dst.budget = 0;
        assert_eq!(b.flush_to(&mut dst).expect("flush"), 0);
        assert_eq!(b.allocated(), cap);
        dst.budget = usize::MAX;
        b.flush_to(&mut dst).expect("flush");
        assert_eq!(b.allocated(), 0);
        assert_eq!(dst.got.len(), 100 + cap);
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
