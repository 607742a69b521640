//! The Prometheus endpoint of `sni-user run` (`metrics = "IP:PORT"`): `GET /metrics` in the
//! OpenMetrics text format, served by hyper on the control plane's tokio runtime, encoded by
//! prometheus-client from the same sources as `sni-user stats`, read at scrape time: the
//! classifier's maps (opened once at start, so they stay readable after the privilege drop),
//! the terminator's counters, the reload counters.
//!
//! Label cardinality is bounded: configured hosts by their label, the `metrics_other_hosts`
//! names not configured with the most ClientHellos by name, and every other name summed into
//! `host="other"`; a scan of random names adds nothing beyond that. Fingerprints likewise
//! ([`super::fingerprint_metrics`]).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use sni_common::maps::{counter, HostStats};

use crate::{
    daemon::{fingerprint_metrics, ReloadCounters},
    kernel::{
        fingerprint_rows::View,
        fingerprints::LearnCounters,
        readers::{HostRow, MapsReader, Snapshot},
    },
    terminator::{
        counters::{Failure, GlobalCounters},
        server::Shared,
    },
};

/// The OpenMetrics text content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// A scrape connection that sends nothing for this long is closed.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The label that folds names beyond the top N.
pub const OTHER: &str = "other";

/// How the metrics read fingerprints under `config` (`ja4_top`, the configured ones): no
/// per-host fingerprint rows, which no family shows, so they are not walked.
pub fn view(config: &crate::config::Config) -> View {
    View {
        per_host: false,
        ..View::of(config)
    }
}

/// What a scrape reads.
pub struct Sources {
    /// The classifier's maps (None: no classifier), read as [`view`] says (a reload changes
    /// it).
    pub maps: Option<Arc<Mutex<MapsReader>>>,
    /// The terminator (None: none running).
    pub terminator: Option<Arc<Shared>>,
    /// Reloads.
    pub reloads: Arc<ReloadCounters>,
    /// `metrics_other_hosts`, updated by reloads.
    pub other_hosts: Arc<AtomicUsize>,
    /// What the daemon did with the kernel's fingerprint events (None: no classifier).
    pub ja4_learning: Option<Arc<LearnCounters>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("maps", &self.maps.is_some())
            .field("terminator", &self.terminator.is_some())
            .finish_non_exhaustive()
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build: [(&str, &str); 3] = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("rustls", "0.23"),
            ("aya", "0.14"),
        ];
        // A gauge of 1, as `*_build_info` metrics are by convention: the OpenMetrics info type
        // is unknown to the Prometheus text format and its tools (promtool).
        encoder
            .encode_descriptor(
                "sni_build_info",
                "Build of sni-user (always 1).",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&build)?
            .encode_gauge(&1i64)?;
        if let Some(maps) = &self.maps {
            let read = maps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .read();
            match read {
                Ok(snapshot) => {
                    self.encode_xdp(&mut encoder, &snapshot)?;
                    fingerprint_metrics::encode(
                        &mut encoder,
                        &snapshot.fingerprints,
                        self.other_hosts.load(Relaxed),
                    )?;
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "metrics: reading the maps"),
            }
        }
        if let Some(learning) = &self.ja4_learning {
            fingerprint_metrics::encode_learning(&mut encoder, learning)?;
        }
        if let Some(t) = &self.terminator {
            encode_terminator(&mut encoder, t)?;
        }
        let r = &self.reloads;
        counter_value(
            &mut encoder,
            "sni_config_reloads",
            "Configuration reloads applied (SIGHUP or sni-user reload).",
            r.reloads.load(Relaxed),
        )?;
        counter_value(
            &mut encoder,
            "sni_config_reload_failures",
            "Configuration reloads refused; the running configuration stayed.",
            r.failures.load(Relaxed),
        )?;
        if let Some(t) = &self.terminator {
            let routes = t.routes();
            if let Some(keys) = routes.ticket_keys() {
                let g = ConstGauge::new(keys.len() as i64);
                g.encode(encoder.encode_descriptor(
                    "sni_tls_ticket_keys",
                    "Session ticket keys in use from the ticket_keys file.",
                    None,
                    g.metric_type(),
                )?)?;
                counter_value(
                    &mut encoder,
                    "sni_tls_ticket_key_reloads",
                    "Changes of the ticket_keys file taken in while running.",
                    r.ticket_key_reloads.load(Relaxed),
                )?;
                counter_value(
                    &mut encoder,
                    "sni_tls_ticket_key_failures",
                    "Changes of the ticket_keys file refused; the keys in use stayed.",
                    r.ticket_key_failures.load(Relaxed),
                )?;
            }
        }
        let g = ConstGauge::new(r.last_success.load(Relaxed) as i64);
        g.encode(encoder.encode_descriptor(
            "sni_config_last_reload_success_timestamp_seconds",
            "Unix time of the start or of the last reload applied.",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

fn counter_value(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One per-host family: `value` of each row, labelled with its host.
fn host_counters<'r>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (&'r str, bool, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (host, configured, value) in rows {
        let labels = [
            ("host", host),
            ("configured", if configured { "true" } else { "false" }),
        ];
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// Configured rows, then the top `n` others by ClientHellos, then one `other` row summing the
/// rest (present even when empty, so that its series never vanishes). Also how many names
/// were folded.
pub fn fold(rows: &[HostRow], n: usize) -> (Vec<HostRow>, usize) {
    let mut out: Vec<HostRow> = rows.iter().filter(|r| r.configured).cloned().collect();
    let mut others: Vec<&HostRow> = rows.iter().filter(|r| !r.configured).collect();
    others.sort_by(|a, b| HostRow::rank(a, b));
    let taken: std::collections::HashSet<String> = out.iter().map(|r| r.host.clone()).collect();
    let mut rest = HostStats::default();
    let mut named = 0;
    let mut folded = 0;
    for r in others {
        // A name that is "other", empty, or the label of a configured host would collide
        // with a series of its own: it folds.
        if named < n && r.host != OTHER && !r.host.is_empty() && !taken.contains(r.host.as_str()) {
            out.push(r.clone());
            named += 1;
        } else {
            folded += 1;
            rest.add(&r.stats());
        }
    }
    out.push(HostRow::new(OTHER.to_owned(), rest, false));
    (out, folded)
}

impl Sources {
    fn encode_xdp(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshot: &Snapshot,
    ) -> Result<(), std::fmt::Error> {
        let tracked = snapshot.hosts.iter().filter(|h| !h.configured).count();
        let (rows, folded) = fold(&snapshot.hosts, self.other_hosts.load(Relaxed));
        type Field = fn(&HostRow) -> u64;
        let families: [(&str, &str, Field); 6] = [
            (
                "sni_xdp_host_client_hellos",
                "ClientHellos naming the host, read in XDP.",
                |r| r.client_hellos,
            ),
            (
                "sni_xdp_host_packets",
                "Packets of the host's flows, from the first ClientHello segment on.",
                |r| r.packets,
            ),
            (
                "sni_xdp_host_bytes",
                "Bytes (whole frames) of those packets.",
                |r| r.bytes,
            ),
            (
                "sni_xdp_host_ech",
                "ClientHellos naming the host that carried encrypted_client_hello.",
                |r| r.ech,
            ),
            (
                "sni_xdp_host_dropped_packets",
                "Packets dropped by the host's action = drop.",
                |r| r.dropped,
            ),
            (
                "sni_xdp_host_rate_limited_packets",
                "Packets dropped over the host's hello_rate.",
                |r| r.rate_limited,
            ),
        ];
        for (name, help, field) in families {
            host_counters(
                encoder,
                name,
                help,
                rows.iter()
                    .map(|r| (r.host.as_str(), r.configured, field(r))),
            )?;
        }
        for (name, help) in counter::NAMES.iter().zip(counter::HELP) {
            counter_value(
                encoder,
                &format!("sni_xdp_{name}"),
                help,
                snapshot.global(name),
            )?;
        }
        for (name, help, value) in [
            (
                "sni_xdp_other_hosts_tracked",
                "Names not configured held in the kernel's map of other names.",
                tracked,
            ),
            (
                "sni_xdp_other_hosts_folded",
                "Of those, names summed into host=\"other\" in this scrape.",
                folded,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

fn encode_terminator(encoder: &mut DescriptorEncoder, t: &Shared) -> Result<(), std::fmt::Error> {
    let routes = t.counted_routes();
    type Field = fn(&crate::terminator::counters::HostCounters) -> u64;
    let families: [(&str, &str, Field); 6] = [
        (
            "sni_tls_handshakes",
            "Finished TLS handshakes (terminate) or routed connections (passthrough).",
            |c| c.handshakes.load(Relaxed),
        ),
        (
            "sni_tls_resumed_handshakes",
            "Of those, handshakes that resumed a session.",
            |c| c.resumed.load(Relaxed),
        ),
        (
            "sni_tls_client_cert_handshakes",
            "Of those, handshakes with a verified client certificate (mTLS).",
            |c| c.client_certs.load(Relaxed),
        ),
        (
            "sni_tls_bytes_to_backend",
            "Bytes from clients to the host's backend.",
            |c| c.bytes_to_backend.load(Relaxed),
        ),
        (
            "sni_tls_bytes_to_client",
            "Bytes from the host's backend to clients.",
            |c| c.bytes_to_client.load(Relaxed),
        ),
        (
            "sni_tls_client_aborts",
            "Connections whose client's socket failed (reset, gone) once they were through.",
            |c| c.client_aborts.load(Relaxed),
        ),
    ];
    for (name, help, field) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for r in &routes {
            family
                .encode_family(&[("host", r.label.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&field(&r.counters), None)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sni_tls_active_connections",
            "Connections of the host open now.",
            None,
            MetricType::Gauge,
        )?;
        for r in &routes {
            let v = i64::try_from(r.counters.active.load(Relaxed)).unwrap_or(i64::MAX);
            family
                .encode_family(&[("host", r.label.as_str())])?
                .encode_gauge(&v)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sni_tls_failures",
            "Connections of the host that ended badly, by reason.",
            None,
            MetricType::Counter,
        )?;
        for r in &routes {
            for (reason, v) in Failure::NAMES.iter().zip(&r.counters.failures) {
                family
                    .encode_family(&[("host", r.label.as_str()), ("reason", reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(&v.load(Relaxed), None)?;
            }
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sni_tls_handshake_duration_seconds",
            "From accept to the end of the TLS handshake (passthrough: to routing).",
            None,
            MetricType::Histogram,
        )?;
        for r in &routes {
            let (sum, count, buckets) = r.counters.handshake_seconds.parts();
            family
                .encode_family(&[("host", r.label.as_str())])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sni_tls_route_connections",
            "Connections a [[host.route]] took, by the ALPN protocols it lists.",
            None,
            MetricType::Counter,
        )?;
        for r in &routes {
            for a in &r.alpn_routes {
                family
                    .encode_family(&[("host", r.label.as_str()), ("alpn", a.alpn_text().as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&a.connections.load(Relaxed), None)?;
            }
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "sni_tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the host's certificate stops being valid (notAfter).",
            None,
            MetricType::Gauge,
        )?;
        for r in &routes {
            if let Some(t) = r.not_after {
                family
                    .encode_family(&[("host", r.label.as_str())])?
                    .encode_gauge(&t)?;
            }
        }
    }
    for (name, help, field) in GlobalCounters::FIELDS {
        let value = field(&t.global).load(Relaxed);
        counter_value(encoder, &format!("sni_tls_{name}"), help, value)?;
    }
    encode_acme(encoder, &t.acme_snapshot())
}

/// The ACME hosts: orders issued and failed, the last issuance, and whether the host is
/// still on its placeholder. (Their certificates' expiry is in the family above.)
fn encode_acme(
    encoder: &mut DescriptorEncoder,
    hosts: &[crate::acme::client::HostState],
) -> Result<(), std::fmt::Error> {
    if hosts.is_empty() {
        return Ok(());
    }
    type Field = fn(&crate::acme::client::HostState) -> u64;
    let counters: [(&str, &str, Field); 2] = [
        (
            "sni_acme_certificates_issued",
            "Certificates issued by the ACME CA since start.",
            |h| h.orders.issued,
        ),
        (
            "sni_acme_order_failures",
            "ACME orders that failed since start (the log has the CA's problem document).",
            |h| h.orders.failures,
        ),
    ];
    for (name, help, field) in counters {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for h in hosts {
            family
                .encode_family(&[("host", h.host.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&field(h), None)?;
        }
    }
    let gauges: [(&str, &str, Field); 2] = [
        (
            "sni_acme_placeholder",
            "1 while the host is served with its self-signed placeholder (no certificate yet).",
            |h| u64::from(h.placeholder),
        ),
        (
            "sni_acme_last_issued_timestamp_seconds",
            "Unix time of the host's last issuance since start (0: none).",
            |h| h.orders.last_issued,
        ),
    ];
    for (name, help, field) in gauges {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for h in hosts {
            let v = i64::try_from(field(h)).unwrap_or(i64::MAX);
            family
                .encode_family(&[("host", h.host.as_str())])?
                .encode_gauge(&v)?;
        }
    }
    Ok(())
}

/// The text of one scrape.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

/// Binds `addr` now (before privileges are dropped) and serves scrapes on the current tokio
/// runtime until the process ends.
pub fn serve(addr: SocketAddr, sources: Sources) -> Result<SocketAddr> {
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("metrics: binding {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources));
    let registry = Arc::new(registry);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(address = %local, "metrics endpoint listening (GET /metrics)");
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(req, registry).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let _ = builder.serve_connection(io, service).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

async fn respond(req: Request<Incoming>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
        *r.status_mut() = status;
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "sni-user: metrics are at /metrics\n");
    }
    // Reading the maps is a few syscalls per host: off the runtime's thread.
    match tokio::task::spawn_blocking(move || render(&registry)).await {
        Ok(Ok(body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            if let Ok(v) = header::HeaderValue::from_str(CONTENT_TYPE) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        _ => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, hellos: u64, configured: bool) -> HostRow {
        HostRow {
            host: host.to_owned(),
            client_hellos: hellos,
            packets: hellos * 3,
            bytes: hellos * 1000,
            ech: 0,
            dropped: 0,
            rate_limited: 0,
            configured,
        }
    }

    #[test]
    fn fold_keeps_configured_and_top_n_and_sums_the_rest() {
        let mut rows = vec![row("a.example", 1, true), row("b.example", 0, true)];
        for i in 0..10_000u64 {
            rows.push(row(&format!("scan{i}.example"), i % 7, false));
        }
        rows.push(row("other", 1_000_000, false));
        rows.push(row("a.example", 50, false)); // same text as a configured label
        let (out, folded) = fold(&rows, 3);
        let names: Vec<&str> = out.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(names.len(), 2 + 3 + 1, "{names:?}");
        assert_eq!(&names[..2], ["a.example", "b.example"]);
        assert_eq!(names[5], "other");
        assert!(
            names[2..5].iter().all(|n| n.starts_with("scan")),
            "{names:?}"
        );
        assert_eq!(folded, 10_002 - 3);
        let total: u64 = rows.iter().map(|r| r.client_hellos).sum();
        assert_eq!(out.iter().map(|r| r.client_hellos).sum::<u64>(), total);
        // n = 0: every other name folds; the row is there even with none.
        let (out, _) = fold(&rows[..2], 0);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].client_hellos, 0);
    }
}
