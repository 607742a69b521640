//! `aya::Pod` for the map types, so userspace can read and write them with aya.
//!
//! Sound because every type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays,
//! and has no padding (each has a compile-time size check next to its definition).

use crate::{
    flow::{Bucket, CachedFlow, Flow, FlowKey, Pending, Policy},
    hello::Parser,
    host::{HostKey, NameEntry, NameKeys},
    maps::{HostStats, PortSet},
};

unsafe impl aya::Pod for HostKey {}
unsafe impl aya::Pod for NameKeys {}
unsafe impl aya::Pod for NameEntry {}
unsafe impl aya::Pod for HostStats {}
unsafe impl aya::Pod for PortSet {}
unsafe impl aya::Pod for Parser {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for Flow {}
unsafe impl aya::Pod for Pending {}
unsafe impl aya::Pod for Policy {}
unsafe impl aya::Pod for Bucket {}
unsafe impl aya::Pod for CachedFlow {}
