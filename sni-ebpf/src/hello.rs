//! Stage 3, the ClientHello: a segment that starts one, or continues one pending for its
//! flow, is copied into this CPU's scratch with `bpf_xdp_load_bytes` and read by the shared
//! parser (`sni_common::hello`) from `bpf_loop`. A ClientHello that goes on past the segment
//! is kept in `SNI_PENDING`, keyed by the 5-tuple, and resumed with the next in-order segment
//! (`sni_common::flow::Step`, the step `sni-user classify` takes too: retransmissions skipped,
//! a hole gives it up).
//!
//! The scratch is reached only through a raw pointer, and a reference to it lives only
//! between helper calls: the `bpf_loop` callbacks write the same memory through their own
//! pointer, which a live `&mut` would declare impossible.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use sni_common::{
    flow::{Flow, FlowKey, Pending, Step},
    hello::starts_client_hello,
    maps::{counter, profile_stop as stop, Chunk, Scratch, SCRATCH_LEN},
    Parser,
};

use crate::{
    counters::count,
    error::Error,
    flow,
    headers::{ptr_at, Segment},
    maps::{ja4_enabled, profile_stop, SNI_PENDING, SNI_SCRATCH},
};

/// Reads the ClientHello bytes of a segment with payload that is not of a classified flow.
/// Returns the scratch when its parser reached an outcome (the name, the end, or a failure)
/// for the caller to classify; None when there is nothing to classify yet (not a
/// ClientHello, a retransmission, a hole, or a ClientHello that goes on).
#[inline(always)]
pub fn read(
    ctx: &XdpContext,
    seg: &Segment,
    frame_len: u64,
) -> Result<Option<*mut Scratch>, Error> {
    let scratch = SNI_SCRATCH.get_ptr_mut(0).ok_or(Error::Map)?;
    let pending = SNI_PENDING.get_ptr_mut(seg.key.flow_key());
    // SAFETY: a map value; fields are read and updated in place, and the whole state is
    // copied into this CPU's scratch only when there are bytes to parse.
    let next_seq = pending.map(|p| unsafe { (*p).next_seq });
    // A payload too short to tell goes to the parser, which answers from what is there.
    let step = Step::of(next_seq, seg.seq, seg.payload_len as u32, || {
        seg.payload_len < 6 || starts(ctx, seg)
    });
    if profile_stop() == stop::PENDING {
        return Ok(None);
    }
    let (skip, resumed) = match (step, pending) {
        (Step::Parse { skip, resumed }, _) => (skip as usize, resumed),
        (Step::Retransmit, Some(p)) => {
            count(counter::RETRANSMITS);
            // SAFETY: as above.
            unsafe {
                (*p).segments += 1;
                (*p).bytes += frame_len;
            }
            return Ok(None);
        }
        (Step::Gap, Some(p)) => {
            count(counter::OUT_OF_ORDER);
            // SAFETY: as above, read before the entry goes.
            let (hello, named) = unsafe { ((*p).parser.is_client_hello(), (*p).parser.has_name()) };
            if named {
                // Its name was read before the hole (reading goes on past the name for the
                // JA4): its host is known, counted and judged, without a fingerprint.
                // SAFETY: this CPU's scratch; the pending state is copied whole into it.
                unsafe { (*scratch).pending = *p };
                let _ = SNI_PENDING.remove(seg.key.flow_key());
                return Ok(Some(scratch));
            }
            let _ = SNI_PENDING.remove(seg.key.flow_key());
            count_abandoned(hello);
            // Remembered, so that its later segments are not parsed as new ClientHellos.
            flow::remember(&seg.key, &Flow::default());
            return Ok(None);
        }
        _ => return Ok(None),
    };
    // SAFETY: this CPU's scratch; a pending state is copied whole into it. (Each arm writes
    // a whole value of its own: one chosen at run time would be built on the 512-byte stack.)
    unsafe {
        match (resumed, pending) {
            (true, Some(p)) => (*scratch).pending = *p,
            _ if ja4_enabled() => (*scratch).pending = Pending::JA4,
            _ => (*scratch).pending = Pending::NEW,
        }
    }
    if profile_stop() == stop::SCRATCH {
        return Ok(None);
    }
    parse(ctx, scratch, seg.payload_off + skip, seg.payload_len - skip)?;
    // SAFETY: this CPU's scratch; the callbacks are done with it.
    let pending = unsafe { &mut (*scratch).pending };
    pending.read(seg.seq, seg.payload_len as u32, frame_len);
    if pending.parser.wants_more() {
        if !resumed {
            count(counter::SPLIT);
        }
        SNI_PENDING
            .insert(seg.key.flow_key(), pending, 0)
            .map_err(|_| Error::Update)?;
        return Ok(None);
    }
    if resumed {
        let _ = SNI_PENDING.remove(seg.key.flow_key());
    }
    Ok(Some(scratch))
}

/// Whether the segment's payload starts like a ClientHello (six bytes: a handshake record
/// whose first message is a ClientHello, or an SSLv2-compatible ClientHello). False for a
/// shorter payload.
#[inline(always)]
pub fn starts(ctx: &XdpContext, seg: &Segment) -> bool {
    if seg.payload_len < 6 {
        return false;
    }
    match ptr_at::<[u8; 6]>(ctx, seg.payload_off) {
        // SAFETY: ptr_at checked the six bytes are inside the frame.
        Some(head) => starts_client_hello(unsafe { *head }),
        None => false,
    }
}

/// A SYN: a ClientHello pending on the 5-tuple's previous connection is given up.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    if let Some(p) = SNI_PENDING.get_ptr(key) {
        // SAFETY: a map value; only a flag is read, before the entry goes.
        count_abandoned(unsafe { (*p).parser.is_client_hello() });
        let _ = SNI_PENDING.remove(key);
    }
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

/// Runs the parser in the scratch over `len` payload bytes from `off`, a chunk at a time.
///
/// One `bpf_loop` copies each chunk and runs the parser's steps over it, so that the verifier
/// sees one place that runs them: a loop over the chunks around a `bpf_loop` of the steps was
/// unrolled into four places, each verified apart, and a `bpf_loop` of chunks around one of
/// steps takes a stack frame more than the program's 512 bytes allow.
#[inline(always)]
fn parse(ctx: &XdpContext, scratch: *mut Scratch, off: usize, len: usize) -> Result<(), Error> {
    let mut chunks = Chunks {
        xdp: ctx.ctx,
        off: off as u32,
        len: len as u32,
        done: 0,
        failed: 0,
    };
    // SAFETY: this CPU's scratch: no chunk is in it yet.
    unsafe {
        (*scratch).len = 0;
        (*scratch).pos = 0;
    }
    // The whole payload is read (up to loopback's 64 KiB), however many chunks it takes. A
    // step that does not end the chunk or the parse consumes at least a byte, and a zero-length
    // field is followed by one that does (`Parser::max_steps`: 2 × len + 2 covers them), and
    // each chunk adds the iteration that copies it (counted twice, for room: the last call,
    // which stops the loop, is one more).
    let iterations = Parser::max_steps(len) + 2 * (len / SCRATCH_LEN + 1);
    // SAFETY: `parse_step` has the callback signature bpf_loop expects; its context is
    // `chunks`, on this stack for the whole call, and it finds the parser in the per-CPU
    // scratch map itself.
    let rc = unsafe {
        bpf_loop(
            iterations as u32,
            parse_step as *mut c_void,
            (&raw mut chunks).cast(),
            0,
        )
    };
    if rc < 0 || chunks.failed != 0 {
        return Err(Error::Helper);
    }
    // SAFETY: this CPU's scratch; the callbacks are done with it.
    let (pos, chunk_len, wants_more) = unsafe {
        (
            (*scratch).pos,
            (*scratch).len,
            (*scratch).pending.parser.wants_more(),
        )
    };
    if wants_more && (chunks.done < chunks.len || pos < chunk_len) {
        // Bytes the parser never saw, yet the caller would record the segment as read.
        return Err(Error::Helper);
    }
    Ok(())
}

/// The payload `parse_step` reads, and how far it got.
#[repr(C)]
struct Chunks {
    xdp: *mut xdp_md,
    /// Offset of the first payload byte to parse in the frame.
    off: u32,
    /// Payload bytes to parse.
    len: u32,
    /// Bytes copied into the scratch so far.
    done: u32,
    /// A helper failed.
    failed: u32,
}

/// One iteration of the parse: copies the next chunk of the payload into this CPU's scratch
/// when the last one is used up, else runs one parser step over it. `bpf_loop` calls it until
/// it returns 1: the payload is read, the parser wants no more, or a helper failed.
extern "C" fn parse_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Chunks` that `parse` passed, alive for the whole loop.
    let chunks = unsafe { &mut *ctx.cast::<Chunks>() };
    let Some(scratch) = SNI_SCRATCH.get_ptr_mut(0) else {
        chunks.failed = 1;
        return 1;
    };
    // SAFETY: this CPU's scratch; bpf_loop runs on the same CPU within the same program, and
    // the caller holds no reference to it across the call.
    let s = unsafe { &mut *scratch };
    if !s.pending.parser.wants_more() {
        return 1;
    }
    if s.pos >= s.len {
        return next_chunk(chunks, scratch);
    }
    let input = Chunk::new(&s.buf, s.len as usize);
    let mut pos = s.pos as usize;
    // One parser step per call, in its two halves (`Parser::step`): a leap (the fixed fields,
    // or the lengths in front of the name or of a list's first value, read straight through;
    // or up to four extensions read no further than their type passed over), then a record
    // header, a whole integer field (an extension's type and length together), eight bytes of
    // a name or of a list of values, or all of a skipped field (and the skipped field after
    // the one it read). Two whole steps per call measured a little faster but cost the
    // verifier twice as much (`bench/results/2026-11-30T12-16-48Z-470344276a-ab.md`).
    s.pending.parser.leap(&input, &mut pos);
    // SAFETY: this CPU's scratch, as above. The position goes through memory the verifier
    // does not track, so that it checks the second half once, from one state, not once per
    // way the first one ended.
    let mut pos = unsafe {
        core::ptr::write_volatile(&raw mut s.pos, pos as u32);
        core::ptr::read_volatile(&raw const s.pos)
    } as usize;
    // Whether it made progress need not be asked: one that did not has used up the chunk
    // (the next call copies the next one) or ended the parse (the next call stops).
    s.pending.parser.field_step(&input, &mut pos);
    s.pos = pos as u32;
    0
}

/// Copies the next chunk of the payload into the scratch; 1 (stop) when there is none or
/// the copy failed.
#[inline(always)]
fn next_chunk(chunks: &mut Chunks, scratch: *mut Scratch) -> i64 {
    if chunks.done >= chunks.len {
        return 1;
    }
    let rest = (chunks.len - chunks.done) as usize;
    // The compiler knows `n` is in 1..=SCRATCH_LEN here, the verifier does not: it goes
    // through the scratch's memory, which hides it from the optimiser, and is bounded again
    // where the verifier can see the comparison.
    // SAFETY: this CPU's scratch; `len` is the chunk's length, set here before it is read.
    let n = unsafe {
        let len = &raw mut (*scratch).len;
        core::ptr::write_volatile(
            len,
            if rest < SCRATCH_LEN {
                rest
            } else {
                SCRATCH_LEN
            } as u32,
        );
        core::ptr::read_volatile(len) as usize
    };
    if n == 0 || n > SCRATCH_LEN {
        chunks.failed = 1;
        return 1;
    }
    // SAFETY: the helper copies `n` bytes (at most SCRATCH_LEN) into this CPU's scratch
    // buffer and checks the packet bounds itself.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            chunks.xdp,
            chunks.off + chunks.done,
            (&raw mut (*scratch).buf).cast(),
            n as u32,
        )
    };
    if rc < 0 {
        chunks.failed = 1;
        return 1;
    }
    // SAFETY: this CPU's scratch.
    unsafe { (*scratch).pos = 0 };
    chunks.done += n as u32;
    0
}
