//! The client side of a terminated connection: TLS records in and out through rustls, the
//! plaintext through the relay's queues. The same round serves the handshake and the relay;
//! the states around it ([`super::state`]) tell them apart.

use std::{
    io::{self, Write},
    sync::atomic::Ordering::Relaxed,
};

use rustls::server::ServerConnection;

use crate::terminator::{
    conn::{
        close::{Close, Side, Why},
        io::Stream,
        relay::Relay,
    },
    counters::Failure,
};

/// A relay whose client speaks TLS to us.
pub struct Tls<S> {
    /// The rustls connection (boxed: it is large, and moves between states).
    pub conn: Box<ServerConnection>,
    /// The streams and queues.
    pub relay: Relay<S>,
}

impl<S: Stream> Tls<S> {
    /// One round: records in, plaintext to the backend queue, backend bytes into TLS,
    /// records out, the backend side, then the backend's end passed on as close_notify.
    ///
    /// `through`: the handshake was counted (the `Terminate` state). A failure before that
    /// is the handshake's (`tls`, `client_gone`), after it the connection's
    /// (`tls_after_handshake`, a client abort), even when rustls finished the handshake in
    /// this very round: each ClientHello ends in a handshake or a failure, never neither.
    pub fn round(&mut self, through: bool, moved: &mut bool) -> Result<(), Close> {
        let Self { conn: tls, relay } = self;
        let r = relay;
        let gone = || {
            if through {
                Close::client(Why::ClientAborted)
            } else {
                Close::host(Side::Client, Failure::ClientGone)
            }
        };
        let tls_failure = if through {
            Failure::TlsAfterHandshake
        } else {
            Failure::Tls
        };
        // Records in, while there is room for their plaintext.
        while !r.up.eof && !r.up.buf.is_full() && tls.wants_read() {
            match tls.read_tls(&mut r.client) {
                Ok(0) => r.up.eof = true,
                Ok(_) => {
                    *moved = true;
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert rustls queued, as a last gasp.
                        let _ = tls.write_tls(&mut r.client);
                        let failure = match e {
                            // Only a client certificate is verified on this side (mTLS).
                            rustls::Error::NoCertificatesPresented
                            | rustls::Error::InvalidCertificate(_)
                                if !through =>
                            {
                                Failure::ClientCert
                            }
                            _ => tls_failure,
                        };
                        return Err(Close::host(Side::Client, failure));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(gone()),
            }
        }
        if r.up.eof && tls.is_handshaking() {
            return Err(Close::host(Side::Client, Failure::ClientGone));
        }
        let counters = &r.host.route().counters;
        // Plaintext out of TLS (a close_notify ends the client's stream); not before the
        // handshake is counted, which may put a PROXY header first.
        if through {
            let n =
                r.up.fill(&mut tls.reader())
                    .map_err(|_| Close::host(Side::Client, tls_failure))?;
            if n > 0 {
                *moved = true;
                counters.bytes_to_backend.fetch_add(n as u64, Relaxed);
            }
        }
        // Backend bytes into TLS (bounded by rustls' buffer limit).
        if !r.down.buf.is_empty() && !tls.is_handshaking() {
            if let Ok(n) = tls.writer().write(r.down.buf.as_slice()) {
                if n > 0 {
                    *moved = true;
                    counters.bytes_to_client.fetch_add(n as u64, Relaxed);
                    r.down.buf.consume(n);
                }
            }
        }
        // Records out.
        while tls.wants_write() {
            match tls.write_tls(&mut r.client) {
                Ok(_) => *moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(gone()),
            }
        }
        r.backend_round(moved)?;
        // The backend's end, once its bytes are all in records: close_notify, then FIN.
        if r.down.ready_to_shut() && !tls.is_handshaking() {
            tls.send_close_notify();
            while tls.wants_write() {
                match tls.write_tls(&mut r.client) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = r.client.shutdown_write();
            r.down.shut = true;
            *moved = true;
        }
        Ok(())
    }

    /// An idle connection's orderly end for the client: close_notify, best effort (never
    /// blocks); the socket closes as it drops.
    pub fn say_goodbye(&mut self) {
        self.conn.send_close_notify();
        let _ = self.conn.write_tls(&mut self.relay.client);
    }
}
