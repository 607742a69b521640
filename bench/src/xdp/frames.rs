//! The frames the XDP cases run on: templates of one segment, and the flows they are given
//! (a new flow per call, or the busy table's flows in a shuffled order).

use sni_tests::frame::{self, Seg};

/// The frames of a per-call case, by call number.
pub(super) trait Frames {
    /// Writes the frame of call `i` into `buf`.
    fn frame(&self, i: u64, buf: &mut Vec<u8>);
    /// Writes a frame to run untimed before call `i`, if there is one.
    fn before(&self, _i: u64, _buf: &mut Vec<u8>) -> bool {
        false
    }
}

/// Sets the client address and port of an IPv4 frame of `frame::v4_segment` to the `n`-th
/// of 60,000 × 65,536 distinct ones.
pub(super) fn vary(frame: &mut [u8], n: u64) {
    let port = 1024 + (n % 60_000) as u16;
    let high = (n / 60_000) as u16;
    if let Some(ip) = frame.get_mut(28..30) {
        ip.copy_from_slice(&high.to_be_bytes());
    }
    if let Some(p) = frame.get_mut(34..36) {
        p.copy_from_slice(&port.to_be_bytes());
    }
}

pub(super) fn seg(src_port: u16, dst_port: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame::v4_segment(
        &Seg {
            src_port,
            dst_port,
            seq,
            flags,
        },
        payload,
    )
}

/// A UDP datagram to port 443 (QUIC-like), 100 bytes of payload.
pub(super) fn udp_frame() -> Vec<u8> {
    let payload = [0x42u8; 100];
    let mut udp = Vec::new();
    udp.extend_from_slice(&40_000u16.to_be_bytes());
    udp.extend_from_slice(&443u16.to_be_bytes());
    udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    frame::ethernet(
        &[],
        frame::ETH_P_IP,
        &frame::ipv4(frame::IPPROTO_UDP, &frame::V4::default(), &udp),
    )
}

/// A TLS application-data record of `len` bytes in all.
pub(super) fn app_data(len: usize) -> Vec<u8> {
    let mut r = vec![0x17, 0x03, 0x03];
    r.extend_from_slice(&((len - 5) as u16).to_be_bytes());
    r.resize(len, 0xab);
    r
}

/// A frame template whose flow is call `base + i` (a new flow per call).
pub(super) struct NewFlows {
    pub(super) template: Vec<u8>,
    pub(super) base: u64,
    pub(super) before: Option<Vec<u8>>,
}

impl Frames for NewFlows {
    fn frame(&self, i: u64, buf: &mut Vec<u8>) {
        buf.clone_from(&self.template);
        vary(buf, self.base + i);
    }
    fn before(&self, i: u64, buf: &mut Vec<u8>) -> bool {
        let Some(b) = &self.before else {
            return false;
        };
        buf.clone_from(b);
        vary(buf, self.base + i);
        true
    }
}

/// A fixed pseudo-random order of the busy flows (xorshift, Fisher-Yates): packets of a busy
/// table arrive from all over it, not in the order the flows were made.
pub(super) fn shuffled(n: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// Packets of the busy table's flows in shuffled order: every `mix`-th kind from `kinds`.
pub(super) struct Busy {
    pub(super) order: Vec<u32>,
    /// Frames by kind; the flow (and, for new flows, the call) is set per call.
    pub(super) kinds: Vec<(Kind, Vec<u8>)>,
    /// Where the flows of `Kind::New` are numbered from.
    pub(super) new_base: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A packet of a busy flow.
    Busy,
    /// A packet of a new flow (a ClientHello).
    New,
    /// A packet no flow is about (another port).
    Fixed,
}

impl Frames for Busy {
    fn frame(&self, i: u64, buf: &mut Vec<u8>) {
        let (kind, template) = &self.kinds[(i % self.kinds.len() as u64) as usize];
        buf.clone_from(template);
        match kind {
            Kind::Busy => vary(
                buf,
                u64::from(self.order[(i % self.order.len() as u64) as usize]),
            ),
            Kind::New => vary(buf, self.new_base + i),
            Kind::Fixed => {}
        }
    }
}

/// Both segments of a split ClientHello of a new flow per pair of calls: call `2k` is flow
/// `base + k`'s first segment, call `2k + 1` its second (a sender's two segments arrive
/// back to back).
pub(super) struct Split {
    pub(super) first: Vec<u8>,
    pub(super) second: Vec<u8>,
    pub(super) base: u64,
}

impl Frames for Split {
    fn frame(&self, i: u64, buf: &mut Vec<u8>) {
        buf.clone_from(if i.is_multiple_of(2) {
            &self.first
        } else {
            &self.second
        });
        vary(buf, self.base + i / 2);
    }
}
