//! Ethernet frames built byte by byte: VLAN tags, IPv4 with options and fragments, IPv6 with
//! extension headers, TCP with options. Checksums are left zero: XDP does not check them.

/// EtherTypes.
pub const ETH_P_IP: u16 = 0x0800;
/// IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q customer tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Ethernet header, then `tags` (TPID, VID) in order, then the payload's EtherType.
pub fn ethernet(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 options and fragment fields.
#[derive(Clone, Default)]
pub struct V4 {
    /// Options, padded to a multiple of 4 by the builder.
    pub options: Vec<u8>,
    /// Flags and fragment offset field (0x2000 = more fragments).
    pub frag: u16,
}

/// An IPv4 packet 198.18.0.1 → 198.18.0.2.
pub fn ipv4(protocol: u8, v4: &V4, payload: &[u8]) -> Vec<u8> {
    let mut options = v4.options.clone();
    while !options.len().is_multiple_of(4) {
        options.push(0); // End of Options List
    }
    let ihl = 5 + options.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut p = vec![(4 << 4) | ihl as u8, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&v4.frag.to_be_bytes());
    p.extend_from_slice(&[64, protocol, 0, 0]);
    p.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
    p.extend_from_slice(&options);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 extension header: its type and body (the builder adds next-header and length).
pub struct Ext {
    /// Header type (0 hop-by-hop, 43 routing, 44 fragment, 51 AH, 60 destination options).
    pub kind: u8,
    /// Body length: padded to the header's unit by the builder.
    pub body_len: usize,
}

/// An IPv6 packet fd00::1 → fd00::2 with `exts` before the upper-layer `protocol`.
pub fn ipv6(exts: &[Ext], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(protocol, |e| e.kind);
        match ext.kind {
            44 => {
                // Fragment header: fixed 8 bytes.
                chain.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 1]);
            }
            51 => {
                // AH: length in 4-octet units minus 2; total a multiple of 8 for IPv6.
                let total = (2 + ext.body_len.div_ceil(4)).max(3).next_multiple_of(2) * 4;
                chain.push(next);
                chain.push((total / 4 - 2) as u8);
                chain.extend(std::iter::repeat_n(0, total - 2));
            }
            _ => {
                // Options-style header: length in 8-octet units not counting the first.
                let total = (2 + ext.body_len).next_multiple_of(8);
                chain.push(next);
                chain.push((total / 8 - 1) as u8);
                chain.extend(std::iter::repeat_n(0, total - 2)); // Pad1/PadN-compatible zeros
            }
        }
    }
    let first = exts.first().map_or(protocol, |e| e.kind);
    let payload_len = chain.len() + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload_len as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    let mut src = [0u8; 16];
    src[0] = 0xfd;
    src[15] = 1;
    let mut dst = src;
    dst[15] = 2;
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&chain);
    p.extend_from_slice(payload);
    p
}

/// A TCP segment from a new client port (a new flow each call) to `dst_port` with
/// `options` (padded to 4) and `payload`.
pub fn tcp(dst_port: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    tcp_segment(
        &Seg {
            src_port: next_port(),
            dst_port,
            seq: 1,
            flags: PSH_ACK,
        },
        options,
        payload,
    )
}

/// TCP flags PSH|ACK: a data segment.
pub const PSH_ACK: u8 = 0x18;
/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flags FIN|ACK.
pub const FIN_ACK: u8 = 0x11;

/// The TCP header fields a test chooses.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    /// Client port.
    pub src_port: u16,
    /// Server port.
    pub dst_port: u16,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Flags.
    pub flags: u8,
}

/// A client port not used by an earlier frame of this process (wraps after 50,000).
pub fn next_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    10_000 + NEXT.fetch_add(1, Ordering::Relaxed) % 50_000
}

/// A TCP segment as `seg` says, with `options` (padded to 4) and `payload`.
pub fn tcp_segment(seg: &Seg, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut options = options.to_vec();
    while !options.len().is_multiple_of(4) {
        options.push(1); // NOP
    }
    let doff = 5 + options.len() / 4;
    let mut s = Vec::new();
    s.extend_from_slice(&seg.src_port.to_be_bytes());
    s.extend_from_slice(&seg.dst_port.to_be_bytes());
    s.extend_from_slice(&seg.seq.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.push((doff as u8) << 4);
    s.push(seg.flags);
    s.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(&options);
    s.extend_from_slice(payload);
    s
}

/// Sets the IPv4 source address of an Ethernet / IPv4 frame (its checksum is not checked).
pub fn set_v4_src(frame: &mut [u8], src: [u8; 4]) {
    frame[14 + 12..14 + 16].copy_from_slice(&src);
}

/// Ethernet / IPv4 / TCP as `seg` says, carrying `payload`.
pub fn v4_segment(seg: &Seg, payload: &[u8]) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, &V4::default(), &tcp_segment(seg, &[], payload)),
    )
}

/// Typical SYN-time options: MSS 1460, SACK permitted, timestamps, window scale.
pub const TCP_OPTIONS: &[u8] = &[
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// The common case: Ethernet / IPv4 / TCP to `port` carrying `payload`.
pub fn v4_tcp(port: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4(IPPROTO_TCP, &V4::default(), &tcp(port, &[], payload)),
    )
}
