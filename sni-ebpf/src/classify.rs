//! The entry point, the maps, and the ClientHello path: copy the payload into per-CPU scratch
//! with `bpf_xdp_load_bytes`, run the shared parser over it from `bpf_loop`, count the outcome.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use sni_common::{
    maps::{
        counter, Chunk, HostStats, PortSet, Scratch, KNOWN_HOSTS_DEFAULT_ENTRIES,
        OTHER_HOSTS_DEFAULT_ENTRIES, SCRATCH_LEN,
    },
    HostKey, Parser, Progress,
};

use crate::headers::{self, Frame};

/// Global counters, indexed by `sni_common::maps::counter`. Kernel writes, userspace reads.
#[map]
static SNI_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Counters of the configured host names. Userspace inserts every configured name at start
/// (and sizes the map to fit); the kernel only updates existing entries, so configured names
/// are never evicted.
#[map]
static SNI_KNOWN: PerCpuHashMap<HostKey, HostStats> =
    PerCpuHashMap::with_max_entries(KNOWN_HOSTS_DEFAULT_ENTRIES, 0);

/// Counters of every other name, inserted by the kernel; least recently used go first.
#[map]
static SNI_OTHER: LruPerCpuHashMap<HostKey, HostStats> =
    LruPerCpuHashMap::with_max_entries(OTHER_HOSTS_DEFAULT_ENTRIES, 0);

/// Watched TCP destination ports (one entry). Userspace writes, the kernel reads.
#[map]
static SNI_PORTS: Array<PortSet> = Array::with_max_entries(1, 0);

/// Per-CPU scratch: a chunk of payload and the parser state. Kernel only.
#[map]
static SNI_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Set to 1 by the loader (`--debug`) to log every ClientHello; off the per-packet path
/// otherwise.
#[no_mangle]
static SNI_DEBUG: u8 = 0;

/// Payload chunks parsed at most per packet: 4 × 4 KiB covers a 16 KiB ClientHello (the
/// largest a TLS record can carry) even on loopback's 64 KiB MTU.
const MAX_CHUNKS: usize = 4;
/// TLS ContentType `handshake` (RFC 8446 §5.1): the first byte of every ClientHello record.
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// HandshakeType `client_hello` (RFC 8446 §4).
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

#[xdp]
pub fn sni_classify(ctx: XdpContext) -> u32 {
    // Fail open: whatever happens, the packet goes on.
    let _ = try_sni_classify(&ctx);
    xdp_action::XDP_PASS
}

fn try_sni_classify(ctx: &XdpContext) -> Option<()> {
    count(counter::PACKETS);
    let seg = match headers::parse(ctx)? {
        Frame::Tcp(seg) => seg,
        Frame::Fragment => {
            count(counter::FRAGMENTS);
            return None;
        }
        Frame::Other => return None,
    };
    let ports = SNI_PORTS.get(0)?;
    if !ports.contains(seg.dst_port) {
        return None;
    }
    count(counter::TCP_WATCHED);
    if seg.payload_len == 0 {
        return None;
    }
    // Cheap test before the parser: a ClientHello record starts with content type 22,
    // version major 3, and handshake type 1 at byte 5 (RFC 8446 §5.1, §4). Shorter payloads
    // (a ClientHello cut very early) go to the parser, which answers from what is there.
    if let Some(head) = headers::ptr_at::<[u8; 6]>(ctx, seg.payload_off) {
        // SAFETY: ptr_at checked the six bytes are inside the frame.
        let head = unsafe { *head };
        if head[0] != CONTENT_TYPE_HANDSHAKE || head[1] != 3 || head[5] != HANDSHAKE_CLIENT_HELLO {
            return None;
        }
    }
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    client_hello(ctx, seg.payload_off, seg.payload_len, frame_len)
}

/// Parses the ClientHello that may start at `off` and counts what it says.
#[inline(always)]
fn client_hello(ctx: &XdpContext, off: usize, len: usize, frame_len: u64) -> Option<()> {
    let scratch = SNI_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, used by this CPU only while this program runs.
    let s = unsafe { &mut *scratch };
    s.parser = Parser::NEW;
    let mut done = 0usize;
    for _ in 0..MAX_CHUNKS {
        if done >= len {
            break;
        }
        let rest = len - done;
        // The compiler knows `n` is in 1..=SCRATCH_LEN here, the verifier does not: read it
        // through a barrier and bound it again where the verifier can see the comparison.
        let n = opaque(if rest < SCRATCH_LEN {
            rest
        } else {
            SCRATCH_LEN
        });
        if n == 0 || n > SCRATCH_LEN {
            break;
        }
        // SAFETY: the helper copies `n` bytes (at most SCRATCH_LEN) into the buffer and checks
        // the packet bounds itself.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                (off + done) as u32,
                s.buf.as_mut_ptr() as *mut c_void,
                n as u32,
            )
        };
        if rc < 0 {
            count(counter::ERRORS);
            return None;
        }
        s.len = n as u32;
        s.pos = 0;
        // SAFETY: `parse_step` has the callback signature bpf_loop expects and finds its state
        // in the per-CPU scratch map itself (no context pointer).
        let rc = unsafe {
            bpf_loop(
                Parser::max_steps(n) as u32,
                parse_step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
        if rc < 0 {
            count(counter::ERRORS);
            return None;
        }
        if s.parser.progress() != Progress::NeedMore {
            break;
        }
        done += n;
    }

    let p = &s.parser;
    if !p.is_client_hello() {
        return None;
    }
    count(counter::CLIENT_HELLOS);
    let ech = p.has_ech();
    if ech {
        count(counter::ECH);
    }
    let outcome = match p.progress() {
        Progress::Malformed | Progress::NotClientHello => counter::MALFORMED,
        _ if p.has_name() => counter::SNI,
        Progress::Done => counter::NO_SNI,
        Progress::NeedMore => counter::INCOMPLETE,
    };
    count(outcome);
    if debug_enabled() {
        let label = match outcome {
            counter::SNI => "sni",
            counter::NO_SNI => "no_sni",
            counter::INCOMPLETE => "incomplete",
            _ => "malformed",
        };
        debug!(
            ctx,
            "ClientHello {} name_len={} ech={} records={}",
            label,
            p.host.len,
            ech as u8,
            p.records()
        );
    }
    if outcome == counter::SNI {
        count_host(&s.parser.host, frame_len, ech);
    }
    Some(())
}

/// One parser step over the current chunk; `bpf_loop` calls it until it returns 1.
extern "C" fn parse_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `client_hello`; bpf_loop runs on the same CPU within the same program.
    let s = unsafe { &mut *scratch };
    let input = Chunk::new(&s.buf, s.len as usize);
    let mut pos = s.pos as usize;
    let more = s.parser.step(&input, &mut pos);
    s.pos = pos as u32;
    if more {
        0
    } else {
        1
    }
}

/// Adds one ClientHello packet to `host`'s counters: the configured entry if there is one,
/// else the LRU entry, created on first sight.
#[inline(always)]
fn count_host(host: &HostKey, frame_len: u64, ech: bool) {
    let ech = u64::from(ech);
    let add = |v: *mut HostStats| {
        // SAFETY: a per-CPU value of this CPU.
        let v = unsafe { &mut *v };
        v.client_hellos += 1;
        v.packets += 1;
        v.bytes += frame_len;
        v.ech += ech;
    };
    if let Some(v) = SNI_KNOWN.get_ptr_mut(host) {
        return add(v);
    }
    if let Some(v) = SNI_OTHER.get_ptr_mut(host) {
        return add(v);
    }
    let first = HostStats {
        client_hellos: 1,
        packets: 1,
        bytes: frame_len,
        ech,
    };
    if SNI_OTHER.insert(host, &first, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created it in between.
    match SNI_OTHER.get_ptr_mut(host) {
        Some(v) => add(v),
        None => count(counter::HOST_UNTRACKED),
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = SNI_GLOBAL.get_ptr_mut(index) {
        // SAFETY: a per-CPU value of this CPU.
        unsafe { *c += 1 };
    }
}

/// `x`, hidden from the optimiser (a stack round trip the verifier tracks exactly).
#[inline(always)]
fn opaque(x: usize) -> usize {
    let slot = x;
    // SAFETY: reads a live local.
    unsafe { core::ptr::read_volatile(&slot) }
}

#[inline(always)]
fn debug_enabled() -> bool {
    // SAFETY: a plain read of a constant the loader may patch; volatile so that the compiler
    // does not fold the default.
    unsafe { core::ptr::read_volatile(&SNI_DEBUG) != 0 }
}
