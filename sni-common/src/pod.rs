//! `aya::Pod` for the map types, so userspace can read and write them with aya.
//!
//! Sound because every type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays,
//! and has no padding (each has a compile-time size check next to its definition).

use crate::{
    hello::Parser,
    host::HostKey,
    maps::{HostStats, PortSet},
};

unsafe impl aya::Pod for HostKey {}
unsafe impl aya::Pod for HostStats {}
unsafe impl aya::Pod for PortSet {}
unsafe impl aya::Pod for Parser {}
