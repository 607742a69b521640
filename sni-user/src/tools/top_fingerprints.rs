//! `sni-user top`'s fingerprint view (key `j`): the JA4 fingerprints ranked by ClientHellos
//! per second, configured ones with their action; with a filter (`/`), the drill-down into
//! the hosts whose name contains it, each with its top fingerprints and the rest summed.
//! Rates come from successive reads, as the host view's do.

use std::{collections::HashMap, time::Instant};

use ratatui::{
    layout::{Constraint, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Row, Table},
};

use crate::kernel::fingerprint_rows::{FingerprintRows, Ja4Row};

/// One row of the view.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelRow {
    /// The host (in the drill-down), else empty.
    pub host: String,
    /// The JA4 string (or `(N others)`).
    pub ja4: String,
    /// `drop`, `pass`, `pass 5/s` for a configured fingerprint, `other` for the rest.
    pub kind: String,
    /// ClientHellos per second since the previous read (None on the first read of the row).
    pub per_second: Option<f64>,
    /// ClientHellos.
    pub hellos: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Of those, rate-limited.
    pub rate_limited: u64,
}

/// The rows of the last read and what the one before counted.
#[derive(Debug, Default)]
pub struct Panel {
    overall: Vec<PanelRow>,
    per_host: Vec<PanelRow>,
    last: HashMap<(String, String), u64>,
    last_at: Option<Instant>,
}

impl Panel {
    /// Takes the fingerprints of a read made at `at`.
    pub fn update(&mut self, at: Instant, f: &FingerprintRows) {
        let secs = self
            .last_at
            .map(|t| at.saturating_duration_since(t).as_secs_f64());
        let mut next = HashMap::new();
        let mut row = |host: &str, r: &Ja4Row, kind: String| {
            let key = (host.to_owned(), r.ja4.clone());
            let per_second = match (secs, self.last.get(&key)) {
                (Some(s), Some(prev)) if s > 0.0 && r.client_hellos >= *prev => {
                    Some((r.client_hellos - prev) as f64 / s)
                }
                _ => None,
            };
            next.insert(key, r.client_hellos);
            PanelRow {
                host: host.to_owned(),
                ja4: r.ja4.clone(),
                kind,
                per_second,
                hellos: r.client_hellos,
                dropped: r.dropped,
                rate_limited: r.rate_limited,
            }
        };
        let mut overall: Vec<PanelRow> = Vec::new();
        for c in &f.configured {
            overall.push(row("", &c.row, c.action_text()));
        }
        for r in &f.other {
            overall.push(row("", r, "other".to_owned()));
        }
        overall.sort_by(rank);
        let mut per_host = Vec::new();
        for h in &f.hosts {
            for r in &h.top {
                per_host.push(row(&h.host, r, String::new()));
            }
            if h.rest_fingerprints > 0 {
                // Its rate is kept under one name whatever the number of others.
                let rest = Ja4Row {
                    ja4: "(others)".to_owned(),
                    ..h.rest.clone()
                };
                let mut shown = row(&h.host, &rest, String::new());
                shown.ja4 = format!("({} others)", h.rest_fingerprints);
                per_host.push(shown);
            }
        }
        self.overall = overall;
        self.per_host = per_host;
        self.last = next;
        self.last_at = Some(at);
    }

    /// The rows to show: every fingerprint, or with a `filter` the fingerprints of the hosts
    /// whose name contains it (case ignored), host by host.
    pub fn visible(&self, filter: &str) -> Vec<&PanelRow> {
        if filter.is_empty() {
            return self.overall.iter().collect();
        }
        let needle = filter.to_ascii_lowercase();
        self.per_host
            .iter()
            .filter(|r| r.host.to_ascii_lowercase().contains(&needle))
            .collect()
    }
}

/// Most ClientHellos per second first, then most ClientHellos, then by string.
fn rank(a: &PanelRow, b: &PanelRow) -> std::cmp::Ordering {
    let rate = |r: &PanelRow| r.per_second.unwrap_or(0.0);
    rate(b)
        .total_cmp(&rate(a))
        .then_with(|| b.hellos.cmp(&a.hellos))
        .then_with(|| a.ja4.cmp(&b.ja4))
}

/// The table of `rows`; the host column only in the drill-down.
pub fn table<'a>(rows: &[&PanelRow], drill_down: bool, area: Rect) -> Table<'a> {
    let host_width = if drill_down {
        rows.iter()
            .map(|r| r.host.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(8, 40) as u16
    } else {
        0
    };
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let mut widths = Vec::new();
    let mut header = Vec::new();
    if drill_down {
        widths.push(Constraint::Length(host_width));
        header.push(Cell::from("HOST"));
    }
    widths.extend([
        Constraint::Length(36),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Length(9),
    ]);
    header.push(Cell::from("FINGERPRINT (JA4)"));
    header.push(Cell::from("ACTION"));
    for h in ["HELLOS/S", "HELLOS", "DROPPED", "RATELIM"] {
        header.push(right(h.to_owned()));
    }
    let body: Vec<Row> = rows
        .iter()
        .take(usize::from(area.height))
        .map(|r| {
            let mut cells = Vec::new();
            if drill_down {
                cells.push(Cell::from(r.host.clone()));
            }
            cells.push(Cell::from(r.ja4.clone()));
            cells.push(Cell::from(r.kind.clone()));
            cells.push(right(
                r.per_second
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
            ));
            cells.push(right(r.hellos.to_string()));
            cells.push(right(r.dropped.to_string()));
            cells.push(right(r.rate_limited.to_string()));
            let style = if r.kind == "other" {
                Style::new().add_modifier(Modifier::DIM)
            } else {
                Style::new()
            };
            Row::new(cells).style(style)
        })
        .collect();
    Table::new(body, widths).header(
        Row::new(header).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kernel::fingerprint_rows::{ConfiguredRow, HostFingerprints};

    fn row(ja4: &str, hellos: u64) -> Ja4Row {
        Ja4Row {
            ja4: ja4.to_owned(),
            client_hellos: hellos,
            ..Ja4Row::default()
        }
    }

    fn rows(a: u64, b: u64) -> FingerprintRows {
        FingerprintRows {
            configured: vec![ConfiguredRow {
                row: row("t13d1516h2_8daaf6152771_e5627efa2ab1", a),
                action: "drop",
                hello_rate: None,
                learned: true,
            }],
            other: vec![row("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", b)],
            hosts: vec![HostFingerprints {
                host: "a.example".to_owned(),
                configured: true,
                top: vec![row("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", b)],
                rest_fingerprints: 2,
                rest: row("other", 4),
            }],
        }
    }

    #[test]
    fn rates_rank_the_fingerprints_and_a_filter_drills_into_hosts() {
        let mut p = Panel::default();
        let t = Instant::now();
        p.update(t, &rows(10, 10));
        assert!(p.visible("").iter().all(|r| r.per_second.is_none()));
        p.update(t + Duration::from_secs(2), &rows(12, 30));
        let v = p.visible("");
        assert_eq!(v[0].ja4, "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6");
        assert_eq!(v[0].per_second, Some(10.0));
        assert_eq!((v[1].kind.as_str(), v[1].per_second), ("drop", Some(1.0)));
        let d = p.visible("A.EX");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].host, "a.example");
        assert_eq!(d[1].ja4, "(2 others)");
        assert_eq!(d[1].hellos, 4);
        assert!(p.visible("nowhere").is_empty());
    }
}
