//! Host slots (and fingerprint slots, the same way by JA4 string): the classifier's per-host map entries (counters, label, policy, rate bucket)
//! are indexed by a slot, and a flow's record names its host by slot. Slot 0 is `[default]`.
//!
//! At start `[[host]]` `i` gets slot `i + 1`. A reload keeps the slot of every host that keeps
//! its label (first name), so its kernel counters go on; a host that is new takes a slot that
//! was free before the reload, never one freed by the same reload: flows of a removed host
//! may still name its slot, and its names leave the kernel's map only after the new ones are
//! in.

use std::collections::HashMap;

use sni_common::HostKey;

use crate::config::Config;

/// Which slot each host (by label) has, and how many slots the maps were made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots {
    by_label: HashMap<String, u32>,
    capacity: u32,
}

/// Slots to make for `hosts` configured hosts (slot 0 included) unless the config says:
/// room for a quarter more hosts, at least 64, to be added by reloads. Fingerprint slots
/// (`[[fingerprint]]` by JA4 string) are made the same way.
pub fn default_capacity(hosts: usize) -> u32 {
    let hosts = u32::try_from(hosts).unwrap_or(u32::MAX / 2);
    hosts.saturating_add((hosts / 4).max(64)).saturating_add(1)
}

/// Entries of the name map for `names` configured names: room for twice as many (reloads).
pub fn names_capacity(names: usize) -> u32 {
    u32::try_from(names)
        .unwrap_or(u32::MAX / 2)
        .saturating_mul(2)
        .max(64)
}

impl Slots {
    /// Slots at start: `[[host]]` `i` at `i + 1`, in maps of `capacity` slots.
    pub fn initial(config: &Config, capacity: u32) -> Result<Self, String> {
        Self::of_labels(config.hosts.iter().map(|h| h.label()), capacity).ok_or_else(|| {
            format!(
                "{} hosts need {} slots; xdp.hosts_capacity allows {}",
                config.hosts.len(),
                config.hosts.len() + 1,
                capacity.saturating_sub(1)
            )
        })
    }

    /// Slots at start for entries known by `labels` (hosts' first names, fingerprints' JA4
    /// strings): the `i`-th at `i + 1`, in maps of `capacity` slots; None when they do not
    /// fit.
    pub fn of_labels<'a>(labels: impl IntoIterator<Item = &'a str>, capacity: u32) -> Option<Self> {
        let mut by_label: HashMap<String, u32> = HashMap::new();
        let mut last = 0u32;
        for (l, slot) in labels.into_iter().zip(1u32..) {
            by_label.insert(l.to_owned(), slot);
            last = slot;
        }
        // Every slot given (a label given twice keeps its last) is within the maps.
        (last < capacity).then_some(Self { by_label, capacity })
    }

    /// The slots for `config` after a reload from `self`: kept labels keep theirs, new ones
    /// take the lowest slots free before the reload. Err when they do not fit.
    pub fn next(&self, config: &Config) -> Result<Self, String> {
        self.next_labels(config.hosts.iter().map(|h| h.label()))
            .map_err(|l| {
                format!(
                    "no free host slot for {l:?}: the classifier was started with room for \
                     {} hosts (xdp.hosts_capacity), and slots of hosts removed by this \
                     reload are reused only by the next one",
                    self.capacity.saturating_sub(1)
                )
            })
    }

    /// The slots of `labels` after a reload from `self`, as [`Slots::next`] gives them; Err
    /// names the first label that found no free slot.
    pub fn next_labels<'a>(
        &self,
        labels: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, String> {
        let used: std::collections::HashSet<u32> = self.by_label.values().copied().collect();
        let mut free = (1..self.capacity).filter(|s| !used.contains(s));
        let mut by_label = HashMap::new();
        for l in labels {
            let slot = match self.by_label.get(l) {
                Some(s) => *s,
                None => free.next().ok_or_else(|| l.to_owned())?,
            };
            by_label.insert(l.to_owned(), slot);
        }
        Ok(Self {
            by_label,
            capacity: self.capacity,
        })
    }

    /// The slot of the host labelled `label`.
    pub fn get(&self, label: &str) -> Option<u32> {
        self.by_label.get(label).copied()
    }

    /// Slots in the maps (slot 0 included).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every configured name (exact names and `*.` patterns, normalised) with its host's slot.
    pub fn names(&self, config: &Config) -> Vec<(HostKey, u32)> {
        config
            .hosts
            .iter()
            .filter_map(|h| Some((h, self.get(h.label())?)))
            .flat_map(|(h, slot)| h.patterns().map(move |p| (*p.key(), slot)))
            .collect()
    }

    /// Slots in use, with their host's label.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.by_label.iter().map(|(l, s)| (l.as_str(), *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(hosts: &[&str]) -> Config {
        let text: String = hosts
            .iter()
            .map(|h| format!("[[host]]\nnames = [\"{h}\", \"www.{h}\"]\n"))
            .collect();
        Config::parse(&text, Path::new("t.toml")).expect("valid")
    }

    #[test]
    fn reload_keeps_slots_by_label_and_never_reuses_a_slot_freed_by_itself() {
        let a = Slots::initial(&config(&["a.ex", "b.ex", "c.ex"]), 5).expect("fits");
        assert_eq!(
            (a.get("a.ex"), a.get("b.ex"), a.get("c.ex")),
            (Some(1), Some(2), Some(3))
        );
        // b removed, d added, order changed: a and c keep theirs, d takes 4 (2 was just freed).
        let b = a.next(&config(&["c.ex", "d.ex", "a.ex"])).expect("fits");
        assert_eq!(
            (b.get("a.ex"), b.get("c.ex"), b.get("d.ex")),
            (Some(1), Some(3), Some(4))
        );
        assert_eq!(b.get("b.ex"), None);
        // Next reload: 2 is free again.
        let c = b
            .next(&config(&["c.ex", "d.ex", "a.ex", "e.ex"]))
            .expect("fits");
        assert_eq!(c.get("e.ex"), Some(2));
        // Full: 4 slots of hosts, all used.
        let e = c.next(&config(&["c.ex", "d.ex", "a.ex", "e.ex", "f.ex"]));
        assert!(e.expect_err("full").contains("hosts_capacity"));
        let names = c.names(&config(&["c.ex", "d.ex", "a.ex", "e.ex"]));
        assert_eq!(names.len(), 8);
        assert!(names
            .iter()
            .any(|(k, s)| k.as_bytes() == b"www.e.ex" && *s == 2));
        assert!(Slots::initial(&config(&["a.ex", "b.ex"]), 2).is_err());
    }

    #[test]
    fn default_capacity_leaves_room() {
        assert_eq!(default_capacity(0), 65);
        assert_eq!(default_capacity(1000), 1251);
        assert_eq!(names_capacity(3), 64);
        assert_eq!(names_capacity(1000), 2000);
    }
}
