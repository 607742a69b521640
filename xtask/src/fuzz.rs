//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (libFuzzer), each for a bounded
//! time, from the committed seeds (`fuzz/seeds/<target>`, read only) and the local corpus
//! (`fuzz/corpus/<target>`, git-ignored, where new inputs go).
//!
//! cargo-fuzz needs `-Z` flags only for sanitizers; it builds here without one (`-s none`):
//! the code under test is safe Rust (sni-common denies `unsafe`, rustls forbids it), where
//! AddressSanitizer finds nothing that overflow checks and assertions do not, at half the speed.
//! The toolchain is rustup's nightly when installed, else the default one with
//! `RUSTC_BOOTSTRAP=1` (so `-Z` flags pass if a sanitizer is asked for).

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{build_ebpf, cargo_bin, root};

/// cargo-fuzz release installed when missing; builds with rustc 1.95 (`--locked`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// A fuzz target and the longest input worth trying on it.
struct Target {
    name: &'static str,
    max_len: usize,
}

/// The targets, in the order they run. A ClientHello is at most a few KB in practice (Chrome's
/// post-quantum one is 1.8 KB) and the terminator caps it at 16 KB by default.
const TARGETS: &[Target] = &[
    Target {
        name: "hello_chunks",
        max_len: 16384,
    },
    Target {
        name: "hello_vs_tls_parser",
        max_len: 16384,
    },
    Target {
        name: "passthrough_hello",
        max_len: 16384,
    },
    Target {
        name: "config",
        max_len: 65536,
    },
];

/// What one run came to.
struct Report {
    runs: u64,
    exec_per_sec: u64,
    new_units: u64,
    cov: Option<String>,
    corpus_files: usize,
    crash: Option<String>,
}

/// How each target runs.
pub struct Run<'a> {
    /// Seconds per target.
    pub seconds: u64,
    /// libFuzzer sanitizer (`none`, `address`, …).
    pub sanitizer: &'a str,
    /// libFuzzer's random seed: fixed, a run from the same corpus takes the same path (CI);
    /// None, a new one each run.
    pub seed: Option<u64>,
}

/// Runs every target (or `only`) as `run` says.
pub fn fuzz(run: &Run<'_>, only: Option<&str>) -> Result<()> {
    let sanitizer = run.sanitizer;
    let targets: Vec<&Target> = match only {
        Some(name) => vec![TARGETS.iter().find(|t| t.name == name).with_context(|| {
            format!(
                "no fuzz target {name:?}; there are: {}",
                TARGETS
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?],
        None => TARGETS.iter().collect(),
    };
    let object = ebpf_object()?;
    ensure_cargo_fuzz()?;
    let nightly = crate::toolchain::rustup_nightly().is_some();
    let fuzz_dir = root().join("fuzz");

    let started = Instant::now();
    let mut build = fuzz_cargo(&object, nightly);
    build.args(["fuzz", "build", "-s", sanitizer]);
    if let [t] = targets.as_slice() {
        build.arg(t.name);
    }
    let status = build.status().context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let mut crashes = Vec::new();
    for t in targets {
        let corpus = fuzz_dir.join("corpus").join(t.name);
        let seeds = fuzz_dir.join("seeds").join(t.name);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let before = count_files(&corpus);
        let t0 = Instant::now();
        let report = run_target(&object, nightly, t, &corpus, &seeds, run)?;
        println!(
            "fuzz {}: {} runs in {:.0} s ({}/s), {} new inputs, {}, corpus {} files \
             (was {before}){}",
            t.name,
            report.runs,
            t0.elapsed().as_secs_f64(),
            report.exec_per_sec,
            report.new_units,
            report.cov.as_deref().unwrap_or("cov ?"),
            report.corpus_files,
            if report.crash.is_some() {
                ", FAILED"
            } else {
                ""
            },
        );
        if let Some(artifact) = report.crash {
            crashes.push(format!(
                "{}: {artifact}\n  reproduce: SNI_EBPF_OBJECT={} {} fuzz run -s {sanitizer} {} {artifact}",
                t.name,
                object.display(),
                if nightly {
                    "cargo +nightly"
                } else {
                    "RUSTC_BOOTSTRAP=1 cargo"
                },
                t.name,
            ));
        }
    }
    if !crashes.is_empty() {
        bail!(
            "{} fuzz target(s) failed (the input is kept; add it to fuzz/seeds/<target>/ \
             once fixed):\n{}",
            crashes.len(),
            crashes.join("\n")
        );
    }
    Ok(())
}

/// Runs one target; passes libFuzzer's output through, without its per-input lines.
fn run_target(
    object: &Path,
    nightly: bool,
    t: &Target,
    corpus: &Path,
    seeds: &Path,
    run: &Run<'_>,
) -> Result<Report> {
    let mut cmd = fuzz_cargo(object, nightly);
    cmd.args(["fuzz", "run", "-s", run.sanitizer, t.name])
        .arg(corpus)
        .arg(seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", run.seconds))
        .arg(format!("-max_len={}", t.max_len))
        // One input taking seconds is a hang (libFuzzer's default waits 20 minutes).
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .args(run.seed.map(|seed| format!("-seed={seed}")))
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running cargo fuzz run {}", t.name))?;
    let mut report = Report {
        runs: 0,
        exec_per_sec: 0,
        new_units: 0,
        cov: None,
        corpus_files: 0,
        crash: None,
    };
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.context("reading libFuzzer's output")?;
            if let Some(v) = stat(&line, "stat::number_of_executed_units:") {
                report.runs = v;
            } else if let Some(v) = stat(&line, "stat::average_exec_per_sec:") {
                report.exec_per_sec = v;
            } else if let Some(v) = stat(&line, "stat::new_units_added:") {
                report.new_units = v;
            } else if let Some(path) = line.split("Test unit written to ").nth(1) {
                report.crash = Some(path.trim().to_owned());
            }
            if let Some(cov) = coverage(&line) {
                report.cov = Some(cov);
            }
            // Per-input progress lines ("#123\tNEW    cov: …") are noise in a CI log; the
            // start and end ones ("INITED", "DONE") stay.
            let progress =
                line.starts_with('#') && !(line.contains("\tINITED") || line.contains("\tDONE"));
            if !progress && !line.starts_with("\tNEW_FUNC") {
                eprintln!("{line}");
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz run")?;
    report.corpus_files = count_files(corpus);
    if !status.success() && report.crash.is_none() {
        report.crash = Some(format!(
            "(no input written; cargo fuzz exited with {status})"
        ));
    }
    Ok(report)
}

/// The number after `key` on a libFuzzer stat line.
fn stat(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?.trim().parse().ok()
}

/// "cov N ft M" from a libFuzzer status line ("#1234 DONE cov: 812 ft: 2301 corp: …").
fn coverage(line: &str) -> Option<String> {
    if !line.starts_with('#') {
        return None;
    }
    let mut words = line.split_whitespace();
    let mut cov = None;
    let mut ft = None;
    while let Some(w) = words.next() {
        match w {
            "cov:" => cov = words.next(),
            "ft:" => ft = words.next(),
            _ => {}
        }
    }
    Some(format!("cov {} ft {}", cov?, ft?))
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.filter(|e| e.is_ok()).count())
}

/// The XDP object sni-user embeds: `SNI_EBPF_OBJECT`, else the built one, else built now.
fn ebpf_object() -> Result<PathBuf> {
    if let Some(path) = env::var_os("SNI_EBPF_OBJECT") {
        return Ok(PathBuf::from(path));
    }
    let object = root().join("target/ebpf/bpfel-unknown-none/release/sni-ebpf");
    if object.is_file() {
        return Ok(object);
    }
    eprintln!("xtask: sni-user embeds the XDP object; building it first");
    build_ebpf(true)
}

/// `cargo` on the chosen toolchain (see the module docs), in the workspace root.
fn fuzz_cargo(object: &Path, nightly: bool) -> Command {
    let mut cmd = if nightly {
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo"]);
        c
    } else {
        let mut c = Command::new(cargo_bin());
        c.env("RUSTC_BOOTSTRAP", "1");
        c
    };
    cmd.current_dir(root())
        .env("SNI_EBPF_OBJECT", object)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER");
    cmd
}

/// Installs cargo-fuzz if `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(cargo_bin())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    let status = Command::new(cargo_bin())
        .args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ])
        .env_remove("RUSTC")
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{coverage, stat};

    #[test]
    fn reads_libfuzzer_lines() {
        assert_eq!(
            stat(
                "stat::number_of_executed_units: 123456",
                "stat::number_of_executed_units:"
            ),
            Some(123_456)
        );
        assert_eq!(
            stat("stat::peak_rss_mb: 80", "stat::new_units_added:"),
            None
        );
        assert_eq!(
            coverage("#2097152\tDONE   cov: 812 ft: 2301 corp: 120/9Kb lim: 4096 exec/s: 69905")
                .as_deref(),
            Some("cov 812 ft 2301")
        );
        assert_eq!(coverage("INFO: Seed: 1"), None);
    }
}
