//! Loading the XDP program, filling its maps, pinning them, attaching to interfaces.
//!
//! Attachment goes through a bpf_link (aya tries `BPF_LINK_CREATE` first), owned by this
//! process: if it dies, even by SIGKILL, the kernel detaches the program.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use nix::fcntl::{Flock, FlockArg};
use sni_common::{
    flow::{Flow, FlowKey, Policy},
    maps::{
        HostStats, OtherHost, PortSet, MAP_BUCKETS, MAP_FLOWS, MAP_GLOBAL, MAP_HOSTS,
        MAP_HOST_STATS, MAP_LABELS, MAP_OTHER_HOSTS, MAP_PENDING, MAP_POLICY, MAP_PORTS,
        PINNED_MAPS, PROGRAM,
    },
    HostKey,
};
use tracing::{info, warn};

use crate::config::{Config, Mode, XdpConfig};

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
    /// Whether this process made `pin_dir` (only then is it handed to an unprivileged user).
    made_pin_dir: bool,
    /// Held while running: a second `sni-user run` on the same pin_dir is refused.
    _lock: Flock<fs::File>,
}

/// Options of [`Classifier::start`] beyond the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// Log every ClientHello from the kernel (aya-log); off the packet path otherwise.
    pub debug: bool,
}

impl Classifier {
    /// Loads the program, writes the watched ports and configured hosts, pins the maps under
    /// `pin_dir` and attaches to every interface of `xdp`.
    pub fn start(config: &Config, xdp: &XdpConfig, opts: StartOptions) -> Result<Self> {
        let pin_dir = config.pin_dir.clone();
        let made_pin_dir = !pin_dir.exists();
        ensure_bpffs(&pin_dir)?;
        let lock = lock_pin_dir(&pin_dir)?;
        remove_stale_pins(&pin_dir)?;

        let ebpf = load_program(config, xdp, opts)?;
        let mut classifier = Self {
            ebpf,
            links: Vec::new(),
            pin_dir,
            pinned: Vec::new(),
            made_pin_dir,
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
            e => anyhow!("attaching to {iface} in {mode} mode: {}", error_chain(&e)),
        })?;
        info!(iface, mode = used, "attached");
        self.links.push((iface.to_owned(), link));
        Ok(())
    }

    /// The kernel's flow table, opened anew from its pin, for the terminator.
    pub fn flow_table(&self) -> Result<FlowTable> {
        let path = self.pin_dir.join(MAP_FLOWS);
        let data = MapData::from_pin(&path)
            .map_err(|e| anyhow!("opening {}: {}", path.display(), error_chain(&e)))?;
        Ok(aya::maps::Map::from_map_data(data)?.try_into()?)
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

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}

/// Loads the XDP object into the kernel (verifier included) with its maps sized and filled
/// from `config`: watched ports, configured names and their host slots, labels and policies.
/// Nothing is attached.
pub fn load_program(config: &Config, xdp: &XdpConfig, opts: StartOptions) -> Result<Ebpf> {
    let names = config.host_slots();
    let slots = config.hosts.len() as u32 + 1;
    // Room for names added by a reload; a hash map needs at least one entry.
    let names_capacity = (names.len() as u32).saturating_mul(2).max(64);
    let debug = u8::from(opts.debug);
    let wildcards = u8::from(names.iter().any(|(k, _)| k.as_bytes().starts_with(b"*.")));
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_HOSTS, names_capacity)
        .map_max_entries(MAP_HOST_STATS, slots)
        .map_max_entries(MAP_LABELS, slots)
        .map_max_entries(MAP_POLICY, slots)
        .map_max_entries(MAP_BUCKETS, slots)
        .map_max_entries(MAP_OTHER_HOSTS, xdp.other_hosts_capacity)
        .map_max_entries(MAP_FLOWS, xdp.flows_capacity)
        .map_max_entries(MAP_PENDING, xdp.pending_capacity)
        .override_global("SNI_DEBUG", &debug, true)
        .override_global("SNI_WILDCARDS", &wildcards, true)
        .load(OBJECT)
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

    let mut hosts = HashMap::<_, HostKey, u32>::try_from(map_mut(&mut ebpf, MAP_HOSTS)?)?;
    for (key, slot) in &names {
        hosts
            .insert(key, slot, 0)
            .with_context(|| format!("adding host name {key:?}"))?;
    }
    let mut labels = Array::<_, HostKey>::try_from(map_mut(&mut ebpf, MAP_LABELS)?)?;
    for (host, slot) in config.hosts.iter().zip(1u32..) {
        let first = host.names.first().map_or("", String::as_str);
        let label = HostKey::from_name(first.as_bytes()).unwrap_or(HostKey::EMPTY);
        labels.set(slot, label, 0).context("writing host labels")?;
    }
    let mut policy = Array::<_, Policy>::try_from(map_mut(&mut ebpf, MAP_POLICY)?)?;
    policy
        .set(0, config.default.actions().policy(), 0)
        .context("writing the default policy")?;
    for (host, slot) in config.hosts.iter().zip(1u32..) {
        policy
            .set(slot, host.actions().policy(), 0)
            .context("writing host policies")?;
    }
    Ok(ebpf)
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
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
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

fn is_bpffs(path: &Path) -> Result<bool> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

fn lock_pin_dir(pin_dir: &Path) -> Result<Flock<fs::File>> {
    let dir = fs::File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            anyhow!(
                "another sni-user is running with pin_dir {}; stop it or choose another pin_dir",
                pin_dir.display()
            )
        } else {
            anyhow!("locking {}: {errno}", pin_dir.display())
        }
    })
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

/// Open pinned maps of a running classifier, for readers in other processes.
pub struct PinnedMaps {
    /// Global counters.
    pub global: PerCpuArray<MapData, u64>,
    /// Configured hosts' labels (first name) by slot.
    pub labels: Array<MapData, HostKey>,
    /// Configured hosts' counters by slot.
    pub host_stats: PerCpuArray<MapData, HostStats>,
    /// Other hosts by name hash.
    pub other: PerCpuHashMap<MapData, u64, OtherHost>,
}

/// The kernel's flow table, as the terminator reads it (hand-off).
pub type FlowTable = HashMap<MapData, FlowKey, Flow>;

impl PinnedMaps {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<aya::maps::Map> {
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
        };
        Ok(Self {
            global: open(MAP_GLOBAL)?.try_into()?,
            labels: open(MAP_LABELS)?.try_into()?,
            host_stats: open(MAP_HOST_STATS)?.try_into()?,
            other: open(MAP_OTHER_HOSTS)?.try_into()?,
        })
    }
}
