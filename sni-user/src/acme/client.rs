//! The daemon's ACME task (tokio, instant-acme): one account, one order per host with
//! `cert = "acme"` (all its names as SANs), TLS-ALPN-01 answered by the terminator through
//! [`Challenges`], the certificate and its key written to the [`Store`], then the daemon told
//! to swap it in (the path a reload takes: open connections keep theirs).
//!
//! When: at start for a host without a certificate (or one that lacks a name the config has
//! since gained), then `renew_before` days before expiry; without `renew_before`, at a time
//! picked at random in the window the CA's renewal information (ARI, RFC 9773) suggests when
//! it offers it, else when a third of the lifetime is left. A failed order is logged with the CA's problem document, counted, and
//! tried again after 1 minute, doubling up to 6 hours, with up to a quarter of jitter so that
//! a fleet's machines spread out; the host keeps serving what it has meanwhile.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    acme::{
        challenges::Challenges,
        store::{write_atomic, Store},
    },
    config::{acme::AcmeConfig, Config},
};

/// Retry after a failed order: the first wait, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
const BACKOFF_MOST: Duration = Duration::from_secs(6 * 3600);
/// The longest sleep between looks at the certificates.
const LOOK_EVERY: Duration = Duration::from_secs(3600);
/// How soon to look again when another machine holds the state directory's lock.
const LOCK_RETRY: Duration = Duration::from_secs(5);
/// How long one order may wait on the CA (validation, issuance).
const ORDER_PATIENCE: Duration = Duration::from_secs(120);
/// How long a whole order may take, every request to the CA included (the state
/// directory's lock is held meanwhile); an order past it has failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// A host whose certificate comes by ACME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeHost {
    /// Its label (first name): the files' names in the store.
    pub label: String,
    /// Its names, the certificate's SANs.
    pub names: Vec<String>,
}

/// What the task works from, taken again at each reload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The hosts with `cert = "acme"`.
    pub hosts: Vec<AcmeHost>,
    /// `[acme] renew_before`, days.
    pub renew_before: Option<f64>,
}

/// The plan of `config`.
pub fn plan(config: &Config) -> Plan {
    Plan {
        hosts: config
            .hosts
            .iter()
            .filter(|h| h.is_acme())
            .map(|h| AcmeHost {
                label: h.label().to_owned(),
                // As the CA and the certificate name them: lowercase, no trailing dot.
                names: h
                    .names
                    .iter()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
            })
            .collect(),
        renew_before: config.acme.as_ref().and_then(|a| a.renew_before),
    }
}

/// One host's ACME record, for `stats` and metrics.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HostStatus {
    /// Certificates issued since start.
    pub issued: u64,
    /// Orders that failed since start.
    pub failures: u64,
    /// Unix seconds of the last issuance (0: none since start).
    pub last_issued: u64,
    /// The last failure's message (the CA's problem document), empty after a success.
    pub last_error: String,
}

/// An ACME host as `stats --json` shows it (under `terminator.acme`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HostState {
    /// The host's label.
    pub host: String,
    /// Served with the self-signed placeholder: no certificate issued yet.
    pub placeholder: bool,
    /// When the issued certificate expires, Unix seconds.
    pub not_after: Option<i64>,
    /// The orders since start.
    #[serde(flatten)]
    pub orders: HostStatus,
}

/// Every ACME host's record.
#[derive(Debug, Default)]
pub struct Status {
    hosts: Mutex<HashMap<String, HostStatus>>,
    /// Failures to create or load the account.
    pub account_failures: AtomicU64,
}

impl Status {
    /// A copy of every host's record, by label.
    pub fn snapshot(&self) -> Vec<(String, HostStatus)> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = hosts.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn update(&self, label: &str, f: impl FnOnce(&mut HostStatus)) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        f(hosts.entry(label.to_owned()).or_default());
    }
}

/// What the task needs.
pub struct Task {
    /// `[acme]`.
    pub config: AcmeConfig,
    /// The hosts and `renew_before`; the daemon sends them again after a reload.
    pub plan: watch::Receiver<Plan>,
    /// Where the terminator finds the challenges.
    pub challenges: Arc<Challenges>,
    /// The label of each host with a new certificate in the store: the daemon swaps it in.
    pub issued: mpsc::UnboundedSender<String>,
    /// Counters.
    pub status: Arc<Status>,
}

/// Runs until the daemon drops the other end of `plan`.
pub async fn run(mut task: Task) {
    let store = Store::new(&task.config.state_dir);
    tokio::spawn(share(store.clone(), Arc::clone(&task.challenges)));
    // No account is made or loaded before a host asks for ACME (a reload may add the first).
    while task.plan.borrow_and_update().hosts.is_empty() {
        if task.plan.changed().await.is_err() {
            return;
        }
    }
    let account = loop {
        let made = tokio::time::timeout(ORDER_TIMEOUT, account(&task.config, &store))
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer from the CA within {ORDER_TIMEOUT:?}")));
        match made {
            Ok(a) => break a,
            Err(e) => {
                task.status.account_failures.fetch_add(1, Relaxed);
                warn!(error = %format!("{e:#}"), directory = %task.config.directory, "ACME account unavailable; trying again in a minute");
                if wait(&mut task.plan, Duration::from_secs(60)).await.is_err() {
                    return;
                }
            }
        }
    };
    // Per label: failures in a row, and not before when to try again.
    let mut backoff: HashMap<String, (u32, SystemTime)> = HashMap::new();
    let mut ari = Ari::default();
    // Per label: the leaf the terminator serves, as far as this task knows (at start, what
    // the routes read from the store). A different one in the store (ordered here, or by
    // another machine sharing the directory) is handed to the daemon to take in.
    let mut served: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    loop {
        let Plan {
            hosts,
            renew_before,
        } = task.plan.borrow_and_update().clone();
        if renew_before.is_none() {
            ari.refresh(&account, &store, &hosts).await;
        }
        let now = SystemTime::now();
        let mut sleep = LOOK_EVERY;
        for host in &hosts {
            let stored = leaf(&store, host).map(|l| l.to_vec());
            match served.get(&host.label) {
                None => {
                    served.insert(host.label.clone(), stored);
                }
                Some(known) if *known != stored && stored.is_some() => {
                    let _ = task.issued.send(host.label.clone());
                    served.insert(host.label.clone(), stored);
                }
                Some(_) => {}
            }
            let suggested = ari.renew_at(&store, host);
            let due = due(&store, host, renew_before, suggested);
            let due = match backoff.get(&host.label) {
                Some((_, after)) => due.max(*after),
                None => due,
            };
            if let Ok(ahead) = due.duration_since(now) {
                if !ahead.is_zero() {
                    sleep = sleep.min(ahead);
                    continue;
                }
            }
            // Machines sharing the directory take turns; one that finds another's fresh
            // certificate has nothing to order.
            // Never waited for: the daemon's loop shares this thread.
            let lock = match store.try_lock() {
                Ok(Some(l)) => l,
                Ok(None) => {
                    sleep = sleep.min(LOCK_RETRY);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, dir = %task.config.state_dir.display(), "ACME state directory unusable");
                    sleep = sleep.min(BACKOFF_FIRST);
                    continue;
                }
            };
            if let (Some(days), Some((not_before, not_after))) =
                (renew_before, validity(&store, host))
            {
                if days * 86_400.0 >= not_after.saturating_sub(not_before) as f64 {
                    warn!(
                        host = %host.label,
                        renew_before_days = days,
                        "renew_before is longer than the certificate's lifetime: it is renewed at every look (hourly, and at each reload)"
                    );
                }
            }
            // Stale challenges of an order that died (a crash) are no one's.
            store.sweep_challenges(ORDER_TIMEOUT);
            // Not due any more once the lock is held: another machine of the fleet stored
            // a certificate meanwhile, taken in below like one ordered here.
            if due_now(&store, host, renew_before, suggested) {
                let replaces = ari.replaces(&store, host);
                let ordered = tokio::time::timeout(
                    ORDER_TIMEOUT,
                    order(&account, host, &task.challenges, &store, replaces),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer from the CA within {ORDER_TIMEOUT:?}")))
                .and_then(|(chain, key)| {
                    store
                        .save_certificate(&host.label, &chain, &key)
                        .context("writing the certificate")
                });
                match ordered {
                    Ok(()) => {
                        backoff.remove(&host.label);
                        task.status.update(&host.label, |s| {
                            s.issued += 1;
                            s.last_issued = unix(SystemTime::now());
                            s.last_error.clear();
                        });
                        info!(host = %host.label, names = ?host.names, "ACME certificate issued");
                    }
                    Err(e) => fail(&mut backoff, &task.status, host, &e),
                }
            }
            drop(lock);
            let stored = leaf(&store, host).map(|l| l.to_vec());
            if stored.is_some() && served.get(&host.label) != Some(&stored) {
                let _ = task.issued.send(host.label.clone());
                served.insert(host.label.clone(), stored);
            }
            if let Some((_, after)) = backoff.get(&host.label) {
                if let Ok(ahead) = after.duration_since(SystemTime::now()) {
                    sleep = sleep.min(ahead);
                }
            }
        }
        if wait(&mut task.plan, sleep).await.is_err() {
            return;
        }
    }
}

/// Sleeps `d`, or until the plan changes; Err when the daemon has gone.
async fn wait(plan: &mut watch::Receiver<Plan>, d: Duration) -> Result<(), ()> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        changed = plan.changed() => changed.map_err(|_| ()),
    }
}

/// Counts and logs a failed order; sets when to try again.
fn fail(
    backoff: &mut HashMap<String, (u32, SystemTime)>,
    status: &Status,
    host: &AcmeHost,
    e: &anyhow::Error,
) {
    let message = format!("{e:#}");
    let entry = backoff
        .entry(host.label.clone())
        .or_insert((0, SystemTime::now()));
    entry.0 = entry.0.saturating_add(1);
    let wait = BACKOFF_FIRST
        .saturating_mul(1 << entry.0.saturating_sub(1).min(12))
        .min(BACKOFF_MOST);
    let wait = wait + wait.mul_f64(jitter() * 0.25);
    entry.1 = SystemTime::now() + wait;
    status.update(&host.label, |s| {
        s.failures += 1;
        // The CA's words, bounded: stats show them, and a CA can say a lot.
        s.last_error = message.chars().take(1024).collect();
    });
    warn!(host = %host.label, error = %message, retry_in_s = wait.as_secs(), "ACME order failed; the host keeps its certificate");
}

/// A number in [0, 1) from the clock's nanoseconds: enough to spread a fleet's retries.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When `host`'s certificate is due: now when there is none or it lacks a name, else
/// `renew_before` days before it expires, else at the time picked in the CA's suggested
/// window (`suggested`), else when a third of its lifetime is left.
fn due(
    store: &Store,
    host: &AcmeHost,
    renew_before: Option<f64>,
    suggested: Option<SystemTime>,
) -> SystemTime {
    let Some((not_before, not_after)) = validity(store, host) else {
        return UNIX_EPOCH;
    };
    let lead = match (renew_before, suggested) {
        (Some(days), _) => Duration::try_from_secs_f64(days * 86_400.0).unwrap_or(Duration::MAX),
        (None, Some(at)) => return at,
        (None, None) => Duration::from_secs(not_after.saturating_sub(not_before) / 3),
    };
    (UNIX_EPOCH + Duration::from_secs(not_after))
        .checked_sub(lead)
        .unwrap_or(UNIX_EPOCH)
}

fn due_now(
    store: &Store,
    host: &AcmeHost,
    renew_before: Option<f64>,
    suggested: Option<SystemTime>,
) -> bool {
    due(store, host, renew_before, suggested) <= SystemTime::now()
}

/// The stored leaf of `host`.
fn leaf(store: &Store, host: &AcmeHost) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(store.issued(&host.label)?)
        .ok()?
        .next()?
        .ok()
}

/// How often renewal information is fetched again, at least and at most, whatever the CA's
/// `Retry-After` says.
const ARI_REFETCH_LEAST: Duration = Duration::from_secs(3600);
const ARI_REFETCH_MOST: Duration = Duration::from_secs(86_400);

/// ACME renewal information (RFC 9773), while the CA offers it: per host, the certificate
/// it is for (its ARI identifier), the renewal time picked in the suggested window, and
/// when to ask again.
#[derive(Debug, Default)]
struct Ari {
    /// None until the CA answered once; false: its directory has no `renewalInfo`.
    offered: Option<bool>,
    hosts: HashMap<String, (String, SystemTime, SystemTime)>,
}

impl Ari {
    /// Asks the CA for the hosts whose answer is stale or whose certificate changed.
    async fn refresh(&mut self, account: &Account, store: &Store, hosts: &[AcmeHost]) {
        if self.offered == Some(false) {
            return;
        }
        let now = SystemTime::now();
        for host in hosts {
            let Some(cert_id) =
                leaf(store, host).and_then(|l| CertificateIdentifier::try_from(&l).ok())
            else {
                continue;
            };
            let id = cert_id.to_string();
            if let Some((cert, _, fetch_after)) = self.hosts.get(&host.label) {
                if *cert == id && *fetch_after > now {
                    continue;
                }
            }
            match account.renewal_info(&cert_id).await {
                Ok((info, retry)) => {
                    self.offered = Some(true);
                    let w = &info.suggested_window;
                    let at = pick(SystemTime::from(w.start), SystemTime::from(w.end), jitter());
                    let again = now + retry.clamp(ARI_REFETCH_LEAST, ARI_REFETCH_MOST);
                    self.hosts.insert(host.label.clone(), (id, at, again));
                }
                Err(instant_acme::Error::Unsupported(_)) => {
                    self.offered = Some(false);
                    return;
                }
                Err(e) => {
                    tracing::debug!(host = %host.label, error = %e, "ACME renewal information unavailable");
                    // The last answer for this certificate stands; ask again later.
                    if let Some(entry) = self.hosts.get_mut(&host.label) {
                        entry.2 = now + ARI_REFETCH_LEAST;
                    }
                }
            }
        }
    }

    /// The renewal time picked for `host`'s stored certificate, if the CA suggested one for
    /// that very certificate.
    fn renew_at(&self, store: &Store, host: &AcmeHost) -> Option<SystemTime> {
        let (cert, at, _) = self.hosts.get(&host.label)?;
        let id = CertificateIdentifier::try_from(&leaf(store, host)?).ok()?;
        (id.to_string() == *cert).then_some(*at)
    }

    /// The certificate a renewal of `host` replaces (RFC 9773 §5), when the CA offers ARI.
    fn replaces(&self, store: &Store, host: &AcmeHost) -> Option<CertificateIdentifier<'static>> {
        if self.offered != Some(true) {
            return None;
        }
        CertificateIdentifier::try_from(&leaf(store, host)?).ok()
    }
}

/// A time in `[start, end]` at `fraction` (0..1) of the way: RFC 9773 §4.2 asks for one
/// picked at random, so that clients spread out.
fn pick(start: SystemTime, end: SystemTime, fraction: f64) -> SystemTime {
    match end.duration_since(start) {
        Ok(width) => start + width.mul_f64(fraction.clamp(0.0, 1.0)),
        Err(_) => start,
    }
}

/// The stored leaf's validity (Unix seconds), when it covers every name of `host`.
fn validity(store: &Store, host: &AcmeHost) -> Option<(u64, u64)> {
    let leaf = leaf(store, host)?;
    if !host
        .names
        .iter()
        .all(|n| crate::terminator::routes::covers(&leaf, n).is_ok())
    {
        return None;
    }
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    let v = x509.validity();
    Some((
        u64::try_from(v.not_before.timestamp()).ok()?,
        u64::try_from(v.not_after.timestamp()).ok()?,
    ))
}

/// The account of `store`, or a new one written there.
async fn account(config: &AcmeConfig, store: &Store) -> Result<Account> {
    store
        .prepare()
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let builder = match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("directory_ca {}", ca.display()))?,
        None => Account::builder().context("the HTTPS client")?,
    };
    let path = store.account();
    // Machines sharing the directory make one account: the first to hold the lock.
    let _lock = loop {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let credentials: AccountCredentials = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not an account", path.display()))?;
                let account = builder
                    .from_credentials(credentials)
                    .await
                    .context("loading the stored account")?;
                info!(account = account.id(), "ACME account loaded");
                return Ok(account);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Unreadable is not missing: a new account would replace the one in use.
            Err(e) => bail!("{}: {e}", path.display()),
        }
        match store.try_lock() {
            // Read again under the lock: another machine may have made it meanwhile.
            Ok(Some(lock)) => {
                if !path.exists() {
                    break lock;
                }
            }
            Ok(None) => tokio::time::sleep(LOCK_RETRY).await,
            Err(e) => bail!("{}: the lock: {e}", config.state_dir.display()),
        }
    };
    let eab = match &config.eab {
        Some(eab) => {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(eab.hmac_key.trim_end_matches('='))
                .context("eab.hmac_key")?;
            Some(ExternalAccountKey::new(eab.kid.clone(), &key))
        }
        None => None,
    };
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            eab.as_ref(),
        )
        .await
        .context("creating the account")?;
    write_atomic(&path, serde_json::to_string(&credentials)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    info!(account = account.id(), "ACME account created");
    Ok(account)
}

/// Challenges answered for one order (here, and published in the state directory for the
/// machines sharing it); withdrawn however the order ends.
struct Answered<'a> {
    challenges: &'a Challenges,
    store: &'a Store,
    names: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            self.challenges.remove(n);
            self.store.withdraw_challenge(n);
        }
    }
}

/// How often the challenges that machines sharing the state directory publish are read.
pub const SHARE_EVERY: Duration = Duration::from_secs(1);
/// How long an order waits after publishing its challenges before the CA may validate, so
/// that every machine sharing the directory has read them.
const SHARE_DELAY: Duration = Duration::from_millis(2500);

/// Serves the challenges other machines publish in the state directory: the CA's
/// validation may reach any machine behind the name, not only the one that ordered.
pub async fn share(store: Store, challenges: Arc<Challenges>) {
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // Off the daemon's thread: the directory may be on a slow network file system.
        let store = store.clone();
        if let Ok(published) = tokio::task::spawn_blocking(move || store.challenges()).await {
            challenges.sync(&published);
        }
    }
}

/// One order for `host`: its chain (PEM) and key (PEM).
async fn order(
    account: &Account,
    host: &AcmeHost,
    challenges: &Challenges,
    store: &Store,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<(String, String)> {
    let identifiers: Vec<Identifier> = host
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let new_order = match replaces {
        Some(id) => NewOrder::new(&identifiers).replaces(id),
        None => NewOrder::new(&identifiers),
    };
    let mut order = account.new_order(&new_order).await.context("new order")?;
    let mut answered = Answered {
        challenges,
        store,
        names: Vec::new(),
    };
    // First every challenge is answered here and published for the machines sharing the
    // state directory; once they have had time to read them, the CA is told to validate.
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization for {} is {other:?}", authz.identifier()),
        }
        let name = authz.identifier().to_string();
        // The CA names what it authorizes: only a name this order asked for becomes a
        // challenge (and a file name in the state directory).
        if !host.names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            bail!("the CA asks to authorize {name:?}, which this order did not ask for");
        }
        let challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| anyhow!("the CA offers no tls-alpn-01 challenge for {name}"))?;
        let digest = challenge.key_authorization().digest();
        challenges
            .insert(&name, digest.as_ref())
            .with_context(|| format!("challenge for {name}"))?;
        answered.names.push(name.clone());
        store
            .publish_challenge(&name, digest.as_ref())
            .with_context(|| format!("publishing the challenge for {name}"))?;
    }
    if !answered.names.is_empty() {
        tokio::time::sleep(SHARE_DELAY).await;
    }
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| anyhow!("the CA offers no tls-alpn-01 challenge for {name}"))?;
        challenge
            .set_ready()
            .await
            .with_context(|| format!("challenge for {name}"))?;
    }
    let retries = RetryPolicy::new().timeout(ORDER_PATIENCE);
    let status = order.poll_ready(&retries).await;
    drop(answered);
    match status {
        Ok(OrderStatus::Ready) => {}
        Ok(other) => bail!("order {other:?}{}", refusals(&mut order).await),
        Err(e) => bail!("{e}{}", refusals(&mut order).await),
    }
    let key = order.finalize().await.context("finalizing")?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .context("fetching the certificate")?;
    Ok((chain, key))
}

/// What the CA said of each refused challenge: `; NAME: PROBLEM`.
async fn refusals(order: &mut Order) -> String {
    let mut out = String::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let _ = authz.refresh().await;
        for c in &authz.challenges {
            if let Some(problem) = &c.error {
                out.push_str(&format!("; {}: {problem}", authz.identifier()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_time_is_picked_inside_the_suggested_window() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(86_400);
        assert_eq!(pick(start, end, 0.0), start);
        assert_eq!(pick(start, end, 1.0), end);
        assert_eq!(pick(start, end, 0.5), start + Duration::from_secs(43_200));
        // Out of range fractions stay inside; a window that ends before it starts is its
        // start.
        assert_eq!(pick(start, end, 7.0), end);
        assert_eq!(pick(end, start, 0.5), end);
    }

    #[test]
    fn renew_before_then_the_suggestion_then_a_third_of_the_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        store.prepare().expect("prepare");
        let host = AcmeHost {
            label: "a.example".into(),
            names: vec!["a.example".into()],
        };
        // No certificate: due at once.
        assert_eq!(due(&store, &host, Some(30.0), None), UNIX_EPOCH);
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 4, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        store
            .save_certificate("a.example", &cert.pem(), &key.serialize_pem())
            .expect("save");
        let (nb, na) = validity(&store, &host).expect("validity");
        let not_after = UNIX_EPOCH + Duration::from_secs(na);
        let suggested = UNIX_EPOCH + Duration::from_secs(nb + 5);
        assert_eq!(
            due(&store, &host, Some(10.0), Some(suggested)),
            not_after - Duration::from_secs(10 * 86_400)
        );
        assert_eq!(due(&store, &host, None, Some(suggested)), suggested);
        assert_eq!(
            due(&store, &host, None, None),
            not_after - Duration::from_secs((na - nb) / 3)
        );
        // A certificate that lacks a name of the host is due at once.
        let more = AcmeHost {
            names: vec!["a.example".into(), "b.example".into()],
            ..host
        };
        assert_eq!(due(&store, &more, None, None), UNIX_EPOCH);
    }
}
