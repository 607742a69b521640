//! The terminator's ClientHello reader, without the socket: the bytes a client sends until its
//! ClientHello ends, read through the shared parser (the one the XDP program runs) under a size
//! cap; then the hand-over of those bytes to rustls' `Acceptor`, and the name rustls read,
//! normalised as the parser normalises. The parser reads in JA4 mode, as the XDP program does
//! by default, so that the terminator has the ClientHello's fingerprint to check the kernel's
//! against.
//!
//! [`crate::terminator::conn`] reads the socket and pushes what it read; the fuzz targets push any bytes in
//! any chunking. The bytes kept are every byte pushed, in order: past the end of the ClientHello
//! they are what the client sent next in the same read (TLS 1.3 early data, a pipelined record),
//! and a passthrough backend must get them too.

use rustls::server::{Accepted, AcceptedAlert, Acceptor};
use sni_common::{ja4::Ja4State, HostKey, Outcome, Parser, Progress};

/// Where the reader stands after the bytes pushed so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The ClientHello goes on past the bytes pushed.
    NeedMore,
    /// The whole ClientHello is in [`HelloReader::bytes`].
    Done,
    /// The client sent more than the cap before its ClientHello ended (its last push was
    /// dropped: the bytes kept never exceed the cap).
    TooLarge,
    /// The bytes are not a TLS ClientHello, or a malformed one;
    /// [`HelloReader::parser`]'s `reason()` says which.
    NotClientHello,
}

/// The bytes of one connection's ClientHello and the parser that reads them.
#[derive(Debug)]
pub struct HelloReader {
    /// Every byte pushed (up to the push that ended the ClientHello).
    bytes: Vec<u8>,
    /// Boxed: the parser is [`Parser::SIZE`] bytes (most of them the JA4 lists) and a
    /// connection holds it only while it peeks.
    parser: Box<Parser>,
    /// Most bytes kept ([`crate::config::Limits::max_client_hello`]).
    cap: usize,
    step: Step,
}

impl HelloReader {
    /// Bytes reserved up front: most ClientHellos fit (a post-quantum one needs two reads).
    const INITIAL_CAPACITY: usize = 1024;

    /// A reader that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(Self::INITIAL_CAPACITY.min(cap)),
            parser: Box::new(Parser::new(true)),
            cap,
            step: Step::NeedMore,
        }
    }

    /// Takes the next bytes the client sent. Once the step is final (anything but
    /// [`Step::NeedMore`]) further pushes change nothing and return the same step.
    ///
    /// A push that would take the bytes past the cap is [`Step::TooLarge`] even if it also ends
    /// the ClientHello: all the bytes read so far go to rustls or to the backend, so the cap
    /// bounds them all.
    pub fn push(&mut self, chunk: &[u8]) -> Step {
        if self.step != Step::NeedMore {
            return self.step;
        }
        if chunk.len() > self.cap.saturating_sub(self.bytes.len()) {
            self.step = Step::TooLarge;
            return self.step;
        }
        self.bytes.extend_from_slice(chunk);
        self.step = match self.parser.feed(chunk) {
            Progress::NeedMore => Step::NeedMore,
            // An SSLv2-compatible ClientHello is no TLS rustls can take: refused like bytes
            // that are not a ClientHello (with `handshake_failure`, as OpenSSL does).
            Progress::Done if self.parser.outcome() == Outcome::Sslv2 => Step::NotClientHello,
            Progress::Done => Step::Done,
            Progress::NotClientHello | Progress::Malformed => Step::NotClientHello,
        };
        self.step
    }

    /// Where the reader stands.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The bytes pushed so far (all of them, unless a push was [`Step::TooLarge`]).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Takes the bytes out, leaving none.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// The normalised server_name, once read (it can come before the ClientHello ends).
    pub fn name(&self) -> Option<&HostKey> {
        self.parser.name()
    }

    /// What the JA4 fingerprint of the ClientHello is made of, once it is read whole
    /// ([`Step::Done`]); `None` before, or for one the parser could not read.
    pub fn ja4(&self) -> Option<&Ja4State> {
        self.parser.ja4()
    }

    /// The parser, for its reason and flags.
    pub fn parser(&self) -> &Parser {
        &self.parser
    }
}

/// Why rustls' `Acceptor` did not take a ClientHello that the parser read whole.
#[derive(Debug)]
pub enum Refused {
    /// `read_tls` failed: more bytes than rustls buffers before its first message.
    Read,
    /// rustls wants more bytes than the parser did.
    Incomplete,
    /// rustls rejected the ClientHello; the alert is the one to send to the client.
    Alert(rustls::Error, AcceptedAlert),
}

/// Gives `hello` (a reader's bytes once [`Step::Done`]) to a fresh rustls `Acceptor`.
pub fn accept(hello: &[u8]) -> Result<Accepted, Refused> {
    let mut acceptor = Acceptor::default();
    let mut rd = hello;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(n) if n > 0 => {}
            // Reading a non-empty slice into rustls' buffer always makes progress or fails;
            // a zero would loop forever, so it counts as a failure.
            Ok(_) | Err(_) => return Err(Refused::Read),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(accepted),
        Ok(None) => Err(Refused::Incomplete),
        Err((error, alert)) => Err(Refused::Alert(error, alert)),
    }
}

/// The server_name as rustls read it, normalised like the parser's (ASCII lowercase, one
/// trailing dot removed). rustls reports only names that are valid DNS names: an IP literal or
/// a name with other bytes is `None` here even when the parser read it.
pub fn rustls_name(accepted: &Accepted) -> Option<HostKey> {
    accepted
        .client_hello()
        .server_name()
        .and_then(|n| HostKey::from_name(n.as_bytes()).ok())
}

/// The ALPN protocols a ClientHello offers, in the client's order, as rustls reads them (a
/// passthrough host's routes and PROXY header; rustls negotiates for terminated ones). A
/// ClientHello rustls cannot read offers none here: the host's own backend gets it.
pub fn offered_alpn(hello: &[u8]) -> Vec<Vec<u8>> {
    accept(hello)
        .ok()
        .and_then(|a| {
            a.client_hello()
                .alpn()
                .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        })
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const CURL: &[u8] = include_bytes!("../../../sni-common/testdata/curl.bin");
    const OPENSSL_NOSNI: &[u8] = include_bytes!("../../../sni-common/testdata/openssl-nosni.bin");

    /// A minimal single-record TLS 1.2 ClientHello with `name` as its host_name (when given)
    /// and the signature_algorithms extension rustls requires.
    pub(crate) fn hello(name: Option<&[u8]>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = name {
            let n = u16::try_from(name.len()).expect("short name");
            exts.extend_from_slice(&[0, 0]); // server_name
            exts.extend_from_slice(&(n + 5).to_be_bytes());
            exts.extend_from_slice(&(n + 3).to_be_bytes());
            exts.push(0); // host_name
            exts.extend_from_slice(&n.to_be_bytes());
            exts.extend_from_slice(name);
        }
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256.
        exts.extend_from_slice(&[0, 13, 0, 6, 0, 4, 4, 3, 8, 4]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // legacy_session_id
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&u16::try_from(exts.len()).expect("short").to_be_bytes());
        body.extend_from_slice(&exts);
        let len = u32::try_from(body.len()).expect("short").to_be_bytes();
        let mut hs = vec![1, len[1], len[2], len[3]];
        hs.extend_from_slice(&body);
        let mut out = vec![22, 3, 1];
        out.extend_from_slice(&u16::try_from(hs.len()).expect("short").to_be_bytes());
        out.extend_from_slice(&hs);
        out
    }

    fn name_of(key: Option<&HostKey>) -> Option<&[u8]> {
        key.map(HostKey::as_bytes)
    }

    #[test]
    fn one_push_or_byte_by_byte_read_the_same() {
        let mut whole = HelloReader::new(16 * 1024);
        assert_eq!(whole.push(CURL), Step::Done);
        assert_eq!(whole.bytes(), CURL);
        assert_eq!(name_of(whole.name()), Some(&b"curl.example.net"[..]));

        let mut bytes = HelloReader::new(16 * 1024);
        let (last, head) = CURL.split_last().expect("not empty");
        for b in head {
            assert_eq!(bytes.push(&[*b]), Step::NeedMore);
            assert!(bytes.ja4().is_none(), "no fingerprint before the end");
        }
        assert_eq!(bytes.push(&[*last]), Step::Done);
        assert_eq!(bytes.bytes(), CURL);
        assert_eq!(bytes.name(), whole.name());
        // The same fingerprint either way, with its string.
        let key = |r: &HelloReader| r.ja4().map(Ja4State::key);
        assert!(key(&whole).is_some());
        assert_eq!(key(&bytes), key(&whole));
        let ja4 = whole.ja4().and_then(Ja4State::ja4).expect("a JA4 string");
        assert!(ja4.as_str().starts_with("t13d"), "{ja4}");
    }

    #[test]
    fn keeps_bytes_after_the_hello_and_ignores_pushes_once_final() {
        let mut input = CURL.to_vec();
        input.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let mut r = HelloReader::new(16 * 1024);
        assert_eq!(r.push(&input), Step::Done);
        assert_eq!(r.bytes(), input);
        assert_eq!(r.push(b"more"), Step::Done);
        assert_eq!(r.bytes(), input);
        assert_eq!(r.take_bytes(), input);
        assert!(r.bytes().is_empty());
    }

    #[test]
    fn cap_bounds_the_bytes_kept() {
        let len = CURL.len();
        let mut exact = HelloReader::new(len);
        assert_eq!(exact.push(CURL), Step::Done);

        let mut short = HelloReader::new(len - 1);
        let (head, tail) = CURL.split_at(len / 2);
        assert_eq!(short.push(head), Step::NeedMore);
        assert_eq!(short.push(tail), Step::TooLarge);
        assert_eq!(short.bytes(), head);
        assert_eq!(short.push(b""), Step::TooLarge);

        // Too large wins over done when one push does both.
        let mut both = HelloReader::new(len - 1);
        assert_eq!(both.push(CURL), Step::TooLarge);
        assert!(both.bytes().is_empty());

        let mut zero = HelloReader::new(0);
        assert_eq!(zero.push(b""), Step::NeedMore);
        assert_eq!(zero.push(&CURL[..1]), Step::TooLarge);
    }

    #[test]
    fn not_a_hello_and_malformed_are_final() {
        let mut http = HelloReader::new(1024);
        assert_eq!(http.push(b"GET / HTTP/1.1\r\n"), Step::NotClientHello);
        let mut broken = CURL.to_vec();
        broken[9] = 2; // legacy_version 2.3
        let mut r = HelloReader::new(16 * 1024);
        assert_eq!(r.push(&broken), Step::NotClientHello);
        assert_eq!(r.parser().reason().as_str(), "bad_hello_version");
    }

    #[test]
    fn rustls_reads_the_name_the_parser_read() {
        for (bytes, name) in [
            (CURL.to_vec(), Some(&b"curl.example.net"[..])),
            (OPENSSL_NOSNI.to_vec(), None),
            (
                hello(Some(b"Mixed.Example.COM.")),
                Some(&b"mixed.example.com"[..]),
            ),
            (hello(None), None),
        ] {
            let mut r = HelloReader::new(16 * 1024);
            assert_eq!(r.push(&bytes), Step::Done);
            assert_eq!(name_of(r.name()), name);
            let accepted = accept(r.bytes()).expect("rustls accepts");
            assert_eq!(name_of(rustls_name(&accepted).as_ref()), name);
        }
    }

    #[test]
    fn rustls_sees_no_name_where_the_parser_reads_an_ip_literal() {
        // RFC 6066 §3 forbids IP literals in host_name; rustls accepts the ClientHello and
        // drops the name, the parser keeps it (and routes on it like any other name).
        let bytes = hello(Some(b"192.0.2.1"));
        let mut r = HelloReader::new(1024);
        assert_eq!(r.push(&bytes), Step::Done);
        assert_eq!(name_of(r.name()), Some(&b"192.0.2.1"[..]));
        let accepted = accept(r.bytes()).expect("rustls accepts");
        assert_eq!(rustls_name(&accepted), None);
    }

    #[test]
    fn rustls_refusals() {
        assert!(matches!(
            accept(&CURL[..CURL.len() - 1]),
            Err(Refused::Incomplete)
        ));
        // A host_name that is not a DNS name: rustls answers with an alert.
        let bytes = hello(Some(b"bad name"));
        let mut r = HelloReader::new(1024);
        assert_eq!(r.push(&bytes), Step::Done);
        assert!(matches!(accept(r.bytes()), Err(Refused::Alert(..))));
    }
}
