//! The XDP program loaded in the kernel (not attached anywhere), driven by
//! `BPF_PROG_TEST_RUN`, with its maps read back.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use sni_common::{
    flow::{Flow, FlowKey, Owner},
    ja4::{Ja4Key, Ja4State},
    maps::{
        counter, HostJa4, HostStats, Ja4Stats, MAP_FLOW_CACHE, MAP_GLOBAL, MAP_HOST_STATS,
        MAP_JA4_EVENTS, MAP_JA4_HOSTS, MAP_JA4_OTHER, MAP_OTHER_HOSTS, MAP_OTHER_NAMES,
        MAP_PENDING, PROGRAM,
    },
    HostKey,
};
use sni_user::{
    config::Config,
    kernel::{
        flow_table::FlowTable,
        loader::{configured_slot, load_program, StartOptions},
        readers::HostCounters,
    },
};

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;

/// A loaded program with its own maps.
pub struct Prog {
    ebpf: Ebpf,
}

impl Prog {
    /// Loads the program watching `ports`, with `known` configured hosts (one `[[host]]`
    /// each) and room for `other_capacity` other names.
    pub fn load(ports: &[u16], known: &[&str], other_capacity: u32) -> Self {
        let mut text = format!(
            "[xdp]\ninterfaces = [\"lo\"]\nports = {ports:?}\nother_hosts_capacity = {other_capacity}\n"
        );
        for name in known {
            text.push_str(&format!("[[host]]\nnames = [{name:?}]\n"));
        }
        Self::with_config(&text)
    }

    /// Loads the program with the classifier settings of a config file's text (`[xdp]`
    /// with any interface name: nothing is attached).
    pub fn with_config(text: &str) -> Self {
        Self::with_options(text, StartOptions::default())
    }

    /// As [`Prog::with_config`], with loader options (e.g. the kernel's debug log on).
    pub fn with_options(text: &str, opts: StartOptions) -> Self {
        crate::require_root();
        let config = Config::parse(text, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let xdp = config.xdp.clone().expect("the test config has [xdp]");
        let ebpf = load_program(&config, &xdp, opts)
            .unwrap_or_else(|e| panic!("loading the XDP program: {e:#}"));
        Self { ebpf }
    }

    /// Runs the program once on `frame`; returns its verdict.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.run_repeat(frame, 1)
    }

    /// Runs the program `repeat` times on `frame` (the kernel loop); returns the verdict.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> u32 {
        self.run_timed(frame, repeat).0
    }

    /// As [`Prog::run_repeat`], with the kernel's mean time per run.
    pub fn run_timed(&self, frame: &[u8], repeat: u32) -> (u32, std::time::Duration) {
        let program = self.program();
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        program
            .test_run(opts)
            .map(|r| (r.return_value, r.duration))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e:?}", frame.len()))
    }

    /// Global counters by name, summed over CPUs.
    pub fn global(&self) -> HashMap<&'static str, u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(MAP_GLOBAL).expect("global")).expect("array");
        counter::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v = map.get(&(i as u32), 0).expect("counter");
                (*name, v.iter().sum())
            })
            .collect()
    }

    /// One host's counters (with what the flow caches still owe it) and whether it is a
    /// configured one. A configured host is found by any of its names (or `*.` patterns).
    pub fn host(&self, name: &str) -> Option<(HostStats, bool)> {
        let key = HostKey::from_name(name.as_bytes()).expect("valid name");
        let counters = self.host_counters();
        if let Some(slot) = configured_slot(&self.ebpf, &key).expect("the host table") {
            return Some((counters.of(Owner::Configured(slot)), true));
        }
        let stats = *counters.other.get(&key.hash64())?;
        let names: BpfHashMap<_, u64, HostKey> =
            BpfHashMap::try_from(self.ebpf.map(MAP_OTHER_NAMES).expect("names")).expect("hash");
        let name = names.get(&key.hash64(), 0).expect("the name is kept");
        assert_eq!(name, key, "the entry of this hash carries the name");
        Some((stats, false))
    }

    /// Every host's counters, read as `sni-user stats` reads them.
    pub fn host_counters(&self) -> HostCounters {
        let map = |name| self.ebpf.map(name).expect(name);
        let stats = Array::try_from(map(MAP_HOST_STATS)).expect("array");
        let cache = Array::try_from(map(MAP_FLOW_CACHE)).expect("array");
        HostCounters::read(&stats, &self.other(), &cache).expect("reading the host counters")
    }

    fn other(&self) -> BpfHashMap<&aya::maps::MapData, u64, HostStats> {
        BpfHashMap::try_from(self.ebpf.map(MAP_OTHER_HOSTS).expect("map")).expect("hash")
    }

    /// Entries in the map of other names.
    pub fn other_len(&self) -> usize {
        self.other().keys().count()
    }

    /// The flow table.
    pub fn flow_table(&self) -> FlowTable<&aya::maps::MapData> {
        FlowTable::of(&self.ebpf).expect("flow table")
    }

    /// The flow table's entry for `key`.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flow_table().get(key)
    }

    /// Flows in the flow table.
    pub fn flows_len(&self) -> usize {
        self.flow_table().flows().count()
    }

    /// Flows in the flow table, checked: each in one entry only, at one its place allows.
    pub fn checked_flows(&self) -> usize {
        let table = self.flow_table();
        let shape = table.shape();
        let mut seen = std::collections::HashSet::new();
        for (i, entry) in table.flows() {
            let key = entry.flow_key().expect("an entry in use has a key");
            assert!(
                shape.place(&key.words()).entries().any(|c| c == i),
                "flow {key:?} at entry {i}, not one of its place's ({shape:?})"
            );
            assert!(seen.insert(key), "flow {key:?} in two entries");
        }
        seen.len()
    }

    /// Takes `key`'s flow out of the flow table, as a new flow taking its entry does.
    pub fn evict_flow(&mut self, key: &FlowKey) {
        let mut table = FlowTable::of_mut(&mut self.ebpf).expect("flow table");
        assert!(
            table.remove(key).expect("writing the flow table"),
            "no flow {key:?}"
        );
    }

    /// The loaded object, for the loader's own functions (e.g. what a reload does to flows).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Every map of the loaded program: sizes from the kernel and the memory it charges
    /// (`memlock` in the map's fdinfo).
    pub fn map_memory(&self) -> Vec<MapMemory> {
        self.ebpf
            .maps()
            .filter_map(|(name, map)| {
                let (data, per_cpu) = match map {
                    Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::RingBuf(d) => {
                        (d, false)
                    }
                    Map::PerCpuArray(d) | Map::PerCpuHashMap(d) | Map::PerCpuLruHashMap(d) => {
                        (d, true)
                    }
                    _ => return None,
                };
                let info = data.info().expect("map info");
                let fd = data.fd().as_fd().as_raw_fd();
                let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
                    .expect("the map's fdinfo");
                let memlock = fdinfo
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("memlock in the map's fdinfo");
                Some(MapMemory {
                    name: name.to_owned(),
                    per_cpu,
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                    memlock,
                })
            })
            .collect()
    }

    /// ClientHellos pending across segments.
    pub fn pending_len(&self) -> usize {
        let pending: BpfHashMap<_, FlowKey, sni_common::flow::Pending> =
            BpfHashMap::try_from(self.ebpf.map(MAP_PENDING).expect("pending")).expect("hash");
        pending.keys().count()
    }
}

/// One map's size, as loaded.
#[derive(Clone, Debug)]
pub struct MapMemory {
    /// Its name.
    pub name: String,
    /// Whether each CPU has its own copy of every value.
    pub per_cpu: bool,
    /// Key bytes.
    pub key_size: u32,
    /// Value bytes.
    pub value_size: u32,
    /// Entries.
    pub max_entries: u32,
    /// Bytes the kernel charges for it.
    pub memlock: u64,
}

/// The flow key of a frame built by `frame::v4_segment` with client port `src_port`.
pub fn v4_key(src_port: u16, dst_port: u16) -> FlowKey {
    let mut key = FlowKey {
        src_port,
        dst_port,
        family: 4,
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&[198, 18, 0, 1]);
    key.dst[..4].copy_from_slice(&[198, 18, 0, 2]);
    key
}

/// Asserts that every ClientHello ended in exactly one outcome.
pub fn assert_outcomes_add_up(g: &HashMap<&'static str, u64>) {
    assert_eq!(
        g["client_hellos"],
        g["sni"] + g["no_sni"] + g["malformed"] + g["incomplete"] + g["sslv2"],
        "outcomes do not add up: {g:?}"
    );
}

/// Fingerprints (issue 19): the kernel's counters by key and the lists it sent.
impl Prog {
    /// Counters of the fingerprints not configured, by key.
    pub fn ja4_other(&self) -> HashMap<Ja4Key, Ja4Stats> {
        let map: BpfHashMap<_, Ja4Key, Ja4Stats> =
            BpfHashMap::try_from(self.ebpf.map(MAP_JA4_OTHER).expect("ja4 other")).expect("hash");
        map.iter().map(|r| r.expect("an entry")).collect()
    }

    /// Counters per (host, fingerprint).
    pub fn ja4_hosts(&self) -> HashMap<HostJa4, Ja4Stats> {
        let map: BpfHashMap<_, HostJa4, Ja4Stats> =
            BpfHashMap::try_from(self.ebpf.map(MAP_JA4_HOSTS).expect("ja4 hosts")).expect("hash");
        map.iter().map(|r| r.expect("an entry")).collect()
    }

    /// The records of new fingerprints the kernel sent since the last call.
    pub fn ja4_events(&mut self) -> Vec<Ja4State> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut(MAP_JA4_EVENTS).expect("events"))
            .expect("ring buffer");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), Ja4State::SIZE, "a record is one Ja4State");
            out.push(Ja4State::from_bytes(&item).expect("a record is one Ja4State"));
        }
        out
    }
}

impl Prog {
    /// The loaded XDP program (to pin it, or read the kernel's statistics of it).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp")
    }

    /// Instructions the verifier processed to accept the program (its budget is a million).
    pub fn verified_insns(&self) -> u32 {
        self.program()
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16 and later)")
    }
}

/// Runs the rest of the calling test on `cpu` (the program runs on the caller's core, and so
/// uses that core's flow cache).
pub fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("a CPU id within the set");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("pinning to core {cpu}: {e} (these tests need 2 cores)"));
}

/// The IPv4 segment of rustls' ClientHello naming `name`, from client port `port` to
/// `dst_port`, its first byte at `seq`; and the sequence number of the byte after it.
pub fn hello_frame(port: u16, dst_port: u16, seq: u32, name: &str) -> (Vec<u8>, u32) {
    let hello = crate::hellos::rustls_hello(name);
    let f = crate::frame::v4_segment(
        &crate::frame::Seg {
            src_port: port,
            dst_port,
            seq,
            flags: crate::frame::PSH_ACK,
        },
        &hello,
    );
    (f, seq + hello.len() as u32)
}

/// An IPv4 segment from client port `port` to `dst_port` at `seq` carrying one 32-byte TLS
/// application-data record.
pub fn data_frame(port: u16, dst_port: u16, seq: u32) -> Vec<u8> {
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.resize(5 + 0x20, 0xab);
    crate::frame::v4_segment(
        &crate::frame::Seg {
            src_port: port,
            dst_port,
            seq,
            flags: crate::frame::PSH_ACK,
        },
        &record,
    )
}
