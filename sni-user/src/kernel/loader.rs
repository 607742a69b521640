//! Loading the XDP program, filling its maps, pinning them, attaching to interfaces.
//!
//! Attachment goes through a bpf_link (aya tries `BPF_LINK_CREATE` first), owned by this
//! process: if it dies, even by SIGKILL, the kernel detaches the program.

use std::{
    fs,
    io::{ErrorKind, Read as _},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use nix::fcntl::{Flock, FlockArg};
use sni_common::{
    flow::{kind, Bucket, CachedFlow, Flow, Owner, Policy},
    flow_table::Shape,
    host::{NameEntry, NameKeys},
    ja4::Ja4Key,
    maps::{
        flow_cache_entries, HostJa4, HostStats, Ja4Name, Ja4Stats, PortSet,
        JA4_NAMES_DEFAULT_ENTRIES, JA4_SLOTS_ENTRIES, MAP_BUCKETS, MAP_EPOCH, MAP_FLOWS,
        MAP_FLOW_CACHE, MAP_FLOW_SHAPE, MAP_FLOW_TAGS, MAP_GLOBAL, MAP_HOSTS, MAP_HOST_STATS,
        MAP_JA4_BUCKETS, MAP_JA4_EVENTS, MAP_JA4_HOSTS, MAP_JA4_LABELS, MAP_JA4_NAMES,
        MAP_JA4_OTHER, MAP_JA4_POLICY, MAP_JA4_SLOTS, MAP_JA4_STATS, MAP_LABELS, MAP_NAME_KEYS,
        MAP_OTHER_HOSTS, MAP_OTHER_NAMES, MAP_PENDING, MAP_POLICY, MAP_PORTS, PINNED_MAPS, PROGRAM,
    },
    HostKey,
};
use tracing::{info, warn};

use crate::{
    config::{Action, Config, Mode, XdpConfig},
    kernel::{
        fingerprints::{self, Fingerprints, LearnCounters},
        flow_table,
        slots::{self, Slots},
    },
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sni-ebpf.o"));

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The loaded and attached classifier. Drop (or [`Classifier::shutdown`]) detaches it.
pub struct Classifier {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
    pin_dir: PathBuf,
    pinned: Vec<PathBuf>,
    /// Whether `pin_dir` is this run's: made by it, or found empty (left by a run that
    /// failed or was killed). Only then is it handed to an unprivileged user and removed at
    /// exit.
    made_pin_dir: bool,
    /// Each host's slot in the per-host maps.
    slots: Slots,
    /// Entries of the name map.
    names_capacity: u32,
    /// Whether the program was loaded to look up `*.` patterns.
    wildcards: bool,
    /// Configured fingerprints' slots and learned keys.
    fingerprints: Fingerprints,
    /// Held while running: a second `sni-user run` on the same pin_dir is refused.
    _lock: Flock<fs::File>,
}

/// Options of [`Classifier::start`] beyond the config.
#[derive(Clone, Copy, Default)]
pub struct StartOptions {
    /// Log every ClientHello from the kernel (aya-log); off the packet path otherwise.
    pub debug: bool,
    /// Where the program stops (`sni_common::maps::profile_stop`): the bench's profile by
    /// stage. `NONE` (0) everywhere else.
    pub profile_stop: u8,
    /// Another build of the XDP object to load instead of the one built into this binary:
    /// the bench's A/B section compares a change with its base in one run. `None` everywhere
    /// else.
    pub object: Option<&'static [u8]>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("debug", &self.debug)
            .field("profile_stop", &self.profile_stop)
            .field("object_len", &self.object.map(<[u8]>::len))
            .finish()
    }
}

impl Classifier {
    /// Loads the program, writes the watched ports and configured hosts, pins the maps under
    /// `pin_dir` and attaches to every interface of `xdp`.
    pub fn start(config: &Config, xdp: &XdpConfig, opts: StartOptions) -> Result<Self> {
        let pin_dir = config.pin_dir.clone();
        let made = !pin_dir.exists();
        ensure_bpffs(&pin_dir)?;
        // From here a failure removes the directory again if this run made it (a root-owned
        // leftover would keep the next run, as another user, from removing its pins).
        let undo = |e: anyhow::Error| {
            if made {
                let _ = fs::remove_dir(&pin_dir);
            }
            e
        };
        let lock = lock_pin_dir(&pin_dir).map_err(undo)?;
        remove_stale_pins(&pin_dir).map_err(undo)?;
        // A directory that is empty now is this run's too (not the bpffs root itself).
        let made_pin_dir = made
            || (pin_dir != Path::new(BPFFS_ROOT)
                && fs::read_dir(&pin_dir).is_ok_and(|mut d| d.next().is_none()));

        let ebpf = load_program(config, xdp, opts).map_err(undo)?;
        let mut classifier = Self {
            ebpf,
            links: Vec::new(),
            pin_dir,
            pinned: Vec::new(),
            made_pin_dir,
            slots: initial_slots(config, xdp)?,
            names_capacity: slots::names_capacity(
                config.hosts.iter().map(|h| h.patterns().count()).sum(),
            ),
            wildcards: has_wildcards(config),
            fingerprints: Fingerprints::initial(config)?,
            _lock: lock,
        };
        for iface in &xdp.interfaces {
            classifier.attach(iface, xdp.mode)?;
        }
        // Pin last: once the maps are visible, the program is attached.
        for name in PINNED_MAPS {
            let path = classifier.pin_dir.join(name);
            map_mut(&mut classifier.ebpf, name)?
                .pin(&path)
                .with_context(|| format!("pinning {name} at {}", path.display()))?;
            classifier.pinned.push(path);
        }
        info!(
            pin_dir = %classifier.pin_dir.display(),
            ports = ?xdp.ports,
            hosts = config.hosts.len(),
            "classifier running"
        );
        Ok(classifier)
    }

    fn attach(&mut self, iface: &str, mode: Mode) -> Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?;
        let (link, used) = match mode {
            Mode::Native => (program.attach(iface, XdpMode::Driver), "native"),
            Mode::Generic => (program.attach(iface, XdpMode::Skb), "generic"),
            Mode::Auto => match program.attach(iface, XdpMode::Driver) {
                Ok(link) => (Ok(link), "native"),
                Err(ProgramError::UnknownInterface { name }) => {
                    bail!("no interface named {name:?}")
                }
                Err(e) if hook_taken(&error_chain(&e)) => (Err(e), "native"),
                Err(e) => {
                    warn!(
                        iface,
                        error = %error_chain(&e),
                        "native XDP unavailable, falling back to generic mode"
                    );
                    (program.attach(iface, XdpMode::Skb), "generic")
                }
            },
        };
        let link = link.map_err(|e| match e {
            ProgramError::UnknownInterface { name } => anyhow!("no interface named {name:?}"),
            e if hook_taken(&error_chain(&e)) => anyhow!(
                "attaching to {iface} in {mode} mode: {}: another XDP program is attached to \
                 {iface} (`ip -d link show dev {iface}` names it; another sni-user, or a tool \
                 such as xdp-loader or Cilium); detach it or attach this one elsewhere",
                error_chain(&e)
            ),
            e => anyhow!("attaching to {iface} in {mode} mode: {}", error_chain(&e)),
        })?;
        info!(iface, mode = used, "attached");
        self.links.push((iface.to_owned(), link));
        Ok(())
    }

    /// The kernel's flow table, opened anew from its pin, for the terminator.
    pub fn flow_table(&self) -> Result<flow_table::PinnedFlowTable> {
        flow_table::FlowTable::open(&self.pin_dir)
    }

    /// Each host's slot.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Checks that `new` fits the loaded program and its maps, and gives its host and
    /// fingerprint slots. Nothing changes.
    pub fn plan(&self, new: &Config) -> Result<Plan> {
        let slots = self.slots.next(new).map_err(|e| anyhow!(e))?;
        let fingerprints = self.fingerprints.plan(new)?;
        let names = slots.names(new).len();
        if names > self.names_capacity as usize {
            bail!(
                "{names} host names do not fit the classifier's name map ({} entries, twice \
                 the names at start): restart to take them",
                self.names_capacity
            );
        }
        if has_wildcards(new) && !self.wildcards {
            bail!(
                "the first wildcard name needs a restart: the classifier was started without \
                 wildcard lookups"
            );
        }
        Ok(Plan {
            hosts: slots,
            fingerprints,
        })
    }

    /// The kernel's ring buffer of new fingerprints, taken out of the object for the daemon
    /// to read ([`Classifier::learn`] each record); None once taken, or when fingerprints are
    /// off.
    pub fn take_ja4_events(&mut self, xdp: &XdpConfig) -> Result<Option<RingBuf<MapData>>> {
        if !xdp.ja4 {
            return Ok(None);
        }
        match self.ebpf.take_map(MAP_JA4_EVENTS) {
            Some(map) => Ok(Some(RingBuf::try_from(map)?)),
            None => Ok(None),
        }
    }

    /// Takes one record of the ring buffer of new fingerprints (see
    /// [`Fingerprints::learn`]).
    pub fn learn(&mut self, record: &[u8]) {
        self.fingerprints.learn(&mut self.ebpf, record);
    }

    /// Sweeps the keys learned a while ago once more (see [`Fingerprints::sweep`]).
    pub fn sweep_fingerprints(&mut self, now: std::time::Instant) {
        self.fingerprints.sweep(&mut self.ebpf, now);
    }

    /// The counters of learning fingerprints.
    pub fn learn_counters(&self) -> std::sync::Arc<LearnCounters> {
        self.fingerprints.counters()
    }

    /// Takes `new` (planned by [`Classifier::plan`]) into the running program's maps, in an
    /// order that never leaves a name pointing at a slot not yet set up: watched ports, each
    /// host's label, policy (a new host's counters and bucket zeroed first), then new names,
    /// then old names out. Flows already classified follow a changed action (pass → drop
    /// drops them from the next packet; drop → pass lets them through); flows of a removed
    /// host stop counting toward its slot.
    pub fn apply(&mut self, old: &Config, new: &Config, plan: Plan) -> Result<()> {
        let Plan {
            hosts: slots,
            fingerprints,
        } = plan;
        let mut changes = ActionChanges::default();
        self.fingerprints
            .action_changes(old, new, &fingerprints, &mut changes);
        self.fingerprints
            .apply(&mut self.ebpf, new, fingerprints)
            .context("updating the fingerprints")?;
        let xdp = new
            .xdp
            .as_ref()
            .ok_or_else(|| anyhow!("no [xdp] section"))?;
        let mut ports = Array::<_, PortSet>::try_from(map_mut(&mut self.ebpf, MAP_PORTS)?)?;
        let mut set = PortSet::EMPTY;
        for p in &xdp.ports {
            set.insert(*p);
        }
        ports.set(0, set, 0).context("writing the watched ports")?;

        let old_actions: std::collections::HashMap<&str, Action> =
            old.hosts.iter().map(|h| (h.label(), h.action)).collect();
        if old.default.action != new.default.action {
            changes.hosts.insert(0);
        }
        if new.default.action == Action::Drop {
            changes.host_drops.insert(0);
        }
        let new_slots: std::collections::HashSet<u32> = new
            .hosts
            .iter()
            .map(|h| h.label())
            .filter(|label| self.slots.get(label).is_none())
            .filter_map(|label| slots.get(label))
            .collect();
        reset_slots(&mut self.ebpf, &new_slots)?;
        for host in &new.hosts {
            let label = host.label();
            let slot = slots
                .get(label)
                .ok_or_else(|| anyhow!("no slot planned for {label:?}"))?;
            // A host that was there before (a new one's action is no change to flows).
            if old_actions.get(label).is_some_and(|a| *a != host.action) {
                changes.hosts.insert(slot);
            }
            if host.action == Action::Drop {
                changes.host_drops.insert(slot);
            }
            let key = HostKey::from_name(label.as_bytes()).unwrap_or(HostKey::EMPTY);
            Array::<_, HostKey>::try_from(map_mut(&mut self.ebpf, MAP_LABELS)?)?
                .set(slot, key, 0)
                .context("writing a host label")?;
            Array::<_, Policy>::try_from(map_mut(&mut self.ebpf, MAP_POLICY)?)?
                .set(slot, host.actions().policy(), 0)
                .context("writing a host policy")?;
        }
        Array::<_, Policy>::try_from(map_mut(&mut self.ebpf, MAP_POLICY)?)?
            .set(0, new.default.actions().policy(), 0)
            .context("writing the default policy")?;

        let new_names = slots.names(new);
        let old_names = self.slots.names(old);
        {
            let keep: std::collections::HashSet<&HostKey> =
                new_names.iter().map(|(k, _)| k).collect();
            let gone: Vec<HostKey> = old_names
                .iter()
                .filter(|(k, _)| !keep.contains(k))
                .map(|(k, _)| *k)
                .collect();
            write_names(&mut self.ebpf, &new_names, &gone)?;
        }
        // A name now configured counts in its slot; its old row of other names goes.
        {
            let was: std::collections::HashSet<&HostKey> =
                old_names.iter().map(|(k, _)| k).collect();
            let now: Vec<u64> = new_names
                .iter()
                .filter(|(k, _)| !was.contains(k))
                .map(|(k, _)| k.hash64())
                .collect();
            let mut other =
                HashMap::<_, u64, HostStats>::try_from(map_mut(&mut self.ebpf, MAP_OTHER_HOSTS)?)?;
            for hash in &now {
                let _ = other.remove(hash);
            }
            let mut names =
                HashMap::<_, u64, HostKey>::try_from(map_mut(&mut self.ebpf, MAP_OTHER_NAMES)?)?;
            for hash in &now {
                let _ = names.remove(hash);
            }
        }
        let removed: Vec<u32> = self
            .slots
            .iter()
            .filter(|(label, _)| slots.get(label).is_none())
            .map(|(_, slot)| slot)
            .collect();
        for slot in &removed {
            Array::<_, HostKey>::try_from(map_mut(&mut self.ebpf, MAP_LABELS)?)?
                .set(*slot, HostKey::EMPTY, 0)
                .context("clearing a host label")?;
        }
        if !changes.is_empty() || !removed.is_empty() {
            let rewritten = rewrite_flows(&mut self.ebpf, &changes, &removed)?;
            info!(flows = rewritten, "classified flows follow the reload");
        }
        self.slots = slots;
        Ok(())
    }

    /// The loaded object, e.g. for the aya-log logger.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// What the process removes at exit, to hand to an unprivileged user: the pins, and the
    /// pin directory when this process made it (a directory that was there stays its owner's;
    /// if the user cannot write it, the pins stay at exit and the next start removes them).
    pub fn owned_paths(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        if self.made_pin_dir {
            paths.push(self.pin_dir.clone());
        }
        paths.extend(self.pinned.iter().cloned());
        paths
    }

    /// Detaches from every interface and removes the pins.
    pub fn shutdown(mut self) {
        self.detach_and_unpin();
    }

    fn detach_and_unpin(&mut self) {
        for path in self.pinned.drain(..) {
            if let Err(e) = fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "removing pin");
            }
        }
        if self.made_pin_dir {
            // Only if empty: this run's directory, holding nothing else now (also after a
            // start that failed before pinning).
            let _ = fs::remove_dir(&self.pin_dir);
        }
        if let Some(program) = self.ebpf.program_mut(PROGRAM) {
            if let Ok(program) = <&mut Xdp>::try_from(program) {
                for (iface, link) in self.links.drain(..) {
                    match program.detach(link) {
                        Ok(()) => info!(iface, "detached"),
                        Err(e) => warn!(iface, error = %error_chain(&e), "detaching"),
                    }
                }
            }
        }
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        self.detach_and_unpin();
    }
}

/// What a reload will do to the slots, from [`Classifier::plan`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// Host slots.
    pub hosts: Slots,
    /// Fingerprint slots (by JA4 string).
    pub fingerprints: Slots,
}

/// Makes `slots`, which a reload gives to new hosts, start from nothing: what the flow caches
/// still owe them is forgotten, then their counters and rate buckets are zeroed. Part of
/// [`Classifier::apply`], before the new hosts' names are written.
///
/// A slot is reused only after a reload removed its host and moved the cache's epoch, so
/// what a cache entry owes it was counted for that earlier host. The counters are zeroed
/// after the caches are cleared: an entry given to another flow meanwhile may have added to
/// them.
pub fn reset_slots(ebpf: &mut Ebpf, slots: &std::collections::HashSet<u32>) -> Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    // A ClientHello read while the earlier reload removed the slot's names may have put a
    // flow naming the slot in the table after that reload rewrote the flows: it is turned
    // into a flow of a name not configured, and the epoch moves, before the slot is reused.
    let reused: Vec<u32> = slots.iter().copied().collect();
    rewrite_flows(ebpf, &ActionChanges::default(), &reused)?;
    forget_owed(ebpf, slots)?;
    for &slot in slots {
        Array::<_, HostStats>::try_from(map_mut(ebpf, MAP_HOST_STATS)?)?
            .set(slot, HostStats::default(), 0)
            .context("zeroing a host's counters")?;
        Array::<_, Bucket>::try_from(map_mut(ebpf, MAP_BUCKETS)?)?
            .set(slot, Bucket::default(), 0)
            .context("resetting a host's rate bucket")?;
    }
    // The earlier host's counts per fingerprint go too (they would show under the new host).
    let mut pairs = HashMap::<_, HostJa4, Ja4Stats>::try_from(map_mut(ebpf, MAP_JA4_HOSTS)?)?;
    let stale: Vec<HostJa4> = pairs
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.kind == kind::CONFIGURED && slots.contains(&k.slot))
        .collect();
    for key in &stale {
        let _ = pairs.remove(key);
    }
    Ok(())
}

/// Clears what the flow caches owe `slots` (see [`reset_slots`]).
fn forget_owed(ebpf: &mut Ebpf, slots: &std::collections::HashSet<u32>) -> Result<()> {
    let owes = |c: &CachedFlow| matches!(c.owed(), Some((Owner::Configured(slot), _, _)) if slots.contains(&slot));
    let mut cache = Array::<_, CachedFlow>::try_from(map_mut(ebpf, MAP_FLOW_CACHE)?)?;
    for index in 0..cache.len() {
        let mut entry = cache.get(&index, 0).context("reading the flow cache")?;
        if owes(&entry) {
            entry.packets = 0;
            entry.bytes = 0;
            cache
                .set(index, entry, 0)
                .context("clearing a flow cache entry")?;
        }
    }
    Ok(())
}

/// What a reload did to actions, for the flows already classified: the host slots (slot 0 is
/// the default's) and fingerprint slots whose action changed (a removed fingerprint's to
/// pass), and which of each drop now.
#[derive(Debug, Default)]
pub struct ActionChanges {
    /// Host slots whose action changed.
    pub hosts: std::collections::HashSet<u32>,
    /// Fingerprint slots whose action changed.
    pub ja4: std::collections::HashSet<u32>,
    /// Host slots whose action is drop now.
    pub host_drops: std::collections::HashSet<u32>,
    /// Fingerprint slots whose action is drop now.
    pub ja4_drops: std::collections::HashSet<u32>,
    /// Fingerprint slots freed (their fingerprint removed): their flows forget the slot, as a
    /// removed host's flows forget theirs, so that a later fingerprint given the slot does not
    /// inherit them. Each is in `ja4` too (the action is pass now).
    pub ja4_removed: std::collections::HashSet<u32>,
}

impl ActionChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.ja4.is_empty()
    }
}

/// Rewrites the verdicts of flows whose host's or fingerprint's action changed (the stricter
/// of the two, [`Flow::reloaded`]), turns flows of removed hosts' slots into flows of a
/// name not configured, and clears removed fingerprints' slots from their flows; then moves the flow cache's epoch, so that no CPU goes on with a copy
/// made before. Returns how many flows changed. Part of [`Classifier::apply`].
pub fn rewrite_flows(ebpf: &mut Ebpf, changes: &ActionChanges, removed: &[u32]) -> Result<u64> {
    let mut table = flow_table::FlowTable::of_mut(ebpf)?;
    let rewritten = table.rewrite(|flow| {
        let slot = match flow.kind {
            kind::CONFIGURED => flow.slot,
            kind::OTHER | kind::NO_NAME => 0,
            _ => return,
        };
        if flow.kind == kind::CONFIGURED && removed.contains(&slot) {
            flow.kind = kind::OTHER;
            flow.slot = 0;
        }
        let ja4_slot = u32::from(flow.ja4_slot);
        if changes.hosts.contains(&slot) || (ja4_slot != 0 && changes.ja4.contains(&ja4_slot)) {
            flow.verdict = Flow::reloaded(
                flow.verdict,
                changes.host_drops.contains(&slot),
                ja4_slot != 0 && changes.ja4_drops.contains(&ja4_slot),
            );
        }
        if ja4_slot != 0 && changes.ja4_removed.contains(&ja4_slot) {
            flow.ja4_slot = 0;
        }
    })?;
    // Every CPU's cached copies of flows are stale now.
    let mut epoch = Array::<_, u64>::try_from(map_mut(ebpf, MAP_EPOCH)?)?;
    let next = epoch.get(&0, 0).context("reading the flow cache epoch")? + 1;
    epoch
        .set(0, next, 0)
        .context("writing the flow cache epoch")?;
    Ok(rewritten)
}

/// The slot of a configured name (a [`sni_common::HostPattern::key`]: a `*.` pattern as
/// written) in the loaded program's host table, looked up as the kernel does: by its keyed lookup hash, confirmed by its check hash.
pub fn configured_slot(ebpf: &Ebpf, key: &HostKey) -> Result<Option<u32>> {
    let keys = Array::<_, NameKeys>::try_from(map(ebpf, MAP_NAME_KEYS)?)?
        .get(&0, 0)
        .context("reading the name hash keys")?;
    let h = key.keyed(&keys);
    let hosts = HashMap::<_, u64, NameEntry>::try_from(map(ebpf, MAP_HOSTS)?)?;
    Ok(hosts
        .get(&h.lookup, 0)
        .ok()
        .filter(|e| e.check == h.check)
        .map(|e| e.slot))
}

/// Puts `add` (names and patterns with their slots) into the kernel's host table and takes
/// `remove` out, by their keyed hashes (`NameKeys`, read from the map).
fn write_names(ebpf: &mut Ebpf, add: &[(HostKey, u32)], remove: &[HostKey]) -> Result<()> {
    let keys = Array::<_, NameKeys>::try_from(map_mut(ebpf, MAP_NAME_KEYS)?)?
        .get(&0, 0)
        .context("reading the name hash keys")?;
    let mut hosts = HashMap::<_, u64, NameEntry>::try_from(map_mut(ebpf, MAP_HOSTS)?)?;
    for (key, slot) in add {
        let h = key.keyed(&keys);
        if let Ok(there) = hosts.get(&h.lookup, 0) {
            if there.check != h.check {
                // 2^-64 for any two names: keys are drawn again at the next start.
                bail!(
                    "host name {key:?} shares its lookup hash with another configured name; \
                     restart sni-user (it draws new hash keys at each start)"
                );
            }
        }
        let entry = NameEntry {
            check: h.check,
            slot: *slot,
            _pad: 0,
        };
        hosts
            .insert(h.lookup, entry, 0)
            .with_context(|| format!("adding host name {key:?}"))?;
    }
    for key in remove {
        let h = key.keyed(&keys);
        if hosts.get(&h.lookup, 0).is_ok_and(|e| e.check == h.check) {
            let _ = hosts.remove(&h.lookup);
        }
    }
    Ok(())
}

/// One more than the highest possible CPU id (`/sys/devices/system/cpu/possible`, e.g. `0-63`
/// or `0-3,8-11`): the ids `bpf_get_smp_processor_id` can answer. Not the count of CPUs, which
/// is lower when the list has holes.
fn cpu_ids() -> Result<u32> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let text = fs::read_to_string(POSSIBLE).with_context(|| format!("reading {POSSIBLE}"))?;
    let highest =
        highest_cpu(&text).with_context(|| format!("{POSSIBLE} holds no CPU list: {text:?}"))?;
    Ok(highest.saturating_add(1))
}

/// The highest CPU id of a kernel CPU list (`0-63`, `0-3,8-11`, `0`).
fn highest_cpu(list: &str) -> Option<u32> {
    list.trim()
        .split([',', '-'])
        .map(str::parse::<u32>)
        .collect::<Result<Vec<_>, _>>()
        .ok()?
        .into_iter()
        .max()
}

/// Eight random bytes from the kernel.
fn random_u64() -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Map `name` of a loaded program.
pub(crate) fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}

/// Map `name` of a loaded program, to write.
pub(crate) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}

/// Loads the XDP object into the kernel (verifier included) with its maps sized and filled
/// from `config`: watched ports, configured names and their host slots, labels and policies.
/// Nothing is attached.
pub fn load_program(config: &Config, xdp: &XdpConfig, opts: StartOptions) -> Result<Ebpf> {
    let initial = initial_slots(config, xdp)?;
    let names = initial.names(config);
    // Room for hosts and names added by a reload.
    let slots = initial.capacity();
    let names_capacity = slots::names_capacity(names.len());
    let debug = u8::from(opts.debug);
    let wildcards = u8::from(has_wildcards(config));
    let cpus = cpu_ids()?;
    let cache_entries = flow_cache_entries(xdp.flows_capacity, cpus);
    let cache_mask = cache_entries - 1;
    // A block of entries for every CPU id (`sni_common::flow::cache_slot`).
    let cache_total = cache_entries
        .checked_mul(cpus)
        .context("the flow cache's size overflows")?;
    let cache_seed = random_u64().context("a seed for the flow cache")?;
    let flow_table_entries = sni_common::flow_table::entries(xdp.flows_capacity);
    let flow_shape = Shape::new(
        flow_table_entries,
        random_u64().context("a seed for the flow table")?,
    );
    let ja4 = u8::from(xdp.ja4);
    let ja4_initial = fingerprints::initial_slots(config)?;
    let ja4_slots = ja4_initial.capacity();
    // Every name of the LRU of others, and of the configured keys.
    let ja4_names = xdp
        .ja4_other_capacity
        .saturating_add(JA4_SLOTS_ENTRIES)
        .max(JA4_NAMES_DEFAULT_ENTRIES);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_HOSTS, names_capacity)
        .map_max_entries(MAP_HOST_STATS, slots)
        .map_max_entries(MAP_LABELS, slots)
        .map_max_entries(MAP_POLICY, slots)
        .map_max_entries(MAP_BUCKETS, slots)
        .map_max_entries(MAP_OTHER_HOSTS, xdp.other_hosts_capacity)
        .map_max_entries(MAP_OTHER_NAMES, xdp.other_hosts_capacity)
        .map_max_entries(MAP_FLOWS, flow_table_entries)
        .map_max_entries(MAP_FLOW_TAGS, flow_table_entries)
        .map_max_entries(MAP_PENDING, xdp.pending_capacity)
        .map_max_entries(MAP_FLOW_CACHE, cache_total)
        .map_max_entries(MAP_JA4_POLICY, ja4_slots)
        .map_max_entries(MAP_JA4_LABELS, ja4_slots)
        .map_max_entries(MAP_JA4_BUCKETS, ja4_slots)
        // Two rows per slot: the kernel's, and the counts the daemon moved (see
        // `fingerprints`).
        .map_max_entries(MAP_JA4_STATS, ja4_slots.saturating_mul(2))
        .map_max_entries(MAP_JA4_OTHER, xdp.ja4_other_capacity)
        .map_max_entries(MAP_JA4_HOSTS, xdp.ja4_hosts_capacity)
        .map_max_entries(MAP_JA4_NAMES, ja4_names)
        .override_global("SNI_JA4", &ja4, true)
        .override_global("SNI_DEBUG", &debug, true)
        .override_global("SNI_PROFILE_STOP", &opts.profile_stop, true)
        .override_global("SNI_WILDCARDS", &wildcards, true)
        .override_global("SNI_CACHE_MASK", &cache_mask, true)
        .override_global("SNI_CACHE_SEED", &cache_seed, true)
        .load(opts.object.unwrap_or(OBJECT))
        .context("loading the XDP object")?;
    {
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing from the XDP object"))?
            .try_into()
            .context("program type")?;
        program.load().map_err(verifier_error)?;
    }

    let mut ports = Array::<_, PortSet>::try_from(map_mut(&mut ebpf, MAP_PORTS)?)?;
    let mut set = PortSet::EMPTY;
    for p in &xdp.ports {
        set.insert(*p);
    }
    ports.set(0, set, 0).context("writing the watched ports")?;
    Array::<_, Shape>::try_from(map_mut(&mut ebpf, MAP_FLOW_SHAPE)?)?
        .set(0, flow_shape, 0)
        .context("writing the flow table's shape")?;
    // Epoch 0 marks an empty cache entry; the first live one is 1.
    Array::<_, u64>::try_from(map_mut(&mut ebpf, MAP_EPOCH)?)?
        .set(0, 1, 0)
        .context("writing the flow cache epoch")?;

    let keys = NameKeys {
        lookup: random_u64().context("keys for the name hashes")?,
        check: random_u64().context("keys for the name hashes")?,
    };
    Array::<_, NameKeys>::try_from(map_mut(&mut ebpf, MAP_NAME_KEYS)?)?
        .set(0, keys, 0)
        .context("writing the name hash keys")?;
    write_names(&mut ebpf, &names, &[])?;
    let mut labels = Array::<_, HostKey>::try_from(map_mut(&mut ebpf, MAP_LABELS)?)?;
    let hosts = || {
        config
            .hosts
            .iter()
            .filter_map(|h| Some((h, initial.get(h.label())?)))
    };
    for (host, slot) in hosts() {
        let label = HostKey::from_name(host.label().as_bytes()).unwrap_or(HostKey::EMPTY);
        labels.set(slot, label, 0).context("writing host labels")?;
    }
    let mut policy = Array::<_, Policy>::try_from(map_mut(&mut ebpf, MAP_POLICY)?)?;
    policy
        .set(0, config.default.actions().policy(), 0)
        .context("writing the default policy")?;
    for (host, slot) in hosts() {
        policy
            .set(slot, host.actions().policy(), 0)
            .context("writing host policies")?;
    }
    Fingerprints::write_policies(&mut ebpf, config, &ja4_initial)?;
    Ok(ebpf)
}

/// The host slots at start, in maps of `xdp.hosts_capacity` (or the default) hosts.
fn initial_slots(config: &Config, xdp: &XdpConfig) -> Result<Slots> {
    let capacity = match xdp.hosts_capacity {
        Some(hosts) => hosts.saturating_add(1),
        None => slots::default_capacity(config.hosts.len()),
    };
    Slots::initial(config, capacity).map_err(|e| anyhow!(e))
}

fn has_wildcards(config: &Config) -> bool {
    config
        .hosts
        .iter()
        .flat_map(|h| h.patterns())
        .any(|p| p.is_wildcard())
}

/// Turns a load failure into an error that carries the verifier's log.
fn verifier_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!("the kernel rejected the XDP program ({io_error}):\n{verifier_log}"),
        e => anyhow!("loading the XDP program: {}", error_chain(&e)),
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Makes sure `pin_dir` exists on a bpf filesystem, mounting bpffs on /sys/fs/bpf if that is
/// where it belongs and nothing is mounted there yet.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let mut anchor = pin_dir;
    while !anchor.exists() {
        anchor = anchor
            .parent()
            .ok_or_else(|| anyhow!("pin_dir {} has no existing parent", pin_dir.display()))?;
    }
    if !is_bpffs(anchor)? {
        if pin_dir.starts_with(BPFFS_ROOT) && Path::new(BPFFS_ROOT).is_dir() {
            if !is_bpffs(Path::new(BPFFS_ROOT))? {
                nix::mount::mount(
                    Some("bpf"),
                    BPFFS_ROOT,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .with_context(|| format!("mounting bpffs on {BPFFS_ROOT}"))?;
                info!(path = BPFFS_ROOT, "mounted bpffs");
            }
        } else {
            bail!(
                "pin_dir {} is not on a bpf filesystem; mount one (mount -t bpf bpf {BPFFS_ROOT}) \
                 and choose a pin_dir below it",
                pin_dir.display()
            );
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(pin_dir)
        .with_context(|| format!("creating pin_dir {}", pin_dir.display()))?;
    if !is_bpffs(pin_dir)? {
        bail!("pin_dir {} is not on a bpf filesystem", pin_dir.display());
    }
    Ok(())
}

/// Why `run` could not use `pin_dir`, as far as can be told without changing anything: below
/// /sys/fs/bpf it mounts bpffs itself if needed; elsewhere the nearest existing directory must
/// be on bpffs already.
pub fn pin_dir_unusable(pin_dir: &Path) -> Option<String> {
    if pin_dir.starts_with(BPFFS_ROOT) {
        return None;
    }
    let mut anchor = pin_dir;
    while !anchor.exists() {
        anchor = anchor.parent()?;
    }
    match is_bpffs(anchor) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "{} is not on a bpf filesystem: choose a pin_dir below {BPFFS_ROOT}, or mount bpffs \
             there (mount -t bpf bpf DIR)",
            pin_dir.display()
        )),
        Err(e) => Some(format!("{e:#}")),
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

fn lock_pin_dir(pin_dir: &Path) -> Result<Flock<fs::File>> {
    let mut dir =
        fs::File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // A few tries: `stats` and `top` take a shared lock for an instant (see [`pins_are_held`]).
    for _ in 0..LOCK_TRIES {
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                dir = file;
                std::thread::sleep(LOCK_RETRY);
            }
            Err((_, errno)) => bail!("locking {}: {errno}", pin_dir.display()),
        }
    }
    bail!(
        "another sni-user is running with pin_dir {}; stop it or choose another pin_dir",
        pin_dir.display()
    )
}

/// Whether an attach error says that the interface's XDP hook already has a program: the
/// kernel answers EEXIST (a program attached without a link) or EBUSY (through a link).
fn hook_taken(chain: &str) -> bool {
    chain.contains("os error 17") || chain.contains("os error 16")
}

/// Tries of [`lock_pin_dir`], [`LOCK_RETRY`] apart.
const LOCK_TRIES: u32 = 10;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a running `sni-user run` holds `pin_dir` (it locks it for its whole life): `false`
/// means pins found there are stale, left by a run that was killed. `None` when the directory
/// cannot be opened to tell.
pub fn pins_are_held(pin_dir: &Path) -> Option<bool> {
    let dir = fs::File::open(pin_dir).ok()?;
    match Flock::lock(dir, FlockArg::LockSharedNonblock) {
        // Nobody holds it; the shared lock goes with the file, at once.
        Ok(_) => Some(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Some(true),
        Err(_) => None,
    }
}

/// Pins left by a process that was killed: nobody holds the lock, so they are stale.
fn remove_stale_pins(pin_dir: &Path) -> Result<()> {
    for name in PINNED_MAPS {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => info!(path = %path.display(), "removed a stale pin"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// Map `name` of the running classifier whose maps are pinned under `pin_dir`.
pub fn open_pinned(pin_dir: &Path, name: &str) -> Result<aya::maps::Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        anyhow!(
            "cannot open {} ({}): is `sni-user run` running with pin_dir = {}?",
            path.display(),
            error_chain(&e),
            pin_dir.display()
        )
    })?;
    Ok(aya::maps::Map::from_map_data(data)?)
}

/// Open pinned maps of a running classifier, for readers in other processes.
pub struct PinnedMaps {
    /// Global counters.
    pub global: PerCpuArray<MapData, u64>,
    /// Configured hosts' labels (first name) by slot.
    pub labels: Array<MapData, HostKey>,
    /// Configured hosts' counters by slot.
    pub host_stats: Array<MapData, HostStats>,
    /// Other hosts' counters by name hash.
    pub other: HashMap<MapData, u64, HostStats>,
    /// Each CPU's flow cache, with what its entries still owe the hosts' counters.
    pub flow_cache: Array<MapData, CachedFlow>,
    /// Other hosts' names by name hash.
    pub other_names: HashMap<MapData, u64, HostKey>,
    /// Learned keys of configured fingerprints, with their slot.
    pub ja4_slots: HashMap<MapData, Ja4Key, u32>,
    /// Configured fingerprints' policies by slot (its length is the number of slots).
    pub ja4_policy: Array<MapData, Policy>,
    /// Configured fingerprints' JA4 strings by slot.
    pub ja4_labels: Array<MapData, Ja4Name>,
    /// Configured fingerprints' counters: the kernel's by slot, then the daemon's (moved from
    /// the others) at `slots + slot`.
    pub ja4_stats: Array<MapData, Ja4Stats>,
    /// Other fingerprints' counters by key.
    pub ja4_other: HashMap<MapData, Ja4Key, Ja4Stats>,
    /// Counters per (host, fingerprint).
    pub ja4_hosts: HashMap<MapData, HostJa4, Ja4Stats>,
    /// JA4 strings by key.
    pub ja4_names: HashMap<MapData, Ja4Key, Ja4Name>,
}

impl PinnedMaps {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| open_pinned(pin_dir, name);
        Ok(Self {
            global: open(MAP_GLOBAL)?.try_into()?,
            labels: open(MAP_LABELS)?.try_into()?,
            host_stats: open(MAP_HOST_STATS)?.try_into()?,
            other: open(MAP_OTHER_HOSTS)?.try_into()?,
            flow_cache: open(MAP_FLOW_CACHE)?.try_into()?,
            other_names: open(MAP_OTHER_NAMES)?.try_into()?,
            ja4_slots: open(MAP_JA4_SLOTS)?.try_into()?,
            ja4_policy: open(MAP_JA4_POLICY)?.try_into()?,
            ja4_labels: open(MAP_JA4_LABELS)?.try_into()?,
            ja4_stats: open(MAP_JA4_STATS)?.try_into()?,
            ja4_other: open(MAP_JA4_OTHER)?.try_into()?,
            ja4_hosts: open(MAP_JA4_HOSTS)?.try_into()?,
            ja4_names: open(MAP_JA4_NAMES)?.try_into()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::highest_cpu;

    #[test]
    fn the_highest_cpu_id_of_a_list_with_or_without_holes() {
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        assert_eq!(highest_cpu("0"), Some(0));
        assert_eq!(highest_cpu("0-3,8-11"), Some(11));
        assert_eq!(highest_cpu(""), None);
        assert_eq!(highest_cpu("0-x"), None);
    }
}
