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
    /// The goal for `value / baseline`, if the issue sets one.
    pub goal: Option<f64>,
    /// How it was measured, and anything a reader needs to weigh it.
    pub note: String,
}

impl Row {
    /// `value / baseline`.
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline?;
        (b > 0.0).then(|| self.value / b)
    }

    /// Whether the goal is met (None without a goal or a ratio).
    pub fn met(&self) -> Option<bool> {
        let goal = self.goal?;
        let ratio = self.ratio()?;
        Some(match self.better {
            Better::Higher => ratio >= goal,
            Better::Lower => ratio <= goal,
        })
    }

    fn goal_text(&self) -> String {
        match (self.goal, self.better) {
            (Some(g), Better::Higher) => format!("≥ {g}×"),
            (Some(g), Better::Lower) => format!("≤ {g}×"),
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
            "goal": self.goal,
            "met": self.met(),
            "note": self.note,
        })
    }
}

/// The machine and software a run was taken on.
#[derive(Clone, Debug)]
pub struct Machine {
    pub date: String,
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
        Self {
            date: command_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
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
    pub rows: Vec<Row>,
    /// Findings that are not a row (profiles, notes on a case that could not run).
    pub notes: Vec<String>,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "date": self.machine.date,
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
            "Run {}{} on Linux {}, {} ({} cores).",
            m.date,
            if self.quick {
                " (--quick: short runs, noisy)"
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
            "| section | case | sni | baseline | ratio | goal | met | how |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|---|---|");
        for r in &self.rows {
            let baseline = r.baseline.map_or_else(
                || "—".to_owned(),
                |b| format!("{} ({})", number(b, r.unit), r.baseline_name),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.section,
                r.case,
                number(r.value, r.unit),
                baseline,
                r.ratio().map_or_else(|| "—".into(), |x| format!("{x:.3}×")),
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

    /// Writes `<stem>.json` and `<stem>.md` in `dir` and `latest.json`/`latest.md` beside
    /// them; returns the Markdown path.
    pub fn write(&self, dir: &Path) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!(
            "{}{}",
            self.machine.date.replace(':', "-"),
            if self.quick { "-quick" } else { "" }
        );
        let json = serde_json::to_string_pretty(&self.json())?;
        let md = self.markdown();
        for (name, text) in [
            (format!("{stem}.json"), &json),
            (format!("{stem}.md"), &md),
            ("latest.json".to_owned(), &json),
            ("latest.md".to_owned(), &md),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(dir.join(format!("{stem}.md")))
    }
}

/// A figure with its unit, rounded for reading.
pub fn number(v: f64, unit: &str) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}
