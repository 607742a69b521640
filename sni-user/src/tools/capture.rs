//! `sni-user classify FILE`: the kernel's per-flow state machine run offline over a pcap or
//! pcapng capture, so operators can check what the classifier makes of their own traffic.
//!
//! Every TCP flow whose first payload starts a ClientHello is followed exactly as the XDP
//! program follows it: the same parser (`sni_common::hello`), the same placement of segments
//! against the next expected byte (`sni_common::flow::Step`), the same rule that a SYN starts
//! the 5-tuple over. Each ClientHello is read to its end, as the kernel reads it by default
//! (`SNI_JA4`), and its JA4 fingerprint (`sni_common::ja4`) reported. Frames are decoded by etherparse (Ethernet, VLAN, Linux cooked, raw IP),
//! captures read by pcap-parser.

use std::{
    collections::HashMap,
    fs::File,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_parser::{
    data::{get_packetdata, PacketData},
    pcapng::Block,
    Linktype, PcapBlockOwned, PcapError,
};
use serde::Serialize;
use sni_common::{
    flow::{Pending, Step},
    hello::starts_client_hello,
    Outcome,
};

/// What one flow's ClientHello came to.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowReport {
    /// Client address and port.
    pub client: SocketAddr,
    /// Server address and port.
    pub server: SocketAddr,
    /// One of [`Outcome::ALL`], by its name (`sni`, `no_sni`, `malformed`, `incomplete`,
    /// `sslv2`).
    pub outcome: &'static str,
    /// The name, when read (non-printable bytes escaped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The JA4 fingerprint of a ClientHello read to its end (`null` for one cut short,
    /// malformed, SSLv2-compatible, or with more values than the parser keeps).
    pub ja4: Option<String>,
    /// Why there is no name: the parser's reason, `out_of_order`, `restarted` or
    /// `capture_ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the ClientHello carried encrypted_client_hello (as far as it was read).
    pub ech: bool,
    /// Segments that carried ClientHello bytes read by the parser.
    pub segments: u32,
    /// Segments skipped because every byte in them had been read before.
    pub retransmits: u32,
}

/// Everything a capture says.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Flows in the order their ClientHello ended.
    pub flows: Vec<FlowReport>,
    /// Frames read.
    pub frames: u64,
    /// Frames skipped: not IP/TCP, IP fragments, cut short by the capture's snap length, or
    /// of a link type not decoded.
    pub skipped: u64,
}

impl Report {
    /// Flows per outcome, in a fixed order.
    pub fn summary(&self) -> [(&'static str, usize); Outcome::ALL.len()] {
        Outcome::ALL.map(|o| {
            let name = o.as_str();
            (
                name,
                self.flows.iter().filter(|f| f.outcome == name).count(),
            )
        })
    }
}

/// A TCP segment as the tracker needs it.
struct Segment<'a> {
    client: SocketAddr,
    server: SocketAddr,
    seq: u32,
    syn_only: bool,
    payload: &'a [u8],
    /// The frame's length as captured.
    frame_len: u64,
}

/// State of one directional 5-tuple.
enum State {
    Pending {
        pending: Box<Pending>,
        retransmits: u32,
    },
    Done,
}

/// The per-flow state machine, over segments in capture order.
#[derive(Default)]
pub struct Tracker {
    flows: HashMap<(SocketAddr, SocketAddr), State>,
    report: Report,
}

impl Tracker {
    fn segment(&mut self, seg: &Segment<'_>) {
        let key = (seg.client, seg.server);
        if seg.syn_only {
            // A new connection on this 5-tuple: a ClientHello still pending is incomplete.
            if let Some(State::Pending {
                pending,
                retransmits,
            }) = self.flows.remove(&key)
            {
                self.end(key, &pending, retransmits, Some("restarted"));
            }
            return;
        }
        if seg.payload.is_empty() {
            return;
        }
        let state = self.flows.remove(&key);
        let next_seq = match &state {
            Some(State::Done) => {
                self.flows.insert(key, State::Done);
                return;
            }
            Some(State::Pending { pending, .. }) => Some(pending.next_seq),
            None => None,
        };
        // A payload too short to tell goes to the parser, as in the kernel.
        let starts = || {
            seg.payload
                .first_chunk::<6>()
                .is_none_or(|head| starts_client_hello(*head))
        };
        let step = Step::of(next_seq, seg.seq, seg.payload.len() as u32, starts);
        let (mut pending, retransmits, skip) = match (step, state) {
            (
                Step::Parse { skip, .. },
                Some(State::Pending {
                    pending,
                    retransmits,
                }),
            ) => (pending, retransmits, skip as usize),
            (Step::Parse { .. }, _) => (Box::new(Pending::JA4), 0, 0),
            (
                Step::Retransmit,
                Some(State::Pending {
                    pending,
                    retransmits,
                }),
            ) => {
                self.flows.insert(
                    key,
                    State::Pending {
                        pending,
                        retransmits: retransmits + 1,
                    },
                );
                return;
            }
            (
                Step::Gap,
                Some(State::Pending {
                    pending,
                    retransmits,
                }),
            ) => {
                self.flows.insert(key, State::Done);
                self.end(key, &pending, retransmits, Some("out_of_order"));
                return;
            }
            _ => return,
        };
        pending
            .parser
            .feed(seg.payload.get(skip..).unwrap_or_default());
        pending.read(seg.seq, seg.payload.len() as u32, seg.frame_len);
        if pending.parser.wants_more() {
            self.flows.insert(
                key,
                State::Pending {
                    pending,
                    retransmits,
                },
            );
            return;
        }
        // As the kernel: a flow is remembered only once a ClientHello was read; bytes that
        // were not one leave nothing, and a later segment may start a ClientHello.
        if pending.parser.is_client_hello() {
            self.flows.insert(key, State::Done);
        }
        self.end(key, &pending, retransmits, None);
    }

    /// Records the outcome of a ClientHello (`cut`: why it could not be finished).
    fn end(
        &mut self,
        (client, server): (SocketAddr, SocketAddr),
        pending: &Pending,
        retransmits: u32,
        cut: Option<&str>,
    ) {
        let p = &pending.parser;
        if !p.is_client_hello() {
            return;
        }
        // The kernel's outcome, unless the flow was cut before it could be read on.
        let outcome = if cut.is_some() {
            Outcome::Incomplete
        } else {
            p.outcome()
        };
        let reason = match (cut, outcome) {
            (Some(why), _) => Some(why),
            (None, Outcome::Malformed) => Some(p.reason().as_str()),
            _ => None,
        };
        self.report.flows.push(FlowReport {
            client,
            server,
            outcome: outcome.as_str(),
            sni: p
                .name()
                .map(|n| n.as_bytes().escape_ascii().to_string())
                .filter(|_| outcome == Outcome::Sni),
            ja4: p.ja4().and_then(|s| s.ja4()).map(|j| j.as_str().to_owned()),
            reason: reason.map(str::to_owned),
            ech: p.has_ech(),
            segments: pending.segments,
            retransmits,
        });
    }

    /// Ends the ClientHellos still waiting when the capture ends.
    pub fn finish(mut self) -> Report {
        let mut left: Vec<_> = self
            .flows
            .drain()
            .filter_map(|(key, state)| match state {
                State::Pending {
                    pending,
                    retransmits,
                } => Some((key, pending, retransmits)),
                State::Done => None,
            })
            .collect();
        left.sort_by_key(|(key, _, _)| *key);
        for (key, pending, retransmits) in left {
            self.end(key, &pending, retransmits, Some("capture_ended"));
        }
        self.report
    }

    /// Decodes one captured frame and follows it.
    fn frame(&mut self, data: &[u8], linktype: Linktype, caplen: u32, origlen: u32) {
        self.report.frames += 1;
        if caplen < origlen {
            // Cut by the snap length: the payload would be missing bytes.
            self.report.skipped += 1;
            return;
        }
        let sliced = match get_packetdata(data, linktype, caplen as usize) {
            Some(PacketData::L2(frame)) => SlicedPacket::from_ethernet(frame),
            Some(PacketData::L3(_, packet)) => SlicedPacket::from_ip(packet),
            _ => {
                self.report.skipped += 1;
                return;
            }
        };
        match sliced
            .ok()
            .as_ref()
            .and_then(|p| segment_of(p, u64::from(origlen)))
        {
            Some(seg) => self.segment(&seg),
            None => self.report.skipped += 1,
        }
    }
}

/// The TCP segment in a decoded frame, if it is one (and not an IP fragment).
fn segment_of<'a>(p: &SlicedPacket<'a>, frame_len: u64) -> Option<Segment<'a>> {
    let (src, dst, fragment): (IpAddr, IpAddr, bool) = match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.is_payload_fragmented(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.is_payload_fragmented(),
        ),
        NetSlice::Arp(_) => return None,
    };
    if fragment {
        return None;
    }
    let TransportSlice::Tcp(tcp) = p.transport.as_ref()? else {
        return None;
    };
    Some(Segment {
        client: SocketAddr::new(src, tcp.source_port()),
        server: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn_only: tcp.syn() && !tcp.ack(),
        payload: tcp.payload(),
        frame_len,
    })
}

/// Reads `path` (pcap or pcapng) and follows every flow in it.
pub fn classify_file(path: &Path) -> Result<Report> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = pcap_parser::create_reader(1 << 20, file)
        .map_err(|e| anyhow!("{}: not a pcap or pcapng capture ({e:?})", path.display()))?;
    let mut tracker = Tracker::default();
    // pcap: one link type; pcapng: one per interface of the current section.
    let mut legacy_linktype = Linktype::ETHERNET;
    let mut interfaces: Vec<Linktype> = Vec::new();
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => legacy_linktype = h.network,
                    PcapBlockOwned::Legacy(b) => {
                        tracker.frame(b.data, legacy_linktype, b.caplen, b.origlen)
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(idb.linktype)
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let linktype =
                            interfaces.get(epb.if_id as usize).copied().ok_or_else(|| {
                                anyhow!(
                                    "{}: a packet names interface {} that was not described",
                                    path.display(),
                                    epb.if_id
                                )
                            })?;
                        tracker.frame(epb.data, linktype, epb.caplen, epb.origlen)
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let linktype = interfaces.first().copied().unwrap_or(Linktype::ETHERNET);
                        let caplen = spb.data.len() as u32;
                        tracker.frame(spb.data, linktype, caplen, spb.origlen.max(caplen))
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                reader
                    .refill()
                    .map_err(|e| anyhow!("{}: reading the capture: {e:?}", path.display()))?;
            }
            Err(PcapError::UnexpectedEof) => bail!("{}: the capture is cut short", path.display()),
            Err(e) => bail!("{}: not a valid capture: {e:?}", path.display()),
        }
    }
    Ok(tracker.finish())
}

/// The report as text: one line per flow, then a summary.
pub fn table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in &report.flows {
        let what = match (&f.sni, &f.reason) {
            (Some(name), _) => name.clone(),
            (None, Some(reason)) => format!("({} : {reason})", f.outcome),
            (None, None) => format!("({})", f.outcome),
        };
        let _ = writeln!(
            out,
            "{} -> {}  {what}  ech={}  ja4={}  segments={}{}",
            f.client,
            f.server,
            if f.ech { "yes" } else { "no" },
            f.ja4.as_deref().unwrap_or("-"),
            f.segments,
            if f.retransmits > 0 {
                format!("  retransmits={}", f.retransmits)
            } else {
                String::new()
            }
        );
    }
    let summary: Vec<String> = report
        .summary()
        .iter()
        .map(|(o, n)| format!("{o}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "{} ClientHellos ({}); {} frames, {} skipped",
        report.flows.len(),
        summary.join(" "),
        report.frames,
        report.skipped
    );
    out
}
