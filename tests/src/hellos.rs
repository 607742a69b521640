//! ClientHellos for the tests: real captures edited (an extension added, the name replaced,
//! lengths fixed up) and one made live by rustls with its post-quantum key share.

use std::sync::Arc;

/// An SSLv2-compatible ClientHello (RFC 5246 appendix E.2), as `openssl s_client` 1.0 and
/// some scanners send it: a two-byte record header (high bit set), CLIENT-HELLO, version
/// 3.1, three cipher specs, no session id, a 16-byte challenge.
pub fn sslv2_hello() -> Vec<u8> {
    let mut body = vec![1, 3, 1, 0, 9, 0, 0, 0, 16];
    body.extend_from_slice(&[0x00, 0x00, 0x2f, 0x00, 0x00, 0x35, 0x00, 0x00, 0xff]);
    body.extend_from_slice(&[0x5a; 16]);
    let mut out = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// `hello` (one record) with one more extension at the end, lengths fixed up.
pub fn with_extension(hello: &[u8], ty: u16, body: &[u8]) -> Vec<u8> {
    let mut out = hello.to_vec();
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    resize_hello(&mut out, 4 + body.len() as isize, &[]);
    out
}

/// Adds `delta` to the record, handshake and extensions-block lengths of a one-record
/// ClientHello, and to the 16-bit length fields at `inner` (offsets inside an extension).
pub fn resize_hello(out: &mut [u8], delta: isize, inner: &[usize]) {
    let adj16 = |b: &mut [u8], i: usize| {
        let v = u16::from_be_bytes([b[i], b[i + 1]]) as isize + delta;
        b[i..i + 2].copy_from_slice(&(v as u16).to_be_bytes());
    };
    for i in inner {
        adj16(out, *i);
    }
    adj16(out, 3); // record length
    let hs = u32::from_be_bytes([0, out[6], out[7], out[8]]) as isize + delta;
    out[6..9].copy_from_slice(&(hs as u32).to_be_bytes()[1..]);
    adj16(out, extensions_length_at(out));
}

/// Where the extensions length of a one-record ClientHello is: after the record and handshake
/// headers, version, random, session id, cipher suites and compression methods.
pub fn extensions_length_at(hello: &[u8]) -> usize {
    let mut i = 9 + 2 + 32;
    i += 1 + usize::from(hello[i]);
    i += 2 + usize::from(u16::from_be_bytes([hello[i], hello[i + 1]]));
    i += 1 + usize::from(hello[i]);
    i
}

/// `hello` with the `old_len`-byte name at `at` replaced by `name`, lengths fixed up.
pub fn rename(hello: &[u8], at: usize, name: &[u8], old_len: usize) -> Vec<u8> {
    let mut out = hello[..at].to_vec();
    out.extend_from_slice(name);
    out.extend_from_slice(&hello[at + old_len..]);
    // host_name length, server_name_list length and extension length precede the name.
    let delta = name.len() as isize - old_len as isize;
    resize_hello(&mut out, delta, &[at - 2, at - 5, at - 7]);
    out
}

/// A real capture (`openssl-sni.bin`, naming www.example.com) renamed to `name`.
pub fn named(name: &str) -> Vec<u8> {
    let base = crate::fixture("openssl-sni.bin");
    let at = base
        .windows(15)
        .position(|w| w.eq_ignore_ascii_case(b"www.example.com"))
        .unwrap();
    rename(&base, at, name.as_bytes(), 15)
}

/// A ClientHello made right now by rustls (aws-lc-rs) naming `name`, with its default key
/// shares: X25519MLKEM768 first, as browsers send.
pub fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A browser-size ClientHello naming `name`: the rustls post-quantum one padded (padding
/// extension, RFC 7685) to 1,850 bytes, about what Chrome sends with X25519MLKEM768, with
/// server_name moved to the end, as Chrome's extension shuffling often leaves it: the name is
/// then past the first 1,460-byte segment.
pub fn browser_size_hello(name: &str) -> Vec<u8> {
    let hello = rustls_hello(name);
    let pad = 1850usize.saturating_sub(hello.len() + 4);
    sni_last(&with_extension(&hello, 21, &vec![0; pad]))
}

/// `hello` (one record) with its server_name extension moved to the end.
pub fn sni_last(hello: &[u8]) -> Vec<u8> {
    reordered(hello, |exts| {
        assert!(
            exts.iter().any(|&(ty, _)| ty == 0),
            "the ClientHello has a server_name"
        );
        exts.sort_by_key(|&(ty, _)| ty == 0);
    })
}

/// `hello` (one record) with its extensions in a fixed order: sorted by type, server_name
/// moved to position `sni_at` among them (the last, if `sni_at` is past the end). rustls
/// shuffles its extensions for every ClientHello, as Chrome does, and how much of a
/// ClientHello the parser reads depends on where the name is: the bench fixes the order so
/// that its runs compare.
pub fn fixed_order(hello: &[u8], sni_at: usize) -> Vec<u8> {
    reordered(hello, |exts| {
        exts.sort_by_key(|&(ty, _)| ty);
        let sni = exts.iter().position(|&(ty, _)| ty == 0);
        let sni = exts.remove(sni.expect("the ClientHello has a server_name"));
        exts.insert(sni_at.min(exts.len()), sni);
    })
}

/// The ClientHellos the bench sends (`cargo xtask bench`, the xdp and ab sections), which
/// `tests/tests/steps.rs` counts the parser's steps over: the post-quantum one of rustls, its
/// name in the middle of its extensions (where a shuffle leaves it on average), and a
/// browser-size one (1,850 bytes) whose name is last, past its first segment. rustls shuffles
/// its extensions for every ClientHello: fixed orders, so that runs compare.
pub fn bench_hellos() -> (Vec<u8>, Vec<u8>) {
    let hello = rustls_hello("host1.bench.test");
    let hello = fixed_order(&hello, extension_types(&hello).len() / 2);
    let browser = fixed_order(&browser_size_hello("host2.bench.test"), usize::MAX);
    (hello, browser)
}

/// The extension types of `hello` (one record), in order.
pub fn extension_types(hello: &[u8]) -> Vec<u16> {
    extensions(hello).1.iter().map(|&(ty, _)| ty).collect()
}

/// `hello` (one record) with its extensions put in another order by `order`.
fn reordered(hello: &[u8], order: impl FnOnce(&mut Vec<(u16, &[u8])>)) -> Vec<u8> {
    let (exts_start, mut exts) = extensions(hello);
    order(&mut exts);
    let mut out = hello[..exts_start].to_vec();
    for (_, ext) in exts {
        out.extend_from_slice(ext);
    }
    out
}

/// Where the extensions of `hello` (one record) start, and each (type, whole extension).
fn extensions(hello: &[u8]) -> (usize, Vec<(u16, &[u8])>) {
    let exts_start = extensions_length_at(hello) + 2;
    let mut exts = Vec::new();
    let mut j = exts_start;
    while j < hello.len() {
        let ty = u16::from_be_bytes([hello[j], hello[j + 1]]);
        let len = usize::from(u16::from_be_bytes([hello[j + 2], hello[j + 3]]));
        exts.push((ty, &hello[j..j + 4 + len]));
        j += 4 + len;
    }
    (exts_start, exts)
}
