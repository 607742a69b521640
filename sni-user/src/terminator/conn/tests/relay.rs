//! Passthrough: bytes both ways, half-closes both ways, backpressure both ways.

use super::*;

#[test]
fn passthrough_relays_both_ways_and_the_client_closes_first() {
    let w = World::new();
    let (mut conn, mut client) = w.open();
    let hello = hello(Some(b"p.example"));
    client.send(&hello);
    client.send(b"ping");
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert_eq!(state_name(&conn), "passthrough");
    assert_eq!(w.handshakes(P), 1);
    assert_eq!(w.active(P), 1);
    assert_eq!(w.global.xdp_unknown.load(Relaxed), 1);
    let got = w.net.backend(0).drain_all();
    assert_eq!(&got[..hello.len()], &hello[..]);
    assert_eq!(&got[hello.len()..], b"ping");

    w.net.backend(0).send(b"pong");
    settle(&mut conn, &w);
    assert_eq!(client.drain_all(), b"pong");

    // The client's end reaches the backend; the backend still answers.
    client.shutdown_write().expect("shut");
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert!(w.net.backend(0).at_eof(), "FIN passed on to the backend");
    w.net.backend(0).send(b"late");
    settle(&mut conn, &w);
    assert_eq!(client.drain_all(), b"late");
    w.net.backend(0).shutdown_write().expect("shut");
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert!(client.at_eof());
    assert_eq!(state_name(&conn), "closed");
    assert_eq!(w.active(P), 0, "active settled as the connection ends");
    assert_eq!(w.all_failures(), 0, "an orderly end is no failure");
}

#[test]
fn passthrough_the_backend_closes_first_and_the_client_still_sends() {
    let w = World::new();
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    w.net.backend(0).drain_all();
    w.net.backend(0).send(b"bye");
    w.net.backend(0).shutdown_write().expect("shut");
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert_eq!(client.drain_all(), b"bye");
    assert!(client.at_eof(), "FIN passed on to the client");
    client.send(b"more");
    settle(&mut conn, &w);
    assert_eq!(w.net.backend(0).drain_all(), b"more");
    client.shutdown_write().expect("shut");
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert!(w.net.backend(0).at_eof());
    assert_eq!(w.all_failures(), 0);
}

#[test]
fn a_slow_backend_stops_reading_the_client() {
    let mut w = World::new();
    w.limits.buffer_size = 1024;
    w.net.cap.set(100);
    let (mut conn, mut client) = w.open();
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    // The backend reads nothing: its pipe takes 100 bytes, the queue 1024, the rest waits
    // in the client's pipe.
    w.net.backend(0).drain_all();
    client.send(&[1; 10_000]);
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert_eq!(client.unread(), 10_000 - 100 - 1024);
    let State::Passthrough(relay) = &conn.state else {
        panic!("not relaying");
    };
    assert!(relay.up.buf.is_full());
    let mut got = w.net.backend(0).drain_all().len();
    while got < 10_000 {
        settle(&mut conn, &w);
        let n = w.net.backend(0).drain_all().len();
        assert!(n > 0, "draining the backend lets the client's bytes move");
        got += n;
    }
    assert_eq!(client.unread(), 0);
    let State::Passthrough(relay) = &conn.state else {
        panic!("not relaying");
    };
    assert_eq!(
        relay.down.buf.allocated(),
        0,
        "an idle direction holds no memory"
    );
    assert_eq!(relay.up.buf.allocated(), 0);
}

#[test]
fn a_slow_client_stops_reading_the_backend() {
    let mut w = World::new();
    w.limits.buffer_size = 1024;
    // The client's pipe from the terminator takes 100 bytes.
    let (near, mut client) = pipe(100, 0);
    let mut conn = w.open_on(near);
    client.send(&hello(Some(b"p.example")));
    settle(&mut conn, &w);
    w.net.backend(0).send(&[3; 5000]);
    assert_eq!(settle(&mut conn, &w), Pumped::Idle);
    assert_eq!(
        w.net.backend(0).unread(),
        5000 - 100 - 1024,
        "the rest waits at the backend"
    );
    let mut got = client.drain_all().len();
    while got < 5000 {
        settle(&mut conn, &w);
        let n = client.drain_all().len();
        assert!(
            n > 0,
            "reading the client's pipe lets the backend's bytes move"
        );
        got += n;
    }
    assert_eq!(w.net.backend(0).unread(), 0);
}
