//! Certificates without hands: hosts with `cert = "acme"` get theirs from an ACME CA
//! (RFC 8555), validated by TLS-ALPN-01 (RFC 8737), which the terminator answers itself on
//! the port it serves. No port 80, no webroot, no DNS API.
//!
//! - [`store`]: the state directory: account, certificates and keys, written whole.
//! - [`challenges`]: the challenge certificates the terminator serves to `acme-tls/1`
//!   handshakes while an order waits for them.
//! - [`client`]: the daemon's task that orders, renews, and swaps new certificates in
//!   through the path a reload takes.
//!
//! Until a host's first certificate is issued, it is served with a self-signed placeholder
//! ([`placeholder`]), counted (`acme_placeholder_handshakes`).

pub mod challenges;
pub mod client;
pub mod store;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A self-signed certificate for `names` (and its key), served until the first order
/// completes: clients see a certificate no CA vouches for rather than none.
pub fn placeholder(
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sni ACME placeholder");
    self_signed(&params)
}

/// `params` self-signed with a new key: the certificate and its key (PKCS#8), as rustls
/// takes them. The placeholders and the TLS-ALPN-01 challenge certificates are made so.
pub fn self_signed(
    params: &rcgen::CertificateParams,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| rcgen::Error::PemError(e.to_owned()))?;
    Ok((vec![cert.der().clone()], key_der))
}
