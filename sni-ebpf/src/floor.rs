//! The benchmarks' floors, what any per-flow state costs at the least. `sni_floor`, for a
//! packet of a known flow: one 64-byte line per flow in a plain array, at an index hashed from
//! the IPv4 source address and port (the bench's flows differ only there), incremented; no
//! parsing past fixed offsets, no key compare, no second map. `sni_floor_insert`, for a new
//! flow: the flow inserted into a full LRU hash shaped like the flow table before it became
//! buckets in an array (the kernel's LRU insert, for comparison). Built with the
//! classifier by `cargo xtask build-ebpf`, so all go through the same toolchain. Not part of
//! the product.
#![allow(
    unsafe_code,
    reason = "a panic handler of a no_std program, the program's exported symbol, and packet reads"
)]
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sni-floor is an eBPF program: build it with `cargo xtask build-ebpf`.");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: nothing here can panic, so this is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, LruHashMap},
        programs::XdpContext,
    };
    use sni_common::{
        flow::{Flow, FlowKey},
        maps::FLOWS_DEFAULT_ENTRIES,
    };

    /// Index bits: as many lines as the flow table's default capacity (8 MiB).
    const BITS: u32 = FLOWS_DEFAULT_ENTRIES.trailing_zeros();
    const _: () = assert!(FLOWS_DEFAULT_ENTRIES == 1 << BITS);

    /// One line per flow.
    #[map]
    static SNI_FLOOR: Array<[u64; 8]> = Array::with_max_entries(FLOWS_DEFAULT_ENTRIES, 0);

    /// The flow table's stand-in: its key, its value, its default capacity.
    #[map]
    static SNI_FLOOR_FLOWS: LruHashMap<FlowKey, Flow> =
        LruHashMap::with_max_entries(FLOWS_DEFAULT_ENTRIES, 0);

    /// The IPv4 source address and TCP source port (the bench's flows differ only there), if
    /// the packet is long enough to hold them.
    #[inline(always)]
    fn source(ctx: &XdpContext) -> Option<(u32, u16)> {
        let (start, end) = (ctx.data(), ctx.data_end());
        // Ethernet (14) + IPv4 without options (20) + the TCP source port (2).
        if start + 36 > end {
            return None;
        }
        // SAFETY: the 36 bytes from `start` are in the packet, checked just above.
        Some(unsafe {
            (
                core::ptr::read_unaligned((start + 26) as *const u32),
                core::ptr::read_unaligned((start + 34) as *const u16),
            )
        })
    }

    /// Counts the packet in its flow's line; passes every packet.
    #[xdp]
    pub fn sni_floor(ctx: XdpContext) -> u32 {
        let Some((addr, port)) = source(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        let index = ((u64::from(addr) << 16) | u64::from(port)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> (64 - BITS);
        if let Some(line) = SNI_FLOOR.get_ptr_mut(index as u32) {
            // SAFETY: a value of the array, valid while the program runs; only this run writes
            // it on this CPU, and a lost increment across CPUs does not matter to a floor.
            unsafe { (*line)[0] = (*line)[0].wrapping_add(1) };
        }
        xdp_action::XDP_PASS
    }

    /// The floor of a new flow: inserts the packet's flow, keyed by five words as the flow
    /// table is, into an LRU hash of the flow table's default capacity; passes every packet.
    #[xdp]
    pub fn sni_floor_insert(ctx: XdpContext) -> u32 {
        let Some((addr, port)) = source(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        let mut key = FlowKey {
            src_port: port,
            family: 4,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&addr.to_ne_bytes());
        let _ = SNI_FLOOR_FLOWS.insert(&key, &Flow::default(), 0);
        xdp_action::XDP_PASS
    }
}
