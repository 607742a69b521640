//! The busy-table benchmark's floor: per packet, the least that any per-flow state costs. One
//! 64-byte line per flow in a plain array, at an index hashed from the IPv4 source address and
//! port (the bench's flows differ only there), incremented; no parsing past fixed offsets, no
//! key compare, no second map. Built with the classifier by `cargo xtask build-ebpf`, so both
//! go through the same toolchain. Not part of the product.
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
    use aya_ebpf::{bindings::xdp_action, macros::map, maps::Array, programs::XdpContext};

    /// Index bits: 131,072 lines (8 MiB), the flow table's default capacity.
    const BITS: u32 = 17;

    /// One line per flow.
    #[map]
    static SNI_FLOOR: Array<[u64; 8]> = Array::with_max_entries(1 << BITS, 0);

    /// Counts the packet in its flow's line; passes every packet.
    #[aya_ebpf::macros::xdp]
    pub fn sni_floor(ctx: XdpContext) -> u32 {
        let (start, end) = (ctx.data(), ctx.data_end());
        // Ethernet (14) + IPv4 without options (20) + the TCP source port (2).
        if start + 36 > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the 36 bytes from `start` are in the packet, checked just above.
        let (addr, port) = unsafe {
            (
                core::ptr::read_unaligned((start + 26) as *const u32),
                core::ptr::read_unaligned((start + 34) as *const u16),
            )
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
}
