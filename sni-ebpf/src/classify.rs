//! The entry point, the maps, and the packet path:
//! - a packet of a flow already classified counts toward its host and gets its verdict;
//! - a segment that starts a ClientHello, or continues one pending for its flow, is copied
//!   into per-CPU scratch with `bpf_xdp_load_bytes` and read by the shared parser from
//!   `bpf_loop`; a ClientHello that goes on past the segment is kept pending, keyed by the
//!   5-tuple, and resumed with the next in-order segment (`sni_common::flow::place`);
//! - a ClientHello read to its name gets its host's verdict (action, then rate limit), and
//!   the flow is remembered.

use core::{arch::asm, ffi::c_void};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_loop, bpf_xdp_load_bytes},
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use sni_common::{
    flow::{
        gcra, kind, place, verdict, Bucket, Flow, FlowKey, Pending, Placement, Policy, ACTION_DROP,
    },
    hello::starts_client_hello,
    host::MAX_NAME_LEN,
    maps::{
        counter, Chunk, HostStats, OtherHost, PortSet, Scratch, FLOWS_DEFAULT_ENTRIES,
        OTHER_HOSTS_DEFAULT_ENTRIES, PENDING_DEFAULT_ENTRIES, SCRATCH_LEN,
    },
    HostKey, Outcome, Parser,
};

use crate::headers::{self, Frame, Segment, TCP_ACK, TCP_SYN};

/// Global counters, indexed by `sni_common::maps::counter`. Kernel writes, userspace reads.
#[map]
static SNI_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Configured names and `*.` patterns → host slot. Userspace writes (and sizes) it.
#[map]
static SNI_HOSTS: HashMap<HostKey, u32> = HashMap::with_max_entries(1, 0);

/// Counters of the configured hosts by slot; the loader sizes it to the configuration, so
/// configured hosts are never evicted.
#[map]
static SNI_HOST_STATS: PerCpuArray<HostStats> = PerCpuArray::with_max_entries(1, 0);

/// Labels by host slot, for userspace readers (the kernel never reads it).
#[map]
static SNI_LABELS: Array<HostKey> = Array::with_max_entries(1, 0);

/// Actions by host slot; slot 0 is `[default]`.
#[map]
static SNI_POLICY: Array<Policy> = Array::with_max_entries(1, 0);

/// Rate-limit state by host slot, shared by every CPU (compare-and-swap).
#[map]
static SNI_BUCKETS: Array<Bucket> = Array::with_max_entries(1, 0);

/// Counters of every other name by name hash, inserted by the kernel; least recently used go
/// first.
#[map]
static SNI_OTHER: LruPerCpuHashMap<u64, OtherHost> =
    LruPerCpuHashMap::with_max_entries(OTHER_HOSTS_DEFAULT_ENTRIES, 0);

/// Flows whose ClientHello was read: their host and verdict.
#[map]
static SNI_FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_ENTRIES, 0);

/// ClientHellos waiting for their next segment.
#[map]
static SNI_PENDING: LruHashMap<FlowKey, Pending> =
    LruHashMap::with_max_entries(PENDING_DEFAULT_ENTRIES, 0);

/// Watched TCP destination ports (one entry). Userspace writes, the kernel reads.
#[map]
static SNI_PORTS: Array<PortSet> = Array::with_max_entries(1, 0);

/// Per-CPU scratch: a chunk of payload, the ClientHello being read, large values. Kernel only.
#[map]
static SNI_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Set to 1 by the loader (`--debug`) to log every ClientHello; off the per-packet path
/// otherwise.
#[no_mangle]
static SNI_DEBUG: u8 = 0;

/// Set to 1 by the loader when some configured name is a `*.` pattern: only then does a
/// name that is not configured cost a second lookup.
#[no_mangle]
static SNI_WILDCARDS: u8 = 0;

/// Payload chunks parsed at most per packet: 4 × 4 KiB covers a 16 KiB ClientHello (the
/// largest a TLS record can carry) even on loopback's 64 KiB MTU.
const MAX_CHUNKS: usize = 4;
/// Compare-and-swap attempts on a rate-limit bucket before letting the ClientHello pass.
const CAS_ATTEMPTS: usize = 4;

#[xdp]
pub fn sni_classify(ctx: XdpContext) -> u32 {
    // Fail open: on any error the packet goes on. Only a configured action drops. (The
    // verdict is an out-parameter, not an Option<u32>: LLVM reads an Option's undefined
    // payload on the None path, and the verifier refuses reading an unwritten register.)
    let mut action = xdp_action::XDP_PASS;
    let _ = try_sni_classify(&ctx, &mut action);
    if action == xdp_action::XDP_DROP {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

fn try_sni_classify(ctx: &XdpContext, action: &mut u32) -> Option<()> {
    count(counter::PACKETS);
    let ports = SNI_PORTS.get(0)?;
    let seg = match headers::parse(ctx, ports)? {
        Frame::Tcp(seg) => seg,
        Frame::Fragment => {
            count(counter::FRAGMENTS);
            return None;
        }
        Frame::Other => return None,
    };
    count(counter::TCP_WATCHED);
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    if seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A new connection on this 5-tuple: whatever was remembered belongs to an old one.
        forget(&seg.key);
        return None;
    }
    if let Some(flow) = SNI_FLOWS.get_ptr(&seg.key) {
        // SAFETY: a map value; copied out at once (another CPU may replace it).
        let flow = unsafe { *flow };
        *action = flow_packet(&flow, frame_len);
        return Some(());
    }
    if seg.payload_len == 0 {
        return None;
    }
    let scratch = SNI_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, used by this CPU only while this program runs.
    let s = unsafe { &mut *scratch };
    let mut skip = 0usize;
    let resumed = match SNI_PENDING.get_ptr_mut(&seg.key) {
        Some(p) => {
            // SAFETY: a map value; fields are read and updated in place, and the whole state
            // is copied into this CPU's scratch only when there are bytes to parse.
            let next_seq = unsafe { (*p).next_seq };
            match place(next_seq, seg.seq, seg.payload_len as u32) {
                Placement::Old => {
                    count(counter::RETRANSMITS);
                    // SAFETY: as above.
                    unsafe {
                        (*p).segments += 1;
                        (*p).bytes += frame_len;
                    }
                    return None;
                }
                Placement::Gap => {
                    count(counter::OUT_OF_ORDER);
                    // SAFETY: as above, read before the entry goes.
                    let hello = unsafe { (*p).parser.is_client_hello() };
                    let _ = SNI_PENDING.remove(&seg.key);
                    count_abandoned(hello);
                    // Remembered, so that its later segments are not parsed as new
                    // ClientHellos.
                    let _ = SNI_FLOWS.insert(&seg.key, &Flow::default(), 0);
                    return None;
                }
                Placement::Next { skip: n } => {
                    // SAFETY: as above.
                    s.pending = unsafe { *p };
                    skip = n as usize;
                }
            }
            true
        }
        None => {
            // Cheap test before the parser; shorter payloads (a ClientHello cut very early)
            // go to the parser, which answers from what is there.
            if let Some(head) = headers::ptr_at::<[u8; 6]>(ctx, seg.payload_off) {
                // SAFETY: ptr_at checked the six bytes are inside the frame.
                if !starts_client_hello(unsafe { *head }) {
                    return None;
                }
            }
            s.pending = Pending {
                parser: Parser::NEW,
                next_seq: 0,
                segments: 0,
                bytes: 0,
            };
            false
        }
    };
    parse(ctx, scratch, seg.payload_off + skip, seg.payload_len - skip)?;
    s.pending.segments += 1;
    s.pending.bytes += frame_len;
    if s.pending.parser.wants_more() {
        s.pending.next_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        if !resumed {
            count(counter::SPLIT);
        }
        if SNI_PENDING.insert(&seg.key, &s.pending, 0).is_err() {
            count(counter::ERRORS);
        }
        return None;
    }
    if resumed {
        let _ = SNI_PENDING.remove(&seg.key);
    }
    *action = resolve(ctx, &seg, scratch);
    Some(())
}

/// Runs the parser in the scratch over `len` payload bytes from `off`, a chunk at a time.
///
/// The scratch comes as a raw pointer, and references to it live only between helper calls:
/// the `bpf_loop` callbacks write it through their own pointer, which a `&mut` parameter
/// would declare impossible (the compiler could then keep stale fields in registers).
#[inline(always)]
fn parse(ctx: &XdpContext, scratch: *mut Scratch, off: usize, len: usize) -> Option<()> {
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
                (&raw mut (*scratch).buf) as *mut c_void,
                n as u32,
            )
        };
        if rc < 0 {
            count(counter::ERRORS);
            return None;
        }
        // SAFETY: a per-CPU map value of this CPU.
        unsafe {
            (*scratch).len = n as u32;
            (*scratch).pos = 0;
        }
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
        // SAFETY: as above, read after the callbacks wrote it.
        if unsafe { !(*scratch).pending.parser.wants_more() } {
            break;
        }
        done += n;
    }
    Some(())
}

/// A pending ClientHello that cannot be finished is counted incomplete (if it was known to
/// be a ClientHello at all).
#[inline(always)]
fn count_abandoned(client_hello: bool) {
    if client_hello {
        count(counter::CLIENT_HELLOS);
        count(counter::INCOMPLETE);
    }
}

/// A SYN: forgets the 5-tuple's previous connection.
#[inline(always)]
fn forget(key: &FlowKey) {
    if let Some(p) = SNI_PENDING.get_ptr(key) {
        // SAFETY: a map value; only a flag is read, before the entry goes.
        count_abandoned(unsafe { (*p).parser.is_client_hello() });
        let _ = SNI_PENDING.remove(key);
    }
    let _ = SNI_FLOWS.remove(key);
}

/// The ClientHello in `s` was read to an outcome: counts it, finds its host and verdict,
/// remembers the flow. Returns the XDP action for this packet.
#[inline(always)]
fn resolve(ctx: &XdpContext, seg: &Segment, scratch: *mut Scratch) -> u32 {
    // SAFETY: a per-CPU map value of this CPU (see `parse` on why not a parameter).
    let s = unsafe { &mut *scratch };
    let p = &s.pending.parser;
    if !p.is_client_hello() {
        // Not TLS after all: nothing to remember.
        return xdp_action::XDP_PASS;
    }
    count(counter::CLIENT_HELLOS);
    let ech = p.has_ech();
    if ech {
        count(counter::ECH);
    }
    let outcome = p.outcome();
    count(match outcome {
        Outcome::Sni => counter::SNI,
        Outcome::NoSni => counter::NO_SNI,
        Outcome::Malformed => counter::MALFORMED,
        Outcome::Incomplete => counter::INCOMPLETE,
    });
    let mut flow = Flow::default();
    let mut stats = None;
    if outcome == Outcome::Sni {
        flow.name_hash = s.pending.parser.host.hash64();
        let slot = host_slot(scratch);
        if slot != 0 {
            flow.kind = kind::CONFIGURED;
            flow.slot = slot;
            stats = SNI_HOST_STATS.get_ptr_mut(slot);
        } else {
            flow.kind = kind::OTHER;
            stats = other_stats(flow.name_hash, s);
        }
        flow.verdict = decide(slot);
    } else if outcome == Outcome::NoSni {
        flow.kind = kind::NO_NAME;
        flow.verdict = decide(0);
    }
    if let Some(v) = stats {
        // SAFETY: a per-CPU value of this CPU.
        let v = unsafe { &mut *v };
        v.client_hellos += 1;
        v.ech += u64::from(ech);
        charge(v, s.pending.segments, s.pending.bytes, flow.verdict);
    }
    let _ = SNI_FLOWS.insert(&seg.key, &flow, 0);
    if debug_enabled() {
        let p = &s.pending.parser;
        debug!(
            ctx,
            "ClientHello {} name_len={} ech={} records={} segments={} slot={} verdict={}",
            outcome.as_str(),
            p.host.len,
            ech as u8,
            p.records(),
            s.pending.segments,
            flow.slot,
            flow.verdict
        );
    }
    verdict_action(flow.verdict)
}

/// A packet of a classified flow: counted toward its host, given the flow's verdict.
#[inline(always)]
fn flow_packet(flow: &Flow, frame_len: u64) -> u32 {
    count(counter::FLOW_PACKETS);
    let stats = match flow.kind {
        kind::CONFIGURED => SNI_HOST_STATS.get_ptr_mut(flow.slot),
        // SAFETY: a per-CPU value of this CPU; only the address of a field is taken.
        kind::OTHER => SNI_OTHER
            .get_ptr_mut(&flow.name_hash)
            .map(|v| unsafe { &raw mut (*v).stats }),
        _ => None,
    };
    if let Some(v) = stats {
        // SAFETY: a per-CPU value of this CPU.
        charge(unsafe { &mut *v }, 1, frame_len, flow.verdict);
    }
    verdict_action(flow.verdict)
}

/// Adds `packets` packets of `bytes` to a host's counters; the last of them (this one) got
/// `verdict` (earlier segments of a split ClientHello passed before the name was known).
#[inline(always)]
fn charge(v: &mut HostStats, packets: u32, bytes: u64, verdict: u8) {
    v.packets += u64::from(packets);
    v.bytes += bytes;
    match verdict {
        verdict::DROP => v.dropped += 1,
        verdict::RATE_LIMITED => v.rate_limited += 1,
        _ => {}
    }
}

/// The XDP action of a verdict, counting the drops.
#[inline(always)]
fn verdict_action(v: u8) -> u32 {
    match v {
        verdict::DROP => {
            count(counter::DROPPED);
            xdp_action::XDP_DROP
        }
        verdict::RATE_LIMITED => {
            count(counter::RATE_LIMITED);
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// The slot of the configured host the parser's name belongs to (exactly, or by a `*.`
/// pattern one label up); 0 when it is not configured.
#[inline(always)]
fn host_slot(scratch: *mut Scratch) -> u32 {
    // SAFETY: map values are plain integers; the key is read by the helper.
    if let Some(slot) = unsafe { SNI_HOSTS.get(&(*scratch).pending.parser.host) } {
        return *slot;
    }
    if wildcards_enabled() && wildcard_pattern(scratch) {
        // SAFETY: as above.
        if let Some(slot) = unsafe { SNI_HOSTS.get(&(*scratch).wildcard) } {
            return *slot;
        }
    }
    0
}

/// Builds the wildcard pattern of the parser's name into the scratch's `wildcard` (the
/// shared `HostKey::wildcard_*` rules, one byte per `bpf_loop` step); whether there is one.
#[inline(always)]
fn wildcard_pattern(scratch: *mut Scratch) -> bool {
    // SAFETY: a per-CPU map value of this CPU; written by the callbacks in between (see
    // `parse`), so only read through the raw pointer.
    // The callbacks have the signature bpf_loop expects and find their state in the scratch.
    unsafe {
        (*scratch).dot = MAX_NAME_LEN as u32;
        bpf_loop(
            MAX_NAME_LEN as u32,
            find_dot as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        let dot = (*scratch).dot as usize;
        let len = (*scratch).pending.parser.host.len;
        if dot >= MAX_NAME_LEN || !HostKey::wildcard_ok(len, dot) {
            return false;
        }
        bpf_loop(
            MAX_NAME_LEN as u32,
            copy_wildcard as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        (*scratch).wildcard.len = HostKey::wildcard_len(len, dot);
    }
    true
}

/// `bpf_loop` step `i` of the search for the first dot; stops at it.
extern "C" fn find_dot(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `parse_step`.
    let s = unsafe { &mut *scratch };
    if s.pending.parser.host.is_first_dot(i as usize) {
        s.dot = i as u32;
        return 1;
    }
    0
}

/// `bpf_loop` step `i` of the copy of the wildcard pattern.
extern "C" fn copy_wildcard(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `parse_step`.
    let s = unsafe { &mut *scratch };
    let i = i as usize;
    if i >= MAX_NAME_LEN {
        return 1;
    }
    let dot = s.dot as usize;
    s.wildcard.name[i] = s.pending.parser.host.wildcard_byte(dot, i);
    0
}

/// The counters of a name that is not configured, created on first sight.
#[inline(always)]
fn other_stats(hash: u64, s: &mut Scratch) -> Option<*mut HostStats> {
    if let Some(v) = SNI_OTHER.get_ptr_mut(&hash) {
        // SAFETY: a per-CPU value of this CPU.
        let v = unsafe { &mut *v };
        if v.name.len == 0 {
            // Created by another CPU: this CPU's copy starts without the name.
            v.name = s.pending.parser.host;
        }
        return Some(&raw mut v.stats);
    }
    s.other.stats = HostStats::default();
    s.other.name = s.pending.parser.host;
    // NOEXIST: if another CPU creates it in between, that one stays.
    let _ = SNI_OTHER.insert(&hash, &s.other, BPF_NOEXIST as u64);
    match SNI_OTHER.get_ptr_mut(&hash) {
        // SAFETY: as above; only the address of a field is taken.
        Some(v) => Some(unsafe { &raw mut (*v).stats }),
        None => {
            count(counter::HOST_UNTRACKED);
            None
        }
    }
}

/// The verdict of a new ClientHello for host slot `slot`: its action, then its rate limit.
#[inline(always)]
fn decide(slot: u32) -> u8 {
    let Some(policy) = SNI_POLICY.get(slot) else {
        return verdict::PASS;
    };
    if policy.action == ACTION_DROP {
        return verdict::DROP;
    }
    if policy.interval_ns == 0 {
        return verdict::PASS;
    }
    let Some(bucket) = SNI_BUCKETS.get_ptr_mut(slot) else {
        return verdict::PASS;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value shared by every CPU, 8-aligned, written only by `cmpxchg_64`.
    let tat = unsafe { &raw mut (*bucket).tat_ns };
    for _ in 0..CAS_ATTEMPTS {
        // SAFETY: as above; a torn read is impossible for an aligned 8-byte load, and a stale
        // one only makes the exchange below fail.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let Some(new) = gcra(old, now, policy.interval_ns, policy.tolerance_ns) else {
            return verdict::RATE_LIMITED;
        };
        // SAFETY: as above.
        if unsafe { cmpxchg(tat, old, new) } {
            return verdict::PASS;
        }
    }
    // Other CPUs kept winning the race: fail open.
    verdict::PASS
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
    // Several parser steps per call: a call through bpf_loop costs more than a step (the
    // benchmark's ClientHello took ~150 steps and ~2.7 µs at one step per call).
    let mut more = true;
    for _ in 0..STEPS_PER_CALL {
        more = s.pending.parser.step(&input, &mut pos);
        if !more {
            break;
        }
    }
    s.pos = pos as u32;
    if more {
        0
    } else {
        1
    }
}

/// Parser steps per `bpf_loop` callback: 4 took the benchmark's one-segment ClientHello from
/// 2.8 to 1.8 µs; 8 is past the verifier's budget of a million instructions.
const STEPS_PER_CALL: usize = 4;

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = SNI_GLOBAL.get_ptr_mut(index) {
        // SAFETY: a per-CPU value of this CPU.
        unsafe { *c += 1 };
    }
}

/// Atomically replaces `*p` with `new` if it holds `old`; whether it did.
///
/// Rust's atomics are not available here: the BPF target is declared single-threaded without
/// compare-and-swap, so the compiler would lower them to plain loads and stores. The
/// instruction is BPF_ATOMIC | BPF_CMPXCHG (kernel 5.12+): r0 holds the expected value and
/// receives what was in memory.
///
/// # Safety
/// `p` points to a live, 8-aligned map value.
#[inline(always)]
unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> bool {
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

#[inline(always)]
fn wildcards_enabled() -> bool {
    // SAFETY: as in `debug_enabled`.
    unsafe { core::ptr::read_volatile(&SNI_WILDCARDS) != 0 }
}
