//! Terminated connections with a real rustls client: relay, built-in backend, orderly end.

use super::*;

#[test]
fn terminate_with_the_builtin_backend_to_an_orderly_end() {
    let mut w = World::new();
    w.classify("u.example", U, kind::CONFIGURED);
    let (mut conn, end) = w.open();
    let mut client = Client::new("u.example", end);
    client.handshake(&mut conn, &w);
    assert_eq!(w.handshakes(U), 1);
    assert_eq!(w.global.xdp_agreed.load(Relaxed), 1);
    assert_eq!(w.net.dialled(), 0, "the built-in backend is not dialled");
    client
        .tls
        .writer()
        .write_all(b"GET / HTTP/1.1\r\nhost: u.example\r\n\r\n")
        .expect("write");
    client.exchange();
    settle(&mut conn, &w);
    client.exchange();
    let text = String::from_utf8(client.plaintext()).expect("utf-8");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"u.example\""), "{text}");
    // The response ended the backend's stream: close_notify and FIN reached the client.
    assert!(client.end.at_eof());
    client.tls.send_close_notify();
    client.exchange();
    client.end.shutdown_write().expect("shut");
    assert_eq!(settle(&mut conn, &w), Pumped::Done);
    assert_eq!(w.all_failures(), 0);
    assert_eq!(w.active(U), 0);
}

#[test]
fn terminate_relays_plaintext_and_idle_buffers_hold_no_memory() {
    let w = World::new();
    let (mut conn, end) = w.open();
    let mut client = Client::new("t.example", end);
    client.handshake(&mut conn, &w);
    client
        .tls
        .writer()
        .write_all(b"hello backend")
        .expect("write");
    client.exchange();
    settle(&mut conn, &w);
    assert_eq!(w.net.backend(0).drain_all(), b"hello backend");
    w.net.backend(0).send(b"hello client");
    settle(&mut conn, &w);
    client.exchange();
    assert_eq!(client.plaintext(), b"hello client");
    let State::Terminate(tls) = &conn.state else {
        panic!("not relaying");
    };
    assert_eq!(
        tls.relay.up.buf.allocated() + tls.relay.down.buf.allocated(),
        0
    );
    let counters = &w.routes.routes[T].counters;
    assert_eq!(counters.bytes_to_backend.load(Relaxed), 13);
    assert_eq!(counters.bytes_to_client.load(Relaxed), 12);
}
