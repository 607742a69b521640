//! An independent JA4 (FoxIO, `technical_details/JA4.md`) of a ClientHello, computed from its
//! bytes by the letter of the specification, to check sni-common's own (`sni_common::ja4`)
//! against: the records and the handshake message are read by rusticata's `tls-parser`, the
//! lists are sorted and hashed here with `sha2`. Nothing of sni-common's parser or of its JA4
//! module is used.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use tls_parser::{
    parse_tls_client_hello_extension, parse_tls_extension_unknown, parse_tls_message_handshake,
    parse_tls_raw_record, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType,
};

/// A ClientHello's fingerprint: the JA4 and the JA4_r it is hashed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `t13d1516h2_8daaf6152771_e5627efa2ab1`.
    pub ja4: String,
    /// JA4_r: JA4_a, then the sorted cipher suites, then the sorted extensions (server_name
    /// and ALPN left out) and, after `_`, the signature algorithms, unhashed.
    pub raw: String,
}

/// The JA4 of the ClientHello in `bytes`: TLS records from the first, their handshake payloads
/// joined until the ClientHello message is whole (a message may span records). Bytes after it
/// are ignored. Fails with what is wrong with the bytes.
pub fn reference(bytes: &[u8]) -> Result<Reference, String> {
    let message = handshake_message(bytes)?;
    let hello = match parse_tls_message_handshake(&message) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        Ok((_, other)) => return Err(format!("not a ClientHello: {other:?}")),
        Err(e) => return Err(format!("tls-parser cannot read the ClientHello: {e:?}")),
    };
    let ciphers: Vec<u16> = hello
        .ciphers
        .iter()
        .map(|c| c.0)
        .filter(|c| !is_grease(*c))
        .collect();
    let mut extensions = Vec::new();
    let mut sig_algs = Vec::new();
    let mut versions = Vec::new();
    let mut alpn: Option<Vec<u8>> = None;
    let mut rest = hello.ext.unwrap_or_default();
    while !rest.is_empty() {
        let (after, ext) = parse_tls_extension_unknown(rest)
            .map_err(|e| format!("extension block broken at {rest:02x?}: {e:?}"))?;
        let TlsExtension::Unknown(ty, _) = ext else {
            return Err(format!("tls-parser read an extension as {ext:?}"));
        };
        let raw = &rest[..rest.len() - after.len()];
        rest = after;
        let ty = ty.0;
        if is_grease(ty) {
            continue;
        }
        extensions.push(ty);
        let typed = || {
            parse_tls_client_hello_extension(raw)
                .map(|(_, e)| e)
                .map_err(|e| format!("extension {ty:04x} broken: {e:?}"))
        };
        match ty {
            0x000d => {
                let TlsExtension::SignatureAlgorithms(list) = typed()? else {
                    return Err("signature_algorithms read as something else".into());
                };
                // Only the first signature_algorithms extension counts.
                if sig_algs.is_empty() {
                    sig_algs = list.into_iter().filter(|a| !is_grease(*a)).collect();
                }
            }
            0x0010 if alpn.is_none() => {
                let TlsExtension::ALPN(list) = typed()? else {
                    return Err("ALPN read as something else".into());
                };
                alpn = Some(list.first().map(|p| p.to_vec()).unwrap_or_default());
            }
            0x002b => {
                let TlsExtension::SupportedVersions(list) = typed()? else {
                    return Err("supported_versions read as something else".into());
                };
                versions.extend(list.into_iter().map(|v| v.0).filter(|v| !is_grease(*v)));
            }
            _ => {}
        }
    }
    let version = versions.iter().copied().max().unwrap_or(hello.version.0);
    let sni = if extensions.contains(&0x0000) {
        'd'
    } else {
        'i'
    };
    let a = format!(
        "t{}{sni}{:02}{:02}{}",
        version_code(version),
        ciphers.len().min(99),
        extensions.len().min(99),
        alpn_code(alpn.as_deref().unwrap_or_default()),
    );
    let mut sorted_ciphers = ciphers;
    sorted_ciphers.sort_unstable();
    let mut sorted_exts: Vec<u16> = extensions
        .into_iter()
        .filter(|e| *e != 0x0000 && *e != 0x0010)
        .collect();
    sorted_exts.sort_unstable();
    let b_raw = hex_list(&sorted_ciphers);
    let mut c_raw = hex_list(&sorted_exts);
    if !sig_algs.is_empty() {
        c_raw.push('_');
        c_raw.push_str(&hex_list(&sig_algs));
    }
    let b = if sorted_ciphers.is_empty() {
        "000000000000".to_owned()
    } else {
        sha12(&b_raw)
    };
    let c = if sorted_exts.is_empty() {
        "000000000000".to_owned()
    } else {
        sha12(&c_raw)
    };
    Ok(Reference {
        ja4: format!("{a}_{b}_{c}"),
        raw: format!("{a}_{b_raw}_{c_raw}"),
    })
}

/// The handshake message the records in `bytes` start with: their payloads joined until the
/// message's 4-byte header and the length it states are there.
fn handshake_message(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if message.len() >= 4 {
            let len = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if message.len() >= 4 + len {
                message.truncate(4 + len);
                return Ok(message);
            }
        }
        if rest.is_empty() {
            return Err(format!(
                "the records end {} bytes into the handshake message",
                message.len()
            ));
        }
        let (after, record) =
            parse_tls_raw_record(rest).map_err(|e| format!("not a whole TLS record: {e:?}"))?;
        if record.hdr.record_type != TlsRecordType::Handshake {
            return Err(format!(
                "record of type {} before the ClientHello ended",
                record.hdr.record_type.0
            ));
        }
        message.extend_from_slice(record.data);
        rest = after;
    }
}

/// RFC 8701: `0x?a?a` with both bytes equal.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn version_code(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// First and last characters of the first ALPN value; their outer hex digits when either is
/// not an ASCII letter or digit; `00` for none.
fn alpn_code(value: &[u8]) -> String {
    match (value.first(), value.last()) {
        (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() => {
            format!("{}{}", *f as char, *l as char)
        }
        (Some(f), Some(l)) => {
            let first = format!("{f:02x}");
            let last = format!("{l:02x}");
            format!("{}{}", &first[..1], &last[1..])
        }
        _ => "00".to_owned(),
    }
}

fn hex_list(list: &[u16]) -> String {
    list.iter()
        .map(|v| format!("{v:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The first 12 hex digits of SHA-256 of `s`.
fn sha12(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::new();
    for b in &digest[..6] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-record ClientHello with these lists (GREASE added to each).
    fn hello(ciphers: &[u16], exts: &[u16], sig_algs: &[u16], alpn: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[9; 32]);
        body.push(0);
        let mut cs = vec![0x2a, 0x2a];
        for c in ciphers {
            cs.extend_from_slice(&c.to_be_bytes());
        }
        body.extend_from_slice(&(cs.len() as u16).to_be_bytes());
        body.extend_from_slice(&cs);
        body.extend_from_slice(&[1, 0]);
        let mut block = vec![0xda, 0xda, 0, 0];
        for &e in exts {
            let data: Vec<u8> = match e {
                0x0000 => {
                    let mut d = vec![0, 14, 0, 0, 11];
                    d.extend_from_slice(b"example.org");
                    d
                }
                0x000d => {
                    let mut l = vec![0x0a, 0x0a];
                    for a in sig_algs {
                        l.extend_from_slice(&a.to_be_bytes());
                    }
                    let mut d = (l.len() as u16).to_be_bytes().to_vec();
                    d.extend_from_slice(&l);
                    d
                }
                0x0010 => {
                    let mut d = ((alpn.len() + 1) as u16).to_be_bytes().to_vec();
                    d.push(alpn.len() as u8);
                    d.extend_from_slice(alpn);
                    d
                }
                0x002b => vec![6, 0x7a, 0x7a, 3, 4, 3, 3],
                _ => Vec::new(),
            };
            block.extend_from_slice(&e.to_be_bytes());
            block.extend_from_slice(&(data.len() as u16).to_be_bytes());
            block.extend_from_slice(&data);
        }
        body.extend_from_slice(&(block.len() as u16).to_be_bytes());
        body.extend_from_slice(&block);
        let len = (body.len() as u32).to_be_bytes();
        let mut hs = vec![1, len[1], len[2], len[3]];
        hs.extend_from_slice(&body);
        let mut out = vec![22, 3, 1];
        out.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        out.extend_from_slice(&hs);
        out
    }

    const CIPHERS: [u16; 15] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
        0x009c, 0x009d, 0x002f, 0x0035,
    ];
    const EXTS: [u16; 16] = [
        0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
        0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
    ];
    const SIG_ALGS: [u16; 8] = [
        0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
    ];

    #[test]
    fn the_specifications_example() {
        let r = reference(&hello(&CIPHERS, &EXTS, &SIG_ALGS, b"h2")).unwrap();
        assert_eq!(r.ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1", "{}", r.raw);
        assert_eq!(
            r.raw,
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,\
             cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_\
             0403,0804,0401,0503,0805,0501,0806,0601"
        );
        // Without signature algorithms, JA4_c hashes the extensions alone.
        let r = reference(&hello(&CIPHERS, &EXTS, &[], b"h2")).unwrap();
        assert_eq!(&r.ja4[24..], "6d807ffa2a79", "{}", r.raw);
    }

    #[test]
    fn a_message_split_across_records_reads_the_same() {
        let one = hello(&CIPHERS, &EXTS, &SIG_ALGS, b"h2");
        let hs = &one[5..];
        let mut split = Vec::new();
        for part in [&hs[..3], &hs[3..100], &hs[100..]] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        split.extend_from_slice(&[23, 3, 3, 0, 1, 0]); // what follows is ignored
        assert_eq!(reference(&split), reference(&one));
        assert!(reference(&split[..split.len() - 20]).is_err());
    }

    #[test]
    fn no_sni_no_alpn_odd_alpn_and_empty_lists() {
        let exts: Vec<u16> = EXTS.iter().copied().filter(|e| *e != 0).collect();
        let r = reference(&hello(&CIPHERS, &exts, &SIG_ALGS, b"h2")).unwrap();
        assert_eq!(&r.ja4[..10], "t13i1515h2");
        let exts: Vec<u16> = EXTS.iter().copied().filter(|e| *e != 0x10).collect();
        let r = reference(&hello(&CIPHERS, &exts, &SIG_ALGS, b"")).unwrap();
        assert_eq!(&r.ja4[..10], "t13d151500");
        let r = reference(&hello(&CIPHERS, &EXTS, &SIG_ALGS, &[0xab, b'x', 0xcd])).unwrap();
        assert_eq!(&r.ja4[..10], "t13d1516ad");
        let r = reference(&hello(&CIPHERS, &EXTS, &SIG_ALGS, b"")).unwrap();
        assert_eq!(&r.ja4[..10], "t13d151600", "an empty first value");
        let r = reference(&hello(&[], &[], &[], b"")).unwrap();
        assert_eq!(r.ja4, "t12i000000_000000000000_000000000000");
    }
}
