//! The kernel's flow table as userspace reads it (the terminator's hand-off, tests, the bench)
//! and rewrites it (a reload's new verdicts). `sni_common::flow_table` has the layout.

use std::{
    borrow::{Borrow, BorrowMut},
    path::Path,
};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use sni_common::{
    flow::{Flow, FlowKey},
    flow_table::{FlowEntry, Shape},
    maps::{MAP_FLOWS, MAP_FLOW_SHAPE},
};

use crate::kernel::loader::{map, map_mut, open_pinned};

/// The flow table: its entries and where flows go in it.
pub struct FlowTable<T> {
    entries: Array<T, FlowEntry>,
    shape: Shape,
}

/// The table as opened from its pins (the terminator's, for the hand-off).
pub type PinnedFlowTable = FlowTable<MapData>;

impl FlowTable<MapData> {
    /// The table of the classifier whose maps are pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            shape: read_shape(&open_pinned(pin_dir, MAP_FLOW_SHAPE)?)?,
            entries: open_pinned(pin_dir, MAP_FLOWS)?.try_into()?,
        })
    }
}

impl<'a> FlowTable<&'a mut MapData> {
    /// The table of a loaded program, to rewrite.
    pub fn of_mut(ebpf: &'a mut Ebpf) -> Result<Self> {
        let shape = read_shape(map(ebpf, MAP_FLOW_SHAPE)?)?;
        Ok(Self {
            entries: Array::try_from(map_mut(ebpf, MAP_FLOWS)?)?,
            shape,
        })
    }
}

impl<'a> FlowTable<&'a MapData> {
    /// The table of a loaded program, to read.
    pub fn of(ebpf: &'a Ebpf) -> Result<Self> {
        Ok(Self {
            entries: Array::try_from(map(ebpf, MAP_FLOWS)?)?,
            shape: read_shape(map(ebpf, MAP_FLOW_SHAPE)?)?,
        })
    }
}

/// The shape written in a table's shape map.
fn read_shape(map: &aya::maps::Map) -> Result<Shape> {
    Array::<_, Shape>::try_from(map)?
        .get(&0, 0)
        .context("reading the flow table's shape")
}

impl<T: Borrow<MapData>> FlowTable<T> {
    /// The flow of `key`, if the table holds it.
    pub fn get(&self, key: &FlowKey) -> Option<Flow> {
        self.find(key).map(|(_, e)| e.flow)
    }

    /// The entry holding `key`, with its index. Read twice and taken only if both reads
    /// agree: a system call copies the entry while a CPU may be writing it.
    pub fn find(&self, key: &FlowKey) -> Option<(u32, FlowEntry)> {
        for _ in 0..3 {
            let (index, entry) = self.shape.find(key, |i| self.entry(i))?;
            if self.entry(index) == Some(entry) {
                return Some((index, entry));
            }
        }
        None
    }

    /// Where flows go.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Entry `index`.
    pub fn entry(&self, index: u32) -> Option<FlowEntry> {
        self.entries.get(&index, 0).ok()
    }

    /// How many entries it has (in use or not).
    pub fn entries(&self) -> u32 {
        self.entries.len()
    }

    /// Every entry that holds a flow, with its index (one lookup per entry of the table).
    pub fn flows(&self) -> impl Iterator<Item = (u32, FlowEntry)> + '_ {
        (0..self.entries()).filter_map(|i| Some((i, self.entry(i).filter(FlowEntry::in_use)?)))
    }
}

impl<T: BorrowMut<MapData>> FlowTable<T> {
    /// Passes each flow the table holds to `change`, entry by entry, and writes back at once
    /// each one it changed; how many it wrote. The kernel does not see the write as a claim: a
    /// CPU that writes another flow into the entry in the microseconds between the read and
    /// the write loses it, and a CPU reading the entry while it is written may read a mix of
    /// the two versions of its flow (then for one packet).
    pub fn rewrite(&mut self, mut change: impl FnMut(&mut Flow)) -> Result<u64> {
        let mut written = 0;
        for index in 0..self.entries() {
            let Some(mut entry) = self.entry(index).filter(FlowEntry::in_use) else {
                continue;
            };
            let before = entry.flow;
            change(&mut entry.flow);
            if entry.flow != before {
                self.set(index, entry)?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Writes entry `index` whole (see `rewrite`).
    fn set(&mut self, index: u32, entry: FlowEntry) -> Result<()> {
        self.entries
            .set(index, entry, 0)
            .context("writing a flow table entry")
    }

    /// Empties the entry holding `key`, as if the table had given it to another flow (tests);
    /// whether there was one. Its tag stays: the kernel reads the entry to find it holds no
    /// flow, and ranks the way for new flows by the old stamp, not as empty.
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool> {
        let Some((index, _)) = self.find(key) else {
            return Ok(false);
        };
        self.set(index, FlowEntry::default())?;
        Ok(true)
    }
}
