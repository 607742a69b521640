//! TLS-ALPN-01 challenges (RFC 8737) the terminator answers while an order waits for them:
//! for a name, a self-signed certificate carrying the `acmeIdentifier` extension (the
//! SHA-256 of the key authorization), served only to a ClientHello that names that name and
//! offers the ALPN `acme-tls/1` alone, and to nothing else. The ACME client (the daemon's task)
//! adds one before it tells the CA the challenge is ready and removes it when the
//! authorization is done; the workers look one up for each ClientHello that offers
//! `acme-tls/1`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, RwLock,
    },
};

use rustls::{server::Accepted, sign::CertifiedKey, ServerConfig};
use sni_common::HostKey;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The pending challenges, by name.
#[derive(Debug, Default)]
pub struct Challenges {
    /// Each name's challenge.
    by_name: RwLock<HashMap<HostKey, Entry>>,
    /// How many are pending: a ClientHello offering `acme-tls/1` looks further only then.
    pending: AtomicUsize,
    /// Challenge handshakes answered.
    pub answered: AtomicU64,
}

/// One name's challenge.
#[derive(Debug)]
struct Entry {
    digest: Vec<u8>,
    config: Arc<ServerConfig>,
    /// For an order of this process (else published in the state directory by another
    /// machine sharing it).
    own: bool,
}

/// Why a challenge could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// The name is not a host name.
    #[error("{0:?} is not a host name")]
    Name(String),
    /// rcgen could not make the certificate.
    #[error("challenge certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or the key.
    #[error("challenge TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl Challenges {
    /// Answers TLS-ALPN-01 for `name` with `digest` (SHA-256 of the key authorization) until
    /// [`Challenges::remove`].
    pub fn insert(&self, name: &str, digest: &[u8]) -> Result<(), ChallengeError> {
        self.put(name, digest, true)
    }

    fn put(&self, name: &str, digest: &[u8], own: bool) -> Result<(), ChallengeError> {
        let key =
            HostKey::from_name(name.as_bytes()).map_err(|_| ChallengeError::Name(name.into()))?;
        {
            let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
            if map
                .get(&key)
                .is_some_and(|e| e.digest == digest && e.own == own)
            {
                return Ok(());
            }
        }
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(digest));
        let (chain, key_der) = super::self_signed(&params)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki,
        // which refuses the critical acmeIdentifier extension that RFC 8737 requires.
        let signing_key = provider.key_provider.load_private_key(key_der)?;
        let certified = CertifiedKey::new(chain, signing_key);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(One(Arc::new(certified))));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        // Nothing of a challenge handshake is worth resuming.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        let entry = Entry {
            digest: digest.to_vec(),
            config: Arc::new(config),
            own,
        };
        if map.insert(key, entry).is_none() {
            self.pending.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Stops answering for `name`.
    pub fn remove(&self, name: &str) {
        let Ok(key) = HostKey::from_name(name.as_bytes()) else {
            return;
        };
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        if map.remove(&key).is_some() {
            self.pending.fetch_sub(1, Relaxed);
        }
    }

    /// The challenge configuration for this ClientHello: only when it offers `acme-tls/1`
    /// and names a name with a pending challenge.
    pub fn for_hello(&self, hello: &Accepted) -> Option<Arc<ServerConfig>> {
        if self.pending.load(Relaxed) == 0 {
            return None;
        }
        let hello = hello.client_hello();
        // RFC 8737 §3: the validation offers `acme-tls/1` as its only protocol.
        let mut alpn = hello.alpn()?;
        if alpn.next() != Some(ACME_TLS_ALPN) || alpn.next().is_some() {
            return None;
        }
        let key = HostKey::from_name(hello.server_name()?.as_bytes()).ok()?;
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        map.get(&key).map(|e| Arc::clone(&e.config))
    }

    /// Makes the challenges of other machines what the state directory publishes
    /// (`published`: name, digest); this process's own stay as they are.
    pub fn sync(&self, published: &[(String, Vec<u8>)]) {
        for (name, digest) in published {
            let own = HostKey::from_name(name.as_bytes())
                .ok()
                .and_then(|k| {
                    let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
                    map.get(&k).map(|e| e.own)
                })
                .unwrap_or(false);
            if own {
                continue;
            }
            if let Err(e) = self.put(name, digest, false) {
                tracing::debug!(name, error = %e, "published challenge not served");
            }
        }
        let keep: Vec<HostKey> = published
            .iter()
            .filter_map(|(n, _)| HostKey::from_name(n.as_bytes()).ok())
            .collect();
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|k, e| e.own || keep.contains(k));
        self.pending.fetch_sub(before - map.len(), Relaxed);
    }
}

/// The one certificate of a challenge.
#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for One {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A fresh rustls `Acceptor` fed `hello` (tests).
#[cfg(test)]
fn accepted(hello: &[u8]) -> Accepted {
    let mut a = rustls::server::Acceptor::default();
    let mut rd = hello;
    while !rd.is_empty() {
        a.read_tls(&mut rd).expect("read");
    }
    a.accept().ok().flatten().expect("accepted")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        // Only the ClientHello is wanted: no server certificate is ever checked.
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name"),
        )
        .expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn only_acme_tls_for_the_name_gets_the_challenge() {
        let c = Challenges::default();
        assert!(c
            .for_hello(&accepted(&hello("a.example", &[ACME_TLS_ALPN])))
            .is_none());
        c.insert("A.example", &[7; 32]).expect("insert");
        assert!(c
            .for_hello(&accepted(&hello("a.example", &[ACME_TLS_ALPN])))
            .is_some());
        // Another name, another protocol, or none: not the challenge.
        assert!(c
            .for_hello(&accepted(&hello("b.example", &[ACME_TLS_ALPN])))
            .is_none());
        assert!(c
            .for_hello(&accepted(&hello("a.example", &[b"h2"])))
            .is_none());
        // `acme-tls/1` beside another protocol is no validation (RFC 8737 §3).
        assert!(c
            .for_hello(&accepted(&hello("a.example", &[ACME_TLS_ALPN, b"h2"])))
            .is_none());
        assert!(c.for_hello(&accepted(&hello("a.example", &[]))).is_none());
        c.remove("a.example");
        assert!(c
            .for_hello(&accepted(&hello("a.example", &[ACME_TLS_ALPN])))
            .is_none());
        assert_eq!(c.pending.load(Relaxed), 0);
        // Another machine's, published in a shared state directory: served while published;
        // this process's own are not touched by the sync.
        let asks = |name: &str| c.for_hello(&accepted(&hello(name, &[ACME_TLS_ALPN])));
        c.insert("own.example", &[1; 32]).expect("insert");
        c.sync(&[("b.example".to_owned(), vec![9; 32])]);
        assert!(asks("b.example").is_some());
        c.sync(&[]);
        assert!(asks("b.example").is_none());
        assert!(asks("own.example").is_some());
        assert_eq!(c.pending.load(Relaxed), 1);
    }
}
