//! Reading the counters from the pinned maps and showing them (table or JSON).

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use serde::Serialize;
use sni_common::maps::{counter, HostStats};

use crate::loader::PinnedMaps;

/// One host's counters, summed over CPUs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HostRow {
    /// The normalised name; bytes outside printable ASCII are escaped (`\xNN`).
    pub host: String,
    /// ClientHellos naming this host.
    pub client_hellos: u64,
    /// Packets counted toward this host.
    pub packets: u64,
    /// Bytes counted toward this host.
    pub bytes: u64,
    /// ClientHellos naming this host that carried encrypted_client_hello.
    pub ech: u64,
    /// Whether the operator configured this name.
    pub configured: bool,
}

/// All counters at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Hosts, most ClientHellos first, then by name.
    pub hosts: Vec<HostRow>,
    /// Global counters by name (`sni_common::maps::counter::NAMES`).
    pub global: serde_json::Map<String, serde_json::Value>,
}

impl Snapshot {
    /// Reads every counter from the maps pinned under `pin_dir`.
    pub fn read(pin_dir: &Path) -> Result<Self> {
        let maps = PinnedMaps::open(pin_dir)?;
        let mut hosts = Vec::new();
        for (map, configured) in [(&maps.known, true), (&maps.other, false)] {
            for entry in map.iter() {
                let (key, values) = entry.context("reading a host entry")?;
                let s = sum(&values);
                hosts.push(HostRow {
                    host: key.as_bytes().escape_ascii().to_string(),
                    client_hellos: s.client_hellos,
                    packets: s.packets,
                    bytes: s.bytes,
                    ech: s.ech,
                    configured,
                });
            }
        }
        hosts.sort_by(|a, b| {
            b.client_hellos
                .cmp(&a.client_hellos)
                .then_with(|| a.host.cmp(&b.host))
        });
        let mut global = serde_json::Map::new();
        for (i, name) in counter::NAMES.iter().enumerate() {
            let values = maps
                .global
                .get(&(i as u32), 0)
                .with_context(|| format!("reading counter {name}"))?;
            let total = values.iter().fold(0u64, |a, v| a.saturating_add(*v));
            global.insert((*name).to_owned(), total.into());
        }
        Ok(Self { hosts, global })
    }

    /// The global counter `name` (0 if unknown).
    pub fn global(&self, name: &str) -> u64 {
        self.global.get(name).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    /// Human-readable table: hosts, then the global counters.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let width = self
            .hosts
            .iter()
            .map(|h| h.host.len())
            .max()
            .unwrap_or(0)
            .clamp(4, 64);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>13}  {:>10}  {:>14}  {:>6}",
            "HOST", "CLIENT_HELLOS", "PACKETS", "BYTES", "ECH"
        );
        for h in &self.hosts {
            let mark = if h.configured { "" } else { " (other)" };
            let _ = writeln!(
                out,
                "{:<width$}  {:>13}  {:>10}  {:>14}  {:>6}{mark}",
                h.host, h.client_hellos, h.packets, h.bytes, h.ech
            );
        }
        if self.hosts.is_empty() {
            let _ = writeln!(out, "(no host seen yet)");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "GLOBAL");
        for (name, value) in &self.global {
            let _ = writeln!(out, "  {name:<16} {value}");
        }
        out
    }
}

fn sum(values: &PerCpuValues<HostStats>) -> HostStats {
    let mut total = HostStats::default();
    for v in values.iter() {
        total.add(v);
    }
    total
}
