//! The kernel's ring buffer of new fingerprints (`SNI_JA4_EVENTS`), read on a thread of its
//! own that hands each record to the control plane's loop, which learns from it
//! (`Classifier::learn`).
//!
//! A thread with `poll(2)` rather than tokio's `AsyncFd`: registering a file descriptor
//! with this tokio takes `unsafe` (its safe constructor is deprecated as unsound), and
//! userspace has none. The channel is bounded: when the loop falls behind, the thread waits,
//! the ring buffer fills up, and the kernel counts what it could not send (`ja4_lost`).

use std::{os::fd::AsFd as _, thread::JoinHandle};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use tokio::sync::mpsc;
use tracing::warn;

/// Records waiting for the loop at most.
const QUEUE: usize = 1024;
/// How long a `poll` waits before the thread looks whether the loop is still there.
const POLL_MS: u16 = 200;

/// The reading thread, and the records it reads.
pub struct Ja4Events {
    /// The records, in the order the kernel wrote them.
    pub records: mpsc::Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

impl Ja4Events {
    /// Starts reading `ring`.
    pub fn spawn(ring: RingBuf<MapData>) -> Result<Self> {
        let (tx, records) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("sni-ja4-events".into())
            .spawn(move || read(ring, &tx))
            .context("starting the thread that reads new fingerprints")?;
        Ok(Self {
            records,
            thread: Some(thread),
        })
    }

    /// Stops the thread (within [`POLL_MS`]) and waits for it.
    pub fn stop(mut self) {
        self.records.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads records until the loop drops its end of the channel.
fn read(mut ring: RingBuf<MapData>, tx: &mpsc::Sender<Vec<u8>>) {
    loop {
        if tx.is_closed() {
            return;
        }
        let polled = {
            let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(POLL_MS))
        };
        match polled {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "polling the ring buffer of new fingerprints failed; no more fingerprints are learned until a restart");
                return;
            }
        }
        // Whatever is there, ready or not: a record may have come before the poll.
        while let Some(record) = ring.next() {
            let bytes = record.to_vec();
            drop(record);
            if tx.blocking_send(bytes).is_err() {
                return;
            }
        }
    }
}
