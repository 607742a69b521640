//! Hand-off: the classifier's record agreed, disagreed, or unknown; its host and its JA4.

use super::*;

#[test]
fn hand_off_agreed_dials_before_the_hello_is_read() {
    let mut w = World::new();
    w.classify("p.example", P, kind::CONFIGURED);
    let (mut conn, mut client) = w.open();
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert_eq!(w.net.dialled(), 1, "dialled from the classifier's record");
    assert_eq!(w.net.registered.borrow().as_slice(), &[Token(0), Token(1)]);
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    assert_eq!(w.net.dialled(), 1, "the early backend is kept");
    assert_eq!(w.global.xdp_agreed.load(Relaxed), 1);
    assert_eq!(w.global.xdp_disagreed.load(Relaxed), 0);
    let keys = w
        .flows
        .as_ref()
        .map(|f| f.1.borrow()[0])
        .expect("looked up");
    assert_eq!(
        keys,
        crate::terminator::conn::flow_key(
            PEER.parse().expect("addr"),
            LOCAL.parse().expect("addr")
        )
    );
}

#[test]
fn hand_off_disagreed_drops_the_early_backend_and_the_tls_name_wins() {
    let mut w = World::new();
    w.classify("t.example", T, kind::CONFIGURED);
    let (mut conn, mut client) = w.open();
    settle(&mut conn, &w);
    assert_eq!(w.net.dialled(), 1);
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    assert_eq!(
        w.net.dialled(),
        2,
        "dialled again for the host the ClientHello names"
    );
    assert!(w.net.backend(0).at_eof(), "the early backend is closed");
    assert!(!w.net.backend(1).drain_all().is_empty());
    assert_eq!(w.global.xdp_disagreed.load(Relaxed), 1);
    assert_eq!(w.handshakes(P), 1);
    assert_eq!(w.handshakes(T), 0);

    // Terminated: counted once the handshake is done.
    let mut w = World::new();
    w.classify("b.example", B, kind::CONFIGURED);
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.handshake(&mut conn, &w);
    assert_eq!(w.net.dialled(), 2);
    assert_eq!(w.global.xdp_disagreed.load(Relaxed), 1);
    assert_eq!((w.handshakes(T), w.handshakes(B)), (1, 0));
    assert_eq!((w.active(T), w.active(B)), (1, 0));
}

#[test]
fn hand_off_unknown_without_a_record_or_with_an_unread_one() {
    for flows in [false, true] {
        let mut w = World::new();
        if flows {
            w.classify("p.example", P, kind::UNKNOWN);
        }
        let (mut conn, mut client) = w.open();
        client.send(&hello(Some(b"p.example")));
        settle(&mut conn, &w);
        assert_eq!(w.net.dialled(), 1);
        assert_eq!(w.global.xdp_unknown.load(Relaxed), 1, "flows: {flows}");
        assert_eq!(w.global.xdp_agreed.load(Relaxed), 0);
    }
}

#[test]
fn hand_off_ja4_agreed_when_the_classifier_fingerprinted_the_same_hello() {
    let bytes = hello(Some(b"p.example"));
    let mut w = World::new();
    w.classify("p.example", P, kind::CONFIGURED);
    w.fingerprint(ja4_of(&bytes));
    let (mut conn, mut client) = w.open();
    client.send(&bytes);
    settle(&mut conn, &w);
    assert_eq!(w.handshakes(P), 1);
    assert_eq!(w.global.xdp_agreed.load(Relaxed), 1);
    assert_eq!(w.global.ja4_agreed.load(Relaxed), 1);
    assert_eq!(w.global.ja4_disagreed.load(Relaxed), 0);
    assert_eq!(w.global.ja4_unknown.load(Relaxed), 0);

    // Terminated, with a real rustls ClientHello: the classifier's fingerprint of its first
    // flight, counted once the handshake is done.
    let mut w = World::new();
    w.classify("t.example", T, kind::CONFIGURED);
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    let mut first = Vec::new();
    while client.tls.wants_write() {
        client.tls.write_tls(&mut first).expect("to a vector");
    }
    w.fingerprint(ja4_of(&first));
    client.end.write_all(&first).expect("unbounded pipe");
    client.handshake(&mut conn, &w);
    assert_eq!(w.handshakes(T), 1);
    assert_eq!(w.global.ja4_agreed.load(Relaxed), 1);
    assert_eq!(w.global.ja4_disagreed.load(Relaxed), 0);
}

#[test]
fn hand_off_ja4_disagreed_when_the_classifier_fingerprinted_another_hello() {
    // Same host, another ClientHello's fingerprint: the host agrees, the JA4 does not.
    let curl: &[u8] = include_bytes!("../../../../../sni-common/testdata/curl.bin");
    let mut w = World::new();
    w.classify("p.example", P, kind::CONFIGURED);
    w.fingerprint(ja4_of(curl));
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    assert_eq!(w.handshakes(P), 1);
    assert_eq!(w.global.xdp_agreed.load(Relaxed), 1);
    assert_eq!(w.global.ja4_disagreed.load(Relaxed), 1);
    assert_eq!(w.global.ja4_agreed.load(Relaxed), 0);

    // Terminated: counted once the handshake is done.
    let mut w = World::new();
    w.classify("t.example", T, kind::CONFIGURED);
    w.fingerprint(ja4_of(curl));
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.handshake(&mut conn, &w);
    assert_eq!(w.handshakes(T), 1);
    assert_eq!(w.global.xdp_agreed.load(Relaxed), 1);
    assert_eq!(w.global.ja4_disagreed.load(Relaxed), 1);
}

#[test]
fn hand_off_ja4_unknown_without_a_record_or_a_fingerprint() {
    // No record; a record without a fingerprint (the classifier's JA4 reading off).
    for flows in [false, true] {
        let mut w = World::new();
        if flows {
            w.classify("p.example", P, kind::CONFIGURED);
        }
        let (mut conn, mut client) = w.open();
        client.send(&hello(Some(b"p.example")));
        settle(&mut conn, &w);
        assert_eq!(w.handshakes(P), 1);
        assert_eq!(w.global.ja4_unknown.load(Relaxed), 1, "flows: {flows}");
        assert_eq!(w.global.ja4_agreed.load(Relaxed), 0);
        assert_eq!(w.global.ja4_disagreed.load(Relaxed), 0);
    }
}
