//! The terminator's routing table: which host a ClientHello's name reaches, with that host's
//! TLS configuration and backend.
//!
//! Lookup order: the exact name, then a wildcard one label up (`*.example.com` covers
//! `a.example.com`, not `a.b.example.com`, `example.com` nor `.example.com`), then the
//! default host, unless `[default] reject = true`. The first two steps are
//! [`sni_common::pattern::find`], the classifier's rule, so both sides name the same host.
//! Every host gets its own `ServerConfig`; they share one ticket key and one session cache,
//! which costs nothing per host (with their own, 100,000 hosts took gigabytes). A session
//! still never resumes under another name: rustls resumes only when the ClientHello names the
//! name the session was made for (RFC 6066 §3), and a name always routes to the same host.
//! With `ticket_keys`, the ticket keys come from that file instead ([`TicketKeys`]), and each
//! host's tickets are bound to its certificate.

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{
        pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName,
        UnixTime,
    },
    server::{
        danger::ClientCertVerifier, ResolvesServerCert, ServerSessionMemoryCache,
        WebPkiClientVerifier,
    },
    sign::CertifiedKey,
    RootCertStore, ServerConfig,
};

use sni_common::{pattern, HostKey, HostPattern};

use crate::{
    acme::store::Store,
    config::{Backend, ClientAuth, ClientAuthConfig, Config, HostMode},
    terminator::{counters::HostCounters, ticket_keys::TicketKeys},
};

/// Sessions kept for stateful resumption (TLS 1.2 clients without tickets), all hosts
/// together.
const SESSION_CACHE: usize = 32_768;

/// What every host's `ServerConfig` shares; kept across reloads, so that sessions made before
/// a reload still resume after it.
#[derive(Clone)]
struct Shared {
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    /// `ticket_keys`, read at start and at every reload: used instead of `ticketer`.
    ticket_keys: Option<Arc<TicketKeys>>,
}

impl Shared {
    /// The ticketer of a host serving `certified`: the file's keys, bound to its leaf
    /// certificate, or else the process's own key.
    fn ticketer_for(&self, certified: &CertifiedKey) -> Arc<dyn rustls::server::ProducesTickets> {
        match &self.ticket_keys {
            Some(keys) => {
                keys.for_certificate(certified.cert.first().map_or(&[][..], |c| c.as_ref()))
            }
            None => self.ticketer.clone(),
        }
    }
}

/// One routable host.
#[derive(Debug)]
pub struct Route {
    /// The host's first configured name (or `default`), used in counters and logs.
    pub label: String,
    /// TLS configuration (None for passthrough).
    pub tls: Option<Arc<ServerConfig>>,
    /// Where its traffic goes.
    pub backend: Backend,
    /// Terminate or passthrough.
    pub mode: HostMode,
    /// Backends chosen by ALPN (`[[host.route]]`), first match wins; the rest goes to
    /// `backend`.
    pub alpn_routes: Vec<AlpnRoute>,
    /// Whether a PROXY v2 header goes first to the backend.
    pub proxy_protocol: bool,
    /// The names it answers to, as configured (empty for the default).
    pub names: Vec<String>,
    /// Its leaf certificate's validity end, Unix seconds (None for passthrough).
    pub not_after: Option<i64>,
    /// A hash of its leaf certificate (None for passthrough): a reload compares them.
    cert_id: Option<u64>,
    /// Its client-certificate check (mTLS), when it has `client_ca`.
    pub client_auth: Option<ClientCheck>,
    /// Where its certificate came from.
    pub source: CertSource,
    /// Its counters: kept across reloads for a host that keeps its label.
    pub counters: Arc<HostCounters>,
}

/// Where a host's certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Passthrough: none.
    None,
    /// The `cert` and `key` files.
    File,
    /// Issued by ACME, read from the state directory.
    Acme,
    /// `cert = "acme"` before its first certificate: a self-signed placeholder.
    AcmePlaceholder,
}

/// `[[host.route]]`: a backend for the connections whose ALPN is one of `alpn`.
#[derive(Debug)]
pub struct AlpnRoute {
    /// The protocols it takes.
    pub alpn: Vec<Vec<u8>>,
    /// Where they go.
    pub backend: Backend,
    /// Connections it took: kept across reloads while its host and protocols stay.
    pub connections: Arc<std::sync::atomic::AtomicU64>,
}

impl AlpnRoute {
    /// Its protocols as written in the config, comma-separated (`h2,h2c`).
    pub fn alpn_text(&self) -> String {
        let names: Vec<_> = self
            .alpn
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        names.join(",")
    }
}

/// Where a connection of a host goes, by its ALPN.
#[derive(Debug, PartialEq, Eq)]
pub struct Pick<'a> {
    /// The backend.
    pub backend: &'a Backend,
    /// The protocol that chose it (for the PROXY header): the negotiated one of a terminated
    /// host; the one a route matched (else the client's first) of a passthrough host.
    pub alpn: Option<&'a [u8]>,
    /// Which `[[host.route]]` chose it (None: the host's own backend).
    pub route: Option<usize>,
}

impl Pick<'_> {
    /// Counts the connection for the `[[host.route]]` that took it, if one did.
    pub fn count(&self, route: &Route) {
        if let Some(r) = self.route.and_then(|i| route.alpn_routes.get(i)) {
            r.connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Route {
    /// A terminated connection's backend, by the protocol rustls negotiated.
    pub fn pick_negotiated<'a>(&'a self, negotiated: Option<&'a [u8]>) -> Pick<'a> {
        let found = negotiated.and_then(|p| {
            self.alpn_routes
                .iter()
                .position(|r| r.alpn.iter().any(|a| a == p))
        });
        self.pick(found, negotiated)
    }

    /// A passthrough connection's backend, by the protocols its ClientHello offers: the
    /// first route that lists any of them.
    pub fn pick_offered<'a>(&'a self, offered: &'a [Vec<u8>]) -> Pick<'a> {
        let found = self.alpn_routes.iter().enumerate().find_map(|(i, r)| {
            offered
                .iter()
                .find(|o| r.alpn.contains(o))
                .map(|o| (i, o.as_slice()))
        });
        match found {
            Some((i, matched)) => self.pick(Some(i), Some(matched)),
            None => self.pick(None, offered.first().map(Vec::as_slice)),
        }
    }

    fn pick<'a>(&'a self, route: Option<usize>, alpn: Option<&'a [u8]>) -> Pick<'a> {
        Pick {
            backend: route
                .and_then(|i| self.alpn_routes.get(i))
                .map_or(&self.backend, |r| &r.backend),
            alpn,
            route,
        }
    }
}

/// A host's client-certificate check (mTLS): rustls' [`WebPkiClientVerifier`] over the
/// host's `client_ca`, with its `client_crl`s.
///
/// Revocation: with CRLs, every certificate of the client's chain below the CA file's (the
/// client certificate, and any intermediate it sends) must be covered by a CRL of its
/// issuer, and a certificate whose status no CRL gives is refused (`unknown_ca`), as with
/// nginx's `ssl_crl` (OpenSSL's `CRL_CHECK_ALL`). So a CRL from the CA that issued the
/// client certificate is always enforced, and a missing or wrong CRL fails closed instead
/// of letting revoked certificates through. A CRL past its `nextUpdate` is still used
/// (rustls' default): an old list still names the certificates it revoked. Without CRLs,
/// no revocation is checked.
#[derive(Debug)]
pub struct ClientCheck {
    /// Required or optional.
    pub mode: ClientAuth,
    /// The CA file.
    pub ca: std::path::PathBuf,
    /// How many CRLs (over all `client_crl` files) are checked.
    pub crls: usize,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCheck {
    /// Whether the client certificate chain of a *resumed* session (as rustls kept it from
    /// the full handshake) passes this check now. rustls does not verify again on
    /// resumption, and the session may have been made under another CA or CRL (before a
    /// reload, or by another server sharing the ticket key), or the certificate may have
    /// expired since.
    pub fn admits_resumed(&self, chain: Option<&[CertificateDer<'_>]>) -> bool {
        match chain.and_then(<[_]>::split_first) {
            None => self.mode == ClientAuth::Optional,
            Some((leaf, intermediates)) => self
                .verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .is_ok(),
        }
    }
}

/// The whole table.
#[derive(Debug)]
pub struct Routes {
    /// Hosts in configuration order; the default, if any, last. A connection holds its
    /// route's `Arc`, so a reload never changes the host of an open connection.
    pub routes: Vec<Arc<Route>>,
    /// Every configured name by its [`HostPattern::key`] (a wildcard as written,
    /// `*.example.com`), as the kernel's host table holds them.
    names: HashMap<HostKey, usize>,
    default: Option<usize>,
    /// The classifier's host slots: `by_slot[s]` is the route of slot `s` (a flow's record
    /// names its host by slot).
    by_slot: Vec<Option<usize>>,
    /// The session cache and ticket key every host's config uses.
    shared: Shared,
    /// Whether `shared` came from the table this one was reloaded from.
    kept_sessions: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared { .. }")
    }
}

/// A certificate or key problem, naming the file and the host.
#[derive(Debug, thiserror::Error)]
#[error("{host}: {file}: {message}")]
pub struct CertError {
    /// The host (its first name, or `default`).
    pub host: String,
    /// The config field it comes from (`host[2].cert`, `default.key`), for `check`.
    pub field: String,
    /// The file.
    pub file: String,
    /// What is wrong.
    pub message: String,
}

impl Routes {
    /// Loads every certificate and key of `config` and builds the table. Host slots are
    /// the configuration order (slot `i + 1` is `[[host]]` `i`) until [`Routes::set_slots`].
    pub fn load(config: &Config) -> Result<Self, CertError> {
        Self::load_with(config, None)
    }

    /// As [`Routes::load`], for a reload from `previous`. When no certificate of a host
    /// that stays changed, the session cache and ticket key go on, so clients resume across
    /// the reload. A changed certificate (a rotation, perhaps after a key compromise) starts
    /// a new ticket key and cache: no session made under the old certificate resumes. With
    /// `ticket_keys`, the file is read again and its keys stay the fleet's; tickets are bound
    /// to their host's certificate, so those of a changed certificate no longer decrypt.
    pub fn reload(config: &Config, previous: &Routes) -> Result<Self, CertError> {
        Self::load_with(config, Some(previous))
    }

    /// Whether this table resumes the sessions of the one it was reloaded from.
    pub fn kept_sessions(&self) -> bool {
        self.kept_sessions
    }

    /// The keys of `ticket_keys`, when the config names a file.
    pub fn ticket_keys(&self) -> Option<&Arc<TicketKeys>> {
        self.shared.ticket_keys.as_ref()
    }

    fn load_with(config: &Config, previous: Option<&Routes>) -> Result<Self, CertError> {
        let provider = previous.map_or_else(
            || Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            |p| p.shared.provider.clone(),
        );
        let mut routes = Vec::new();
        // Routes that terminate TLS: their index, key and ALPN; configs are made once the
        // ticket key is chosen.
        let mut keys = Vec::new();
        let mut names = HashMap::new();
        for (h, host) in config.hosts.iter().enumerate() {
            let label = host.label().to_owned();
            let at = |f: &str| (label.as_str(), format!("host[{h}].{f}"));
            let mut client_auth = None;
            let mut source = CertSource::None;
            let (cert_id, not_after) = match host.mode {
                HostMode::Terminate => {
                    let (certified, not_after, from) = match &config.acme {
                        Some(acme) if host.is_acme() => {
                            acme_certificate(&provider, &Store::new(&acme.state_dir), host, &at)?
                        }
                        _ => {
                            let (cert, key) = cert_and_key(at("cert"), &host.cert, &host.key)?;
                            let (certified, not_after) =
                                load_certified_key(&provider, at("cert"), at("key"), cert, key)?;
                            for name in &host.names {
                                check_name(&certified, name).map_err(|message| CertError {
                                    host: label.clone(),
                                    field: format!("host[{h}].names"),
                                    file: cert.display().to_string(),
                                    message,
                                })?;
                            }
                            (certified, not_after, CertSource::File)
                        }
                    };
                    source = from;
                    // A placeholder is made anew at each load: it counts as the same
                    // certificate, so that it rotates no session cache or ticket key.
                    let id = if from == CertSource::AcmePlaceholder {
                        PLACEHOLDER_ID
                    } else {
                        cert_id(&certified)
                    };
                    client_auth = host
                        .client_auth()
                        .map(|c| client_check(&provider, &at, c))
                        .transpose()?;
                    let verifier = client_auth.as_ref().map(|c| c.verifier.clone());
                    keys.push((routes.len(), certified, host.alpn.clone(), verifier));
                    (Some(id), Some(not_after))
                }
                HostMode::Passthrough => (None, None),
            };
            let index = routes.len();
            // Validated by Config::validate, so every name is a pattern.
            for pattern in host.patterns() {
                names.insert(*pattern.key(), index);
            }
            let alpn_routes = host
                .routes
                .iter()
                .enumerate()
                .map(|(r, route)| {
                    Ok(AlpnRoute {
                        alpn: route.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
                        backend: backend(at(&format!("route[{r}].backend")), Some(&route.backend))?,
                        connections: Arc::default(),
                    })
                })
                .collect::<Result<_, CertError>>()?;
            routes.push(Route {
                backend: backend(at("backend"), host.backend.as_deref())?,
                label,
                tls: None,
                mode: host.mode,
                alpn_routes,
                proxy_protocol: host.proxy_protocol,
                names: host.names.clone(),
                not_after,
                cert_id,
                client_auth,
                source,
                counters: Arc::default(),
            });
        }
        let default = if config.default.reject {
            None
        } else {
            let at = |f: &str| ("default", format!("default.{f}"));
            let (cert, key) = cert_and_key(at("cert"), &config.default.cert, &config.default.key)?;
            let (certified, not_after) =
                load_certified_key(&provider, at("cert"), at("key"), cert, key)?;
            let id = cert_id(&certified);
            let client_auth = config
                .default
                .client_auth()
                .map(|c| client_check(&provider, &at, c))
                .transpose()?;
            let verifier = client_auth.as_ref().map(|c| c.verifier.clone());
            keys.push((routes.len(), certified, Vec::new(), verifier));
            routes.push(Route {
                backend: backend(at("backend"), config.default.backend.as_deref())?,
                label: "default".to_owned(),
                tls: None,
                mode: HostMode::Terminate,
                alpn_routes: Vec::new(),
                proxy_protocol: false,
                names: Vec::new(),
                not_after: Some(not_after),
                cert_id: Some(id),
                client_auth,
                source: CertSource::File,
                counters: Arc::default(),
            });
            Some(routes.len() - 1)
        };
        let rotated = |p: &Routes| {
            routes.iter().any(|r| {
                p.routes
                    .iter()
                    .any(|q| q.label == r.label && q.cert_id.is_some() && q.cert_id != r.cert_id)
            })
        };
        // Read at every load, so a reload takes the file as it is now; its tickets are bound
        // to each host's certificate, so a rotated certificate's sessions end with it.
        let ticket_keys = match &config.ticket_keys {
            Some(path) => Some(TicketKeys::load(path).map_err(|e| CertError {
                host: "ticket_keys".to_owned(),
                field: "ticket_keys".to_owned(),
                file: e.file.display().to_string(),
                message: match e.line {
                    Some(l) => format!("line {l}: {}", e.message),
                    None => e.message,
                },
            })?),
            None => None,
        };
        let (shared, kept_sessions) = match previous {
            Some(p) if !rotated(p) => (
                Shared {
                    ticket_keys,
                    ..p.shared.clone()
                },
                true,
            ),
            _ => (
                Shared {
                    ticket_keys,
                    provider,
                    sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
                    ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                        CertError {
                            host: String::new(),
                            field: String::new(),
                            file: String::new(),
                            message: format!("ticketer: {e}"),
                        }
                    })?,
                },
                false,
            ),
        };
        for (i, certified, alpn, verifier) in keys {
            if let Some(route) = routes.get_mut(i) {
                route.tls = Some(server_config(&shared, certified, &alpn, verifier)?);
            }
        }
        let by_slot = std::iter::once(None)
            .chain((0..config.hosts.len()).map(Some))
            .collect();
        Ok(Self {
            routes: routes.into_iter().map(Arc::new).collect(),
            names,
            default,
            by_slot,
            shared,
            kept_sessions,
        })
    }

    /// Takes the classifier's slot of each host (by label), for reading flow records.
    pub fn set_slots(&mut self, slots: &crate::kernel::slots::Slots) {
        let mut by_slot = vec![None; slots.capacity() as usize];
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(s) = slots.get(&route.label) {
                if let Some(entry) = by_slot.get_mut(s as usize) {
                    *entry = Some(i);
                }
            }
        }
        self.by_slot = by_slot;
    }

    /// The route of the classifier's host slot `slot`.
    pub fn by_slot(&self, slot: u32) -> Option<usize> {
        self.by_slot.get(slot as usize).copied().flatten()
    }

    /// Gives each route the counters of the route of the same label in `previous`, so that a
    /// host's counters go on across a reload.
    pub fn adopt_counters(&mut self, previous: &Routes) {
        let old: HashMap<&str, &Arc<HostCounters>> = previous
            .routes
            .iter()
            .map(|r| (r.label.as_str(), &r.counters))
            .collect();
        for route in &mut self.routes {
            if let (Some(counters), Some(route)) =
                (old.get(route.label.as_str()), Arc::get_mut(route))
            {
                route.counters = Arc::clone(counters);
                // A route by ALPN keeps its count while it takes the same protocols.
                let before = previous.routes.iter().find(|r| r.label == route.label);
                for alpn_route in &mut route.alpn_routes {
                    if let Some(kept) = before
                        .into_iter()
                        .flat_map(|r| &r.alpn_routes)
                        .find(|r| r.alpn == alpn_route.alpn)
                    {
                        alpn_route.connections = Arc::clone(&kept.connections);
                    }
                }
            }
        }
    }

    /// The route for a ClientHello naming `sni`, as the shared parser normalised it (None:
    /// reject).
    pub fn resolve(&self, sni: Option<&HostKey>) -> Option<usize> {
        sni.and_then(|name| pattern::find(name, |k| self.names.get(k).copied()))
            .or(self.default)
    }
}

/// The [`cert_id`] every ACME placeholder has.
const PLACEHOLDER_ID: u64 = 0;

/// FNV-1a of the leaf certificate's DER.
fn cert_id(certified: &CertifiedKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in certified.cert.first().map_or(&[][..], |c| c.as_ref()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where an error is: the host's label and the config field.
type At<'a> = (&'a str, String);

fn cert_and_key<'a>(
    at: At<'_>,
    cert: &'a Option<std::path::PathBuf>,
    key: &'a Option<std::path::PathBuf>,
) -> Result<(&'a Path, &'a Path), CertError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok((c, k)),
        _ => Err(CertError {
            host: at.0.to_owned(),
            field: at.1,
            file: String::new(),
            message: "cert and key are both required".into(),
        }),
    }
}

/// The backend of a host (`builtin` when none is given).
fn backend(at: At<'_>, spec: Option<&str>) -> Result<Backend, CertError> {
    spec.unwrap_or("builtin")
        .parse()
        .map_err(|message| CertError {
            host: at.0.to_owned(),
            field: at.1,
            file: String::new(),
            message,
        })
}

/// Reads a certificate chain and its key, checks that they match, and returns them with the
/// leaf's validity end (Unix seconds).
fn load_certified_key(
    provider: &CryptoProvider,
    cert_at: At<'_>,
    key_at: At<'_>,
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, i64), CertError> {
    let err = |at: &At<'_>, file: &Path, message: String| CertError {
        host: at.0.to_owned(),
        field: at.1.clone(),
        file: file.display().to_string(),
        message,
    };
    let cert_pem = fs::read(cert).map_err(|e| err(&cert_at, cert, format!("cannot read: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(&cert_at, cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(err(&cert_at, cert, "holds no CERTIFICATE block".into()));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, x509)| x509.validity().not_after.timestamp())
        .map_err(|e| err(&cert_at, cert, format!("unparsable leaf certificate: {e}")))?;
    let key_pem = fs::read(key).map_err(|e| err(&key_at, key, format!("cannot read: {e}")))?;
    warn_if_world_readable(key);
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&key_at, key, format!("not a PEM private key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| err(&key_at, key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "it is the key of another certificate".to_owned()
            }
            other => other.to_string(),
        };
        err(
            &key_at,
            key,
            format!("does not match {}: {why}", cert.display()),
        )
    })?;
    Ok((Arc::new(certified), not_after))
}

/// The certificate of a `cert = "acme"` host: the one issued last, from the state
/// directory, when it covers every name of the host; else a self-signed placeholder until
/// the ACME task has ordered one (a stored certificate that does not load or lacks a name
/// the config has since gained is logged, and ordered again).
fn acme_certificate<'a>(
    provider: &CryptoProvider,
    store: &Store,
    host: &crate::config::HostConfig,
    at: &impl Fn(&str) -> At<'a>,
) -> Result<(Arc<CertifiedKey>, i64, CertSource), CertError> {
    if let Some(cert) = store.issued(host.label()) {
        let issued = load_certified_key(provider, at("cert"), at("key"), &cert, &cert)
            .map_err(|e| e.to_string())
            .and_then(|(certified, not_after)| {
                host.names
                    .iter()
                    .try_for_each(|n| check_name(&certified, n))
                    .map(|()| (certified, not_after))
            });
        match issued {
            Ok((certified, not_after)) => return Ok((certified, not_after, CertSource::Acme)),
            Err(why) => tracing::warn!(
                host = host.label(),
                file = %cert.display(),
                error = %why,
                "ACME certificate not used; a placeholder until a new one is issued"
            ),
        }
    }
    let (chain, key) = crate::acme::placeholder(&host.names).map_err(|e| CertError {
        host: at("").0.to_owned(),
        field: at("cert").1,
        file: String::new(),
        message: format!("ACME placeholder: {e}"),
    })?;
    let not_after = chain
        .first()
        .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
        .map_or(0, |(_, x509)| x509.validity().not_after.timestamp());
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| CertError {
        host: at("").0.to_owned(),
        field: at("cert").1,
        file: String::new(),
        message: format!("ACME placeholder: {e}"),
    })?;
    Ok((Arc::new(certified), not_after, CertSource::AcmePlaceholder))
}

fn warn_if_world_readable(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(key) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(key = %key.display(), "private key is world-readable");
        }
    }
}

/// Checks that the leaf certificate covers `name` (a wildcard name must be covered by a
/// wildcard certificate: any label under it must be valid).
fn check_name(certified: &CertifiedKey, name: &str) -> Result<(), String> {
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| "empty chain".to_owned())?;
    covers(leaf, name)
}

/// Whether the certificate `leaf` covers the configured name `name` (a wildcard name must be
/// covered by a wildcard certificate), as a client's check would decide: one rule for the
/// configured certificates and for the ACME task's look at its own.
pub fn covers(leaf: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let pattern = HostPattern::parse(name.as_bytes())
        .map_err(|e| format!("{name:?} is not a host name ({e:?})"))?;
    let key = String::from_utf8_lossy(pattern.key().as_bytes());
    let probe = match pattern.parent() {
        Some(parent) => format!("sni-wildcard-probe.{}", String::from_utf8_lossy(parent)),
        None => key.into_owned(),
    };
    let server_name =
        ServerName::try_from(probe).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("unparsable leaf certificate: {e}"))?;
    ee.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| format!("the certificate does not cover {name:?}"))
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Reads a host's client CA and CRLs and builds its verifier (`at` names the host and a
/// field of its table, for errors: `host[2].client_ca`, `default.client_crl[0]`).
fn client_check<'a>(
    provider: &Arc<CryptoProvider>,
    at: &impl Fn(&str) -> At<'a>,
    c: ClientAuthConfig<'_>,
) -> Result<ClientCheck, CertError> {
    let err = |field: String, file: &Path, message: String| CertError {
        host: at("").0.to_owned(),
        field,
        file: file.display().to_string(),
        message,
    };
    let ca_field = at("client_ca").1;
    let pem =
        fs::read(c.ca).map_err(|e| err(ca_field.clone(), c.ca, format!("cannot read: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| err(ca_field.clone(), c.ca, format!("not PEM certificates: {e}")))?;
        roots.add(cert).map_err(|e| {
            err(
                ca_field.clone(),
                c.ca,
                format!("unusable CA certificate: {e}"),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(err(ca_field, c.ca, "holds no CERTIFICATE block".into()));
    }
    let mut crls = Vec::new();
    for (i, file) in c.crls.iter().enumerate() {
        let field = at(&format!("client_crl[{i}]")).1;
        let pem =
            fs::read(file).map_err(|e| err(field.clone(), file, format!("cannot read: {e}")))?;
        let before = crls.len();
        for crl in CertificateRevocationListDer::pem_slice_iter(&pem) {
            let crl = crl.map_err(|e| err(field.clone(), file, format!("not PEM CRLs: {e}")))?;
            webpki::BorrowedCertRevocationList::from_der(&crl)
                .map_err(|e| err(field.clone(), file, format!("unparsable CRL: {e}")))?;
            crls.push(crl);
        }
        if crls.len() == before {
            return Err(err(field, file, "holds no X509 CRL block".into()));
        }
    }
    let count = crls.len();
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls);
    let builder = match c.mode {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|e| err(ca_field, c.ca, format!("client verifier: {e}")))?;
    Ok(ClientCheck {
        mode: c.mode,
        ca: c.ca.to_owned(),
        crls: count,
        verifier,
    })
}

fn server_config(
    shared: &Shared,
    certified: Arc<CertifiedKey>,
    alpn: &[String],
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, CertError> {
    let ticketer = shared.ticketer_for(&certified);
    let builder = ServerConfig::builder_with_provider(shared.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CertError {
            host: String::new(),
            field: String::new(),
            file: String::new(),
            message: format!("TLS versions: {e}"),
        })?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCert(certified)));
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.session_storage = shared.sessions.clone();
    // Tickets for TLS 1.2 (when the client offers the extension) and TLS 1.3 alike.
    config.ticketer = ticketer;
    config.send_tls13_tickets = 2;
    // The server's order of suites (AEADs only, strongest first), not the client's: a
    // client cannot talk a connection down to the weakest suite both sides allow.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
