//! Finding (or installing, as root on Debian) what the eBPF build needs: a Rust compiler whose
//! sysroot carries the core library sources (for `-Z build-std=core`), and a bpf-linker built
//! against the same LLVM major version as that compiler.
//!
//! Tried in order, the first that is complete wins:
//! 1. `SNI_EBPF_RUSTC`, if set: a rustc to use as is.
//! 2. rustup's nightly toolchain with the `rust-src` component (the usual route).
//! 3. Debian's `rustc-web` with `rust-web-src` (`/usr/bin/rustc`, sysroot `/usr`).
//! 4. As root with apt-get: install `rustc-web rust-web-src`, then use 3.
//!
//! Otherwise it stops and names what to install.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// bpf-linker release known to work with the pinned aya crates.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages that provide a rustc with the library sources.
const DEBIAN_RUSTC: &[&str] = &["rustc-web", "rust-web-src"];

/// A compiler able to build the eBPF crate.
#[derive(Debug)]
pub struct EbpfToolchain {
    /// The rustc to put in `RUSTC`.
    pub rustc: PathBuf,
    /// LLVM major version of that rustc.
    pub llvm_major: u32,
    /// The bpf-linker to put first in `PATH`.
    pub bpf_linker: PathBuf,
    /// Where it came from, for the log.
    pub origin: &'static str,
}

/// Finds or installs the toolchain.
pub fn find_or_install(allow_install: bool) -> Result<EbpfToolchain> {
    let (rustc, origin) = find_rustc(allow_install)?;
    let llvm_major = llvm_major(&rustc)?;
    let bpf_linker = find_bpf_linker(llvm_major, allow_install)?;
    Ok(EbpfToolchain {
        rustc,
        llvm_major,
        bpf_linker,
        origin,
    })
}

fn find_rustc(allow_install: bool) -> Result<(PathBuf, &'static str)> {
    if let Some(rustc) = env::var_os("SNI_EBPF_RUSTC") {
        let rustc = PathBuf::from(rustc);
        if !has_core_sources(&rustc) {
            bail!(
                "SNI_EBPF_RUSTC={} has no core library sources in its sysroot \
                 (lib/rustlib/src/rust/library/core)",
                rustc.display()
            );
        }
        return Ok((rustc, "SNI_EBPF_RUSTC"));
    }
    if let Some(rustc) = rustup_nightly() {
        if has_core_sources(&rustc) {
            return Ok((rustc, "rustup nightly with rust-src"));
        }
    }
    let debian = PathBuf::from("/usr/bin/rustc");
    if has_core_sources(&debian) {
        return Ok((debian, "Debian rustc-web with rust-web-src"));
    }
    if allow_install && can_apt() {
        eprintln!(
            "xtask: no rustc with core library sources; installing {}",
            DEBIAN_RUSTC.join(" ")
        );
        apt_install(DEBIAN_RUSTC)?;
        if has_core_sources(&debian) {
            return Ok((debian, "Debian rustc-web with rust-web-src (installed now)"));
        }
    }
    bail!(
        "the eBPF build needs a Rust compiler with the core library sources (for -Z build-std).\n\
         Install one of:\n\
         - rustup: rustup toolchain install nightly --component rust-src\n\
         - Debian 12: apt-get install {} (rustc 1.96 at /usr/bin/rustc)\n\
         or point SNI_EBPF_RUSTC at such a rustc.",
        DEBIAN_RUSTC.join(" ")
    )
}

/// The rustc of rustup's nightly toolchain, when one is installed.
pub fn rustup_nightly() -> Option<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "rustc", "--toolchain", "nightly"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn has_core_sources(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

fn llvm_major(rustc: &Path) -> Result<u32> {
    let out = Command::new(rustc)
        .arg("-vV")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .with_context(|| format!("running {} -vV", rustc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no LLVM version in `{} -vV`:\n{text}", rustc.display()))
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The LLVM major a bpf-linker binary is linked against, when it links LLVM dynamically.
fn linker_llvm_major(linker: &Path) -> Option<u32> {
    let out = Command::new("ldd").arg(linker).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let rest = l.trim().strip_prefix("libLLVM")?;
        let digits: String = rest
            .trim_start_matches(['.', '-', 's', 'o'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

fn find_bpf_linker(llvm_major: u32, allow_install: bool) -> Result<PathBuf> {
    let candidates = [
        env::var_os("SNI_BPF_LINKER").map(PathBuf::from),
        Some(cargo_bin_dir().join("bpf-linker")),
        which("bpf-linker"),
    ];
    for linker in candidates.into_iter().flatten() {
        if !linker.is_file() {
            continue;
        }
        match linker_llvm_major(&linker) {
            Some(m) if m != llvm_major => eprintln!(
                "xtask: {} uses LLVM {m}, rustc uses LLVM {llvm_major}: not usable",
                linker.display()
            ),
            _ => return Ok(linker),
        }
    }
    if allow_install && can_apt() {
        let llvm = format!("llvm-{llvm_major}-dev");
        let polly = format!("libpolly-{llvm_major}-dev");
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major}");
        apt_install(&[&llvm, &polly, "libzstd-dev", "zlib1g-dev"])?;
        let path = format!(
            "/usr/lib/llvm-{llvm_major}/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        let status = Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
                "--force",
            ])
            .env("PATH", path)
            .env_remove("RUSTC")
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!("cargo install bpf-linker failed ({status})");
        }
        let linker = cargo_bin_dir().join("bpf-linker");
        if linker.is_file() {
            return Ok(linker);
        }
    }
    bail!(
        "bpf-linker built for LLVM {llvm_major} is missing. Install it with:\n\
         apt-get install llvm-{llvm_major}-dev libpolly-{llvm_major}-dev libzstd-dev zlib1g-dev\n\
         PATH=/usr/lib/llvm-{llvm_major}/bin:$PATH cargo install bpf-linker --version \
         {BPF_LINKER_VERSION} --no-default-features --features llvm-{llvm_major}\n\
         (run `cargo xtask build-ebpf` as root on Debian to have it done for you)"
    )
}

fn which(name: &str) -> Option<PathBuf> {
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether packages can be installed here: root with apt-get.
pub fn can_apt() -> bool {
    is_root() && which("apt-get").is_some()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // `id -u` keeps xtask free of libc bindings.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian packages that are not installed yet (one `apt-get update` first).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed ({status})");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", missing.join(" "));
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}
