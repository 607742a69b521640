//! Every close reason, on its side, counted where it belongs.

use super::*;

#[test]
fn closes_before_a_host_are_counted_globally() {
    type Case = (
        &'static str,
        fn(&mut World, &mut End),
        fn(&GlobalCounters) -> u64,
    );
    let cases: [Case; 4] = [
        (
            "gone before hello",
            |_, c| {
                c.send(&hello(Some(b"p.example"))[..10]);
                c.shutdown_write().expect("shut");
            },
            |g| g.client_gone_before_hello.load(Relaxed),
        ),
        (
            "too large",
            |w, c| {
                w.limits.max_client_hello = 20;
                c.send(&hello(Some(b"p.example")));
            },
            |g| g.client_hello_too_large.load(Relaxed),
        ),
        (
            "not a ClientHello",
            |_, c| c.send(b"GET / HTTP/1.1\r\n\r\n"),
            |g| g.bad_client_hello.load(Relaxed),
        ),
        (
            "unknown name",
            |_, c| c.send(&hello(Some(b"nope.example"))),
            |g| g.rejected_unknown_name.load(Relaxed),
        ),
    ];
    for (what, feed, counter) in cases {
        let mut w = World::new();
        let (near, mut client) = pipe(0, 0);
        feed(&mut w, &mut client);
        let mut conn = w.open_on(near);
        assert_eq!(settle(&mut conn, &w), Pumped::Done, "{what}");
        assert_eq!(counter(&w.global), 1, "{what}");
        assert_eq!(w.all_failures(), 0, "{what}: no host counted");
        if what == "unknown name" {
            assert_eq!(
                client.drain_all(),
                [21, 3, 3, 0, 2, 2, 112],
                "unrecognized_name sent"
            );
        }
    }
    // A read error before the hello: gone.
    let w = World::new();
    let (mut conn, client) = w.open();
    client.tx.borrow_mut().fail = Some(io::ErrorKind::ConnectionReset);
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.global.client_gone_before_hello.load(Relaxed), 1);
    // No hello by the deadline.
    let (mut conn, _client) = w.open();
    settle(&mut conn, &w);
    conn.expire(&w.ctx());
    assert_eq!(w.global.client_hello_timeout.load(Relaxed), 1);
}

#[test]
fn backend_closes_are_counted_under_the_host() {
    // Refused at dial.
    let w = World::new();
    w.net.refuse.set(true);
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(P, Failure::BackendRefused), 1);
    assert_eq!(w.active(P), 0);
    // Refused once the connect completes.
    let w = World::new();
    w.net.connecting.set(None);
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(P, Failure::BackendRefused), 1);
    // Still connecting: waits, sends nothing.
    let w = World::new();
    w.net.connecting.set(Some(false));
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert!(w.net.backend(0).drain_all().is_empty());
    w.net.backend(0).connect.set(Some(true));
    settle(&mut conn, &w);
    assert!(!w.net.backend(0).drain_all().is_empty());
    // Reset mid-stream.
    w.net.backend(0).tx.borrow_mut().fail = Some(io::ErrorKind::ConnectionReset);
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(P, Failure::BackendFailed), 1);
    assert_eq!(w.aborts(P), 0);
    // A socket that cannot be registered is our fault.
    let w = World::new();
    let (mut conn, mut client) = w.open();
    w.net.fail_register.set(true);
    client.send(&hello(Some(b"p.example")));
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(P, Failure::Internal), 1);
}

#[test]
fn client_failures_after_routing_are_counted_by_stage() {
    // Passthrough: a reset client aborted (counted apart from the host's failures).
    let w = World::new();
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    client.tx.borrow_mut().fail = Some(io::ErrorKind::ConnectionReset);
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!((w.aborts(P), w.all_failures()), (1, 0));
    // A client that leaves mid-handshake is gone.
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.exchange();
    settle(&mut conn, &w);
    assert_eq!(state_name(&conn), "handshake");
    client.end.shutdown_write().expect("shut");
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(T, Failure::ClientGone), 1);
    // A fatal alert during the handshake is a TLS failure.
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.exchange();
    settle(&mut conn, &w);
    client.end.send(&[21, 3, 3, 0, 2, 2, 40]); // handshake_failure
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(T, Failure::Tls), 1);
    // A bad record after the handshake: a TLS failure too, not a client gone.
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.handshake(&mut conn, &w);
    client.end.send(&[
        23, 3, 3, 0, 20, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
    ]);
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.failures(T, Failure::TlsAfterHandshake), 1);
    assert_eq!(w.failures(T, Failure::ClientGone), 0);
    // A reset after the handshake: the client aborted.
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.handshake(&mut conn, &w);
    client.end.tx.borrow_mut().fail = Some(io::ErrorKind::ConnectionReset);
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!((w.aborts(T), w.all_failures()), (1, 0));
    assert_eq!(w.active(T), 0);
}

#[test]
fn deadlines_close_by_stage() {
    // Mid-handshake.
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.exchange();
    settle(&mut conn, &w);
    conn.expire(&w.ctx());
    assert_eq!(w.failures(T, Failure::HandshakeTimeout), 1);
    assert_eq!(w.active(T), 0);
    // Idle after the handshake: close_notify first.
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.handshake(&mut conn, &w);
    conn.expire(&w.ctx());
    assert_eq!(w.failures(T, Failure::IdleTimeout), 1);
    client.exchange();
    let mut rest = [0u8; 16];
    assert_eq!(
        client
            .tls
            .reader()
            .read(&mut rest)
            .expect("close_notify received"),
        0
    );
    assert_eq!(state_name(&conn), "closed");
    // Idle passthrough.
    let w = World::new();
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    conn.expire(&w.ctx());
    assert_eq!(w.failures(P, Failure::IdleTimeout), 1);
    assert_eq!(w.all_failures(), 1);
}
