//! The XDP program (kernel side): finds TLS ClientHellos in TCP traffic to the watched ports,
//! reads their server_name with the `sni-common` parser, and counts per host and globally.
//!
//! A packet walks these stages, one module each:
//! 1. [`headers`]: Ethernet, VLAN tags, IPv4/IPv6, TCP to a watched port → a [`headers::Segment`];
//! 2. [`flow`]: a SYN forgets the 5-tuple; a packet of a classified flow counts toward its
//!    host and gets its verdict (each CPU's cache in front of the flow table) — most packets end
//!    here;
//! 3. [`hello`]: a segment that starts or continues a ClientHello is parsed, across segments;
//! 4. [`host`]: a ClientHello read to its outcome finds its host and is counted, and
//!    [`fingerprint`] its JA4 key, counted per fingerprint and per (host, fingerprint);
//! 5. [`verdict`]: the host's and the fingerprint's actions and rate limits decide the flow's
//!    fate (the stricter wins).
//!
//! [`maps`] holds every map, [`counters`] the counting ([`atomic`] its shared adds),
//! [`error`] the one error type, counted once here at the entry point. It never rewrites. It
//! drops only the flows of hosts whose action is `drop` or that are over their ClientHello
//! rate; every other packet, and every error, gets `XDP_PASS` (fail open).
#![allow(
    unsafe_code,
    reason = "an XDP program: map values and packet memory are reached through raw pointers, \
              kernel helpers are foreign functions; each unsafe block says why it is sound"
)]
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for the atomic add and compare-and-swap (see `atomic`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod error;
#[cfg(target_arch = "bpf")]
mod fingerprint;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod flow_table;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod hello;
#[cfg(target_arch = "bpf")]
mod host;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sni-ebpf is an eBPF program: build it with `cargo xtask build-ebpf`.");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the program has no panicking path the compiler could not remove; the verifier
    // would reject one that stayed (it cannot return).
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use sni_common::maps::{counter, profile_stop as stop};

    use crate::{
        counters::count,
        error::Error,
        flow,
        headers::{self, Frame, TCP_ACK, TCP_SYN},
        hello, host,
        maps::{profile_stop, SNI_PORTS},
    };

    #[xdp]
    pub fn sni_classify(ctx: XdpContext) -> u32 {
        // Fail open: on any error the packet goes on. Only a configured action drops. (The
        // verdict is an out-parameter, not a Result's payload: LLVM reads an undefined payload
        // on the error path, and the verifier refuses reading an unwritten register.)
        let mut action = xdp_action::XDP_PASS;
        if let Err(e) = try_sni_classify(&ctx, &mut action) {
            count(e.counter());
        }
        if action == xdp_action::XDP_DROP {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// The stages in order; each returns early with what it decided. (The bench's profile
    /// can stop the walk after a stage: `profile_stop`.)
    #[inline(always)]
    fn try_sni_classify(ctx: &XdpContext, action: &mut u32) -> Result<(), Error> {
        count(counter::PACKETS);
        let ports = SNI_PORTS.get(0).ok_or(Error::Map)?;
        if profile_stop() == stop::ENTRY {
            return Ok(());
        }
        let seg = match headers::parse(ctx, ports) {
            Some(Frame::Tcp(seg)) => seg,
            Some(Frame::Fragment) => {
                count(counter::FRAGMENTS);
                return Ok(());
            }
            Some(Frame::Other) | None => return Ok(()),
        };
        count(counter::TCP_WATCHED);
        if profile_stop() == stop::HEADERS {
            return Ok(());
        }
        let frame_len = (ctx.data_end() - ctx.data()) as u64;
        if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            // A new connection on this 5-tuple: whatever was remembered belongs to an old one.
            flow::forget(&seg.key);
            return Ok(());
        }
        if flow::packet(ctx, &seg, frame_len, action) {
            return Ok(());
        }
        if seg.payload_len == 0 || profile_stop() == stop::FLOW {
            return Ok(());
        }
        if let Some(scratch) = hello::read(ctx, &seg, frame_len)? {
            if profile_stop() == stop::HELLO {
                return Ok(());
            }
            *action = host::classify(ctx, &seg, scratch);
        }
        Ok(())
    }
}
