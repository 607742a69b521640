//! What readers of the pinned maps see of fingerprints (JA4): the configured ones with their
//! action and counters, every other one, and per host its most frequent ones with the rest
//! summed. Always by JA4 string, never by the kernel's keys.
//!
//! A key is named by `SNI_JA4_NAMES`, which the daemon writes as it learns keys. A key not
//! named (yet, or any more: its record was lost when the ring buffer was full, or its name
//! left the LRU of names) shows as its JA4_a followed by `_?`, and so does a key whose lists
//! were too long for the string to be computed; such rows are summed by that label.

use std::collections::HashMap as StdHashMap;

use anyhow::{Context, Result};
use serde::Serialize;
use sni_common::{
    flow::{kind, Policy, ACTION_DROP},
    ja4::Ja4Key,
    maps::{HostJa4, Ja4Name, Ja4Stats},
    HostKey,
};

use crate::{
    config::{fingerprint::DEFAULT_JA4_TOP, Action, Config},
    kernel::loader::PinnedMaps,
};

/// One fingerprint's counters.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Ja4Row {
    /// The JA4 string (`t13d1516h2_8daaf6152771_e5627efa2ab1`), or JA4_a and `_?` when not
    /// known.
    pub ja4: String,
    /// ClientHellos with it.
    pub client_hellos: u64,
    /// Those whose flow was dropped by an action (the host's or the fingerprint's).
    pub dropped: u64,
    /// Those dropped over a hello_rate (the host's or the fingerprint's).
    pub rate_limited: u64,
}

impl Ja4Row {
    fn new(ja4: String, s: &Ja4Stats) -> Self {
        Self {
            ja4,
            client_hellos: s.client_hellos,
            dropped: s.dropped,
            rate_limited: s.rate_limited,
        }
    }

    fn add(&mut self, s: &Ja4Stats) {
        let mut sum = self.stats();
        sum.add(s);
        self.client_hellos = sum.client_hellos;
        self.dropped = sum.dropped;
        self.rate_limited = sum.rate_limited;
    }

    /// Adds `other`'s counters (a fingerprint summed into this row).
    pub fn add_row(&mut self, other: &Self) {
        self.add(&other.stats());
    }

    /// Its counters.
    fn stats(&self) -> Ja4Stats {
        Ja4Stats {
            client_hellos: self.client_hellos,
            dropped: self.dropped,
            rate_limited: self.rate_limited,
        }
    }

    /// Most ClientHellos first, then by string.
    fn rank(a: &Self, b: &Self) -> std::cmp::Ordering {
        b.client_hellos
            .cmp(&a.client_hellos)
            .then_with(|| a.ja4.cmp(&b.ja4))
    }
}

/// A configured fingerprint (`[[fingerprint]]`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConfiguredRow {
    /// Its JA4 string, its counters.
    #[serde(flatten)]
    pub row: Ja4Row,
    /// `pass` or `drop`.
    pub action: &'static str,
    /// ClientHellos per second it may send (over all hosts), when limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hello_rate: Option<u64>,
    /// Whether the daemon has seen it yet (its key is in the kernel's map of configured
    /// keys): until then it is not acted on, having sent no ClientHello.
    pub learned: bool,
}

impl ConfiguredRow {
    /// Its action as readers show it: `drop`, `pass`, or `pass 50/s`.
    pub fn action_text(&self) -> String {
        match self.hello_rate {
            Some(rate) => format!("{} {rate}/s", self.action),
            None => self.action.to_owned(),
        }
    }
}

/// One host's fingerprints: the `top` most frequent, the rest summed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HostFingerprints {
    /// The host, as the host rows name it.
    pub host: String,
    /// Whether it is a configured host.
    pub configured: bool,
    /// Its most frequent fingerprints.
    pub top: Vec<Ja4Row>,
    /// How many fingerprints are summed in `rest`.
    pub rest_fingerprints: usize,
    /// The others summed (`ja4` is `other`).
    pub rest: Ja4Row,
}

/// Every fingerprint counter at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FingerprintRows {
    /// Configured fingerprints, in the order of the config when it is known, else by
    /// ClientHellos.
    pub configured: Vec<ConfiguredRow>,
    /// Every other fingerprint, most ClientHellos first.
    pub other: Vec<Ja4Row>,
    /// Per host, the hosts with most ClientHellos first.
    pub hosts: Vec<HostFingerprints>,
}

/// What a reader knows beside the maps.
#[derive(Clone, Debug)]
pub struct View {
    /// Fingerprints shown per host (`[xdp] ja4_top`).
    pub top: usize,
    /// Whether the per-host rows are read at all (a walk of every (host, fingerprint) entry):
    /// `stats` and `top` show them, `/metrics` does not.
    pub per_host: bool,
    /// The configured JA4 strings in the config's order, with their action, when the config
    /// is known (then a fingerprint not seen yet is listed too).
    pub configured: Option<Vec<(String, Action, Option<u32>)>>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            top: DEFAULT_JA4_TOP,
            per_host: true,
            configured: None,
        }
    }
}

impl View {
    /// What `config` says.
    pub fn of(config: &Config) -> Self {
        Self {
            top: config.xdp.as_ref().map_or(DEFAULT_JA4_TOP, |x| x.ja4_top),
            per_host: true,
            configured: Some(
                config
                    .fingerprints
                    .iter()
                    .map(|f| (f.ja4.clone(), f.action, f.hello_rate))
                    .collect(),
            ),
        }
    }
}

impl FingerprintRows {
    /// Reads the fingerprint maps.
    pub fn read(maps: &PinnedMaps, view: &View) -> Result<Self> {
        let keys: StdHashMap<Ja4Key, u32> = maps.ja4_slots.iter().filter_map(Result::ok).collect();
        let names = Names::read(maps, &keys);
        let slots = maps.ja4_policy.len();
        // Configured: the kernel's row and the daemon's (counts moved from the others).
        let mut by_slot: StdHashMap<u32, (Option<String>, Ja4Stats)> = StdHashMap::new();
        for (key, slot) in &keys {
            let e = by_slot.entry(*slot).or_default();
            if e.0.is_none() {
                e.0 = Some(names.label(key));
            }
        }
        for slot in 1..slots {
            let mut s = maps
                .ja4_stats
                .get(&slot, 0)
                .context("reading a fingerprint's counters")?;
            if let Ok(moved) = maps.ja4_stats.get(&(slots + slot), 0) {
                s.add(&moved);
            }
            // A slot without keys is free, or configured and not seen yet (zero): what a CPU
            // added there while a reload removed its fingerprint is cleared when it is reused.
            if let Some(e) = by_slot.get_mut(&slot) {
                e.1 = s;
            }
        }
        let mut configured: Vec<ConfiguredRow> = Vec::new();
        for (slot, (label, stats)) in &by_slot {
            let policy = maps.ja4_policy.get(slot, 0).unwrap_or_default();
            let label = label.clone().unwrap_or_else(|| format!("slot {slot}"));
            configured.push(configured_row(Ja4Row::new(label, stats), &policy));
        }
        if let Some(list) = &view.configured {
            // The config's order; what it lists and the maps do not have yet, with zeros.
            let mut ordered = Vec::with_capacity(list.len());
            for (ja4, action, rate) in list {
                match configured.iter().position(|r| &r.row.ja4 == ja4) {
                    Some(i) => ordered.push(configured.swap_remove(i)),
                    None => ordered.push(ConfiguredRow {
                        row: Ja4Row {
                            ja4: ja4.clone(),
                            ..Ja4Row::default()
                        },
                        action: match action {
                            Action::Drop => "drop",
                            Action::Pass => "pass",
                        },
                        hello_rate: rate.map(u64::from),
                        learned: false,
                    }),
                }
            }
            configured.sort_by(|a, b| Ja4Row::rank(&a.row, &b.row));
            ordered.append(&mut configured);
            configured = ordered;
        } else {
            configured.sort_by(|a, b| Ja4Row::rank(&a.row, &b.row));
        }

        // Others, by label (a key the kernel still counts here after it was configured is
        // the configured one's, and moved by the daemon within a second).
        let mut other: StdHashMap<String, Ja4Row> = StdHashMap::new();
        for entry in maps.ja4_other.iter() {
            let (key, s) = entry.context("reading a fingerprint entry")?;
            if keys.contains_key(&key) {
                continue;
            }
            let label = names.label(&key);
            other
                .entry(label.clone())
                .or_insert_with(|| Ja4Row::new(label, &Ja4Stats::default()))
                .add(&s);
        }
        let mut other: Vec<Ja4Row> = other.into_values().collect();
        other.sort_by(Ja4Row::rank);

        let hosts = if view.per_host {
            host_rows(maps, &names, view.top)?
        } else {
            Vec::new()
        };
        Ok(Self {
            configured,
            other,
            hosts,
        })
    }
}

/// A configured fingerprint's row with its policy (one whose keys were learnt).
fn configured_row(row: Ja4Row, policy: &Policy) -> ConfiguredRow {
    ConfiguredRow {
        row,
        action: if policy.action == ACTION_DROP {
            "drop"
        } else {
            "pass"
        },
        hello_rate: (policy.interval_ns > 0)
            .then(|| (1_000_000_000 + policy.interval_ns / 2) / policy.interval_ns),
        learned: true,
    }
}

/// Per host, its top fingerprints and the rest summed.
fn host_rows(maps: &PinnedMaps, names: &Names, top: usize) -> Result<Vec<HostFingerprints>> {
    let mut per_host: StdHashMap<(String, bool), StdHashMap<String, Ja4Row>> = StdHashMap::new();
    let mut labels: StdHashMap<u32, String> = StdHashMap::new();
    for entry in maps.ja4_hosts.iter() {
        let (pair, s): (HostJa4, Ja4Stats) = entry.context("reading a (host, fingerprint)")?;
        let host = match pair.kind {
            kind::CONFIGURED => {
                let label = labels.entry(pair.slot).or_insert_with(|| {
                    maps.labels
                        .get(&pair.slot, 0)
                        .map(|k| k.as_bytes().escape_ascii().to_string())
                        .unwrap_or_default()
                });
                (label.clone(), true)
            }
            kind::OTHER => {
                let name = maps
                    .other_names
                    .get(&pair.name_hash, 0)
                    .unwrap_or(HostKey::EMPTY);
                (name.as_bytes().escape_ascii().to_string(), false)
            }
            _ => ("(no name)".to_owned(), false),
        };
        let label = names.label(&pair.ja4);
        per_host
            .entry(host)
            .or_default()
            .entry(label.clone())
            .or_insert_with(|| Ja4Row::new(label, &Ja4Stats::default()))
            .add(&s);
    }
    let mut hosts: Vec<HostFingerprints> = per_host
        .into_iter()
        .map(|((host, configured), rows)| {
            let mut rows: Vec<Ja4Row> = rows.into_values().collect();
            rows.sort_by(Ja4Row::rank);
            let rest_rows = rows.split_off(top.min(rows.len()));
            let mut rest = Ja4Row {
                ja4: "other".to_owned(),
                ..Ja4Row::default()
            };
            for r in &rest_rows {
                rest.add_row(r);
            }
            HostFingerprints {
                host,
                configured,
                top: rows,
                rest_fingerprints: rest_rows.len(),
                rest,
            }
        })
        .collect();
    let total = |h: &HostFingerprints| {
        h.top
            .iter()
            .map(|r| r.client_hellos)
            .sum::<u64>()
            .saturating_add(h.rest.client_hellos)
    };
    hosts.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.host.cmp(&b.host)));
    Ok(hosts)
}

/// The JA4 strings of the keys, read once per snapshot: a configured fingerprint's learned
/// keys by their slot's label (`SNI_JA4_LABELS`, never evicted), every other key by the name
/// the daemon gave it (`SNI_JA4_NAMES`, an LRU).
struct Names(StdHashMap<Ja4Key, String>);

impl Names {
    /// `learned`: the keys of configured fingerprints, with their slot.
    fn read(maps: &PinnedMaps, learned: &StdHashMap<Ja4Key, u32>) -> Self {
        let text = |n: &Ja4Name| {
            (n.known == 1)
                .then(|| String::from_utf8(n.ja4.to_vec()).ok())
                .flatten()
        };
        let mut names: StdHashMap<Ja4Key, String> = maps
            .ja4_names
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, n)| Some((k, text(&n)?)))
            .collect();
        for (key, slot) in learned {
            if let Some(label) = maps.ja4_labels.get(slot, 0).ok().as_ref().and_then(text) {
                names.insert(*key, label);
            }
        }
        Self(names)
    }

    /// The JA4 string of `key`, or its JA4_a and `_?`.
    fn label(&self, key: &Ja4Key) -> String {
        self.0.get(key).cloned().unwrap_or_else(|| unknown(key))
    }
}

/// The label of a key whose JA4 string is not known: JA4_a (escaped) and `_?`.
pub fn unknown(key: &Ja4Key) -> String {
    format!("{}_?", key.a.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_show_ja4_a_and_a_question_mark() {
        let key = Ja4Key {
            a: *b"t13d1516h2",
            ..Ja4Key::default()
        };
        assert_eq!(unknown(&key), "t13d1516h2_?");
        assert_eq!(Names(StdHashMap::new()).label(&key), "t13d1516h2_?");
        let policy = Policy::new(false, Some(3), None);
        let row = configured_row(Ja4Row::default(), &policy);
        assert_eq!((row.action, row.hello_rate), ("pass", Some(3)));
        let row = configured_row(Ja4Row::default(), &Policy::new(true, None, None));
        assert_eq!((row.action, row.hello_rate), ("drop", None));
    }
}
