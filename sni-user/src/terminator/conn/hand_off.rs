//! Hand-off from the kernel classifier: its record of a connection's flow, the host it names,
//! and how that compares with the name the TLS stack read; and the JA4 fingerprint it took of
//! the ClientHello against the terminator's own reading of the same bytes.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use sni_common::{
    flow::{kind, Flow, FlowKey},
    ja4::Ja4State,
    HostKey,
};

use crate::terminator::{conn::io::Flows, routes::Routes};

/// How the classifier's record compared with the terminator's reading of the ClientHello:
/// its host with the TLS stack's name ([`compare`]), or its fingerprint with the terminator's
/// ([`compare_ja4`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOff {
    /// The same.
    Agreed,
    /// Different (the terminator's reading wins).
    Disagreed,
    /// Nothing to compare: no record (or, for the fingerprint, none on either side).
    Unknown,
}

/// The classifier's record of the flow from `peer` to `local`, once it has placed it.
pub fn classified(flows: Option<&dyn Flows>, peer: SocketAddr, local: SocketAddr) -> Option<Flow> {
    let flow = flows?.flow(&flow_key(peer, local))?;
    (flow.kind != kind::UNKNOWN).then_some(flow)
}

/// The route of a flow the classifier named, by its host slot; a name not configured (or
/// none) goes to the default, if there is one.
pub fn flow_route(flow: &Flow, routes: &Routes) -> Option<usize> {
    match flow.kind {
        kind::CONFIGURED => routes.by_slot(flow.slot),
        _ => routes.resolve(None),
    }
}

/// The name the TLS stack saw (`seen`, routed to `route`) against the classifier's record
/// of the flow from `peer`.
pub fn compare(
    peer: SocketAddr,

    xdp: Option<&Flow>,
    seen: Option<&HostKey>,
    route: usize,
    routes: &Routes,
) -> HandOff {
    let Some(flow) = xdp else {
        return HandOff::Unknown;
    };
    let same_name = match seen {
        Some(name) => flow.kind != kind::NO_NAME && flow.name_hash == name.hash64(),
        None => flow.kind == kind::NO_NAME,
    };
    if same_name && flow_route(flow, routes) == Some(route) {
        HandOff::Agreed
    } else {
        tracing::debug!(%peer, ?flow, ?seen, route, "classifier disagreed");
        HandOff::Disagreed
    }
}

/// The classifier's JA4 of the flow from `peer` ([`Flow::ja4`], a
/// [`sni_common::ja4::Ja4Key::hash64`]) against the one of the ClientHello the terminator read
/// whole (`ours`). Unknown without a record, when the classifier took no fingerprint (its JA4
/// reading off, or a ClientHello it could not read to its end), or when the terminator has
/// none. Called once per connection: a disagreement is one debug line with both values.
pub fn compare_ja4(peer: SocketAddr, xdp: Option<&Flow>, ours: Option<&Ja4State>) -> HandOff {
    let (Some(flow), Some(ours)) = (xdp, ours) else {
        return HandOff::Unknown;
    };
    if flow.ja4 == 0 {
        return HandOff::Unknown;
    }
    let hash = ours.key().hash64();
    if flow.ja4 == hash {
        return HandOff::Agreed;
    }
    // The string when the lists fit (they do for every client seen so far), else JA4_a.
    let ja4 = ours.ja4().map_or_else(
        || String::from_utf8_lossy(&ours.part_a()).into_owned(),
        |j| j.as_str().to_owned(),
    );
    tracing::debug!(
        %peer,
        kernel = format_args!("{:016x}", flow.ja4),
        terminator = format_args!("{hash:016x}"),
        %ja4,
        "classifier's JA4 differs from the ClientHello's"
    );
    HandOff::Disagreed
}

/// The key of the kernel's flow table for a connection from `peer` to `local`.
pub fn flow_key(peer: SocketAddr, local: SocketAddr) -> FlowKey {
    let mut key = FlowKey {
        src_port: peer.port(),
        dst_port: local.port(),
        ..FlowKey::default()
    };
    match (peer, local) {
        (SocketAddr::V4(p), SocketAddr::V4(l)) => {
            key.family = 4;
            key.src[..4].copy_from_slice(&p.ip().octets());
            key.dst[..4].copy_from_slice(&l.ip().octets());
        }
        (p, l) => {
            key.family = 6;
            key.src = to_v6(p.ip()).octets();
            key.dst = to_v6(l.ip()).octets();
        }
    }
    key
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}
