//! Commands the benchmarks run on the way (not the servers they measure): run checked, and the
//! XDP attachments of `bpftool`.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use aya::programs::Xdp;
use sni_tests::netns::Netns;

/// Attaches loaded program `prog` in native mode to interface `dev` of namespace `ns`
/// (`bpftool`, by the program's id).
pub(crate) fn attach(ns: &Netns, dev: &str, prog: &Xdp) -> Result<()> {
    let id = prog.info().context("the program's info")?.id().to_string();
    checked(ns.cmd_net_only(["bpftool", "net", "attach", "xdpdrv", "id", &id, "dev", dev]))
        .context("attaching in native mode (cargo xtask bench installs bpftool)")?;
    Ok(())
}

/// Detaches the native-mode XDP program of interface `dev` of namespace `ns`.
pub(crate) fn detach(ns: &Netns, dev: &str) -> Result<()> {
    checked(ns.cmd_net_only(["bpftool", "net", "detach", "xdpdrv", "dev", dev]))?;
    Ok(())
}

/// Runs a command; its output, or an error with its status and standard error.
pub(crate) fn checked(mut cmd: Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
