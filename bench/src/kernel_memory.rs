//! Kernel memory of the XDP program's maps for 10 and 100,000 configured hosts: what the
//! kernel charges for each map as loaded (`memlock`; every map here is preallocated, so this
//! is the memory of full tables), at this machine's CPU count and projected to a 64-CPU edge
//! (per-CPU maps hold one value per possible CPU; the flow cache's entries per CPU shrink as
//! CPUs grow).

use anyhow::Result;
use sni_common::maps::{flow_cache_entries, FLOWS_DEFAULT_ENTRIES, MAP_FLOW_CACHE};
use sni_tests::prog::{MapMemory, Prog};

use crate::report::{Better, Goal, Row, Spread};

/// The edge the projection is for.
const EDGE_CPUS: u64 = 64;
/// The budget for 100,000 hosts and full tables on that edge.
const BUDGET_MIB: f64 = 128.0;

const MIB: f64 = 1024.0 * 1024.0;

/// A config with `hosts` configured hosts (one name each) and default capacities.
fn config(hosts: usize) -> String {
    let mut text = String::from("[xdp]\ninterfaces = [\"lo\"]\nports = [443]\n");
    for i in 0..hosts {
        text.push_str(&format!("[[host]]\nnames = [\"host{i}.bench.test\"]\n"));
    }
    text
}

/// A map's memory on `cpus` CPUs, from its memory on `now` CPUs.
fn projected(m: &MapMemory, now: u64, cpus: u64) -> u64 {
    if m.name == MAP_FLOW_CACHE {
        // A block of entries per CPU, whose size follows the CPU count: scale by the cache's
        // total entries.
        let entries = |c: u64| {
            u64::from(flow_cache_entries(
                FLOWS_DEFAULT_ENTRIES,
                u32::try_from(c).unwrap_or(u32::MAX),
            )) * c
        };
        return m.memlock * entries(cpus) / entries(now).max(1);
    }
    if !m.per_cpu {
        return m.memlock;
    }
    // One value (rounded up to 8 bytes) per entry per CPU, on top of what does not grow.
    let per_cpu = u64::from(m.value_size).div_ceil(8) * 8 * u64::from(m.max_entries);
    m.memlock + per_cpu * (cpus.saturating_sub(now))
}

/// Reads of the counters timed per host count.
const READS: usize = 5;

pub fn run() -> Result<(Vec<Row>, Vec<String>)> {
    let now = aya::util::nr_cpus().map_or(1, |n| n as u64);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for hosts in [10usize, 100_000] {
        let prog = Prog::with_config(&config(hosts));
        let maps = prog.map_memory();
        let total: u64 = maps.iter().map(|m| m.memlock).sum();
        let edge: u64 = maps.iter().map(|m| projected(m, now, EDGE_CPUS)).sum();
        let row = |case: String, value: u64, goal: Option<Goal>, note: String| Row {
            section: "kernel memory",
            case,
            unit: "MiB",
            value: value as f64 / MIB,
            baseline_name: "",
            baseline: None,
            better: Better::Lower,
            goal,
            spread: None,
            above: None,
            note,
        };
        rows.push(row(
            format!("{hosts} hosts, full tables, this machine ({now} possible CPUs)"),
            total,
            None,
            "every map's memlock as loaded".to_owned(),
        ));
        rows.push(row(
            format!("{hosts} hosts, full tables, projected to {EDGE_CPUS} CPUs"),
            edge,
            (hosts >= 100_000).then_some(Goal::Most(BUDGET_MIB)),
            "per-CPU maps: one value per entry per CPU more".to_owned(),
        ));
        let mut by_size: Vec<(&MapMemory, u64)> = maps
            .iter()
            .map(|m| (m, projected(m, now, EDGE_CPUS)))
            .collect();
        by_size.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
        let list: Vec<String> = by_size
            .iter()
            .filter(|(_, b)| *b as f64 >= MIB / 10.0)
            .map(|(m, b)| {
                format!(
                    "{} {:.1} MiB ({} × {}+{} B{}; {:.1} MiB here)",
                    m.name,
                    *b as f64 / MIB,
                    m.max_entries,
                    m.key_size,
                    m.value_size,
                    if m.per_cpu { ", per CPU" } else { "" },
                    m.memlock as f64 / MIB
                )
            })
            .collect();
        let line = format!(
            "kernel memory, {hosts} hosts, on {EDGE_CPUS} CPUs: {}",
            list.join("; ")
        );
        eprintln!("  {line}");
        notes.push(line);
        for r in &rows[rows.len() - 2..] {
            eprintln!("  {:<70} {:>10.1} MiB", r.case, r.value);
        }
        // What a read of the counters costs: the counter maps, then every flow cache entry.
        let cache = maps
            .iter()
            .find(|m| m.name == MAP_FLOW_CACHE)
            .map_or(0, |m| m.max_entries);
        let reads: Vec<f64> = (0..READS)
            .map(|_| {
                let start = std::time::Instant::now();
                let counters = prog.host_counters();
                std::hint::black_box(counters);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let spread = Spread::of(&reads);
        let read = Row {
            section: "kernel memory",
            case: format!(
                "{hosts} hosts: one read of every host's counters (the counter maps, then {cache} flow cache entries)"
            ),
            unit: "ms",
            value: spread.median,
            baseline_name: "",
            baseline: None,
            better: Better::Lower,
            goal: None,
            spread: Some(spread),
            above: None,
            note: format!(
                "`HostCounters::read`, as `stats`, `/metrics` and `top` read them; {READS} reads, median (IQR)"
            ),
        };
        eprintln!("  {:<70} {:>10.1} ms", read.case, read.value);
        rows.push(read);
    }
    Ok((rows, notes))
}
