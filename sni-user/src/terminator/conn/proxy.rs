//! The PROXY protocol v2 header a host with `proxy_protocol = true` sends its backend first:
//! the client's address, and the TLS facts the backend cannot see (the HAProxy spec, §2.2):
//! `PP2_TYPE_AUTHORITY` (the SNI), `PP2_TYPE_ALPN`, and for terminated hosts `PP2_TYPE_SSL`
//! with the TLS version and, when the client gave a verified certificate, its subject CN.
//! Built with the `ppp` crate.

use std::net::{SocketAddr, SocketAddrV6};

use ppp::v2::{Addresses, Builder, Command, Protocol, Type, Version, WriteToHeader as _};
use rustls::server::ServerConnection;

/// `PP2_CLIENT_SSL`: the client connected over TLS.
const CLIENT_SSL: u8 = 0x01;
/// `PP2_CLIENT_CERT_CONN`: it gave a certificate on this connection.
const CLIENT_CERT_CONN: u8 = 0x02;
/// `PP2_CLIENT_CERT_SESS`: it gave one in the TLS session this connection belongs to.
const CLIENT_CERT_SESS: u8 = 0x04;

/// What the backend learns besides the addresses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The ClientHello's server_name (`PP2_TYPE_AUTHORITY`).
    pub authority: Option<&'a [u8]>,
    /// The application protocol (`PP2_TYPE_ALPN`).
    pub alpn: Option<&'a [u8]>,
    /// The TLS the terminator spoke with the client (`PP2_TYPE_SSL`); none for passthrough.
    pub tls: Option<TlsFacts>,
}

/// `PP2_TYPE_SSL`'s content.
#[derive(Debug, PartialEq, Eq)]
pub struct TlsFacts {
    /// `PP2_SUBTYPE_SSL_VERSION`, as OpenSSL names it (`TLSv1.3`).
    pub version: &'static str,
    /// Whether the client gave a certificate (which rustls verified, or the handshake would
    /// have failed) on this connection, or in the session it resumed.
    pub cert: CertGiven,
    /// `PP2_SUBTYPE_SSL_CN`: the certificate's subject common name.
    pub cn: Option<String>,
}

/// When the client gave its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertGiven {
    /// Never.
    No,
    /// In this handshake.
    ThisConnection,
    /// In the handshake of the session this one resumed.
    ResumedSession,
}

impl TlsFacts {
    /// What a finished handshake tells; `verifies`: the host checks client certificates
    /// (else a certificate a resumed session carries counts for nothing).
    pub fn of(conn: &ServerConnection, verifies: bool) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let leaf = conn
            .peer_certificates()
            .and_then(<[_]>::first)
            .filter(|_| verifies);
        let cert = match (leaf, conn.handshake_kind()) {
            (None, _) => CertGiven::No,
            (Some(_), Some(rustls::HandshakeKind::Resumed)) => CertGiven::ResumedSession,
            (Some(_), _) => CertGiven::ThisConnection,
        };
        let cn = leaf.and_then(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let cn = cert.subject().iter_common_name().next()?;
            cn.as_str().ok().map(str::to_owned)
        });
        Self { version, cert, cn }
    }

    /// The value of the `PP2_TYPE_SSL` TLV: client flags, verify result, sub-TLVs (None
    /// only if a sub-TLV outgrows its length field, which a version and a CN cannot).
    fn value(&self) -> Option<Vec<u8>> {
        let client = CLIENT_SSL
            | match self.cert {
                CertGiven::No => 0,
                CertGiven::ThisConnection => CLIENT_CERT_CONN | CLIENT_CERT_SESS,
                CertGiven::ResumedSession => CLIENT_CERT_SESS,
            };
        // Zero only for a certificate given and verified (§2.2.5).
        let verify: u32 = u32::from(self.cert == CertGiven::No);
        let mut v = vec![client];
        v.extend_from_slice(&verify.to_be_bytes());
        v.extend(
            (Type::SSLVersion, self.version.as_bytes())
                .to_bytes()
                .ok()?,
        );
        if let Some(cn) = &self.cn {
            v.extend((Type::SSLCommonName, cn.as_bytes()).to_bytes().ok()?);
        }
        Some(v)
    }
}

/// The header for a connection from `src` to `dst` (TCP; IPv4 when both are, else IPv6 with
/// IPv4 mapped) carrying `facts`. `None` only if the TLVs overflow the header's length field,
/// which names of at most 255 bytes and a certificate's CN cannot.
pub fn header(src: SocketAddr, dst: SocketAddr, facts: &Facts<'_>) -> Option<Vec<u8>> {
    let addresses: Addresses = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => (SocketAddr::V4(s), SocketAddr::V4(d)).into(),
        (s, d) => (SocketAddr::V6(v6(s)), SocketAddr::V6(v6(d))).into(),
    };
    let mut b = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses);
    if let Some(name) = facts.authority {
        b = b.write_tlv(Type::Authority, name).ok()?;
    }
    if let Some(alpn) = facts.alpn {
        b = b.write_tlv(Type::ALPN, alpn).ok()?;
    }
    if let Some(tls) = &facts.tls {
        b = b.write_tlv(Type::SSL, &tls.value()?).ok()?;
    }
    b.build().ok()
}

fn v6(a: SocketAddr) -> SocketAddrV6 {
    match a {
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

    #[test]
    fn addresses_alone() {
        let h = header(
            "192.0.2.1:40000".parse().expect("addr"),
            "192.0.2.2:443".parse().expect("addr"),
            &Facts::default(),
        )
        .expect("header");
        let mut want = SIGNATURE.to_vec();
        want.extend([0x21, 0x11, 0, 12, 192, 0, 2, 1, 192, 0, 2, 2]);
        want.extend(40000u16.to_be_bytes());
        want.extend(443u16.to_be_bytes());
        assert_eq!(h, want);
        let h6 = header(
            "[2001:db8::1]:1".parse().expect("addr"),
            "192.0.2.2:2".parse().expect("addr"),
            &Facts::default(),
        )
        .expect("header");
        assert_eq!(h6.len(), 16 + 36);
        assert_eq!(h6[13], 0x21);
        // The IPv4 side, mapped.
        assert_eq!(
            &h6[32..48],
            &"::ffff:192.0.2.2"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets()
        );
    }

    #[test]
    fn every_tlv_byte_for_byte() {
        let h = header(
            "192.0.2.1:40000".parse().expect("addr"),
            "192.0.2.2:443".parse().expect("addr"),
            &Facts {
                authority: Some(b"a.example"),
                alpn: Some(b"h2"),
                tls: Some(TlsFacts {
                    version: "TLSv1.3",
                    cert: CertGiven::ThisConnection,
                    cn: Some("client one".into()),
                }),
            },
        )
        .expect("header");
        let mut tlvs = vec![0x02, 0, 9];
        tlvs.extend(b"a.example");
        tlvs.extend([0x01, 0, 2]);
        tlvs.extend(b"h2");
        let mut ssl = vec![0x07, 0, 0, 0, 0, 0x21, 0, 7];
        ssl.extend(b"TLSv1.3");
        ssl.extend([0x22, 0, 10]);
        ssl.extend(b"client one");
        tlvs.push(0x20);
        tlvs.extend(u16::try_from(ssl.len()).expect("short").to_be_bytes());
        tlvs.extend(ssl);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]) as usize, 12 + tlvs.len());
        assert_eq!(&h[28..], &tlvs[..]);
        // And an independent reader agrees.
        let parsed = ppp::v2::Header::try_from(&h[..]).expect("parses");
        let kinds: Vec<u8> = parsed.tlvs().map(|t| t.expect("tlv").kind).collect();
        assert_eq!(kinds, vec![0x02, 0x01, 0x20]);
    }

    #[test]
    fn no_certificate_is_not_verified() {
        let t = TlsFacts {
            version: "TLSv1.2",
            cert: CertGiven::No,
            cn: None,
        };
        assert_eq!(t.value().expect("value")[..5], [0x01, 0, 0, 0, 1]);
        let resumed = TlsFacts {
            cert: CertGiven::ResumedSession,
            ..t
        };
        assert_eq!(resumed.value().expect("value")[..5], [0x05, 0, 0, 0, 0]);
    }
}
