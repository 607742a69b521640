//! Hand-off from the kernel classifier: its record of a connection's flow, the host it names,
//! and how that compares with the name the TLS stack read.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use sni_common::{
    flow::{kind, Flow, FlowKey},
    HostKey,
};

use crate::terminator::{conn::io::Flows, routes::Routes};

/// How the classifier's record compared with the TLS stack's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOff {
    /// Same host.
    Agreed,
    /// Another host (the TLS stack's name wins).
    Disagreed,
    /// No record.
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
