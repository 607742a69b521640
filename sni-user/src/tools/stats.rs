//! `sni-user stats`: the counters of the classifier (from its pinned maps) and of the
//! terminator (over the control socket), as a table or JSON.

use std::path::Path;

use anyhow::Result;

use crate::{
    daemon::control,
    kernel::{
        fingerprint_rows::{FingerprintRows, Ja4Row, View},
        loader::{pins_are_held, PinnedMaps},
        readers::Snapshot,
    },
};

impl Snapshot {
    /// Reads the classifier's counters from the maps pinned under `pin_dir` and the
    /// terminator's from `control`; either may be absent (not running), not both.
    pub fn read(pin_dir: &Path, control: &Path, view: &View) -> Result<Self> {
        let terminator = control::query(control).ok().filter(|t| !t.is_null());
        let maps = match PinnedMaps::open(pin_dir).and_then(|maps| {
            if pins_are_held(pin_dir) == Some(false) {
                anyhow::bail!(
                    "the maps pinned under {} are left from a sni-user run that is no longer \
                     running (it was killed); their counters are not live. The next start \
                     removes them",
                    pin_dir.display()
                );
            }
            Ok(maps)
        }) {
            Ok(maps) => maps,
            Err(e) if terminator.is_some() => {
                tracing::debug!(error = %e, "no classifier");
                return Ok(Self {
                    hosts: Vec::new(),
                    global: serde_json::Map::new(),
                    fingerprints: FingerprintRows::default(),
                    terminator,
                });
            }
            Err(e) => return Err(e),
        };
        Self::from_maps(&maps, terminator, view)
    }

    /// Human-readable table: hosts, then the global counters.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let terminator_hosts = self
            .terminator
            .as_ref()
            .and_then(|t| t["hosts"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|h| h["host"].as_str());
        let width = self
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .chain(terminator_hosts)
            .map(str::len)
            .max()
            .unwrap_or(0)
            .clamp(10, 64);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>13}  {:>10}  {:>14}  {:>6}  {:>8}  {:>12}",
            "HOST", "CLIENT_HELLOS", "PACKETS", "BYTES", "ECH", "DROPPED", "RATE_LIMITED"
        );
        for h in &self.hosts {
            let mark = if h.configured { "" } else { " (other)" };
            let _ = writeln!(
                out,
                "{:<width$}  {:>13}  {:>10}  {:>14}  {:>6}  {:>8}  {:>12}{mark}",
                h.host, h.client_hellos, h.packets, h.bytes, h.ech, h.dropped, h.rate_limited
            );
        }
        if self.hosts.is_empty() {
            let _ = writeln!(out, "(no host seen yet)");
        }
        self.fingerprints_table(&mut out);
        let _ = writeln!(out);
        let _ = writeln!(out, "GLOBAL");
        for (name, value) in &self.global {
            let _ = writeln!(out, "  {name:<16} {value}");
        }
        if let Some(t) = &self.terminator {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<width$}  {:>10}  {:>6}  {:>14}  {:>14}  FAILURES",
                "TERMINATOR", "HANDSHAKES", "ACTIVE", "TO_BACKEND", "TO_CLIENT"
            );
            for h in t["hosts"].as_array().into_iter().flatten() {
                let failures: Vec<String> = h["failures"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let n = |k: &str| h[k].as_u64().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{:<width$}  {:>10}  {:>6}  {:>14}  {:>14}  {}",
                    h["host"].as_str().unwrap_or(""),
                    n("handshakes"),
                    n("active"),
                    n("bytes_to_backend"),
                    n("bytes_to_client"),
                    failures.join(" ")
                );
            }
            for (name, value) in t["global"].as_object().into_iter().flatten() {
                let _ = writeln!(out, "  {name:<24} {value}");
            }
            if let Some(acme) = t["acme"].as_array().filter(|a| !a.is_empty()) {
                let _ = writeln!(out);
                let _ = writeln!(
                    out,
                    "{:<width$}  {:<28}  {:>6}  {:>8}  LAST ERROR",
                    "ACME", "CERTIFICATE", "ISSUED", "FAILURES"
                );
                for h in acme {
                    let certificate = match h["not_after"].as_i64() {
                        _ if h["placeholder"] == true => "placeholder (none yet)".to_owned(),
                        Some(t) => x509_parser::time::ASN1Time::from_timestamp(t)
                            .map_or_else(|_| t.to_string(), |a| format!("until {a}")),
                        None => "-".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "{:<width$}  {certificate:<28}  {:>6}  {:>8}  {}",
                        h["host"].as_str().unwrap_or(""),
                        h["issued"].as_u64().unwrap_or(0),
                        h["failures"].as_u64().unwrap_or(0),
                        h["last_error"].as_str().unwrap_or("")
                    );
                }
            }
        }
        out
    }

    /// The fingerprints' part of [`Snapshot::table`]: configured, others, per host.
    fn fingerprints_table(&self, out: &mut String) {
        use std::fmt::Write as _;
        // One line: the fingerprint (or what stands for it), its counters, then `tail`.
        let line = |out: &mut String, ja4: &str, r: &Ja4Row, tail: &str| {
            let _ = writeln!(
                out,
                "{ja4:<36}  {:>13}  {:>8}  {:>12}  {tail}",
                r.client_hellos, r.dropped, r.rate_limited
            );
        };
        // A table's header: its first column's title, the counters', then `last`.
        let header = |out: &mut String, first: &str, last: &str| {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{first:<36}  {:>13}  {:>8}  {:>12}  {last}",
                "CLIENT_HELLOS", "DROPPED", "RATE_LIMITED"
            );
        };
        let f = &self.fingerprints;
        if f.configured.is_empty() && f.other.is_empty() {
            return;
        }
        header(out, "FINGERPRINT (JA4)", "ACTION");
        for c in &f.configured {
            let seen = if c.learned { "" } else { " (not seen yet)" };
            line(
                out,
                &c.row.ja4,
                &c.row,
                &format!("{}{seen}", c.action_text()),
            );
        }
        for r in &f.other {
            line(out, &r.ja4, r, "(other)");
        }
        if f.hosts.is_empty() {
            return;
        }
        header(out, "HOST'S FINGERPRINTS", "HOST");
        for h in &f.hosts {
            for r in &h.top {
                line(out, &r.ja4, r, &h.host);
            }
            if h.rest_fingerprints > 0 {
                let others = format!("({} others)", h.rest_fingerprints);
                line(out, &others, &h.rest, &h.host);
            }
        }
    }
}
