//! The daemon, `sni-user run`: the control plane on tokio around the classifier (kernel) and
//! the terminator — signals, reloads (validated whole, then applied in place), the control
//! socket, the metrics endpoint, the privilege drop, the kernel's log records, clean detach.
//!
//! - [`control`]: the control socket (`stats`, `reload`), server and client.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`privileges`]: dropping to `user` after start.
//! - [`demo`]: the configuration `cargo xtask run` starts with no file.
//! - [`fingerprint_metrics`]: the fingerprints' part of the metrics.
//! - [`ja4_events`]: the thread that reads the kernel's ring buffer of new fingerprints.

pub mod control;
pub mod demo;
pub mod fingerprint_metrics;
pub mod ja4_events;
pub mod metrics;
pub mod privileges;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    acme,
    config::{Config, Mode, XdpConfig},
    kernel::{
        loader::{error_chain, Classifier, PinnedMaps, StartOptions},
        readers::MapsReader,
    },
    terminator::{routes::Routes, server::Terminator},
};

/// Records of the ring buffer of new fingerprints taken per turn of the loop at most: the
/// loop then serves its other events before it reads on.
const JA4_EVENTS_PER_TURN: usize = 256;

/// How often the kernel's log records are forwarded (and fingerprint keys learned a second
/// ago swept again).
const LOG_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// How often the `ticket_keys` file is looked at (its inode, size and times; read only when
/// they change).
const TICKET_KEYS_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// `run`'s flags that override the file: applied at start and to every reload.
pub struct Overrides {
    /// `--pin-dir`.
    pub pin_dir: Option<PathBuf>,
    /// `--iface`.
    pub ifaces: Vec<String>,
    /// `--port`.
    pub ports: Vec<u16>,
    /// `--mode`.
    pub mode: Option<Mode>,
}

impl Overrides {
    /// Applies the flags to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(dir) = &self.pin_dir {
            config.pin_dir = dir.clone();
        }
        if !self.ifaces.is_empty() || !self.ports.is_empty() || self.mode.is_some() {
            let xdp = config.xdp.get_or_insert_with(XdpConfig::demo);
            if !self.ifaces.is_empty() {
                xdp.interfaces = self.ifaces.clone();
            }
            if !self.ports.is_empty() {
                xdp.ports = self.ports.clone();
            }
            if let Some(mode) = self.mode {
                xdp.mode = mode;
            }
        }
    }
}

/// What `run` runs, and what a reload changes.
struct Daemon {
    config: Config,
    /// The demo's state directory when running the demo (it has no file: a reload makes the
    /// demo's configuration again, reading its certificates anew).
    demo_state: Option<PathBuf>,
    classifier: Option<Classifier>,
    terminator: Option<Terminator>,
    reloads: Arc<ReloadCounters>,
    metrics_other_hosts: Arc<AtomicUsize>,
    /// The metrics endpoint's reader of the classifier's maps (its view of fingerprints
    /// follows the config).
    metrics_maps: Option<Arc<Mutex<MapsReader>>>,
    /// ACME certificates stored but not taken in yet (a swap failed: tried again on the
    /// next tick), by host.
    swaps_pending: Vec<String>,
}

impl Daemon {
    /// Reads the config file again and validates all of it (certificates and keys too, and
    /// that the hosts fit the kernel's maps) before changing anything; then updates the
    /// kernel's maps in place and serves new connections with the new routes. Anything that
    /// cannot change in place is refused whole: the running configuration stays.
    fn reload(&mut self, overrides: &Overrides) -> Result<()> {
        let mut new = match &self.demo_state {
            Some(dir) => demo::prepare(dir)?.0,
            None => Config::load(&self.config.source)?,
        };
        overrides.apply(&mut new);
        new.validate()?;
        let fixed = self.config.needs_restart(&new);
        if !fixed.is_empty() {
            anyhow::bail!(
                "{}: {} changed, which needs a restart; nothing was applied",
                new.source.display(),
                fixed.join(", ")
            );
        }
        let plan = match &self.classifier {
            Some(c) => Some(c.plan(&new)?),
            None => None,
        };
        // Certificates and keys are read again here, and when an ACME certificate is taken
        // in (`swap_certificates`): never per connection.
        let routes = match &self.terminator {
            Some(t) => {
                let mut routes = Routes::reload(&new, &t.view().routes())?;
                if let Some(plan) = &plan {
                    routes.set_slots(&plan.hosts);
                }
                Some(routes)
            }
            None => None,
        };
        // Everything is valid: apply. The kernel first, so that a flow the terminator looks
        // up carries a slot the new routes know.
        if let (Some(c), Some(plan)) = (self.classifier.as_mut(), plan) {
            c.apply(&self.config, &new, plan)
                .context("updating the classifier's maps")?;
        }
        if let (Some(t), Some(routes)) = (&self.terminator, routes) {
            if !routes.kept_sessions() {
                if routes.ticket_keys().is_some() {
                    info!("a certificate changed: sessions made under the old certificate resume no more");
                } else {
                    info!("a certificate changed: new session ticket key, earlier sessions resume no more");
                }
            }
            log_ticket_keys(&routes);
            t.reload(routes);
        }
        self.metrics_other_hosts
            .store(new.metrics_other_hosts, Relaxed);
        if let Some(maps) = &self.metrics_maps {
            maps.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .view = metrics::view(&new);
        }
        self.config = new;
        Ok(())
    }

    /// Reads the `ticket_keys` file again if it changed since it was last read: good keys
    /// are used from the next handshake on; a bad file keeps the keys in use, and is logged
    /// and counted once.
    fn refresh_ticket_keys(&self) {
        let Some(t) = &self.terminator else { return };
        let routes = t.view().routes();
        let Some(keys) = routes.ticket_keys() else {
            return;
        };
        match keys.refresh() {
            Ok(None) => {}
            Ok(Some(n)) => {
                self.reloads.ticket_key_reloads.fetch_add(1, Relaxed);
                info!(
                    file = %keys.path().display(),
                    keys = n,
                    "session ticket keys changed; the last one encrypts from now on"
                );
            }
            Err(e) => {
                self.reloads.ticket_key_failures.fetch_add(1, Relaxed);
                warn!(error = %e, "session ticket key file refused; the keys in use stay");
            }
        }
    }

    /// Serves the certificate the ACME task just stored for host `label`: the routes are
    /// built again from the running configuration (the file is not read), as a reload
    /// would, and new connections get them; open ones keep theirs.
    ///
    /// A failed swap (another file unreadable at that moment) is logged once and tried
    /// again on every tick until it succeeds or a reload takes the certificate in.
    fn swap_certificates(&mut self, label: &str) {
        let Some(t) = &self.terminator else { return };
        let routes = Routes::reload(&self.config, &t.view().routes()).map(|mut routes| {
            if let Some(c) = &self.classifier {
                routes.set_slots(c.slots());
            }
            routes
        });
        match routes {
            Ok(routes) => {
                t.reload(routes);
                // One table for all hosts: every pending swap is done.
                let pending = std::mem::take(&mut self.swaps_pending);
                for host in pending
                    .iter()
                    .map(String::as_str)
                    .chain((!pending.iter().any(|h| h == label)).then_some(label))
                {
                    info!(host, "ACME certificate in use for new connections");
                }
            }
            Err(e) => {
                if !self.swaps_pending.iter().any(|h| h == label) {
                    warn!(host = label, error = %e, "ACME certificate not taken in yet; the running certificates stay, and it is tried again");
                    self.swaps_pending.push(label.to_owned());
                }
            }
        }
    }

    /// Tries again the swaps that failed.
    fn retry_swaps(&mut self) {
        if let Some(label) = self.swaps_pending.first().cloned() {
            self.swap_certificates(&label);
        }
    }

    /// Reloads, counts and logs the result.
    fn reload_logged(
        &mut self,
        overrides: &Overrides,
        why: &str,
    ) -> Result<control::Reloaded, String> {
        match self.reload(overrides) {
            Ok(()) => {
                // The new table read every stored ACME certificate.
                self.swaps_pending.clear();
                self.reloads.reloads.fetch_add(1, Relaxed);
                self.reloads.last_success.store(unix_now(), Relaxed);
                info!(
                    config = %self.config.source.display(),
                    hosts = self.config.hosts.len(),
                    trigger = why,
                    "reloaded"
                );
                Ok(control::Reloaded {
                    config: match &self.demo_state {
                        Some(dir) => dir.join("demo"),
                        None => self.config.source.clone(),
                    },
                    hosts: self.config.hosts.len(),
                })
            }
            Err(e) => {
                self.reloads.failures.fetch_add(1, Relaxed);
                let reason = format!("{e:#}");
                tracing::error!(
                    config = %self.config.source.display(),
                    error = %reason,
                    trigger = why,
                    "reload refused; the running configuration stays"
                );
                Err(reason)
            }
        }
    }
}

/// One line for the keys a table was built with.
fn log_ticket_keys(routes: &Routes) {
    if let Some(keys) = routes.ticket_keys() {
        info!(
            file = %keys.path().display(),
            keys = keys.len(),
            "session ticket keys read; the last one encrypts"
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `sni-user run`: starts the classifier and the terminator that `config` asks for, serves
/// the control socket and the metrics endpoint, drops privileges, then reloads on SIGHUP or
/// `sni-user reload` until SIGINT or SIGTERM, and detaches and unpins on the way out.
pub fn run(
    config: Config,
    overrides: &Overrides,
    opts: StartOptions,
    demo_state: Option<PathBuf>,
) -> Result<()> {
    if config.xdp.is_none() && config.listen.is_empty() {
        anyhow::bail!(
            "config {}: nothing to run: no [xdp] section and no [[listen]]",
            config.source.display()
        );
    }
    privileges::forbid_new_privileges()?;
    privileges::raise_open_files();
    // The user to become is checked before anything is attached or bound.
    let target = config
        .user
        .as_deref()
        .map(privileges::Target::resolve)
        .transpose()?;
    // Certificates and keys are read once, before anything is attached or bound.
    let mut routes = if config.listen.is_empty() {
        None
    } else {
        let routes = Routes::load(&config)?;
        log_ticket_keys(&routes);
        Some(routes)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut classifier = match &config.xdp {
            Some(xdp) => Some(Classifier::start(&config, xdp, opts)?),
            None => None,
        };
        // The kernel's ring buffer of new fingerprints, read as it becomes readable.
        let mut ja4_events = match (classifier.as_mut(), &config.xdp) {
            (Some(c), Some(xdp)) => c
                .take_ja4_events(xdp)?
                .map(ja4_events::Ja4Events::spawn)
                .transpose()?,
            _ => None,
        };
        let terminator = match routes.take() {
            Some(mut routes) => {
                let flows = match &classifier {
                    Some(c) => {
                        routes.set_slots(c.slots());
                        Some(c.flow_table()?)
                    }
                    None => None,
                };
                Some(Terminator::start(&config, Arc::new(routes), flows)?)
            }
            None => None,
        };
        let reloads = Arc::new(ReloadCounters::default());
        reloads.last_success.store(unix_now(), Relaxed);
        let metrics_other_hosts = Arc::new(AtomicUsize::new(config.metrics_other_hosts));
        let mut metrics_maps = None;
        if let Some(addr) = config.metrics {
            if classifier.is_some() {
                let mut reader = MapsReader::new(PinnedMaps::open(&config.pin_dir)?);
                reader.view = metrics::view(&config);
                metrics_maps = Some(Arc::new(Mutex::new(reader)));
            }
            let served = metrics::serve(
                addr,
                metrics::Sources {
                    maps: metrics_maps.clone(),
                    terminator: terminator.as_ref().map(Terminator::view),
                    reloads: reloads.clone(),
                    other_hosts: metrics_other_hosts.clone(),
                    ja4_learning: classifier.as_ref().map(Classifier::learn_counters),
                },
            );
            match served {
                Ok(_) => {}
                // The demo goes on without its endpoint (the port may be node_exporter's).
                Err(e) if config.is_demo() => warn!(error = %format!("{e:#}"), "no metrics"),
                Err(e) => return Err(e),
            }
        }
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let control = control::serve(
            &config.control_socket,
            terminator.as_ref().map(Terminator::view),
            reloads.clone(),
            reload_tx,
        )?;
        // The kernel's log records (only with --debug) are flushed on a short tick: polling
        // the logger's fd through AsyncFd would need `unsafe` registration here.
        let mut logger = match classifier
            .as_mut()
            .map(|c| aya_log::EbpfLogger::init(c.ebpf_mut()))
        {
            Some(Ok(logger)) => Some(logger),
            Some(Err(e)) => {
                warn!(error = %error_chain(&e), "kernel log records unavailable");
                None
            }
            None => None,
        };
        // The ACME state directory, made (and handed to the user) before the drop.
        let acme_store = match (&config.acme, &terminator) {
            // Made even without ACME hosts yet: a reload may add the first.
            (Some(acme), Some(_)) => {
                let store = acme::store::Store::new(&acme.state_dir);
                store
                    .prepare()
                    .with_context(|| format!("acme.state_dir {}", acme.state_dir.display()))?;
                Some(store)
            }
            _ => None,
        };
        if let Some(target) = &target {
            let mut owned = Vec::new();
            owned.extend(acme_store.iter().flat_map(acme::store::Store::owned_paths));
            owned.extend(classifier.iter().flat_map(|c| c.owned_paths()));
            owned.extend(control.owned_paths());
            let mut reread = vec![config.source.clone()];
            reread.extend(config.ticket_keys.iter().cloned());
            for h in &config.hosts {
                if !h.is_acme() {
                    reread.extend(h.cert.iter().chain(h.key.iter()).cloned());
                }
                reread.extend(h.client_ca.iter().chain(&h.client_crl).cloned());
            }
            reread.extend(
                config
                    .default
                    .client_ca
                    .iter()
                    .chain(&config.default.client_crl)
                    .cloned(),
            );
            reread.extend(
                config
                    .default
                    .cert
                    .iter()
                    .chain(config.default.key.iter())
                    .cloned(),
            );
            if let Err(e) = target.become_user(&owned, &reread) {
                control.stop();
                return Err(e);
            }
        }
        let mut tick = tokio::time::interval(LOG_FLUSH_INTERVAL);
        let mut ticket_keys_tick = tokio::time::interval(TICKET_KEYS_POLL);
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        // The ACME task runs beside the loop below; it hands back the label of each host
        // with a new certificate in the store, and gets its plan again after each reload.
        let (acme_issued_tx, mut acme_issued) = tokio::sync::mpsc::unbounded_channel();
        let (acme_plan, acme_plan_rx) = tokio::sync::watch::channel(acme::client::plan(&config));
        if let (Some(acme), Some(_), Some(t)) = (&config.acme, &acme_store, &terminator) {
            tokio::spawn(acme::client::run(acme::client::Task {
                config: acme.clone(),
                plan: acme_plan_rx,
                challenges: t.view().challenges(),
                issued: acme_issued_tx.clone(),
                status: t.view().acme_status(),
            }));
        }
        let mut daemon = Daemon {
            config,
            demo_state,
            classifier,
            terminator,
            reloads,
            metrics_other_hosts,
            metrics_maps,
            swaps_pending: Vec::new(),
        };
        info!("ready; stop with SIGINT or SIGTERM, reload with SIGHUP or `sni-user reload`");
        loop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
                _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
                _ = sighup.recv() => {
                    let _ = daemon.reload_logged(overrides, "SIGHUP");
                    acme_plan.send_replace(acme::client::plan(&daemon.config));
                }
                Some(reply) = reload_rx.recv() => {
                    let result = daemon.reload_logged(overrides, "control socket");
                    let _ = reply.send(result);
                    acme_plan.send_replace(acme::client::plan(&daemon.config));
                }
                _ = tick.tick() => {
                    if let Some(logger) = logger.as_mut() {
                        logger.flush();
                    }
                    if let Some(c) = daemon.classifier.as_mut() {
                        c.sweep_fingerprints(std::time::Instant::now());
                    }
                }
                Some(record) = ja4_record(&mut ja4_events) => {
                    if let Some(c) = daemon.classifier.as_mut() {
                        c.learn(&record);
                        // More that came meanwhile, up to a bound per turn.
                        if let Some(events) = ja4_events.as_mut() {
                            for _ in 1..JA4_EVENTS_PER_TURN {
                                let Ok(record) = events.records.try_recv() else { break };
                                c.learn(&record);
                            }
                        }
                    }
                }
                _ = ticket_keys_tick.tick() => {
                    daemon.refresh_ticket_keys();
                    daemon.retry_swaps();
                }
                Some(label) = acme_issued.recv() => daemon.swap_certificates(&label),
            }
        }
        drop(logger);
        if let Some(events) = ja4_events {
            events.stop();
        }
        drop(acme_issued_tx);
        control.stop();
        if let Some(t) = daemon.terminator {
            t.stop();
        }
        if let Some(c) = daemon.classifier {
            c.shutdown();
        }
        Ok(())
    })
}

/// The next record of the ring buffer of new fingerprints; never without one (None once its
/// thread ended).
async fn ja4_record(events: &mut Option<ja4_events::Ja4Events>) -> Option<Vec<u8>> {
    match events {
        Some(e) => e.records.recv().await,
        None => std::future::pending().await,
    }
}

/// Reloads of the running process (SIGHUP or `sni-user reload`), for stats and metrics.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused: the running configuration stayed.
    pub failures: AtomicU64,
    /// Unix time (seconds) of the start or the last reload applied.
    pub last_success: AtomicU64,
    /// Changes of the `ticket_keys` file taken in while running (reloads not counted).
    pub ticket_key_reloads: AtomicU64,
    /// Changes of the `ticket_keys` file refused: the keys in use stayed.
    pub ticket_key_failures: AtomicU64,
}
