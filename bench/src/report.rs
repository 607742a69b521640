//! Results: rows of measurements with their same-run baseline, the machine they were taken
//! on, and their JSON and Markdown forms.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Which way a ratio is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    /// Higher is better (rates, throughput): the goal is a minimum ratio.
    Higher,
    /// Lower is better (time, latency, memory): the goal is a maximum ratio.
    Lower,
}

/// What a row aims at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// A bound on `value / baseline` (a minimum or a maximum, by [`Better`]).
    Ratio(f64),
    /// A maximum of `value - baseline`, in the row's unit (the XDP cases: ns above the
    /// no-op, which moves a lot between machines while the difference does not).
    Above(f64),
    /// A maximum of `value` itself (a budget, such as kernel memory).
    Most(f64),
}

/// The median and interquartile range of per-round figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
}

impl Spread {
    /// Of the per-round differences `ours − base` of paired rounds.
    pub fn paired(ours: &[f64], base: &[f64]) -> Self {
        Self::of(
            &ours
                .iter()
                .zip(base)
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>(),
        )
    }

    /// Of `values` (empty: all zero). Quartiles by linear interpolation between ranks.
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let pos = q * (v.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            let (a, b) = (v[lo], v[hi.min(v.len() - 1)]);
            a + (b - a) * (pos - lo as f64)
        };
        Self {
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
        }
    }

    fn text(&self, unit: &str) -> String {
        format!(
            "{} (IQR {}–{})",
            signed(self.median, unit),
            short(self.q1),
            short(self.q3)
        )
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "q1": self.q1, "q3": self.q3 })
    }
}

/// One measurement beside its baseline from the same run.
#[derive(Clone, Debug)]
pub struct Row {
    /// Section: "xdp", "live", "terminator", "scale".
    pub section: &'static str,
    /// What was measured.
    pub case: String,
    /// Unit of `value` and `baseline`.
    pub unit: &'static str,
    /// This project's figure.
    pub value: f64,
    /// What it is compared with (e.g. "no-op XDP", "nginx").
    pub baseline_name: &'static str,
    /// The baseline's figure, measured in the same run.
    pub baseline: Option<f64>,
    /// Which way is better.
    pub better: Better,
    /// The goal, if the issue sets one.
    pub goal: Option<Goal>,
    /// The spread of `value` over its rounds, where it was taken in rounds.
    pub spread: Option<Spread>,
    /// `value - baseline`, paired round by round (each round measures both), where the
    /// difference is the figure that matters.
    pub above: Option<Spread>,
    /// How it was measured, and anything a reader needs to weigh it.
    pub note: String,
}

impl Row {
    /// A figure taken in rounds beside its baseline's rounds: each side's median, this side's
    /// spread; no goal, no paired difference, no note (set them with `..`).
    pub fn compared(
        section: &'static str,
        case: impl Into<String>,
        unit: &'static str,
        better: Better,
        ours: &[f64],
        baseline_name: &'static str,
        base: &[f64],
    ) -> Self {
        let spread = Spread::of(ours);
        Self {
            section,
            case: case.into(),
            unit,
            value: spread.median,
            baseline_name,
            baseline: Some(Spread::of(base).median),
            better,
            goal: None,
            spread: Some(spread),
            above: None,
            note: String::new(),
        }
    }

    /// `value / baseline`.
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline?;
        (b > 0.0).then(|| self.value / b)
    }

    /// `value - baseline`, the median of the paired per-round differences (rows measured in
    /// rounds that pair with their baseline's).
    pub fn difference(&self) -> Option<f64> {
        self.above.map(|a| a.median)
    }

    /// Whether the goal is met (None without a goal, or without the figure it bounds).
    pub fn met(&self) -> Option<bool> {
        Some(match (self.goal?, self.better) {
            (Goal::Ratio(g), Better::Higher) => self.ratio()? >= g,
            (Goal::Ratio(g), Better::Lower) => self.ratio()? <= g,
            (Goal::Above(g), _) => self.difference()? <= g,
            (Goal::Most(g), _) => self.value <= g,
        })
    }

    fn goal_text(&self) -> String {
        match (self.goal, self.better) {
            (Some(Goal::Ratio(g)), Better::Higher) => format!("≥ {g}×"),
            (Some(Goal::Ratio(g)), Better::Lower) => format!("≤ {g}×"),
            (Some(Goal::Above(g)), _) => format!("≤ +{} {}", short(g), self.unit),
            (Some(Goal::Most(g)), _) => format!("≤ {} {}", short(g), self.unit),
            (None, _) => String::new(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "section": self.section,
            "case": self.case,
            "unit": self.unit,
            "value": self.value,
            "baseline_name": self.baseline_name,
            "baseline": self.baseline,
            "ratio": self.ratio(),
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "goal": self.goal.map(|g| match g {
                Goal::Ratio(r) => json!({ "ratio": r }),
                Goal::Above(d) => json!({ "above": d }),
                Goal::Most(m) => json!({ "most": m }),
            }),
            "spread": self.spread.map(|s| s.json()),
            "above": self.above.map(|s| s.json()),
            "difference": self.difference(),
            "met": self.met(),
            "note": self.note,
        })
    }
}

/// The machine and software a run was taken on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub date: String,
    /// The commit the binaries were built from (`git rev-parse HEAD` at the run).
    pub commit: String,
    /// Whether the work tree differed from that commit (results files aside).
    pub dirty: bool,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub versions: Vec<(&'static str, String)>,
}

impl Machine {
    /// Reads the machine now.
    pub fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let versions = vec![
            ("sni", env!("CARGO_PKG_VERSION").to_owned()),
            ("rustls", locked_version("rustls")),
            ("aws-lc-rs", locked_version("aws-lc-rs")),
            ("mio", locked_version("mio")),
            ("aya", locked_version("aya")),
            (
                "nginx",
                command_line(&["nginx", "-v"])
                    .trim_start_matches("nginx version: ")
                    .to_owned(),
            ),
            ("openssl", command_line(&["openssl", "version"])),
            ("rustc (sni-user)", command_line(&["rustc", "--version"])),
        ];
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--", ".", ":!bench/results"])
            .output()
            .map_or(true, |o| !o.status.success() || !o.stdout.is_empty());
        Self {
            date: command_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            commit: command_line(&["git", "rev-parse", "HEAD"]),
            dirty,
            kernel: command_line(&["uname", "-r"]),
            cpu,
            cores,
            versions,
        }
    }
}

/// The version Cargo.lock pins for `package` (the one compiled into this binary).
fn locked_version(package: &str) -> String {
    let lock = include_str!("../../Cargo.lock");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                return v.trim_matches('"').to_owned();
            }
        }
    }
    "unknown".into()
}

/// The first line a command prints (on stdout or stderr), or why there is none.
pub fn command_line(argv: &[&str]) -> String {
    let Some((cmd, args)) = argv.split_first() else {
        return String::new();
    };
    match Command::new(cmd).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(e) => format!("not found ({e})"),
    }
}

/// A whole run.
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    /// The sections run, when not all of them (`--only`).
    pub only: Vec<String>,
    pub rows: Vec<Row>,
    /// Findings that are not a row (profiles, notes on a case that could not run).
    pub notes: Vec<String>,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "date": self.machine.date,
            "commit": self.machine.commit,
            "dirty": self.machine.dirty,
            "only": self.only,
            "kernel": self.machine.kernel,
            "cpu": self.machine.cpu,
            "cores": self.machine.cores,
            "quick": self.quick,
            "versions": self.machine.versions.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "rows": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// The Markdown table (one table, a section column).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run {}{}{} of commit {}{} on Linux {}, {} ({} cores).",
            m.date,
            if self.quick {
                " (--quick: short runs, noisy)"
            } else {
                ""
            },
            if self.only.is_empty() {
                String::new()
            } else {
                format!(" (sections: {})", self.only.join(", "))
            },
            m.commit,
            if m.dirty {
                " with uncommitted changes"
            } else {
                ""
            },
            m.kernel,
            m.cpu,
            m.cores
        );
        let versions: Vec<String> = m.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "Versions: {}.", versions.join(", "));
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| section | case | sni | baseline | ratio | sni − baseline | goal | met | how |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---|---|");
        for r in &self.rows {
            let baseline = r.baseline.map_or_else(
                || "—".to_owned(),
                |b| format!("{} ({})", number(b, r.unit), r.baseline_name),
            );
            let value = match r.spread {
                Some(sp) => format!(
                    "{} (IQR {}–{})",
                    number(r.value, r.unit),
                    short(sp.q1),
                    short(sp.q3)
                ),
                None => number(r.value, r.unit),
            };
            let above = r.above.map_or_else(|| "—".into(), |a| a.text(r.unit));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.case,
                value,
                baseline,
                r.ratio().map_or_else(|| "—".into(), |x| format!("{x:.3}×")),
                above,
                r.goal_text(),
                match r.met() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                },
                r.note.replace('|', "/"),
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Whether this is a full run: every section, full length. Only a full run may stand
    /// for the project as a whole (`latest.*`, the README's table).
    pub fn is_full(&self) -> bool {
        !self.quick && self.only.is_empty()
    }

    /// Writes `<date>-<commit>[-dirty][-quick][-<sections>].{json,md}` in `dir`, and, for a
    /// full run only, `latest.json`/`latest.md` beside them (a partial run never replaces the
    /// full run's); returns the Markdown path.
    pub fn write(&self, dir: &Path) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let m = &self.machine;
        let stem = format!(
            "{}-{}{}{}{}",
            m.date.replace(':', "-"),
            m.commit.get(..10).unwrap_or(&m.commit),
            if m.dirty { "-dirty" } else { "" },
            if self.quick { "-quick" } else { "" },
            if self.only.is_empty() {
                String::new()
            } else {
                format!("-{}", self.only.join("-"))
            },
        );
        let json = serde_json::to_string_pretty(&self.json())?;
        let md = self.markdown();
        let mut files = vec![(format!("{stem}.json"), &json), (format!("{stem}.md"), &md)];
        if self.is_full() {
            files.push(("latest.json".to_owned(), &json));
            files.push(("latest.md".to_owned(), &md));
        }
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(dir.join(format!("{stem}.md")))
    }
}

/// A figure without its unit, rounded for reading.
fn short(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}")
}

/// A difference with its sign and unit.
fn signed(v: f64, unit: &str) -> String {
    format!("{}{} {unit}", if v >= 0.0 { "+" } else { "" }, short(v))
}

/// A figure with its unit, rounded for reading.
pub fn number(v: f64, unit: &str) -> String {
    format!("{} {unit}", short(v))
}
