//! `cargo xtask`: the project's build, run and test entry points.
//!
//! - `build-ebpf`: builds the XDP program for `bpfel-unknown-none` (see [`toolchain`] for how
//!   the compiler and bpf-linker are found or installed).
//! - `run`: builds everything and starts `sni-user run` (through `sudo -E` when not root).
//! - `test`: installs the test peers, builds, and runs every test as root.
//! - `bench`: installs nginx, builds in release, runs `sni-bench` (as root), writes
//!   `bench/results/` and the README's table.
//! - `deps`: installs the Debian packages the tests and demo use.
//! - `fuzz`: runs the cargo-fuzz targets in `fuzz/` for a bounded time each (see [`fuzz`]).
#![forbid(unsafe_code)]

mod fuzz;
mod toolchain;

use std::{
    env,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Debian packages the benchmarks add: the baseline servers (nginx with its stream module and
/// HAProxy, for TLS termination to a TCP backend) and the profilers the README's findings came
/// from.
const BENCH_PACKAGES: &[&str] = &[
    "nginx",
    "libnginx-mod-stream",
    // The third terminator in the comparison (`mode tcp` with `ssl`).
    "haproxy",
    // A load generator other than the project's own (new connection per request).
    "wrk",
    // Sends the XDP section's frames through a veth (`bench/src/xdp/veth.rs`).
    "tcpreplay",
    "linux-perf",
    "valgrind",
    // `bpftool prog run` times the no-op program independently of the bench's own harness.
    "bpftool",
];

/// Debian packages the tests drive as real peers and tools.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "openssl",
    "curl",
    "python3",
    "procps",
    "util-linux",
    // Headless browser test: Chrome's post-quantum ClientHello spans two segments.
    "chromium",
    // Captures of the tests' own traffic, read back by `sni-user classify`.
    "tcpdump",
    // The terminator's TLS posture, as an operator's audit would see it.
    "testssl.sh",
    // Operations: a real Prometheus scrapes the metrics endpoint (promtool checks the
    // exposition, the scrape config and the alert rules); `top` is driven in tmux;
    // systemd-analyze verifies the unit.
    "prometheus",
    "tmux",
    "systemd",
    // A real consumer of the PROXY v2 header the terminator sends (its TLVs included).
    "haproxy",
    // ACME (issue 18): Pebble, Let's Encrypt's test CA, and its mock DNS server
    // (pebble-challtestsrv), validating TLS-ALPN-01 across a veth.
    "pebble",
];

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test sni")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the XDP program (target/ebpf/bpfel-unknown-none/release/sni-ebpf).
    BuildEbpf {
        /// Never install anything; only report what is missing.
        #[arg(long)]
        no_install: bool,
    },
    /// Build everything and run `sni-user run` with the given arguments.
    Run {
        /// Arguments for `sni-user run` (e.g. `-- --config sni.toml`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the test peers, build, and run all tests (needs root: XDP and namespaces).
    Test {
        /// Extra arguments for `cargo test` (e.g. `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (as root): XDP vs a no-op program, terminator vs nginx, scale.
    /// Writes bench/results/ and, unless --quick, the README's table.
    Bench {
        /// Short runs: a smoke test of every case (noisy figures; the README is left alone).
        #[arg(long)]
        quick: bool,
        /// Extra arguments for sni-bench (e.g. `--only xdp,terminator`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install the Debian packages used by the tests (as root).
    Deps,
    /// Run the fuzz targets (installs cargo-fuzz if missing), each for --time seconds, from
    /// fuzz/seeds and fuzz/corpus; fails on a crash with the input and how to reproduce it.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only this target (hello_chunks, hello_vs_tls_parser, passthrough_hello, config).
        #[arg(long)]
        target: Option<String>,
        /// libFuzzer sanitizer (none, address, …); sanitizers need -Z flags.
        #[arg(long, default_value = "none")]
        sanitizer: String,
        /// libFuzzer's random seed (CI fixes it, so a failure comes back on a rerun).
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::BuildEbpf { no_install } => build_ebpf(!no_install).map(|_| ()),
        Task::Run { args } => {
            build_ebpf(true)?;
            cargo(&["build", "--release", "-p", "sni-user"])?;
            let bin = root().join("target/release/sni-user");
            let mut cmd = if toolchain::is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.arg("run").args(&args);
            // This process becomes sni-user (cargo itself execs into xtask), so the PID of
            // `cargo xtask run` is the one SIGTERM or SIGHUP must reach. Returns only on failure.
            let err = std::os::unix::process::CommandExt::exec(&mut cmd);
            Err(err).context("starting sni-user")
        }
        Task::Test { args } => {
            if !toolchain::is_root() {
                bail!(
                    "the tests load XDP programs and create network namespaces: run them as root \
                     (sudo -E cargo xtask test)"
                );
            }
            deps()?;
            let object = build_ebpf(true)?;
            lint()?;
            cargo(&["build", "-p", "sni-user"])?;
            let mut test = Command::new(cargo_bin());
            test.current_dir(root())
                .args([
                    "test",
                    "--no-fail-fast",
                    "--workspace",
                    "--exclude",
                    "sni-ebpf",
                ])
                .args(&args)
                .env("SNI_EBPF_OBJECT", &object)
                .env("SNI_USER_BIN", root().join("target/debug/sni-user"))
                .stdout(Stdio::piped());
            let mut child = test.spawn().context("running cargo test")?;
            // Pass the output through and add up cargo's per-binary "test result" lines, so
            // the run ends with one total line (cargo's own last line is often a doc-test
            // binary with 0 tests).
            let (mut passed, mut failed) = (0u64, 0u64);
            if let Some(out) = child.stdout.take() {
                for line in BufReader::new(out).lines() {
                    let line = line.context("reading cargo test output")?;
                    println!("{line}");
                    if let Some(rest) = line.strip_prefix("test result: ") {
                        passed += count_before(rest, " passed");
                        failed += count_before(rest, " failed");
                    }
                }
            }
            let status = child.wait().context("waiting for cargo test")?;
            println!("tests: {passed} passed, {failed} failed");
            if !status.success() {
                bail!("cargo test failed ({status})");
            }
            if passed == 0 {
                bail!("no test ran");
            }
            Ok(())
        }
        Task::Bench { quick, args } => bench(quick, &args),
        Task::Deps => deps(),
        Task::Fuzz {
            time,
            target,
            sanitizer,
            seed,
        } => fuzz::fuzz(
            &fuzz::Run {
                seconds: time,
                sanitizer: &sanitizer,
                seed,
            },
            target.as_deref(),
        ),
    }
}

fn bench(quick: bool, args: &[String]) -> Result<()> {
    if !toolchain::is_root() {
        bail!(
            "the benchmarks load XDP programs, create network namespaces and pin servers to \
             cores: run them as root (sudo -E cargo xtask bench)"
        );
    }
    deps()?;
    if toolchain::can_apt() {
        toolchain::apt_install(BENCH_PACKAGES)?;
    }
    let object = build_ebpf(true)?;
    let noop = object.with_file_name("sni-noop");
    cargo(&["build", "--release", "-p", "sni-user", "-p", "sni-bench"])?;
    let out = root().join("bench/results");
    let mut cmd = Command::new(root().join("target/release/sni-bench"));
    cmd.current_dir(root())
        .arg("--out")
        .arg(&out)
        .args(args)
        .env("SNI_EBPF_OBJECT", &object)
        .env("SNI_NOOP_OBJECT", &noop)
        .env("SNI_USER_BIN", root().join("target/release/sni-user"));
    if quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().context("running sni-bench")?;
    if !status.success() {
        bail!("sni-bench failed ({status})");
    }
    if !quick && args.is_empty() {
        let table = std::fs::read_to_string(out.join("latest.md"))
            .context("reading bench/results/latest.md")?;
        update_readme(&table)?;
    }
    Ok(())
}

/// Puts `table` between the README's bench markers.
fn update_readme(table: &str) -> Result<()> {
    const START: &str = "<!-- bench:start (written by cargo xtask bench) -->";
    const END: &str = "<!-- bench:end -->";
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path).context("reading README.md")?;
    let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
        bail!("README.md has no bench markers ({START} … {END})");
    };
    if b < a {
        bail!("README.md's bench markers are out of order");
    }
    let updated = format!("{}{START}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(&path, updated).context("writing README.md")?;
    eprintln!("xtask: README.md's benchmark table updated from bench/results/latest.md");
    Ok(())
}

fn deps() -> Result<()> {
    if toolchain::can_apt() {
        toolchain::apt_install(TEST_PACKAGES)
    } else {
        eprintln!(
            "xtask: not root with apt-get; make sure these are installed: {}",
            TEST_PACKAGES.join(" ")
        );
        Ok(())
    }
}

/// Builds the XDP object and returns its path.
fn build_ebpf(allow_install: bool) -> Result<PathBuf> {
    let tc = toolchain::find_or_install(allow_install)?;
    eprintln!(
        "xtask: building sni-ebpf with {} ({}, LLVM {}) and {}",
        tc.rustc.display(),
        tc.origin,
        tc.llvm_major,
        tc.bpf_linker.display()
    );
    let linker_dir = tc
        .bpf_linker
        .parent()
        .context("bpf-linker has no directory")?;
    let path = env::join_paths(
        std::iter::once(linker_dir.to_path_buf())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let status = Command::new(cargo_bin())
        .current_dir(root())
        .args([
            "build",
            "--release",
            "-p",
            "sni-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root().join("target/ebpf"))
        .env("RUSTC", &tc.rustc)
        // Lets a stable cargo and a stable rustc accept -Z build-std.
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF lets the kernel check the maps and aya-log find its records.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
        )
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER")
        .env("PATH", path)
        .status()
        .context("running cargo build for sni-ebpf")?;
    if !status.success() {
        bail!("building sni-ebpf failed ({status})");
    }
    let object = root().join("target/ebpf/bpfel-unknown-none/release/sni-ebpf");
    if !object.is_file() {
        bail!("the build did not produce {}", object.display());
    }
    eprintln!("xtask: built {}", object.display());
    Ok(object)
}

/// The number just before `word` in a cargo "test result" line (0 if absent).
fn count_before(line: &str, word: &str) -> u64 {
    line.split(';')
        .find_map(|part| part.trim().strip_suffix(word.trim()))
        .and_then(|n| n.trim().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The lints every change must pass before the tests run: the workspace's lints (Cargo.toml,
/// clippy.toml) with warnings as errors, and the formatting. Adds clippy and rustfmt through
/// rustup when the toolchain lacks them.
fn lint() -> Result<()> {
    for (component, probe) in [("clippy", "clippy"), ("rustfmt", "fmt")] {
        let present = Command::new(cargo_bin())
            .args([probe, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            eprintln!("xtask: adding {component} (rustup component add {component})");
            let added = Command::new("rustup")
                .args(["component", "add", component])
                .status()
                .is_ok_and(|s| s.success());
            if !added {
                bail!("cargo {probe} is missing and rustup could not add {component}");
            }
        }
    }
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn reads_cargo_test_result_lines() {
        let line =
            "ok. 15 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.21s";
        assert_eq!(count_before(line, " passed"), 15);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
    }
}
