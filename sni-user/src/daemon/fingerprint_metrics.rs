//! The fingerprints' part of `/metrics`: per fingerprint (by JA4 string) its ClientHellos,
//! drops and rate-limited ones, and what the daemon did with the kernel's fingerprint events.
//!
//! Label cardinality is bounded as for hosts: every configured fingerprint, the
//! `metrics_other_hosts` other fingerprints with the most ClientHellos, and the rest summed
//! into `ja4="other"` (present even when empty, so that its series never vanishes).

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{gauge::ConstGauge, MetricType},
};

use crate::kernel::{
    fingerprint_rows::{FingerprintRows, Ja4Row},
    fingerprints::LearnCounters,
};

/// The label of the fingerprints summed.
pub const OTHER: &str = "other";

/// Configured rows (flagged true), then the top `n` others, then one `other` row summing the
/// rest; and how many were summed.
pub fn fold(rows: &FingerprintRows, n: usize) -> (Vec<(Ja4Row, bool)>, usize) {
    let mut out: Vec<(Ja4Row, bool)> = rows
        .configured
        .iter()
        .map(|c| (c.row.clone(), true))
        .collect();
    let mut rest = Ja4Row {
        ja4: OTHER.to_owned(),
        ..Ja4Row::default()
    };
    let mut folded = 0;
    // `rows.other` is ranked already; an unnamed key's label (`…_?`) folds too, as it may
    // stand for many fingerprints.
    for (i, r) in rows.other.iter().enumerate() {
        if i < n && !r.ja4.ends_with('?') {
            out.push((r.clone(), false));
        } else {
            folded += 1;
            rest.add_row(r);
        }
    }
    out.push((rest, false));
    (out, folded)
}

/// Encodes the fingerprint families of one snapshot, `n` other fingerprints by name.
pub fn encode(
    encoder: &mut DescriptorEncoder,
    rows: &FingerprintRows,
    n: usize,
) -> Result<(), std::fmt::Error> {
    let (rows, folded) = fold(rows, n);
    type Field = fn(&Ja4Row) -> u64;
    let families: [(&str, &str, Field); 3] = [
        (
            "sni_ja4_client_hellos",
            "ClientHellos with the JA4 fingerprint, read in XDP.",
            |r| r.client_hellos,
        ),
        (
            "sni_ja4_dropped",
            "Of those, ClientHellos whose flow was dropped by an action (the host's or the \
             fingerprint's).",
            |r| r.dropped,
        ),
        (
            "sni_ja4_rate_limited",
            "Of those, ClientHellos dropped over a hello_rate (the host's or the fingerprint's).",
            |r| r.rate_limited,
        ),
    ];
    for (name, help, field) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (row, configured) in &rows {
            let labels = [
                ("ja4", row.ja4.as_str()),
                ("configured", if *configured { "true" } else { "false" }),
            ];
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&field(row), None)?;
        }
    }
    let g = ConstGauge::new(i64::try_from(folded).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(
        "sni_ja4_other_folded",
        "Fingerprints not configured summed into ja4=\"other\" in this scrape.",
        None,
        MetricType::Gauge,
    )?)?;
    Ok(())
}

/// Encodes what the daemon did with the kernel's fingerprint events.
pub fn encode_learning(
    encoder: &mut DescriptorEncoder,
    c: &LearnCounters,
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in [
        (
            "sni_ja4_events",
            "Records of new fingerprints read from the kernel's ring buffer (the kernel's \
             sni_xdp_ja4_new less sni_xdp_ja4_lost).",
            &c.events,
        ),
        (
            "sni_ja4_events_malformed",
            "Of those, records of the wrong size, ignored.",
            &c.malformed,
        ),
        (
            "sni_ja4_events_unknown",
            "Of those, fingerprints whose lists were too long for a JA4 string.",
            &c.unknown,
        ),
        (
            "sni_ja4_learned_keys",
            "Kernel keys found to be a configured fingerprint's and given its slot.",
            &c.learned,
        ),
        (
            "sni_ja4_moved_client_hellos",
            "ClientHellos counted as another fingerprint before their key was learned, moved \
             to the configured fingerprint's counters.",
            &c.moved,
        ),
        (
            "sni_ja4_learn_failures",
            "Map updates of learning that failed (a full map of configured keys, …).",
            &c.failures,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        family.encode_counter::<NoLabelSet, _, u64>(&value.load(Relaxed), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ja4: &str, hellos: u64) -> Ja4Row {
        Ja4Row {
            ja4: ja4.to_owned(),
            client_hellos: hellos,
            ..Ja4Row::default()
        }
    }

    #[test]
    fn fold_keeps_configured_and_the_top_others_and_sums_the_rest() {
        let rows = FingerprintRows {
            configured: vec![crate::kernel::fingerprint_rows::ConfiguredRow {
                row: row("t13d1516h2_8daaf6152771_e5627efa2ab1", 1),
                action: "drop",
                hello_rate: None,
                learned: true,
            }],
            other: vec![
                row("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", 9),
                row("t13d9999h2_?", 8),
                row("t12d1010h1_aaaaaaaaaaaa_bbbbbbbbbbbb", 7),
                row("t12d1010h1_cccccccccccc_dddddddddddd", 1),
            ],
            hosts: Vec::new(),
        };
        let (out, folded) = fold(&rows, 2);
        let labels: Vec<(&str, bool, u64)> = out
            .iter()
            .map(|(r, c)| (r.ja4.as_str(), *c, r.client_hellos))
            .collect();
        assert_eq!(
            labels,
            [
                ("t13d1516h2_8daaf6152771_e5627efa2ab1", true, 1),
                ("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", false, 9),
                (OTHER, false, 16),
            ]
        );
        assert_eq!(folded, 3);
    }
}
