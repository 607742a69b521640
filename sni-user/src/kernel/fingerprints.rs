//! Configured fingerprints (`[[fingerprint]]`) in the kernel's maps, and how userspace learns
//! which kernel keys stand for them.
//!
//! The kernel knows a ClientHello's fingerprint only by its [`Ja4Key`]; the operator names
//! one by its JA4 string. A fingerprint has a slot (by JA4 string, kept across reloads as a
//! host's is), its policy and bucket by slot, and its counters by slot. The kernel looks a
//! key up in `SNI_JA4_SLOTS`; a key not there is counted in `SNI_JA4_OTHER`, and the first
//! time it is inserted there its lists come up the ring buffer `SNI_JA4_EVENTS`. From them
//! [`Fingerprints::learn`] computes the JA4 string, writes it to `SNI_JA4_NAMES` for readers,
//! and when the string is configured puts key → slot in `SNI_JA4_SLOTS` and moves what
//! `SNI_JA4_OTHER` counted for the key to the slot.
//!
//! `SNI_JA4_STATS` has two rows per slot: row `slot`, which the kernel adds to atomically,
//! and row `capacity + slot` (capacity being the length of `SNI_JA4_POLICY`), written by the
//! daemon alone: the counts moved out of `SNI_JA4_OTHER`. Readers add the two. With one
//! writer per row no count is lost to a read-modify-write racing the kernel.
//!
//! A CPU that looked `SNI_JA4_SLOTS` up just before the key went in still counts it in
//! `SNI_JA4_OTHER` (inserting it again if it was moved out already): a second sweep a second
//! later ([`Fingerprints::sweep`]) moves those too, so once traffic stops the counts of a
//! configured fingerprint are exact. Only a count the kernel adds between the sweep's read
//! of an entry and its removal (microseconds) can be lost.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap},
    Ebpf,
};
use sni_common::{
    flow::{Bucket, Policy},
    ja4::{Ja4, Ja4Key, Ja4State},
    maps::{
        Ja4Name, Ja4Stats, MAP_JA4_BUCKETS, MAP_JA4_LABELS, MAP_JA4_LEARNED, MAP_JA4_NAMES,
        MAP_JA4_OTHER, MAP_JA4_POLICY, MAP_JA4_SLOTS, MAP_JA4_STATS,
    },
};
use tracing::{debug, info};

use crate::{
    config::{Action, Config},
    kernel::{
        loader::{map, map_mut},
        slots::{self, Slots},
    },
};

/// How long after keys are learned their entries in `SNI_JA4_OTHER` are swept again.
pub const SWEEP_DELAY: Duration = Duration::from_secs(1);

/// What the daemon did with the kernel's fingerprint events, for metrics and logs.
#[derive(Debug, Default)]
pub struct LearnCounters {
    /// Records read from the ring buffer.
    pub events: AtomicU64,
    /// Records of the wrong size, ignored.
    pub malformed: AtomicU64,
    /// Records whose lists were too long for a JA4 string (named by JA4_a alone).
    pub unknown: AtomicU64,
    /// Keys found to be a configured fingerprint's, written to `SNI_JA4_SLOTS`.
    pub learned: AtomicU64,
    /// ClientHellos moved from `SNI_JA4_OTHER` to a configured fingerprint's counters.
    pub moved: AtomicU64,
    /// Map updates that failed (a full `SNI_JA4_SLOTS`, …): logged at debug.
    pub failures: AtomicU64,
}

/// The configured fingerprints' slots and the keys learned for them.
pub struct Fingerprints {
    /// Slots by JA4 string.
    slots: Slots,
    /// Configured JA4 → slot.
    configured: StdHashMap<Ja4, u32>,
    /// Keys written to `SNI_JA4_SLOTS`, with their slot.
    learned: StdHashMap<Ja4Key, u32>,
    /// When the keys learned last are to be swept again.
    sweep_at: Option<Instant>,
    counters: Arc<LearnCounters>,
}

/// Slots of the fingerprint maps to make for `config` (slot 0 unused): room for reloads, as
/// for hosts.
pub fn capacity(config: &Config) -> u32 {
    slots::default_capacity(config.fingerprints.len())
}

/// The fingerprint slots at start: `[[fingerprint]]` `i` at `i + 1`, in maps of
/// [`capacity`] slots.
pub fn initial_slots(config: &Config) -> Result<Slots> {
    Slots::of_labels(
        config.fingerprints.iter().map(|f| f.ja4.as_str()),
        capacity(config),
    )
    .ok_or_else(|| anyhow!("the fingerprints do not fit their maps"))
}

impl Fingerprints {
    /// The fingerprints at start ([`initial_slots`]), no key learnt yet.
    pub fn initial(config: &Config) -> Result<Self> {
        let slots = initial_slots(config)?;
        Ok(Self {
            configured: configured(config, &slots),
            slots,
            learned: StdHashMap::new(),
            sweep_at: None,
            counters: Arc::default(),
        })
    }

    /// The counters of learning, shared with the metrics endpoint.
    pub fn counters(&self) -> Arc<LearnCounters> {
        self.counters.clone()
    }

    /// Writes every configured fingerprint's policy by slot (at start, and by a reload).
    pub fn write_policies(ebpf: &mut Ebpf, config: &Config, slots: &Slots) -> Result<()> {
        for f in &config.fingerprints {
            let slot = slots
                .get(&f.ja4)
                .ok_or_else(|| anyhow!("no slot for fingerprint {}", f.ja4))?;
            Array::<_, Policy>::try_from(map_mut(ebpf, MAP_JA4_POLICY)?)?
                .set(slot, f.actions().policy(), 0)
                .with_context(|| format!("writing the policy of fingerprint {}", f.ja4))?;
            let label = match f.parsed() {
                Some(ja4) => name_of(&Ja4Key::default(), Some(&ja4)),
                None => EMPTY_NAME,
            };
            Array::<_, Ja4Name>::try_from(map_mut(ebpf, MAP_JA4_LABELS)?)?
                .set(slot, label, 0)
                .with_context(|| format!("writing the label of fingerprint {}", f.ja4))?;
        }
        Ok(())
    }

    /// The slots of `new`'s fingerprints after a reload; Err when they do not fit.
    pub fn plan(&self, new: &Config) -> Result<Slots> {
        self.slots
            .next_labels(new.fingerprints.iter().map(|f| f.ja4.as_str()))
            .map_err(|ja4| {
                anyhow!(
                    "no free fingerprint slot for {ja4}: the classifier was started with room \
                     for {} fingerprints, and slots of fingerprints removed by this reload \
                     are reused only by the next one; restart to make more room",
                    self.slots.capacity().saturating_sub(1)
                )
            })
    }

    /// Takes `new`'s fingerprints (slots from [`Fingerprints::plan`]) into the maps: a new
    /// fingerprint's slot starts from zero (counters, bucket) before its policy is written;
    /// every policy is written (ClientHellos from now on get it); a removed fingerprint's
    /// keys leave `SNI_JA4_SLOTS` and its counters are cleared; a new fingerprint whose keys
    /// were learned before (by `SNI_JA4_NAMES`) gets them at once.
    pub fn apply(&mut self, ebpf: &mut Ebpf, new: &Config, slots: Slots) -> Result<()> {
        let fresh: Vec<u32> = new
            .fingerprints
            .iter()
            .filter(|f| self.slots.get(&f.ja4).is_none())
            .filter_map(|f| slots.get(&f.ja4))
            .collect();
        for slot in &fresh {
            clear_slot(ebpf, *slot)?;
        }
        Self::write_policies(ebpf, new, &slots)?;
        let removed: HashSet<u32> = self
            .slots
            .iter()
            .filter(|(ja4, _)| slots.get(ja4).is_none())
            .map(|(_, slot)| slot)
            .collect();
        if !removed.is_empty() {
            let gone: Vec<Ja4Key> = self
                .learned
                .iter()
                .filter(|(_, slot)| removed.contains(slot))
                .map(|(key, _)| *key)
                .collect();
            let mut map = HashMap::<_, Ja4Key, u32>::try_from(map_mut(ebpf, MAP_JA4_SLOTS)?)?;
            for key in &gone {
                let _ = map.remove(key);
                self.learned.remove(key);
            }
            self.write_learned_count(ebpf);
            let mut policy = Array::<_, Policy>::try_from(map_mut(ebpf, MAP_JA4_POLICY)?)?;
            for slot in &removed {
                policy
                    .set(*slot, Policy::default(), 0)
                    .context("clearing a removed fingerprint's policy")?;
            }
            let mut labels = Array::<_, Ja4Name>::try_from(map_mut(ebpf, MAP_JA4_LABELS)?)?;
            for slot in &removed {
                labels
                    .set(*slot, EMPTY_NAME, 0)
                    .context("clearing a removed fingerprint's label")?;
            }
            for slot in &removed {
                clear_slot(ebpf, *slot)?;
            }
        }
        self.configured = configured(new, &slots);
        self.slots = slots;
        // Fingerprints new to the config may have been seen already: their keys are named.
        let wanted: StdHashMap<[u8; 36], u32> = fresh
            .iter()
            .filter_map(|slot| {
                self.configured
                    .iter()
                    .find(|(_, s)| *s == slot)
                    .map(|(ja4, s)| (ja4.0, *s))
            })
            .collect();
        if !wanted.is_empty() {
            let named: Vec<(Ja4Key, u32)> = {
                let names = HashMap::<_, Ja4Key, Ja4Name>::try_from(map(ebpf, MAP_JA4_NAMES)?)?;
                names
                    .iter()
                    .filter_map(Result::ok)
                    .filter(|(_, n)| n.known == 1)
                    .filter_map(|(key, n)| Some((key, *wanted.get(&n.ja4)?)))
                    .collect()
            };
            for (key, slot) in named {
                self.configure_key(ebpf, key, slot);
            }
        }
        Ok(())
    }

    /// Takes one record of `SNI_JA4_EVENTS`: names its key in `SNI_JA4_NAMES`, and when its
    /// JA4 is configured, gives the key its slot. A record of another size is counted and
    /// ignored.
    pub fn learn(&mut self, ebpf: &mut Ebpf, record: &[u8]) {
        self.counters.events.fetch_add(1, Relaxed);
        let Some(state) = Ja4State::from_bytes(record) else {
            self.counters.malformed.fetch_add(1, Relaxed);
            return;
        };
        let key = state.key();
        let ja4 = state.ja4();
        if ja4.is_none() {
            self.counters.unknown.fetch_add(1, Relaxed);
        }
        let name = name_of(&key, ja4.as_ref());
        let named = map_mut(ebpf, MAP_JA4_NAMES)
            .and_then(|m| Ok(HashMap::<_, Ja4Key, Ja4Name>::try_from(m)?))
            .and_then(|mut names| Ok(names.insert(key, name, 0)?));
        if let Err(e) = named {
            self.failed("naming a fingerprint", &e);
        }
        if let Some(slot) = ja4.and_then(|j| self.configured.get(&j).copied()) {
            self.configure_key(ebpf, key, slot);
        }
    }

    /// Moves again, once [`SWEEP_DELAY`] has passed since keys were learned, what
    /// `SNI_JA4_OTHER` counted for them meanwhile. Cheap when nothing is due. (Readers label
    /// learned keys by their slot, `SNI_JA4_LABELS`: their names may leave the LRU of names.)
    pub fn sweep(&mut self, ebpf: &mut Ebpf, now: Instant) {
        if self.sweep_at.is_none_or(|at| now < at) {
            return;
        }
        self.sweep_at = None;
        let learned: Vec<(Ja4Key, u32)> = self.learned.iter().map(|(k, s)| (*k, *s)).collect();
        for (key, slot) in learned {
            if let Err(e) = self.move_counts(ebpf, &key, slot) {
                self.failed("moving a fingerprint's counts", &e);
            }
        }
    }

    /// Puts `key` → `slot` in `SNI_JA4_SLOTS` and moves its counts out of `SNI_JA4_OTHER`.
    fn configure_key(&mut self, ebpf: &mut Ebpf, key: Ja4Key, slot: u32) {
        let inserted = map_mut(ebpf, MAP_JA4_SLOTS)
            .and_then(|m| Ok(HashMap::<_, Ja4Key, u32>::try_from(m)?))
            .and_then(|mut m| Ok(m.insert(key, slot, 0)?));
        if let Err(e) = inserted {
            self.failed("writing a fingerprint key", &e);
            return;
        }
        if self.learned.insert(key, slot).is_none() {
            self.write_learned_count(ebpf);
            self.counters.learned.fetch_add(1, Relaxed);
            let ja4 = self
                .configured
                .iter()
                .find(|(_, s)| **s == slot)
                .map(|(j, _)| j.to_string())
                .unwrap_or_default();
            info!(
                slot,
                ja4, "a configured fingerprint's key learned: acted on from now"
            );
        }
        if let Err(e) = self.move_counts(ebpf, &key, slot) {
            self.failed("moving a fingerprint's counts", &e);
        }
        self.sweep_at = Some(Instant::now() + SWEEP_DELAY);
    }

    /// Adds to `changes` what a reload from `old` to `new` (with the fingerprint slots `slots`
    /// planned for `new`) does to fingerprints' actions: the slots whose action changed (a
    /// removed fingerprint's slot: to pass, and freed), and those that drop in `new`.
    pub fn action_changes(
        &self,
        old: &Config,
        new: &Config,
        slots: &Slots,
        changes: &mut super::loader::ActionChanges,
    ) {
        let before: StdHashMap<&str, Action> = old
            .fingerprints
            .iter()
            .map(|f| (f.ja4.as_str(), f.action))
            .collect();
        for f in &new.fingerprints {
            let Some(slot) = slots.get(&f.ja4) else {
                continue;
            };
            if before.get(f.ja4.as_str()).is_some_and(|a| *a != f.action) {
                changes.ja4.insert(slot);
            }
            if f.action == Action::Drop {
                changes.ja4_drops.insert(slot);
            }
        }
        for f in &old.fingerprints {
            if slots.get(&f.ja4).is_none() {
                if let Some(slot) = self.slots.get(&f.ja4) {
                    changes.ja4.insert(slot);
                    changes.ja4_removed.insert(slot);
                }
            }
        }
    }

    /// Tells the kernel how many keys `SNI_JA4_SLOTS` holds (it looks keys up there only when
    /// some are): written after every change to it.
    fn write_learned_count(&self, ebpf: &mut Ebpf) {
        let count = u32::try_from(self.learned.len()).unwrap_or(u32::MAX);
        let written = map_mut(ebpf, MAP_JA4_LEARNED)
            .and_then(|m| Ok(Array::<_, u32>::try_from(m)?))
            .and_then(|mut a| Ok(a.set(0, count, 0)?));
        if let Err(e) = written {
            self.failed("writing the count of learned fingerprint keys", &e);
        }
    }

    /// Adds what `SNI_JA4_OTHER` holds for `key` to the daemon's row of `slot`, and removes
    /// the entry.
    fn move_counts(&self, ebpf: &mut Ebpf, key: &Ja4Key, slot: u32) -> Result<()> {
        let counted = {
            let mut other =
                HashMap::<_, Ja4Key, Ja4Stats>::try_from(map_mut(ebpf, MAP_JA4_OTHER)?)?;
            match other.get(key, 0) {
                Ok(s) => {
                    // Added only once the entry is gone (removed, or evicted meanwhile): an
                    // entry left in place would be moved again by the next sweep.
                    if other.remove(key).is_err() && other.get(key, 0).is_ok() {
                        return Err(anyhow!("the entry of a learnt key could not be removed"));
                    }
                    s
                }
                Err(_) => return Ok(()),
            }
        };
        let row = moved_row(ebpf, slot)?;
        let mut stats = Array::<_, Ja4Stats>::try_from(map_mut(ebpf, MAP_JA4_STATS)?)?;
        let mut total = stats.get(&row, 0).context("reading moved counts")?;
        total.add(&counted);
        stats.set(row, total, 0).context("writing moved counts")?;
        self.counters
            .moved
            .fetch_add(counted.client_hellos, Relaxed);
        Ok(())
    }

    fn failed(&self, what: &str, e: &anyhow::Error) {
        self.counters.failures.fetch_add(1, Relaxed);
        debug!(error = %format!("{e:#}"), "{what}");
    }
}

/// Configured JA4 → slot.
fn configured(config: &Config, slots: &Slots) -> StdHashMap<Ja4, u32> {
    config
        .fingerprints
        .iter()
        .filter_map(|f| Some((f.parsed()?, slots.get(&f.ja4)?)))
        .collect()
}

/// The row of `SNI_JA4_STATS` holding the counts the daemon moved to `slot`.
fn moved_row(ebpf: &Ebpf, slot: u32) -> Result<u32> {
    let capacity = Array::<_, Policy>::try_from(map(ebpf, MAP_JA4_POLICY)?)?.len();
    Ok(capacity + slot)
}

/// Zeroes a fingerprint slot's counters (both rows) and rate bucket.
fn clear_slot(ebpf: &mut Ebpf, slot: u32) -> Result<()> {
    let moved = moved_row(ebpf, slot)?;
    let mut stats = Array::<_, Ja4Stats>::try_from(map_mut(ebpf, MAP_JA4_STATS)?)?;
    for row in [slot, moved] {
        stats
            .set(row, Ja4Stats::default(), 0)
            .context("zeroing a fingerprint's counters")?;
    }
    Array::<_, Bucket>::try_from(map_mut(ebpf, MAP_JA4_BUCKETS)?)?
        .set(slot, Bucket::default(), 0)
        .context("resetting a fingerprint's rate bucket")?;
    Ok(())
}

/// A free slot's label.
const EMPTY_NAME: Ja4Name = Ja4Name {
    ja4: [0; 36],
    known: 0,
    _pad: [0; 3],
};

/// What `SNI_JA4_NAMES` keeps for `key`: its JA4 string, or its JA4_a alone (`known` 0).
pub fn name_of(key: &Ja4Key, ja4: Option<&Ja4>) -> Ja4Name {
    let mut name = Ja4Name {
        ja4: [0; 36],
        known: 0,
        _pad: [0; 3],
    };
    match ja4 {
        Some(j) => {
            name.ja4 = j.0;
            name.known = 1;
        }
        None => name.ja4[..10].copy_from_slice(&key.a),
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hold_the_string_or_ja4_a_alone() {
        let mut s = Ja4State::NEW;
        s.legacy_version = 0x0303;
        for c in [0x1301, 0x1302, 0xc02b] {
            s.cipher(c);
        }
        for e in [0x0000, 0x0010, 0x000d, 0x002b] {
            s.extension(e);
        }
        s.supported_version(0x0304);
        s.alpn_seen();
        s.alpn_byte(0, b'h');
        s.alpn_byte(1, b'2');
        let name = name_of(&s.key(), s.ja4().as_ref());
        assert_eq!(name.known, 1);
        assert_eq!(Some(name.ja4), s.ja4().map(|j| j.0));
        assert_eq!(&name.ja4[..10], b"t13d0304h2");
        let name = name_of(&s.key(), None);
        assert_eq!(
            (name.known, &name.ja4[..10], name.ja4[10]),
            (0, &b"t13d0304h2"[..], 0)
        );
    }
}
