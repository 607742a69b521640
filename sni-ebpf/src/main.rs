//! The XDP program (kernel side): finds TLS ClientHellos in TCP traffic to the watched ports,
//! reads their server_name with the `sni-common` parser, and counts per host and globally.
//!
//! It never rewrites. It drops only the flows of hosts whose action is `drop` or that are over
//! their ClientHello rate; every other packet, and every error, gets `XDP_PASS` (fail open).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for the one atomic compare-and-swap (see `classify::cmpxchg`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod headers;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sni-ebpf is an eBPF program: build it with `cargo xtask build-ebpf`.");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The program has no panicking paths the compiler could not remove; the verifier would
    // reject one that stayed (it cannot return).
    unsafe { core::hint::unreachable_unchecked() }
}
