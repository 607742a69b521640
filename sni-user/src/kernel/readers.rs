//! What readers of a running classifier's pinned maps see: every host's counters (with what
//! the flow caches still owe them), the global counters, and the [`Snapshot`] that `stats`,
//! `top` and the metrics endpoint are made from.

use std::{borrow::Borrow, collections::HashMap as StdHashMap};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData};
use serde::Serialize;
use sni_common::{
    flow::{CachedFlow, Owner},
    maps::{counter, HostStats},
    HostKey,
};

use crate::kernel::{
    fingerprint_rows::{FingerprintRows, View},
    loader::PinnedMaps,
};

/// One host's counters.
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

impl HostRow {
    /// The row of a host named `host` with counters `s`.
    pub fn new(host: String, s: HostStats, configured: bool) -> Self {
        Self {
            host,
            client_hellos: s.client_hellos,
            packets: s.packets,
            bytes: s.bytes,
            ech: s.ech,
            dropped: s.dropped,
            rate_limited: s.rate_limited,
            configured,
        }
    }

    /// Its counters.
    pub fn stats(&self) -> HostStats {
        HostStats {
            client_hellos: self.client_hellos,
            packets: self.packets,
            bytes: self.bytes,
            ech: self.ech,
            dropped: self.dropped,
            rate_limited: self.rate_limited,
        }
    }

    /// The order rows are shown in: most ClientHellos first, then by name.
    pub fn rank(a: &Self, b: &Self) -> std::cmp::Ordering {
        b.client_hellos
            .cmp(&a.client_hellos)
            .then_with(|| a.host.cmp(&b.host))
    }
}

/// All counters at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Hosts, most ClientHellos first, then by name.
    pub hosts: Vec<HostRow>,
    /// Global counters by name (`sni_common::maps::counter::NAMES`).
    pub global: serde_json::Map<String, serde_json::Value>,
    /// Fingerprints (JA4): configured, others, per host.
    pub fingerprints: FingerprintRows,
    /// The terminator's counters (`{"hosts":[…],"global":{…}}`), when one is running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminator: Option<serde_json::Value>,
}

impl Snapshot {
    /// Reads the classifier's counters from its open maps.
    ///
    /// The host counters take a while to read (every core's flow cache), and a packet of a
    /// host that lands meanwhile would be in the global counters and not in its host's. So
    /// the global counters that host rows add up to are read before and after, and the read
    /// is made again (up to [`READ_ATTEMPTS`] in all) while they move: once traffic to the
    /// hosts pauses, the two agree. Traffic elsewhere (other ports) costs no second read.
    ///
    /// Fingerprints are read once, after the hosts, and shown as `view` says.
    pub fn from_maps(
        maps: &PinnedMaps,
        terminator: Option<serde_json::Value>,
        view: &View,
    ) -> Result<Self> {
        let mut before = global_counters(maps)?;
        let mut attempt = 1;
        loop {
            let hosts = host_rows(maps)?;
            let global = global_counters(maps)?;
            if mirrored(&before) == mirrored(&global) || attempt == READ_ATTEMPTS {
                return Ok(Self {
                    hosts,
                    global,
                    fingerprints: FingerprintRows::read(maps, view)?,
                    terminator,
                });
            }
            before = global;
            attempt += 1;
        }
    }

    /// The global counter `name` (0 if unknown).
    pub fn global(&self, name: &str) -> u64 {
        self.global.get(name).and_then(|v| v.as_u64()).unwrap_or(0)
    }
}

/// Reads of the host counters in one [`Snapshot::from_maps`] at most.
const READ_ATTEMPTS: usize = 4;

/// The global counters that the host rows add up to (every packet of a host's flows passes
/// through one of them): [`Snapshot::from_maps`] reads again while they move. The others
/// (every packet seen, other ports) move with any traffic and say nothing about the hosts.
fn mirrored(global: &serde_json::Map<String, serde_json::Value>) -> [Option<u64>; 4] {
    [
        counter::CLIENT_HELLOS,
        counter::FLOW_PACKETS,
        counter::DROPPED,
        counter::RATE_LIMITED,
    ]
    .map(|i| {
        let name = counter::NAMES.get(i as usize)?;
        global.get(*name)?.as_u64()
    })
}

/// Every host's row, most ClientHellos first, then by name.
fn host_rows(maps: &PinnedMaps) -> Result<Vec<HostRow>> {
    let row = |name: &HostKey, s: HostStats, configured: bool| {
        HostRow::new(name.as_bytes().escape_ascii().to_string(), s, configured)
    };
    let counters = HostCounters::read(&maps.host_stats, &maps.other, &maps.flow_cache)?;
    let mut hosts = Vec::new();
    // Slot 0 is the default's; configured hosts from 1.
    for slot in 1..maps.labels.len() {
        let label = maps.labels.get(&slot, 0).context("reading a host label")?;
        if label.len == 0 {
            continue; // a free slot (room for hosts added by a reload)
        }
        hosts.push(row(&label, counters.of(Owner::Configured(slot)), true));
    }
    for &hash in counters.other.keys() {
        // A name evicted from its LRU before its counters (rare: the kernel refreshes it at
        // each ClientHello) is shown empty, as before it was kept apart.
        let name = maps.other_names.get(&hash, 0).unwrap_or(HostKey::EMPTY);
        hosts.push(row(&name, counters.of(Owner::Other(hash)), false));
    }
    hosts.sort_by(HostRow::rank);
    Ok(hosts)
}

/// The global counters by name, summed over CPUs.
fn global_counters(maps: &PinnedMaps) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut global = serde_json::Map::new();
    for (i, name) in counter::NAMES.iter().enumerate() {
        let values = maps
            .global
            .get(&(i as u32), 0)
            .with_context(|| format!("reading counter {name}"))?;
        let total = values.iter().fold(0u64, |a, v| a.saturating_add(*v));
        global.insert((*name).to_owned(), total.into());
    }
    Ok(global)
}

/// What a reader that reads again and again (the metrics endpoint, `top`) applies to each
/// snapshot so that a host's packets and bytes never go down from one read to the next. A
/// read can miss what a flow cache entry added to the shared counters while it was being
/// read ([`HostCounters`]); the next read has it. A counter that went down would look like a
/// restart to Prometheus. A host absent from a read is forgotten, so a name that comes back
/// starts from its own counters.
///
/// The fingerprints' counters are held the same way, by JA4 string (configured or not): the
/// kernel's count of a fingerprint moves from the LRU of others to its configured row when the
/// daemon learns its key, and a reader between the two would see it go down.
#[derive(Debug, Default)]
pub struct Monotonic {
    last: StdHashMap<(String, bool), (u64, u64)>,
    ja4: StdHashMap<(String, bool), (u64, u64, u64)>,
}

impl Monotonic {
    /// Raises each host's packets and bytes in `snapshot` to at least their last values, and
    /// each fingerprint's counters.
    pub fn apply(&mut self, snapshot: &mut Snapshot) {
        let mut next = StdHashMap::with_capacity(snapshot.hosts.len());
        for h in &mut snapshot.hosts {
            let key = (h.host.clone(), h.configured);
            if let Some(&(packets, bytes)) = self.last.get(&key) {
                h.packets = h.packets.max(packets);
                h.bytes = h.bytes.max(bytes);
            }
            next.insert(key, (h.packets, h.bytes));
        }
        self.last = next;
        let f = &mut snapshot.fingerprints;
        let rows = f
            .configured
            .iter_mut()
            .map(|c| (&mut c.row, true))
            .chain(f.other.iter_mut().map(|r| (r, false)));
        let mut next = StdHashMap::with_capacity(self.ja4.len());
        for (row, configured) in rows {
            let key = (row.ja4.clone(), configured);
            if let Some(&(hellos, dropped, limited)) = self.ja4.get(&key) {
                row.client_hellos = row.client_hellos.max(hellos);
                row.dropped = row.dropped.max(dropped);
                row.rate_limited = row.rate_limited.max(limited);
            }
            next.insert(key, (row.client_hellos, row.dropped, row.rate_limited));
        }
        self.ja4 = next;
    }
}

/// The pinned maps of a running classifier, read again and again by one reader (the metrics
/// endpoint): each snapshot is made [`Monotonic`].
pub struct MapsReader {
    maps: PinnedMaps,
    monotonic: Monotonic,
    /// How fingerprints are shown (the running config's; a reload changes it).
    pub view: View,
}

impl MapsReader {
    /// A reader of `maps`.
    pub fn new(maps: PinnedMaps) -> Self {
        Self {
            maps,
            monotonic: Monotonic::default(),
            view: View::default(),
        }
    }

    /// The classifier's counters now.
    pub fn read(&mut self) -> Result<Snapshot> {
        let mut snapshot = Snapshot::from_maps(&self.maps, None, &self.view)?;
        self.monotonic.apply(&mut snapshot);
        Ok(snapshot)
    }
}

/// Every host's counters as the kernel keeps them: what the shared maps hold, plus what each
/// CPU's flow cache entries counted and still owe them (`sni_common::flow::CachedFlow`).
///
/// The maps are read first, the caches next. An entry that the kernel gives to another flow
/// in between has added what it owed to a map already read: that read misses it, the next
/// one has it. A read of an entry the kernel is rewriting at that moment can also pair the
/// new flow's host with the old flow's count. So a read during traffic is close, not exact;
/// once traffic stops it is exact.
#[derive(Clone, Debug, Default)]
pub struct HostCounters {
    /// Configured hosts by slot.
    pub configured: StdHashMap<u32, HostStats>,
    /// Other names by name hash.
    pub other: StdHashMap<u64, HostStats>,
}

impl HostCounters {
    /// Reads the counter maps and then the flow cache of a loaded classifier.
    pub fn read<T: Borrow<MapData>>(
        host_stats: &Array<T, HostStats>,
        other: &HashMap<T, u64, HostStats>,
        flow_cache: &Array<T, CachedFlow>,
    ) -> Result<Self> {
        let mut counters = Self::default();
        for slot in 1..host_stats.len() {
            let stats = host_stats
                .get(&slot, 0)
                .context("reading a host's counters")?;
            counters.configured.insert(slot, stats);
        }
        for entry in other.iter() {
            let (hash, stats) = entry.context("reading a host entry")?;
            counters.other.insert(hash, stats);
        }
        for entry in flow_cache.iter() {
            let entry = entry.context("reading the flow cache")?;
            if let Some((owner, packets, bytes)) = entry.owed() {
                let owed = HostStats {
                    packets,
                    bytes,
                    ..HostStats::default()
                };
                let stats = match owner {
                    Owner::Configured(slot) => counters.configured.entry(slot).or_default(),
                    Owner::Other(hash) => counters.other.entry(hash).or_default(),
                };
                stats.add(&owed);
            }
        }
        Ok(counters)
    }

    /// The counters of `owner` (zero if it has none).
    pub fn of(&self, owner: Owner) -> HostStats {
        match owner {
            Owner::Configured(slot) => self.configured.get(&slot),
            Owner::Other(hash) => self.other.get(&hash),
        }
        .copied()
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(rows: &[(&str, bool, u64)]) -> Snapshot {
        let hosts = rows
            .iter()
            .map(|&(host, configured, packets)| HostRow {
                host: host.to_owned(),
                client_hellos: 1,
                packets,
                bytes: packets * 100,
                ech: 0,
                dropped: 0,
                rate_limited: 0,
                configured,
            })
            .collect();
        Snapshot {
            hosts,
            global: serde_json::Map::new(),
            fingerprints: FingerprintRows::default(),
            terminator: None,
        }
    }

    #[test]
    fn monotonic_holds_a_dip_and_forgets_a_host_that_left() {
        let mut m = Monotonic::default();
        let mut first = snapshot(&[("a.example", true, 10), ("b.example", false, 5)]);
        m.apply(&mut first);
        assert_eq!(first.hosts[0].packets, 10);
        // A read that missed what an entry added meanwhile: held at the last value.
        let mut dip = snapshot(&[("a.example", true, 7)]);
        m.apply(&mut dip);
        assert_eq!((dip.hosts[0].packets, dip.hosts[0].bytes), (10, 1000));
        let mut up = snapshot(&[("a.example", true, 12), ("b.example", false, 2)]);
        m.apply(&mut up);
        assert_eq!(up.hosts[0].packets, 12);
        // b.example was absent from the read before: it starts from its own counters.
        assert_eq!(up.hosts[1].packets, 2);
        // The same name, configured now, is another series.
        let mut configured = snapshot(&[("b.example", true, 1)]);
        m.apply(&mut configured);
        assert_eq!(configured.hosts[0].packets, 1);
    }

    #[test]
    fn monotonic_holds_fingerprints_too() {
        use crate::kernel::fingerprint_rows::Ja4Row;
        let row = |hellos| Ja4Row {
            ja4: "t13d1516h2_8daaf6152771_e5627efa2ab1".to_owned(),
            client_hellos: hellos,
            ..Ja4Row::default()
        };
        let mut m = Monotonic::default();
        let mut first = snapshot(&[]);
        first.fingerprints.other.push(row(5));
        m.apply(&mut first);
        // Read while the daemon moved part of its count elsewhere: held.
        let mut dip = snapshot(&[]);
        dip.fingerprints.other.push(row(3));
        m.apply(&mut dip);
        assert_eq!(dip.fingerprints.other[0].client_hellos, 5);
        let mut up = snapshot(&[]);
        up.fingerprints.other.push(row(9));
        m.apply(&mut up);
        assert_eq!(up.fingerprints.other[0].client_hellos, 9);
        // Gone from a read: forgotten.
        m.apply(&mut snapshot(&[]));
        let mut back = snapshot(&[]);
        back.fingerprints.other.push(row(1));
        m.apply(&mut back);
        assert_eq!(back.fingerprints.other[0].client_hellos, 1);
    }
}
