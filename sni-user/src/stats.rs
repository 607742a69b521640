//! Reading the counters from the pinned maps and showing them (table or JSON).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sni_common::{
    maps::{counter, HostStats},
    HostKey,
};

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
    /// Packets dropped by the host's `action = "drop"`.
    pub dropped: u64,
    /// Packets dropped over the host's `hello_rate`.
    pub rate_limited: u64,
    /// Whether the operator configured this host (its row is its first name).
    pub configured: bool,
}

/// All counters at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Hosts, most ClientHellos first, then by name.
    pub hosts: Vec<HostRow>,
    /// Global counters by name (`sni_common::maps::counter::NAMES`).
    pub global: serde_json::Map<String, serde_json::Value>,
    /// The terminator's counters (`{"hosts":[…],"global":{…}}`), when one is running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminator: Option<serde_json::Value>,
}

impl Snapshot {
    /// Reads the classifier's counters from the maps pinned under `pin_dir` and the
    /// terminator's from `control`; either may be absent (not running), not both.
    pub fn read(pin_dir: &Path, control: &Path) -> Result<Self> {
        let terminator = crate::control::query(control).ok().filter(|t| !t.is_null());
        let maps = match PinnedMaps::open(pin_dir).and_then(|maps| {
            if crate::loader::pins_are_held(pin_dir) == Some(false) {
                anyhow::bail!(
                    "the maps pinned under {} are left from a sni-user run that is no longer \
                     running (it was killed); their counters are not live. The next start \
                     removes them",
                    pin_dir.display()
                );
            }
            Ok(maps)
        }) {
            Ok(maps) => maps,
            Err(e) if terminator.is_some() => {
                tracing::debug!(error = %e, "no classifier");
                return Ok(Self {
                    hosts: Vec::new(),
                    global: serde_json::Map::new(),
                    terminator,
                });
            }
            Err(e) => return Err(e),
        };
        Self::from_maps(&maps, terminator)
    }

    /// Reads the classifier's counters from its open maps.
    pub fn from_maps(maps: &PinnedMaps, terminator: Option<serde_json::Value>) -> Result<Self> {
        let mut hosts = Vec::new();
        let row = |name: &HostKey, s: HostStats, configured: bool| HostRow {
            host: name.as_bytes().escape_ascii().to_string(),
            client_hellos: s.client_hellos,
            packets: s.packets,
            bytes: s.bytes,
            ech: s.ech,
            dropped: s.dropped,
            rate_limited: s.rate_limited,
            configured,
        };
        // Slot 0 is the default's; configured hosts from 1.
        for slot in 1..maps.labels.len() {
            let label = maps.labels.get(&slot, 0).context("reading a host label")?;
            if label.len == 0 {
                continue; // a free slot (room for hosts added by a reload)
            }
            let values = maps
                .host_stats
                .get(&slot, 0)
                .context("reading a host's counters")?;
            hosts.push(row(&label, sum(values.iter()), true));
        }
        for entry in maps.other.iter() {
            let (hash, values) = entry.context("reading a host entry")?;
            // A name evicted from its LRU before its counters (rare: the kernel refreshes it
            // at each ClientHello) is shown empty, as before it was kept apart.
            let name = maps.other_names.get(&hash, 0).unwrap_or(HostKey::EMPTY);
            hosts.push(row(&name, sum(values.iter()), false));
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
        Ok(Self {
            hosts,
            global,
            terminator,
        })
    }

    /// The global counter `name` (0 if unknown).
    pub fn global(&self, name: &str) -> u64 {
        self.global.get(name).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    /// Human-readable table: hosts, then the global counters.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let terminator_hosts = self
            .terminator
            .as_ref()
            .and_then(|t| t["hosts"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|h| h["host"].as_str());
        let width = self
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .chain(terminator_hosts)
            .map(str::len)
            .max()
            .unwrap_or(0)
            .clamp(10, 64);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>13}  {:>10}  {:>14}  {:>6}  {:>8}  {:>12}",
            "HOST", "CLIENT_HELLOS", "PACKETS", "BYTES", "ECH", "DROPPED", "RATE_LIMITED"
        );
        for h in &self.hosts {
            let mark = if h.configured { "" } else { " (other)" };
            let _ = writeln!(
                out,
                "{:<width$}  {:>13}  {:>10}  {:>14}  {:>6}  {:>8}  {:>12}{mark}",
                h.host, h.client_hellos, h.packets, h.bytes, h.ech, h.dropped, h.rate_limited
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
        if let Some(t) = &self.terminator {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<width$}  {:>10}  {:>6}  {:>14}  {:>14}  FAILURES",
                "TERMINATOR", "HANDSHAKES", "ACTIVE", "TO_BACKEND", "TO_CLIENT"
            );
            for h in t["hosts"].as_array().into_iter().flatten() {
                let failures: Vec<String> = h["failures"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let n = |k: &str| h[k].as_u64().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{:<width$}  {:>10}  {:>6}  {:>14}  {:>14}  {}",
                    h["host"].as_str().unwrap_or(""),
                    n("handshakes"),
                    n("active"),
                    n("bytes_to_backend"),
                    n("bytes_to_client"),
                    failures.join(" ")
                );
            }
            for (name, value) in t["global"].as_object().into_iter().flatten() {
                let _ = writeln!(out, "  {name:<24} {value}");
            }
        }
        out
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a HostStats>) -> HostStats {
    let mut total = HostStats::default();
    for v in values {
        total.add(v);
    }
    total
}
