//! `sni-bench`: the measurements behind `cargo xtask bench`. Every figure is taken beside its
//! baseline in the same run on the same machine (a no-op XDP program, the classifier
//! detached, nginx, 10 hosts), and reported as a ratio. Nothing here asserts a timing.
//!
//! Run through `cargo xtask bench [--quick]`, which builds what it needs, installs nginx and
//! sets the paths below.
#![forbid(unsafe_code)]
#![allow(
    clippy::cast_precision_loss,
    reason = "counts and nanoseconds well inside f64's exact range"
)]

mod backend;
mod cmd;
mod flood;
mod kernel_memory;
mod load;
mod report;
mod servers;
mod tls;
mod xdp;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sni-bench",
    about = "Benchmarks: XDP vs no-op, terminator vs nginx, scale, a flood to a dropped host"
)]
struct Cli {
    /// Short runs (a smoke test of the whole bench; figures are noisy).
    #[arg(long)]
    quick: bool,
    /// Only these sections (xdp, ab, kernel-memory, live, terminator, scale, flood; or memory:
    /// the terminator section's idle-memory case alone); all but ab by default (ab only as
    /// `--only ab` with `--ab-object`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The no-op XDP object (built by `cargo xtask build-ebpf`).
    #[arg(long, env = "SNI_NOOP_OBJECT")]
    noop: PathBuf,
    /// The sni-user binary (a release build).
    #[arg(long, env = "SNI_USER_BIN")]
    sni_user: PathBuf,
    /// Another build of the XDP object: the `ab` section compares this tree's classifier with
    /// it, case by case, in alternating rounds of one run (`bench/src/xdp/ab.rs`).
    #[arg(long)]
    ab_object: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sni-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let want = |s: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == s);
    let machine = report::Machine::read();
    let mut report = report::Report {
        machine,
        quick: cli.quick,
        only: cli.only.clone(),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let mut hello_cost = None;
    if want("xdp") {
        eprintln!("sni-bench: XDP per-packet cost (BPF_PROG_TEST_RUN)");
        let (rows, cost, hellos) = xdp::run(&cli.noop, cli.quick).context("xdp")?;
        report.rows.extend(rows);
        report.notes.push(hellos);
        hello_cost = Some(cost);
    }
    // The ab section runs only when asked for by name and given its other build: its rows
    // never land in a full run's `latest.*`.
    let ab_asked = cli.only.iter().any(|o| o == "ab");
    if ab_asked != cli.ab_object.is_some() {
        anyhow::bail!("the ab section needs both `--only ab` and `--ab-object FILE`");
    }
    if let Some(other) = &cli.ab_object {
        eprintln!(
            "sni-bench: A/B, this tree's classifier against {}",
            other.display()
        );
        let (rows, notes) = xdp::ab::run(other, cli.quick).context("ab")?;
        report.rows.extend(rows);
        report.notes.extend(notes);
    }
    if want("kernel-memory") {
        eprintln!("sni-bench: kernel memory of the maps (10 and 100,000 hosts)");
        let (rows, notes) = kernel_memory::run().context("kernel memory")?;
        report.rows.extend(rows);
        report.notes.extend(notes);
    }
    if !(want("live")
        || want("terminator")
        || want("scale")
        || want("flood")
        || cli.only.iter().any(|o| o == "memory"))
    {
        return finish(&report, &cli);
    }
    let mut env = tls::Env::new(&cli.sni_user, &cli.noop, cli.quick)?;
    env.memory_only = cli.only.iter().any(|o| o == "memory");
    if want("live") {
        eprintln!("sni-bench: live cost of XDP (handshakes through a veth, attached/detached)");
        let rows = tls::live(&env).context("live")?;
        print_rows(&rows);
        report.rows.extend(rows);
    }
    if want("terminator") || env.memory_only {
        eprintln!("sni-bench: terminator against nginx");
        let (rows, notes) = tls::terminator_vs_nginx(&env, hello_cost).context("terminator")?;
        print_rows(&rows);
        report.rows.extend(rows);
        report.notes.extend(notes);
    }
    if want("scale") {
        eprintln!("sni-bench: scale (10, 1,000, 100,000 hosts)");
        let rows = tls::scale(&env).context("scale")?;
        print_rows(&rows);
        report.rows.extend(rows);
    }
    if want("flood") {
        eprintln!("sni-bench: a flood of connections to a dropped host");
        let rows = flood::run(&env).context("flood")?;
        print_rows(&rows);
        report.rows.extend(rows);
    }
    finish(&report, &cli)
}

/// Writes the results and prints the table.
fn finish(report: &report::Report, cli: &Cli) -> Result<()> {
    let path = report.write(&cli.out)?;
    println!("{}", report.markdown());
    eprintln!(
        "sni-bench: results in {}{}",
        path.display(),
        if report.is_full() {
            " (and latest.json/latest.md)"
        } else {
            " (a partial run: latest.* left as they were)"
        }
    );
    Ok(())
}

fn print_rows(rows: &[report::Row]) {
    for r in rows {
        eprintln!(
            "  {:<78} {:>14} vs {:>14}  {}",
            r.case,
            report::number(r.value, r.unit),
            r.baseline
                .map_or_else(|| "—".into(), |b| report::number(b, r.unit)),
            r.ratio().map_or_else(String::new, |x| format!("{x:.3}×"))
        );
    }
}
