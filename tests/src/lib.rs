//! Helpers for the integration tests: frames built byte by byte, the loaded XDP program under
//! `BPF_PROG_TEST_RUN`, network namespaces and veth pairs that clean up after themselves, and
//! child processes ended by their PID.
//!
//! Tests panic with context rather than return errors (as aya's own integration tests do).

pub mod edge;
pub mod frame;
pub mod hellos;
pub mod ja4;
pub mod netns;
pub mod pcap;
pub mod pebble;
pub mod pki;
pub mod prog;
pub mod term;

use std::path::{Path, PathBuf};

/// A ClientHello captured from a real client (sni-common/testdata).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sni-common/testdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The `sni-user` binary under test (`cargo xtask test` builds it and sets SNI_USER_BIN).
pub fn sni_user_bin() -> PathBuf {
    let path = std::env::var_os("SNI_USER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sni-user"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test` (it builds sni-user first)",
        path.display()
    );
    path
}

/// `sni-user check --config path`: whether it passed, and its stdout then stderr.
pub fn check_config(path: &Path) -> (bool, String) {
    let out = std::process::Command::new(sni_user_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// The entry of host `name` in the `hosts` list of `counters` (`stats --json` has one for the
/// classifier at the top and one under `terminator`), if there is one.
pub fn find_host<'a>(counters: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    counters["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == name)
}

/// As [`find_host`], failing the test with the counters when the host is missing.
pub fn host<'a>(counters: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    find_host(counters, name).unwrap_or_else(|| panic!("{name} missing from {counters}"))
}

/// xorshift64*: a deterministic source, so every run of a test sees the same inputs.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is made odd).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// One byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Fails the test with its reason unless it runs as root (CI does).
pub fn require_root() {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "this test loads XDP programs and creates network namespaces: it must run as root \
         (sudo -E cargo xtask test)"
    );
}

/// A pin directory under /sys/fs/bpf, removed with whatever is left in it even when the test
/// fails.
pub struct PinDir(PathBuf);

impl PinDir {
    /// A new, unique path (not created: `sni-user run` creates it).
    pub fn new(prefix: &str) -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(netns::unique(prefix)))
    }
}

impl std::ops::Deref for PinDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Headless Chromium's flags for the tests, after the binary: no sandbox (root), no GPU, no
/// QUIC (the classifier reads TCP), and none of its own traffic (first-run, background
/// networking, component updates, sync, hints). A fresh `--user-data-dir` and the URL go after.
pub const CHROMIUM_HEADLESS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=OptimizationHints,MediaRouter",
    "--ignore-certificate-errors",
];
