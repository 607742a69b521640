//! The XDP program loaded in the kernel (not attached anywhere), driven by
//! `BPF_PROG_TEST_RUN`, with its maps read back.

use std::collections::HashMap;

use aya::{
    maps::{Array, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use sni_common::{
    maps::{
        counter, HostStats, PortSet, MAP_GLOBAL, MAP_KNOWN_HOSTS, MAP_OTHER_HOSTS, MAP_PORTS,
        PROGRAM,
    },
    HostKey,
};

/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;

/// A loaded program with its own maps.
pub struct Prog {
    ebpf: Ebpf,
}

impl Prog {
    /// Loads the program watching `ports`, with `known` configured hosts and room for
    /// `other_capacity` other names.
    pub fn load(ports: &[u16], known: &[&str], other_capacity: u32) -> Self {
        crate::require_root();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_OTHER_HOSTS, other_capacity)
            .map_max_entries(MAP_KNOWN_HOSTS, 64)
            .load(sni_user::loader::OBJECT)
            .expect("loading the XDP object");
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp");
        if let Err(e) = program.load() {
            panic!("the verifier rejected the program: {e:?}");
        }
        let mut set = PortSet::EMPTY;
        for p in ports {
            set.insert(*p);
        }
        let mut port_map: Array<_, PortSet> =
            Array::try_from(ebpf.map_mut(MAP_PORTS).expect("ports map")).expect("array");
        port_map.set(0, set, 0).expect("writing ports");
        let mut hosts: PerCpuHashMap<_, HostKey, HostStats> =
            PerCpuHashMap::try_from(ebpf.map_mut(MAP_KNOWN_HOSTS).expect("known map"))
                .expect("per-cpu hash");
        let cpus = nr_cpus().expect("cpus");
        for name in known {
            let key = HostKey::from_name(name.as_bytes()).expect("valid name");
            let zero = PerCpuValues::try_from(vec![HostStats::default(); cpus]).expect("values");
            hosts.insert(key, zero, 0).expect("insert known");
        }
        Self { ebpf }
    }

    /// Runs the program once on `frame`; returns its verdict.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.run_repeat(frame, 1)
    }

    /// Runs the program `repeat` times on `frame` (the kernel loop); returns the verdict.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> u32 {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .expect("program")
            .try_into()
            .expect("xdp");
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        program
            .test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e:?}", frame.len()))
            .return_value
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

    /// One host's counters (summed over CPUs) and whether it is a configured one.
    pub fn host(&self, name: &str) -> Option<(HostStats, bool)> {
        let key = HostKey::from_name(name.as_bytes()).expect("valid name");
        for (map_name, configured) in [(MAP_KNOWN_HOSTS, true), (MAP_OTHER_HOSTS, false)] {
            let map: PerCpuHashMap<_, HostKey, HostStats> =
                PerCpuHashMap::try_from(self.ebpf.map(map_name).expect("map")).expect("hash");
            if let Ok(values) = map.get(&key, 0) {
                let mut total = HostStats::default();
                for v in values.iter() {
                    total.add(v);
                }
                return Some((total, configured));
            }
        }
        None
    }

    /// Entries in the map of other names.
    pub fn other_len(&self) -> usize {
        let map: PerCpuHashMap<_, HostKey, HostStats> =
            PerCpuHashMap::try_from(self.ebpf.map(MAP_OTHER_HOSTS).expect("map")).expect("hash");
        map.keys().count()
    }
}

/// Asserts that every ClientHello ended in exactly one outcome.
pub fn assert_outcomes_add_up(g: &HashMap<&'static str, u64>) {
    assert_eq!(
        g["client_hellos"],
        g["sni"] + g["no_sni"] + g["malformed"] + g["incomplete"],
        "outcomes do not add up: {g:?}"
    );
}
