//! Running as an unprivileged user once start-up is done.
//!
//! Root (or CAP_BPF, CAP_NET_ADMIN and CAP_NET_BIND_SERVICE) is needed only to load and
//! attach the XDP program, pin its maps and bind the listeners. After that, everything the
//! process does goes through descriptors it already holds: map reads and lookups through map
//! fds, the detach through the bpf_link fd (closing it detaches), accept and connect on
//! sockets. What it still touches by path at exit, the pins and the control socket, is handed
//! to the user first so that it can remove them. So no capability is kept: the effective,
//! permitted and inheritable sets are empty, and `no_new_privs` was set at start.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sys::resource::{getrlimit, setrlimit, Resource},
    unistd::{chown, getegid, geteuid, setgid, setgroups, setuid, Uid, User},
};
use tracing::{info, warn};

/// The account `user = "…"` names, resolved before anything is attached.
#[derive(Clone, Debug)]
pub struct Target {
    name: String,
    user: User,
}

impl Target {
    /// Looks the user up; fails with what to do when it does not exist or is root.
    pub fn resolve(name: &str) -> Result<Self> {
        let user = User::from_name(name)
            .with_context(|| format!("looking up user {name:?}"))?
            .ok_or_else(|| {
                anyhow!(
                    "user {name:?} (config `user`) does not exist; create it with \
                     `useradd --system --no-create-home --shell /usr/sbin/nologin {name}`"
                )
            })?;
        if user.uid.is_root() {
            bail!("user {name:?} (config `user`) is root: nothing would be dropped");
        }
        if name == "nobody" {
            warn!(
                "user \"nobody\" is shared with other daemons, which could then open the pinned \
                 maps; a dedicated user is safer"
            );
        }
        if !geteuid().is_root() {
            bail!(
                "config `user = {name:?}` needs sni-user to start as root (it runs as uid {})",
                geteuid()
            );
        }
        Ok(Self {
            name: name.to_owned(),
            user,
        })
    }

    /// Hands `owned` (paths the process removes at exit) to the user, then becomes it: all
    /// supplementary groups dropped, group and user ids set, capabilities gone with root.
    /// `reread` are the files a reload reads again: each one the user cannot read is warned
    /// about, since reloads would then be refused.
    pub fn become_user(&self, owned: &[PathBuf], reread: &[PathBuf]) -> Result<()> {
        let (uid, gid) = (self.user.uid, self.user.gid);
        // Deepest first: once a 0700 directory is the user's, root without CAP_DAC_OVERRIDE
        // (as under the systemd unit's bounding set) can no longer reach inside it.
        let mut owned = owned.to_vec();
        owned.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for path in &owned {
            chown(path, Some(uid), Some(gid))
                .with_context(|| format!("handing {} to user {}", path.display(), self.name))?;
        }
        setgroups(&[gid]).context("dropping supplementary groups")?;
        setgid(gid).with_context(|| format!("setting group id {gid}"))?;
        setuid(uid).with_context(|| format!("setting user id {uid} ({})", self.name))?;
        if setuid(Uid::from_raw(0)).is_ok() {
            bail!("root could be regained after switching to {}", self.name);
        }
        let caps = effective_capabilities();
        if caps != Some(0) {
            bail!(
                "capabilities left after switching to {}: CapEff {caps:x?}",
                self.name
            );
        }
        info!(user = %self.name, uid = %geteuid(), gid = %getegid(), "privileges dropped");
        for path in reread {
            if let Err(e) = std::fs::File::open(path) {
                warn!(
                    path = %path.display(),
                    user = %self.name,
                    error = %e,
                    "a reload could not read this file as the user (make it group-readable)"
                );
            }
        }
        Ok(())
    }
}

/// Sets `no_new_privs`: nothing this process runs can gain privileges by exec. It is a
/// per-thread flag that new threads inherit, so it is set first, before any thread starts.
pub fn forbid_new_privileges() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")
}

/// The effective capability set of this process (`CapEff` of /proc/self/status).
pub fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Raises the open-file limit to its hard limit: every connection is one descriptor, two
/// with its backend, and the usual soft limit of 1,024 would cap an edge at 500 clients.
pub fn raise_open_files() {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(soft, hard, error = %e, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "reading the open-file limit"),
    }
}
