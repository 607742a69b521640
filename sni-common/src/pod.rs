//! `aya::Pod` for the map types, so userspace can read and write them with aya.
//!
//! Sound because every type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays,
//! and has no padding (each has a compile-time size check next to its definition).

use crate::{
    flow::{Bucket, CachedFlow, Flow, FlowKey, Pending, Policy},
    flow_table::{FlowEntry, Shape},
    hello::Parser,
    host::{HostKey, NameEntry, NameKeys},
    ja4::{Ja4Key, Ja4State},
    maps::{HostJa4, HostStats, Ja4Name, Ja4Stats, PortSet},
};

/// Marks each type as `aya::Pod`.
macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        $(
            // SAFETY: see the module docs: `#[repr(C)]`, `Copy`, integers and integer arrays
            // only, no padding (a size check next to each definition).
            unsafe impl aya::Pod for $t {}
        )+
    };
}

pod!(
    HostKey, NameKeys, NameEntry, HostStats, PortSet, Parser, FlowKey, Flow, Pending, Policy,
    Bucket, CachedFlow, FlowEntry, Shape, Ja4Key, Ja4State, Ja4Stats, HostJa4, Ja4Name,
);
