//! Pebble, Let's Encrypt's test ACME CA, run inside the client namespace of a [`Pair`], its
//! validation authority reaching the server namespace through the veth: the CA that the ACME
//! tests (issue 18, TLS-ALPN-01 per RFC 8737) obtain certificates from.
//!
//! Two processes run in the client namespace, each ended by its PID on drop:
//! - `pebble`, its ACME directory on `https://198.18.0.1:14000/dir` and its management
//!   interface on `https://198.18.0.1:15000`, both with a certificate for the IP 198.18.0.1
//!   signed by a test CA made here ([`Pebble::directory_ca`]), validating TLS-ALPN-01 on port
//!   443 of whatever address a name resolves to;
//! - `pebble-challtestsrv`, as a DNS server only (on 127.0.0.1:8053 of the client namespace,
//!   which `pebble -dnsserver` queries), answering A queries for the given names with
//!   [`SERVER_V4`] and nothing else.
//!
//! Why a mock DNS server rather than a hosts file (`ip netns exec` bind-mounts
//! `/etc/netns/NS/hosts` over `/etc/hosts`):
//! - nothing is written outside the test's own directory: a file under the host's
//!   `/etc/netns` outlives a test killed before its `Drop` runs (SIGKILL, a CI timeout, an
//!   abort), and would then silently redirect names for any later namespace that gets the same
//!   name (names are built from PIDs, which recur);
//! - names can be added while Pebble runs ([`Pebble::add_name`]) and take effect at once: Go's
//!   resolver caches `/etc/hosts` for seconds, so a hosts file edited later is racy;
//! - a name nobody added gets an empty answer at once (`-defaultIPv4 ""`), and no name gets an
//!   AAAA record (`-defaultIPv6 ""`), rather than falling through to the host's
//!   `/etc/resolv.conf`, whose nameserver the namespace cannot reach (a lookup that times out
//!   after seconds, or that leaves the machine): every lookup is answered by the test, and fast.
//!
//! Determinism: no sleep before validations (`PEBBLE_VA_NOSLEEP=1`), no nonce rejected at random
//! (`PEBBLE_WFE_NONCEREJECT=0`), no valid authorization reused in a new order at random
//! (`PEBBLE_AUTHZREUSE=0`: every order's challenges are validated again), `-strict=false`, and
//! no other `PEBBLE_*` variable inherited from the caller's environment.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use crate::{
    netns::{wait_until, ChildGuard, Pair, CLIENT_V4, SERVER_V4},
    pki::Pki,
};

/// The port of the ACME directory (HTTPS) on [`CLIENT_V4`].
pub const DIRECTORY_PORT: u16 = 14000;
/// The port of Pebble's management interface (HTTPS) on [`CLIENT_V4`].
pub const MANAGEMENT_PORT: u16 = 15000;
/// The port Pebble's validation authority connects to for TLS-ALPN-01 (its `tlsPort`): 443
/// in the world, here the port the tests' edge listens on (and its classifier watches).
pub const TLS_ALPN_PORT: u16 = crate::edge::PORT;
/// Pebble's `httpPort` for HTTP-01, which no test answers (nothing listens there).
const HTTP_PORT: u16 = 5002;
/// challtestsrv's DNS server, on the client namespace's loopback.
const DNS_ADDR: &str = "127.0.0.1:8053";
/// challtestsrv's management interface (plain HTTP), on the client namespace's loopback.
const DNS_MANAGEMENT: &str = "127.0.0.1:8055";
/// How long Pebble and challtestsrv may take to answer after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Pebble and its mock DNS server running in a [`Pair`]'s client namespace; stopped, and their
/// files removed, on drop.
pub struct Pebble {
    // Fields drop in this order: the processes end before their directory goes.
    pebble: ChildGuard,
    dns: ChildGuard,
    client_ns: String,
    root_pem: String,
    pki: Pki,
    files: tempfile::TempDir,
}

impl Pebble {
    /// Starts the mock DNS server with an A record [`SERVER_V4`] for each of `names`, then
    /// Pebble (directory and management on [`CLIENT_V4`], TLS-ALPN-01 validated on port
    /// [`TLS_ALPN_PORT`]), in `pair.client`, with its files in a new directory under `dir`.
    /// With `always_valid`, Pebble accepts every challenge without validating it
    /// (`PEBBLE_VA_ALWAYS_VALID=1`). Waits (20 s at most) until the directory answers and
    /// fetches the issuing root; panics with the logs otherwise, or with the reason when a
    /// binary is missing.
    pub fn start(pair: &Pair, dir: &Path, names: &[&str], always_valid: bool) -> Self {
        Self::start_with(pair, dir, names, always_valid, None)
    }

    /// As [`Pebble::start`]; with `eab` (a key id and its base64url MAC key), Pebble
    /// requires external account binding with that key.
    pub fn start_with(
        pair: &Pair,
        dir: &Path,
        names: &[&str],
        always_valid: bool,
        eab: Option<(&str, &str)>,
    ) -> Self {
        for bin in ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: install the Debian package `pebble` \
                 (`cargo xtask test` installs it with the other TEST_PACKAGES)"
            );
        }
        let files = tempfile::Builder::new()
            .prefix("pebble")
            .tempdir_in(dir)
            .unwrap();
        let client_ns = pair.client.name.clone();

        // The HTTPS certificate of the directory and management interface: an IP SAN, as the
        // directory URL names the IP (rustls, as in instant-acme, checks it; a self-signed CA
        // certificate would not do as a leaf for webpki).
        let pki = Pki::new();
        pki.leaf_with_san("pebble", CLIENT_V4, &[format!("IP:{CLIENT_V4}")]);

        let dns_log = files.path().join("challtestsrv.log");
        let mut cmd = pair.client.cmd(["pebble-challtestsrv"]);
        cmd.args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .args(["-dns01", DNS_ADDR, "-management", DNS_MANAGEMENT])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]);
        let dns = ChildGuard::spawn_ready(
            cmd,
            "pebble-challtestsrv",
            &dns_log,
            "Starting management server",
        );

        let config = files.path().join("pebble-config.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": format!("{CLIENT_V4}:{DIRECTORY_PORT}"),
                "managementListenAddress": format!("{CLIENT_V4}:{MANAGEMENT_PORT}"),
                "certificate": pki.path("pebble.pem"),
                "privateKey": pki.path("pebble.key"),
                "httpPort": HTTP_PORT,
                "tlsPort": TLS_ALPN_PORT,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab.is_some(),
                "externalAccountMACKeys": eab
                    .map(|(kid, key)| serde_json::json!({ kid: key }))
                    .unwrap_or_else(|| serde_json::json!({})),
            }
        });
        std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();

        let log = files.path().join("pebble.log");
        let mut cmd = pair
            .client
            .cmd(["pebble", "-strict=false", "-dnsserver", DNS_ADDR]);
        cmd.arg("-config").arg(&config);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PEBBLE_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        if always_valid {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        let pebble = ChildGuard::spawn(cmd, "pebble", &log);

        let mut this = Self {
            pebble,
            dns,
            client_ns,
            root_pem: String::new(),
            pki,
            files,
        };
        for name in names {
            this.add_name(name);
        }
        let url = this.directory_url();
        let mut answered = false;
        let up = wait_until(START_TIMEOUT, || {
            answered = this.curl(&[&url]).status.success();
            answered || this.pebble.exited().is_some()
        });
        assert!(
            up && answered,
            "Pebble's directory {url} did not answer within {START_TIMEOUT:?} ({:?}):\n{}",
            this.pebble.exited(),
            this.log()
        );
        let out = this.curl(&[&format!("https://{CLIENT_V4}:{MANAGEMENT_PORT}/roots/0")]);
        assert!(
            out.status.success(),
            "fetching Pebble's root: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            this.log()
        );
        this.root_pem = String::from_utf8(out.stdout).unwrap();
        assert!(
            this.root_pem.contains("BEGIN CERTIFICATE"),
            "Pebble's /roots/0 is no PEM: {}",
            this.root_pem
        );
        std::fs::write(this.root_path(), &this.root_pem).unwrap();
        this
    }

    /// Adds an A record [`SERVER_V4`] for `name` to the mock DNS that Pebble resolves with (it
    /// applies to the next lookup).
    pub fn add_name(&self, name: &str) {
        let body = serde_json::json!({ "host": name, "addresses": [SERVER_V4] }).to_string();
        let url = format!("http://{DNS_MANAGEMENT}/add-a");
        let mut out = None;
        // challtestsrv logs that its management server starts just before it listens.
        let added = wait_until(Duration::from_secs(5), || {
            let o = self.curl(&["--data", &body, &url]);
            let ok = o.status.success();
            out = Some(o);
            ok
        });
        let out = out.unwrap();
        assert!(
            added,
            "adding {name} to pebble-challtestsrv: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.files.path().join("challtestsrv.log")).unwrap_or_default()
        );
    }

    /// `https://198.18.0.1:14000/dir`, the ACME directory (reachable from the client namespace).
    pub fn directory_url(&self) -> String {
        format!("https://{CLIENT_V4}:{DIRECTORY_PORT}/dir")
    }

    /// The PEM file of the CA that signs the directory's HTTPS certificate: an ACME client
    /// trusts it to talk to the directory (e.g. instant-acme's `Account::builder_with_root`).
    pub fn directory_ca(&self) -> PathBuf {
        self.pki.path("ca.pem")
    }

    /// The PEM of the root that Pebble's issued certificates chain to (management
    /// `/roots/0`, new on every start of Pebble), to verify them.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A file holding [`Pebble::root_pem`] (e.g. for `openssl verify -CAfile` or
    /// `curl --cacert`).
    pub fn root_path(&self) -> PathBuf {
        self.files.path().join("root.pem")
    }

    /// Pebble's log so far (its requests, validations and their outcomes).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files.path().join("pebble.log")).unwrap_or_default()
    }

    /// The PID of the `pebble` process (running in the client namespace).
    pub fn pid(&self) -> u32 {
        self.pebble.pid()
    }

    /// The PID of the `pebble-challtestsrv` process (the mock DNS server).
    pub fn dns_pid(&self) -> u32 {
        self.dns.pid()
    }

    /// `curl` in the client namespace trusting [`Pebble::directory_ca`], 5 s at most.
    fn curl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.client_ns])
            .args(["curl", "-sS", "--max-time", "5", "--cacert"])
            .arg(self.directory_ca())
            .args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
    }
}
