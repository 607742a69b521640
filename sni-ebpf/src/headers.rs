//! Walking the headers in front of the TCP payload: Ethernet, 802.1Q/802.1ad tags, IPv4 with
//! options, IPv6 with extension headers, TCP with options.
//!
//! Stage 1 of the packet path. Every read goes through [`ptr_at`], the one bounds check
//! against `data_end` the verifier needs; wire integers are read as byte arrays and converted
//! with `from_be_bytes`. The flow key is built as the five words it is hashed and compared as
//! ([`Key`]), straight from the packet's bytes.

use aya_ebpf::programs::XdpContext;
use sni_common::{flow::FlowKey, maps::PortSet};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags read at most: an 802.1ad service tag and an 802.1Q customer tag (QinQ) is the
/// deepest stacking edge links carry; deeper frames are passed unparsed.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked at most. RFC 8200 §4.1 lists hop-by-hop, destination
/// options (twice), routing, fragment and AH/ESP once each; six covers a legal chain.
const MAX_IPV6_EXT_HEADERS: usize = 6;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// A flow key as five aligned words, in the layout of [`FlowKey`] (addresses, then ports and
/// family; see `FlowKey::words`), so that the flow stage hashes and compares words, not bytes.
#[repr(C, align(8))]
pub struct Key {
    /// The words.
    pub words: [u64; 5],
}
const _: () = assert!(
    core::mem::size_of::<Key>() == core::mem::size_of::<FlowKey>()
        && core::mem::align_of::<Key>() == core::mem::align_of::<FlowKey>()
);

impl Key {
    /// The key as the maps take it.
    #[inline(always)]
    pub fn flow_key(&self) -> &FlowKey {
        // SAFETY: `Key` and `FlowKey` are both `repr(C)`, 40 bytes, aligned to 8 (checked
        // above), and every byte pattern is a valid `FlowKey` (integers and byte arrays only);
        // the words were written in `FlowKey`'s field order.
        unsafe { &*(&raw const self.words).cast::<FlowKey>() }
    }
}

/// A TCP segment: its flow, sequence number and flags, and where its payload sits.
pub struct Segment {
    /// The flow, client to server as this packet travels.
    pub key: Key,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// TCP flags (`TCP_*`).
    pub flags: u8,
    /// Offset of the first payload byte from the start of the frame.
    pub payload_off: usize,
    /// Payload bytes (from the IP length, so Ethernet padding is not counted).
    pub payload_len: usize,
}

/// What the headers say about a frame.
pub enum Frame {
    /// Not IPv4/IPv6 TCP, or headers that do not parse: pass it on.
    Other,
    /// A fragment of an IP packet carrying TCP: its ports may be in another fragment.
    Fragment,
    /// A TCP segment.
    Tcp(Segment),
}

/// Pointer to a `T` at `off` bytes into the frame, if the frame is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Two bytes at `off`. There is no one-byte read: LLVM folds `p + 1 > end` into
/// `p >= end`, from which the verifier derives no packet range; every field read here has a
/// neighbour in the same header to read along with it.
#[inline(always)]
fn pair_at(ctx: &XdpContext, off: usize) -> Option<[u8; 2]> {
    // SAFETY: ptr_at checked that both bytes are inside the frame.
    ptr_at::<[u8; 2]>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: ptr_at checked that both bytes are inside the frame.
    ptr_at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// Walks the headers of the frame in `ctx`. A TCP segment to a port not in `ports` is
/// `Other` as soon as its port is read: most packets stop there, before the flow key is built.
#[inline(always)]
pub fn parse(ctx: &XdpContext, ports: &PortSet) -> Option<Frame> {
    let mut proto = be16_at(ctx, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // A tag: TCI (2 bytes), then the next EtherType.
        proto = be16_at(ctx, off + 2)?;
        off += 4;
    }
    let (l4_off, l4_end, addr_off, family) = match proto {
        ETH_P_IP => {
            let [ver_ihl, _tos] = pair_at(ctx, off)?;
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            if ver_ihl >> 4 != 4 || ihl < 20 {
                return Some(Frame::Other);
            }
            let total_len = usize::from(be16_at(ctx, off + 2)?);
            let frag = be16_at(ctx, off + 6)?;
            let [_ttl, protocol] = pair_at(ctx, off + 8)?;
            if protocol != IPPROTO_TCP {
                return Some(Frame::Other);
            }
            // More-fragments flag or a fragment offset.
            if frag & 0x3fff != 0 {
                return Some(Frame::Fragment);
            }
            (off + ihl, off + total_len, off + 12, 4u8)
        }
        ETH_P_IPV6 => {
            let payload_len = usize::from(be16_at(ctx, off + 4)?);
            let [mut next, _hop_limit] = pair_at(ctx, off + 6)?;
            let mut h = off + 40;
            let end = h + payload_len;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                        // Next header, then length in 8-octet units not counting the first.
                        let [nh, len] = pair_at(ctx, h)?;
                        next = nh;
                        h += (usize::from(len) + 1) * 8;
                    }
                    IPV6_AH => {
                        // RFC 4302 §2.2: length in 4-octet units, minus 2.
                        let [nh, len] = pair_at(ctx, h)?;
                        next = nh;
                        h += (usize::from(len) + 2) * 4;
                    }
                    IPV6_FRAGMENT => return Some(Frame::Fragment),
                    _ => break,
                }
            }
            // A jumbogram (payload length 0, RFC 2675) is passed unparsed.
            if next != IPPROTO_TCP || payload_len == 0 {
                return Some(Frame::Other);
            }
            (h, end, off + 8, 6u8)
        }
        _ => return Some(Frame::Other),
    };
    // SAFETY: ptr_at checked that the 8 bytes (ports and sequence number) are in the frame.
    let head = unsafe { *ptr_at::<[u8; 8]>(ctx, l4_off)? };
    let dst_port = u16::from_be_bytes([head[2], head[3]]);
    if !ports.contains(dst_port) {
        return Some(Frame::Other);
    }
    // The ports, as `FlowKey` stores them (host order), and the family: the last word.
    let ports = u64::from(u16::from_be_bytes([head[0], head[1]]))
        | u64::from(dst_port) << 16
        | u64::from(family) << 32;
    let words = if family == 4 {
        // SAFETY: ptr_at checked that the 8 address bytes are inside the frame.
        let a = unsafe { *ptr_at::<[u8; 8]>(ctx, addr_off)? };
        // An IPv4 address in the first 4 bytes of its 16, the rest zero.
        let src = u64::from(u32::from_ne_bytes([a[0], a[1], a[2], a[3]]));
        let dst = u64::from(u32::from_ne_bytes([a[4], a[5], a[6], a[7]]));
        [src, 0, dst, 0, ports]
    } else {
        // SAFETY: ptr_at checked that the 32 address bytes are inside the frame.
        let a = unsafe { *ptr_at::<[u8; 32]>(ctx, addr_off)? };
        let w = |i: usize| {
            u64::from_ne_bytes([
                a[i],
                a[i + 1],
                a[i + 2],
                a[i + 3],
                a[i + 4],
                a[i + 5],
                a[i + 6],
                a[i + 7],
            ])
        };
        [w(0), w(8), w(16), w(24), ports]
    };
    let seq = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let [data_offset, flags] = pair_at(ctx, l4_off + 12)?;
    let data_offset = usize::from(data_offset >> 4) * 4;
    if data_offset < 20 {
        return Some(Frame::Other);
    }
    let payload_off = l4_off + data_offset;
    let frame_len = ctx.data_end() - ctx.data();
    let end = if l4_end < frame_len {
        l4_end
    } else {
        frame_len
    };
    let payload_len = end.saturating_sub(payload_off);
    Some(Frame::Tcp(Segment {
        key: Key { words },
        seq,
        flags,
        payload_off,
        payload_len,
    }))
}
