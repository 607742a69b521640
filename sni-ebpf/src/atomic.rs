//! The two atomic instructions the program needs on memory every CPU writes: an add (host
//! counters) and a compare-and-swap (rate-limit buckets).
//!
//! Rust's atomics are not available here: the BPF target is declared single-threaded without
//! compare-and-swap, so the compiler would lower them to plain loads and stores. Both are
//! written as the instruction itself.

use core::arch::asm;

/// Atomically adds `n` to `*p` (BPF_ATOMIC | BPF_ADD, the instruction once called XADD).
///
/// # Safety
/// `p` points to a live, 8-aligned map value.
#[inline(always)]
pub unsafe fn add(p: *mut u64, n: u64) {
    // SAFETY: the caller's pointer; the instruction touches only those 8 bytes.
    unsafe {
        asm!(
            "lock *(u64 *)({p} + 0) += {n}",
            p = in(reg) p,
            n = in(reg) n,
            options(nostack),
        );
    }
}

/// Atomically replaces `*p` with `new` if it holds `old`; whether it did.
///
/// The instruction is BPF_ATOMIC | BPF_CMPXCHG (kernel 5.12+): r0 holds the expected value and
/// receives what was in memory.
///
/// # Safety
/// `p` points to a live, 8-aligned map value.
#[inline(always)]
pub unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> bool {
    let mut seen = old;
    // SAFETY: the caller's pointer; the instruction touches only those 8 bytes.
    unsafe {
        asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") seen,
            options(nostack),
        );
    }
    seen == old
}
