//! Embeds the XDP object built by `cargo xtask build-ebpf`.
//!
//! The object is not built here: the eBPF build needs a compiler with the core library sources
//! and bpf-linker, which `cargo xtask build-ebpf` finds or installs and explains. This script
//! only copies the result into OUT_DIR, or stops with the command to run.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=SNI_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = match env::var_os("SNI_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => manifest.join("../target/ebpf/bpfel-unknown-none/release/sni-ebpf"),
    };
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("sni-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        panic!(
            "\n\nThe XDP object {} is missing ({e}).\nBuild it first with `cargo xtask \
             build-ebpf` (or point SNI_EBPF_OBJECT at a built object).\n\n",
            object.display()
        );
    }
}
