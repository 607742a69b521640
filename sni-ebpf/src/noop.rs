//! The benchmarks' baseline: an XDP program that does nothing but return `XDP_PASS`. Built
//! with the classifier by `cargo xtask build-ebpf`, so both go through the same toolchain.
#![allow(
    unsafe_code,
    reason = "a panic handler of a no_std program, and the program's exported symbol"
)]
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sni-noop is an eBPF program: build it with `cargo xtask build-ebpf`.");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: nothing here can panic, so this is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
mod entry {
    /// Passes every packet.
    #[aya_ebpf::macros::xdp]
    pub fn sni_noop(_ctx: aya_ebpf::programs::XdpContext) -> u32 {
        aya_ebpf::bindings::xdp_action::XDP_PASS
    }
}
