//! The TOML configuration: parsing, defaults, and validation with errors that name the file,
//! the host and the field.
//!
//! ```toml
//! pin_dir = "/sys/fs/bpf/sni"
//! [xdp]
//! interfaces = ["eth0"]
//! mode = "auto"        # auto | native | generic
//! ports = [443]
//! [[host]]
//! names = ["example.com", "www.example.com"]
//! action = "pass"      # pass | drop, applied in XDP at the ClientHello and to the flow
//! hello_rate = 100     # new ClientHellos per second (token bucket; over it: dropped)
//! hello_burst = 200    # bucket depth (default: hello_rate)
//! [[fingerprint]]      # a client's JA4 fingerprint: see [`fingerprint`]
//! ja4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
//! action = "drop"
//! ```

use std::{
    collections::HashMap,
    fmt, fs,
    path::{Path, PathBuf},
};

pub mod acme;
pub mod fingerprint;

use serde::Deserialize;
use sni_common::{
    flow::Policy,
    maps::{FLOWS_DEFAULT_ENTRIES, OTHER_HOSTS_DEFAULT_ENTRIES, PENDING_DEFAULT_ENTRIES},
    pattern::PatternError,
    HostKey, HostPattern,
};

/// Where the maps are pinned unless the config says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sni";
/// Where `run` answers `stats` unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sni/control.sock";
/// The port watched by default: the demo terminator's.
pub const DEMO_PORT: u16 = 8443;

/// A configuration error, naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {path}: cannot read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a `source`: a chain would say it twice).
        error: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is not acceptable.
    #[error("config {}: {field}: {message}", at(path, *line))]
    Invalid {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// The line of the field (or of the nearest enclosing table) when the text is known.
        line: Option<usize>,
        /// The field, e.g. `host[2].names[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn at(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

impl ConfigError {
    /// Adds the line of an invalid field, found in `text`.
    fn located(self, text: &str) -> Self {
        match self {
            Self::Invalid {
                path,
                line: None,
                field,
                message,
            } => Self::Invalid {
                line: locate(text, &field),
                path,
                field,
                message,
            },
            e => e,
        }
    }
}

/// The 1-based line of `field` (`host[2].names[0]`, `limits.idle_timeout`, `host[0]
/// (a.example).backend`) in the TOML `text`: of the deepest part of the path that is
/// written there (a missing key points at its table).
pub fn locate(text: &str, field: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&toml::Spanned<DeValue<'_>>> = None;
    // "host[0] (a.example).backend": the label in parentheses is for people.
    let mut path = String::new();
    let mut depth = 0usize;
    for c in field.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ' ' => {}
            c if depth == 0 => path.push(c),
            _ => {}
        }
    }
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = match part.split_once('[') {
            Some((k, rest)) => (k, Some(rest)),
            None => (part, None),
        };
        if let Some(v) = value.take() {
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        let Some((_, v)) = table?.iter().find(|(k, _)| k.get_ref() == key) else {
            break;
        };
        span = Some(v.span());
        value = Some(v);
        for index in indices.into_iter().flat_map(|r| r.split('[')) {
            let Ok(i) = index.trim_end_matches(']').parse::<usize>() else {
                break;
            };
            let Some(DeValue::Array(items)) = value.map(toml::Spanned::get_ref) else {
                break;
            };
            let Some(item) = items.get(i) else {
                break;
            };
            span = Some(item.span());
            value = Some(item);
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode where the driver supports it, else generic, with a log line.
    #[default]
    Auto,
    /// Native (driver) mode only; attaching fails where the driver lacks it.
    Native,
    /// Generic (SKB) mode: works on every interface, after the kernel has built an skb.
    Generic,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Generic => "generic",
        })
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// bpffs directory where the maps are pinned for `sni-user stats` and other readers.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// The XDP classifier.
    #[serde(default)]
    pub xdp: Option<XdpConfig>,
    /// Hosts the operator knows: served by the terminator, and counted apart from other
    /// names by the classifier (never evicted).
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostConfig>,
    /// `[[fingerprint]]`: clients the operator knows by their JA4 fingerprint, with an
    /// action; counted apart from other fingerprints (never evicted).
    #[serde(default, rename = "fingerprint")]
    pub fingerprints: Vec<fingerprint::FingerprintConfig>,
    /// `[[listen]]`: addresses the terminator listens on; none means no terminator.
    #[serde(default)]
    pub listen: Vec<ListenConfig>,
    /// `[default]`: what clients without SNI or with an unknown name get.
    #[serde(default)]
    pub default: DefaultConfig,
    /// `[limits]`: deadlines and caps of the terminator.
    #[serde(default)]
    pub limits: Limits,
    /// Event-loop threads of the terminator (default: one per core).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Unix socket on which `run` answers `sni-user stats` with the terminator's counters.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Unprivileged user to run as once the program is attached and the sockets are bound
    /// (its primary group too). None: stay as started.
    #[serde(default)]
    pub user: Option<String>,
    /// `IP:PORT` on which Prometheus metrics are served over HTTP (`/metrics`). None: no
    /// endpoint.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Names not configured that keep their own `host` label in metrics: the most
    /// ClientHellos first; the rest are summed under `host="other"`.
    #[serde(default = "default_metrics_other_hosts")]
    pub metrics_other_hosts: usize,
    /// A file of session ticket keys shared by a fleet (relative to the config file): one
    /// base64 key of 80 bytes per line, oldest first, the last encrypts. Read at start, at
    /// every reload and when it changes. None: a random key per process.
    #[serde(default)]
    pub ticket_keys: Option<PathBuf>,
    /// `[acme]`: where hosts with `cert = "acme"` get their certificates.
    #[serde(default)]
    pub acme: Option<acme::AcmeConfig>,
    /// The file this came from (`<defaults>` for the built-in one).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[xdp]`: where and what the classifier watches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// Attach mode.
    #[serde(default)]
    pub mode: Mode,
    /// TCP destination ports whose traffic is read.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Capacity of the map of names not configured (least recently seen are evicted).
    #[serde(default = "default_other_hosts")]
    pub other_hosts_capacity: u32,
    /// Flows remembered with their host and verdict, in a table of twice as many entries (a new
    /// flow takes the oldest of the eight entries it may use when they are all taken).
    #[serde(default = "default_flows")]
    pub flows_capacity: u32,
    /// ClientHellos followed across segments at once (least recently seen are evicted).
    #[serde(default = "default_pending")]
    pub pending_capacity: u32,
    /// Configured hosts the kernel maps hold: hosts added by a reload must fit (default: the
    /// hosts configured at start plus a quarter, at least 64 more).
    #[serde(default)]
    pub hosts_capacity: Option<u32>,
    /// Whether ClientHellos are read to their end and fingerprinted (JA4); false reads them
    /// up to the name only, and `[[fingerprint]]` tables are refused.
    #[serde(default = "fingerprint::default_ja4")]
    pub ja4: bool,
    /// Capacity of the map of fingerprints not configured (least recently seen are evicted).
    #[serde(default = "fingerprint::default_other_capacity")]
    pub ja4_other_capacity: u32,
    /// Capacity of the map of (host, fingerprint) pairs (least recently seen are evicted).
    #[serde(default = "fingerprint::default_hosts_capacity")]
    pub ja4_hosts_capacity: u32,
    /// Fingerprints shown per host by `stats`, `top` and `/metrics`, the most ClientHellos
    /// first; the rest are summed.
    #[serde(default = "fingerprint::default_top")]
    pub ja4_top: usize,
}

/// What the classifier does with a host's flows.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pass (subject to `hello_rate`).
    #[default]
    Pass,
    /// Drop the ClientHello and every later packet of its flow.
    Drop,
}

/// A host's (or the default's) action and rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionConfig {
    /// `pass` or `drop`.
    pub action: Action,
    /// New ClientHellos per second; those over it are dropped with their flow.
    pub hello_rate: Option<u32>,
    /// How many may come at once (default: `hello_rate`).
    pub hello_burst: Option<u32>,
}

impl ActionConfig {
    /// The kernel's form.
    pub fn policy(&self) -> Policy {
        Policy::new(
            self.action == Action::Drop,
            self.hello_rate,
            self.hello_burst,
        )
    }

    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.hello_rate == Some(0) {
            return Err((
                "hello_rate",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.hello_burst == Some(0) {
            return Err(("hello_burst", "must be at least 1"));
        }
        if self.hello_burst.is_some() && self.hello_rate.is_none() {
            return Err(("hello_burst", "needs hello_rate"));
        }
        if self.action == Action::Drop && self.hello_rate.is_some() {
            return Err(("hello_rate", "has no effect with action = \"drop\""));
        }
        Ok(())
    }
}

/// `[[host]]`: one served host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Names of the host; `*.example.com` covers one label.
    pub names: Vec<String>,
    /// PEM certificate chain (leaf first), relative to the config file.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1), relative to the config file.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `"IP:PORT"`, `"unix:/path"` or `"builtin"` (answers which host was reached).
    #[serde(default)]
    pub backend: Option<String>,
    /// `terminate` (TLS ends here) or `passthrough` (bytes relayed, ClientHello included).
    #[serde(default)]
    pub mode: HostMode,
    /// ALPN protocols offered, in preference order (e.g. `["h2", "http/1.1"]`).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Send a PROXY protocol v2 header to the backend first.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// PEM CA certificate(s) that client certificates must chain to (mTLS), relative to the
    /// config file. None: no client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required or optional (default with `client_ca`:
    /// required).
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// PEM CRLs (`X509 CRL` blocks) checked against client certificates, relative to the
    /// config file.
    #[serde(default)]
    pub client_crl: Vec<PathBuf>,
    /// `pass` or `drop`, applied by the classifier in XDP.
    #[serde(default)]
    pub action: Action,
    /// New ClientHellos per second; those over it are dropped in XDP with their flow.
    #[serde(default)]
    pub hello_rate: Option<u32>,
    /// How many may come at once (default: `hello_rate`).
    #[serde(default)]
    pub hello_burst: Option<u32>,
    /// `[[host.route]]`: backends chosen by ALPN, first match wins; the rest goes to
    /// `backend`.
    #[serde(default, rename = "route")]
    pub routes: Vec<AlpnRouteConfig>,
}

/// `[[host.route]]`: where a host's connections go when their ALPN is one of `alpn`.
///
/// A terminated host matches the protocol rustls negotiated (the first of the host's `alpn`
/// the client offers); a passthrough host, the protocols the ClientHello offers (the
/// backend negotiates). Either way the first route that lists a match wins.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlpnRouteConfig {
    /// ALPN protocol names, e.g. `["h2"]` or `["acme-tls/1"]`.
    pub alpn: Vec<String>,
    /// `"IP:PORT"`, `"unix:/path"` or `"builtin"`, as a host's `backend`.
    pub backend: String,
}

/// How a host's connections are handled.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostMode {
    /// TLS ends here; plaintext goes to the backend.
    #[default]
    Terminate,
    /// TLS goes through untouched to the backend, chosen by the ClientHello's name.
    Passthrough,
}

/// `client_auth`: what a host with `client_ca` does with a client that sends no certificate.
/// A certificate that is sent is verified in both modes, and refused when it fails.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate: refused with a `certificate_required` alert (nginx `ssl_verify_client
    /// on`, HAProxy `verify required`).
    #[default]
    Required,
    /// No certificate: the handshake completes without one.
    Optional,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        })
    }
}

/// A host's (or the default's) client-certificate settings, paths resolved.
#[derive(Clone, Copy, Debug)]
pub struct ClientAuthConfig<'a> {
    /// The CA file.
    pub ca: &'a Path,
    /// Required or optional.
    pub mode: ClientAuth,
    /// The CRL files.
    pub crls: &'a [PathBuf],
}

/// `[[listen]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `IP:PORT` (IPv4 or IPv6).
    pub address: std::net::SocketAddr,
}

/// `[default]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultConfig {
    /// Certificate for clients without SNI or with an unknown name.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Answer those clients with an `unrecognized_name` alert instead.
    #[serde(default)]
    pub reject: bool,
    /// Their backend (default: `builtin`).
    #[serde(default)]
    pub backend: Option<String>,
    /// PEM CA certificate(s) that client certificates must chain to (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required or optional (default with `client_ca`:
    /// required).
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// PEM CRLs checked against client certificates.
    #[serde(default)]
    pub client_crl: Vec<PathBuf>,
    /// `action`, `hello_rate`, `hello_burst` for every name not configured and for
    /// ClientHellos without a name. The rate is one bucket for all of them: per-name buckets
    /// for names nobody configured would let a client escape the limit by varying the name.
    #[serde(default)]
    pub action: Action,
    /// New ClientHellos per second; those over it are dropped in XDP with their flow.
    #[serde(default)]
    pub hello_rate: Option<u32>,
    /// How many may come at once (default: `hello_rate`).
    #[serde(default)]
    pub hello_burst: Option<u32>,
}

/// `[limits]`: every limit closes only the connection that exceeds it, and is counted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Seconds from accept to a finished handshake.
    pub handshake_timeout: f64,
    /// Seconds without a byte either way before an established connection is closed.
    pub idle_timeout: f64,
    /// Open client connections at most, over all workers.
    pub max_connections: usize,
    /// Open client connections from one IP address at most.
    pub max_connections_per_ip: usize,
    /// Largest ClientHello accepted, in bytes.
    pub max_client_hello: usize,
    /// Bytes buffered per direction per connection.
    pub buffer_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: 10.0,
            idle_timeout: 300.0,
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            max_client_hello: 16 * 1024,
            buffer_size: 64 * 1024,
        }
    }
}

impl HostConfig {
    /// Whether its certificate comes by ACME (`cert = "acme"`).
    pub fn is_acme(&self) -> bool {
        self.cert.as_deref() == Some(Path::new(acme::ACME_CERT))
    }

    /// The host's label: its first name, as written. Counters, metrics, slots and routes
    /// know a host by it across reloads.
    pub fn label(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }

    /// The host's names, parsed (all of them, once [`Config::validate`] passed).
    pub fn patterns(&self) -> impl Iterator<Item = HostPattern> + '_ {
        self.names
            .iter()
            .filter_map(|n| HostPattern::parse(n.as_bytes()).ok())
    }

    /// Its client-certificate settings (None: no `client_ca`, no client certificate asked
    /// for).
    pub fn client_auth(&self) -> Option<ClientAuthConfig<'_>> {
        client_auth_config(
            self.client_ca.as_deref(),
            self.client_auth,
            &self.client_crl,
        )
    }

    /// The host's action and rate limit.
    pub fn actions(&self) -> ActionConfig {
        ActionConfig {
            action: self.action,
            hello_rate: self.hello_rate,
            hello_burst: self.hello_burst,
        }
    }
}

impl DefaultConfig {
    /// Its client-certificate settings (None: no `client_ca`).
    pub fn client_auth(&self) -> Option<ClientAuthConfig<'_>> {
        client_auth_config(
            self.client_ca.as_deref(),
            self.client_auth,
            &self.client_crl,
        )
    }

    /// The action and rate limit of everything not configured.
    pub fn actions(&self) -> ActionConfig {
        ActionConfig {
            action: self.action,
            hello_rate: self.hello_rate,
            hello_burst: self.hello_burst,
        }
    }
}

fn client_auth_config<'a>(
    ca: Option<&'a Path>,
    mode: Option<ClientAuth>,
    crls: &'a [PathBuf],
) -> Option<ClientAuthConfig<'a>> {
    ca.map(|ca| ClientAuthConfig {
        ca,
        mode: mode.unwrap_or_default(),
        crls,
    })
}

/// Where a host's plaintext (or passthrough bytes) go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A TCP address.
    Tcp(std::net::SocketAddr),
    /// A Unix stream socket.
    Unix(PathBuf),
    /// The built-in responder: answers each HTTP request with the host reached.
    Builtin,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "builtin" {
            return Ok(Self::Builtin);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a unix backend needs an absolute path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(Self::Tcp)
            .map_err(|_| format!("{s:?} is not IP:PORT, unix:/path or builtin"))
    }
}

impl XdpConfig {
    /// The demo classifier: the demo port on loopback, generic mode (lo has no native XDP).
    pub fn demo() -> Self {
        Self {
            interfaces: vec!["lo".to_owned()],
            mode: Mode::Generic,
            ports: vec![DEMO_PORT],
            other_hosts_capacity: OTHER_HOSTS_DEFAULT_ENTRIES,
            flows_capacity: FLOWS_DEFAULT_ENTRIES,
            pending_capacity: PENDING_DEFAULT_ENTRIES,
            hosts_capacity: None,
            ja4: fingerprint::default_ja4(),
            ja4_other_capacity: fingerprint::default_other_capacity(),
            ja4_hosts_capacity: fingerprint::default_hosts_capacity(),
            ja4_top: fingerprint::default_top(),
        }
    }
}

/// Where a `sni-user run` started with a config file can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Its `pin_dir`.
    pub pin_dir: PathBuf,
    /// Its `control_socket`.
    pub control_socket: PathBuf,
    /// Whether the whole file parsed as TOML (if not, the two keys were read line by line).
    pub parsed: bool,
}

impl Endpoints {
    /// Reads `pin_dir` and `control_socket` from `path` without validating anything else, so
    /// that a file being edited, or one a reload is about to refuse, still leads `stats`,
    /// `top` and `reload` to the running process. When the TOML does not parse, each line
    /// before the first table header is tried on its own. Absent keys take their defaults.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Ok(Self::from_text(&text))
    }

    fn from_text(text: &str) -> Self {
        let mut found = Self {
            pin_dir: default_pin_dir(),
            control_socket: default_control_socket(),
            parsed: true,
        };
        let mut take = |table: &toml::Table| {
            if let Some(v) = table.get("pin_dir").and_then(toml::Value::as_str) {
                found.pin_dir = PathBuf::from(v);
            }
            if let Some(v) = table.get("control_socket").and_then(toml::Value::as_str) {
                found.control_socket = PathBuf::from(v);
            }
        };
        match text.parse::<toml::Table>() {
            Ok(table) => take(&table),
            Err(_) => {
                for line in text.lines() {
                    if line.trim_start().starts_with('[') {
                        break;
                    }
                    if let Ok(table) = line.parse::<toml::Table>() {
                        take(&table);
                    }
                }
                found.parsed = false;
            }
        }
        found
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

fn default_metrics_other_hosts() -> usize {
    20
}

fn default_ports() -> Vec<u16> {
    vec![443]
}

fn default_other_hosts() -> u32 {
    OTHER_HOSTS_DEFAULT_ENTRIES
}

fn default_flows() -> u32 {
    FLOWS_DEFAULT_ENTRIES
}

fn default_pending() -> u32 {
    PENDING_DEFAULT_ENTRIES
}

impl Config {
    /// What differs from `other` among the settings a running process cannot take in place
    /// (sockets bound, program attached, maps sized, privileges dropped): each by its name
    /// in the file. Hosts, names, certificates, keys, backends, actions, rate limits, the
    /// watched ports, `[[fingerprint]]`, `ja4_top` and `[default]` all change in place.
    pub fn needs_restart(&self, other: &Self) -> Vec<&'static str> {
        let xdp = |c: &Self| {
            c.xdp.as_ref().map(|x| {
                let mut x = x.clone();
                x.ports.clear();
                x.ja4_top = 0;
                x
            })
        };
        let fixed = |c: &Self| -> [(&'static str, String); 9] {
            [
                ("pin_dir", format!("{:?}", c.pin_dir)),
                (
                    "[xdp] (other than ports and ja4_top)",
                    format!("{:?}", xdp(c)),
                ),
                ("[[listen]]", format!("{:?}", c.listen)),
                ("[limits]", format!("{:?}", c.limits)),
                ("workers", format!("{:?}", c.workers)),
                ("control_socket", format!("{:?}", c.control_socket)),
                ("user", format!("{:?}", c.user)),
                ("metrics", format!("{:?}", c.metrics)),
                (
                    "[acme] (other than renew_before)",
                    // The EAB key too, which Debug leaves out: compared, never shown.
                    format!(
                        "{:?} {:?}",
                        c.acme.as_ref().map(|a| acme::AcmeConfig {
                            renew_before: None,
                            ..a.clone()
                        }),
                        c.acme
                            .as_ref()
                            .and_then(|a| a.eab.as_ref())
                            .map(|e| &e.hmac_key)
                    ),
                ),
            ]
        };
        fixed(self)
            .into_iter()
            .zip(fixed(other))
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`, reporting errors against `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = path.to_owned();
        config.resolve_paths();
        config.validate().map_err(|e| e.located(text))?;
        Ok(config)
    }

    /// Whether this is the built-in demo's configuration (no file).
    pub fn is_demo(&self) -> bool {
        self.source.as_os_str() == "<defaults>"
    }

    /// The configuration used without a file: watch the demo port on loopback, generic mode.
    pub fn demo() -> Self {
        Self {
            pin_dir: default_pin_dir(),
            xdp: Some(XdpConfig::demo()),
            hosts: Vec::new(),
            fingerprints: Vec::new(),
            listen: Vec::new(),
            default: DefaultConfig::default(),
            limits: Limits::default(),
            workers: None,
            control_socket: default_control_socket(),
            user: None,
            metrics: None,
            metrics_other_hosts: default_metrics_other_hosts(),
            ticket_keys: None,
            acme: None,
            source: PathBuf::from("<defaults>"),
        }
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            line: None,
            field: field.into(),
            message: message.into(),
        }
    }

    /// Makes certificate, key, client CA, CRL and ticket key paths relative to the config
    /// file absolute.
    fn resolve_paths(&mut self) {
        let base = self
            .source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        let fix_cert = |p: &mut Option<PathBuf>| {
            if p.as_deref() != Some(Path::new(acme::ACME_CERT)) {
                fix(p);
            }
        };
        fix_cert(&mut self.default.cert);
        fix(&mut self.default.key);
        fix(&mut self.default.client_ca);
        for crl in &mut self.default.client_crl {
            *crl = base.join(&*crl);
        }
        fix(&mut self.ticket_keys);
        if let Some(a) = &mut self.acme {
            if a.state_dir.is_relative() {
                a.state_dir = base.join(&a.state_dir);
            }
            fix(&mut a.directory_ca);
        }
        for h in &mut self.hosts {
            fix_cert(&mut h.cert);
            fix(&mut h.key);
            fix(&mut h.client_ca);
            for crl in &mut h.client_crl {
                *crl = base.join(&*crl);
            }
        }
    }

    /// Checks every value; run again after command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.pin_dir.is_absolute() {
            return Err(self.invalid("pin_dir", "must be an absolute path"));
        }
        if let Some(xdp) = &self.xdp {
            if xdp.interfaces.is_empty() {
                return Err(self.invalid("xdp.interfaces", "names no interface"));
            }
            for (i, name) in xdp.interfaces.iter().enumerate() {
                // IFNAMSIZ is 16 including the terminating NUL.
                if name.is_empty() || name.len() > 15 || name.contains(['/', '\0', ' ']) {
                    return Err(self.invalid(
                        format!("xdp.interfaces[{i}]"),
                        format!("{name:?} is not an interface name"),
                    ));
                }
            }
            if xdp.ports.is_empty() {
                return Err(self.invalid("xdp.ports", "names no port"));
            }
            if let Some(i) = xdp.ports.iter().position(|p| *p == 0) {
                return Err(self.invalid(format!("xdp.ports[{i}]"), "0 is not a TCP port"));
            }
            if let Some(cap) = xdp.hosts_capacity {
                if (cap as usize) < self.hosts.len() || cap > 1 << 24 {
                    return Err(self.invalid(
                        "xdp.hosts_capacity",
                        format!(
                            "must be between the number of hosts ({}) and 16777216",
                            self.hosts.len()
                        ),
                    ));
                }
            }
            for (field, v) in [
                ("xdp.other_hosts_capacity", xdp.other_hosts_capacity),
                ("xdp.flows_capacity", xdp.flows_capacity),
                ("xdp.pending_capacity", xdp.pending_capacity),
                ("xdp.ja4_other_capacity", xdp.ja4_other_capacity),
                ("xdp.ja4_hosts_capacity", xdp.ja4_hosts_capacity),
            ] {
                if v == 0 {
                    return Err(self.invalid(field, "must be at least 1"));
                }
            }
            if xdp.ja4_top > fingerprint::MAX_JA4_TOP {
                return Err(self.invalid(
                    "xdp.ja4_top",
                    format!(
                        "at most {} (each is a row per host in stats and a series in /metrics)",
                        fingerprint::MAX_JA4_TOP
                    ),
                ));
            }
        }
        if !self.listen.is_empty() {
            self.validate_terminator()?;
        } else if self.ticket_keys.is_some() {
            return Err(self.invalid(
                "ticket_keys",
                "has no use without [[listen]]: only the terminator issues tickets",
            ));
        }
        if self.metrics_other_hosts > 1000 {
            return Err(self.invalid(
                "metrics_other_hosts",
                "at most 1000 (each is a set of series on every scrape)",
            ));
        }
        self.validate_fingerprints()?;
        if let Err((field, m)) = self.default.actions().check() {
            return Err(self.invalid(format!("default.{field}"), m));
        }
        let mut seen: HashMap<HostKey, usize> = HashMap::new();
        for (h, host) in self.hosts.iter().enumerate() {
            if host.names.is_empty() {
                return Err(self.invalid(format!("host[{h}].names"), "names no host"));
            }
            if let Err((field, m)) = host.actions().check() {
                return Err(self.invalid(format!("host[{h}].{field}"), m));
            }
            for (n, name) in host.names.iter().enumerate() {
                let field = format!("host[{h}].names[{n}]");
                let pattern = parse_name(name).map_err(|m| self.invalid(&field, m))?;
                // A host's first name is its label in counters and metrics, where `default`
                // already names the `[default]` route.
                if n == 0 && pattern.key().as_bytes() == b"default" {
                    return Err(self.invalid(
                        field,
                        "\"default\" as a first name would be taken for [default] in \
                         counters and metrics; list another name first",
                    ));
                }
                // A wildcard keeps its "*." in the key, apart from the exact name it extends.
                let key = *pattern.key();
                if let Some(first) = seen.insert(key, h) {
                    return Err(self.invalid(
                        field,
                        format!("{name:?} is already a name of host[{first}]"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_terminator(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (field, secs) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.idle_timeout", l.idle_timeout),
        ] {
            if !(secs > 0.0 && secs <= 86_400.0) {
                return Err(self.invalid(field, "must be between 0 and 86400 seconds"));
            }
        }
        for (field, v, min) in [
            ("limits.max_connections", l.max_connections, 1),
            ("limits.max_connections_per_ip", l.max_connections_per_ip, 1),
            ("limits.max_client_hello", l.max_client_hello, 512),
            ("limits.buffer_size", l.buffer_size, 1024),
        ] {
            if v < min {
                return Err(self.invalid(field, format!("must be at least {min}")));
            }
        }
        if self.workers == Some(0) {
            return Err(self.invalid("workers", "must be at least 1"));
        }
        if let Some(a) = &self.acme {
            a.check()
                .map_err(|(field, m)| self.invalid(format!("acme.{field}"), m))?;
        }
        if self.default.cert.as_deref() == Some(Path::new(acme::ACME_CERT)) {
            return Err(self.invalid(
                "default.cert",
                "the default host has no name to order a certificate for: give it a file",
            ));
        }
        if !self.default.reject && (self.default.cert.is_none() || self.default.key.is_none()) {
            return Err(self.invalid(
                "default",
                "needs cert and key (or reject = true) when [[listen]] is set",
            ));
        }
        if let Some(b) = &self.default.backend {
            b.parse::<Backend>()
                .map_err(|m| self.invalid("default.backend", m))?;
        }
        let d = &self.default;
        self.validate_client_auth(
            |f| format!("default.{f}"),
            d.client_ca.as_ref(),
            d.client_auth,
            &d.client_crl,
        )?;
        if d.reject && d.client_ca.is_some() {
            return Err(self.invalid(
                "default.client_ca",
                "[default] reject = true answers with an alert before any certificate",
            ));
        }
        for (h, host) in self.hosts.iter().enumerate() {
            let what = |field: &str| format!("host[{h}] ({}).{field}", host.label());
            let backend = host
                .backend
                .as_deref()
                .ok_or_else(|| self.invalid(what("backend"), "missing"))?;
            let backend = backend
                .parse::<Backend>()
                .map_err(|m| self.invalid(what("backend"), m))?;
            match host.mode {
                HostMode::Terminate if host.is_acme() => {
                    if self.acme.is_none() {
                        return Err(self.invalid(
                            what("cert"),
                            "\"acme\" needs an [acme] table (directory, state_dir)",
                        ));
                    }
                    if host.key.is_some() {
                        return Err(self.invalid(
                            what("key"),
                            "an ACME host's key is made with each certificate: leave key out",
                        ));
                    }
                    if let Some(i) = host.names.iter().position(|n| n.starts_with("*.")) {
                        return Err(self.invalid(
                            what(&format!("names[{i}]")),
                            "a wildcard name needs the DNS-01 challenge, which this terminator \
                             does not answer (TLS-ALPN-01 validates one name at a time): list \
                             the names, or give the wildcard a cert and key of its own",
                        ));
                    }
                }
                HostMode::Terminate => {
                    if host.cert.is_none() {
                        return Err(self.invalid(what("cert"), "missing"));
                    }
                    if host.key.is_none() {
                        return Err(self.invalid(what("key"), "missing"));
                    }
                }
                HostMode::Passthrough => {
                    if host.cert.is_some() || host.key.is_some() || !host.alpn.is_empty() {
                        return Err(self.invalid(
                            what("mode"),
                            "a passthrough host has no cert, key or alpn: TLS ends at the backend",
                        ));
                    }
                    for (field, set) in [
                        ("client_ca", host.client_ca.is_some()),
                        ("client_auth", host.client_auth.is_some()),
                        ("client_crl", !host.client_crl.is_empty()),
                    ] {
                        if set {
                            return Err(self.invalid(
                                what(field),
                                "a passthrough host checks no client certificate: TLS ends at \
                                 the backend, which may ask for one itself",
                            ));
                        }
                    }
                    if backend == Backend::Builtin {
                        return Err(self.invalid(
                            what("backend"),
                            "a passthrough host needs a TLS backend, not builtin",
                        ));
                    }
                }
            }
            for (i, proto) in host.alpn.iter().enumerate() {
                if proto.is_empty() || proto.len() > 255 {
                    return Err(self.invalid(what(&format!("alpn[{i}]")), "1 to 255 bytes"));
                }
            }
            for (r, route) in host.routes.iter().enumerate() {
                let what = |field: &str| what(&format!("route[{r}].{field}"));
                let backend = route
                    .backend
                    .parse::<Backend>()
                    .map_err(|m| self.invalid(what("backend"), m))?;
                if host.mode == HostMode::Passthrough && backend == Backend::Builtin {
                    return Err(self.invalid(
                        what("backend"),
                        "a passthrough host needs a TLS backend, not builtin",
                    ));
                }
                if route.alpn.is_empty() {
                    return Err(self.invalid(what("alpn"), "lists no protocol"));
                }
                for (i, proto) in route.alpn.iter().enumerate() {
                    if proto.is_empty() || proto.len() > 255 {
                        return Err(self.invalid(what(&format!("alpn[{i}]")), "1 to 255 bytes"));
                    }
                    // rustls negotiates only what the host offers.
                    if host.mode == HostMode::Terminate && !host.alpn.contains(proto) {
                        return Err(self.invalid(
                            what(&format!("alpn[{i}]")),
                            format!(
                                "{proto:?} is not in the host's alpn, so no client can negotiate it"
                            ),
                        ));
                    }
                }
            }
            self.validate_client_auth(
                what,
                host.client_ca.as_ref(),
                host.client_auth,
                &host.client_crl,
            )?;
        }
        Ok(())
    }

    /// `[[fingerprint]]` tables: valid, each once, and with a classifier that takes
    /// fingerprints.
    fn validate_fingerprints(&self) -> Result<(), ConfigError> {
        if self.fingerprints.is_empty() {
            return Ok(());
        }
        match &self.xdp {
            None => {
                return Err(self.invalid(
                    "fingerprint",
                    "has no use without [xdp]: fingerprints are taken and acted on in XDP",
                ))
            }
            Some(xdp) if !xdp.ja4 => {
                return Err(self.invalid(
                    "fingerprint",
                    "has no use with [xdp] ja4 = false: ClientHellos are not fingerprinted",
                ))
            }
            Some(_) => {}
        }
        fingerprint::check(&self.fingerprints).map_err(|(field, m)| self.invalid(field, m))
    }

    /// `client_auth` and `client_crl` mean something only with `client_ca`.
    fn validate_client_auth(
        &self,
        what: impl Fn(&str) -> String,
        ca: Option<&PathBuf>,
        auth: Option<ClientAuth>,
        crls: &[PathBuf],
    ) -> Result<(), ConfigError> {
        if ca.is_some() {
            return Ok(());
        }
        if auth.is_some() {
            return Err(self.invalid(
                what("client_auth"),
                "needs client_ca, the CA file that client certificates must chain to",
            ));
        }
        if !crls.is_empty() {
            return Err(self.invalid(
                what("client_crl"),
                "needs client_ca, the CA file whose certificates the CRLs revoke",
            ));
        }
        Ok(())
    }
}

/// Parses a name as an operator writes it, with the reason it is refused.
fn parse_name(name: &str) -> Result<HostPattern, String> {
    HostPattern::parse(name.as_bytes()).map_err(|e| match e {
        PatternError::Byte(_) => {
            format!("{name:?} is not a host name (use the punycode xn-- form for IDNs)")
        }
        PatternError::Empty => format!("{name:?} is empty"),
        PatternError::TooLong => format!("{name:?} is longer than 255 bytes"),
        PatternError::EmptyLabel => format!("{name:?} has an empty label"),
        PatternError::Wildcard => {
            format!("{name:?}: a wildcard is only allowed as the whole first label")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn contract_keys_and_defaults() {
        let c = parse(
            r#"
            pin_dir = "/sys/fs/bpf/x"
            [xdp]
            interfaces = ["eth0", "eth1"]
            mode = "native"
            ports = [443, 8443]
            [[host]]
            names = ["Example.com.", "*.example.com"]
            "#,
        )
        .expect("valid");
        let xdp = c.xdp.as_ref().expect("xdp");
        assert_eq!(xdp.mode, Mode::Native);
        assert_eq!(xdp.ports, [443, 8443]);
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/x"));
        let keys: Vec<HostPattern> = c.hosts[0].patterns().collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key().as_bytes(), b"example.com");
        assert_eq!(keys[1].key().as_bytes(), b"*.example.com");
        assert_eq!(c.hosts[0].actions(), ActionConfig::default());

        let c = parse("[xdp]\ninterfaces = [\"lo\"]\n").expect("valid");
        assert_eq!(c.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(c.xdp.expect("xdp").ports, [443]);
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse("[xdp]\ninterfaces = []\n").expect_err("empty");
        assert_eq!(
            e.to_string(),
            "config test.toml:2: xdp.interfaces: names no interface"
        );
        let e = parse("[xdp]\ninterfaces = [\"lo\"]\nports = [0]\n").expect_err("port 0");
        assert!(e.to_string().contains("test.toml:3: xdp.ports[0]"), "{e}");
        // A missing key points at its table.
        let e = parse("[xdp]\ninterfaces = [\"lo\"]\n[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\nreject = true\n[[host]]\nnames = [\"a\"]\ncert = \"c\"\nkey = \"k\"\n")
            .expect_err("no backend");
        assert!(
            e.to_string()
                .contains("test.toml:7: host[0] (a).backend: missing"),
            "{e}"
        );
        let e = parse("[xdp]\ninterfaces = [\"lo\"]\nmode = \"fast\"\n").expect_err("mode");
        assert!(e.to_string().starts_with("config test.toml: "), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse("[xdp]\ninterfaces = [\"lo\"]\nport = [1]\n").expect_err("unknown key");
        assert!(e.to_string().contains("port"), "{e}");
        let e = parse("[[host]]\nnames = [\"a.example\"]\n[[host]]\nnames = [\"A.example\"]\n")
            .expect_err("duplicate");
        assert!(e.to_string().contains("host[1].names[0]"), "{e}");
        assert!(e.to_string().contains("host[0]"), "{e}");
        let e = parse("[[host]]\nnames = [\"bad name\"]\n").expect_err("bad name");
        assert!(e.to_string().contains("host[0].names[0]"), "{e}");
        // Names no client's name reaches: an empty label, a misplaced or parentless `*`.
        for (name, why) in [
            (".example.com", "has an empty label"),
            ("a..example.com", "has an empty label"),
            ("*..example.com", "has an empty label"),
            ("*.", "a wildcard is only allowed"),
            ("a.*.example.com", "a wildcard is only allowed"),
            ("Default.", "would be taken for [default]"),
        ] {
            let e = parse(&format!("[[host]]\nnames = [{name:?}]\n")).expect_err(name);
            assert!(e.to_string().contains(why), "{name}: {e}");
        }
        let e = parse("[[host]]\nnames = [\"a\"]\nhello_rate = 0\n").expect_err("rate 0");
        assert!(e.to_string().contains("host[0].hello_rate"), "{e}");
        let e = parse("[[host]]\nnames = [\"a\"]\naction = \"drop\"\nhello_rate = 5\n")
            .expect_err("drop and rate");
        assert!(e.to_string().contains("host[0].hello_rate"), "{e}");
        let e = parse("[default]\nhello_burst = 5\n").expect_err("burst without rate");
        assert!(e.to_string().contains("default.hello_burst"), "{e}");
        let e = parse("[[host]]\nnames = [\"a\"]\naction = \"reject\"\n").expect_err("action");
        assert!(e.to_string().contains("action"), "{e}");
        let c = parse("[[host]]\nnames = [\"a\"]\nhello_rate = 5\n[default]\naction = \"drop\"\n")
            .expect("valid");
        assert_eq!(c.hosts[0].hello_rate, Some(5));
        assert_eq!(c.default.action, Action::Drop);
        let e = parse("pin_dir = \"relative\"\n").expect_err("relative");
        assert!(e.to_string().contains("pin_dir"), "{e}");
    }

    #[test]
    fn alpn_routes_are_checked_against_the_host() {
        let host = |mode: &str, alpn: &str, route: &str| {
            format!(
                "[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\nreject = true\n\
                 [[host]]\nnames = [\"a.example\"]\n{mode}backend = \"127.0.0.1:2\"\n{alpn}\
                 [[host.route]]\n{route}"
            )
        };
        let tls = "cert = \"c\"\nkey = \"k\"\n";
        let c = parse(&host(
            tls,
            "alpn = [\"h2\", \"http/1.1\"]\n",
            "alpn = [\"h2\"]\nbackend = \"127.0.0.1:3\"\n",
        ))
        .expect("valid");
        assert_eq!(c.hosts[0].routes[0].alpn, ["h2"]);
        for (mode, alpn, route, field, why) in [
            (
                tls,
                "alpn = [\"http/1.1\"]\n",
                "alpn = [\"h2\"]\nbackend = \"127.0.0.1:3\"\n",
                "host[0] (a.example).route[0].alpn[0]",
                "not in the host's alpn",
            ),
            (
                tls,
                "",
                "alpn = []\nbackend = \"127.0.0.1:3\"\n",
                "host[0] (a.example).route[0].alpn",
                "lists no protocol",
            ),
            (
                "mode = \"passthrough\"\n",
                "",
                "alpn = [\"h2\"]\nbackend = \"builtin\"\n",
                "host[0] (a.example).route[0].backend",
                "needs a TLS backend",
            ),
            (
                tls,
                "alpn = [\"h2\"]\n",
                "alpn = [\"h2\"]\nbackend = \"nowhere\"\n",
                "host[0] (a.example).route[0].backend",
                "",
            ),
        ] {
            let e = parse(&host(mode, alpn, route)).expect_err(field);
            assert!(e.to_string().contains(field), "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
        // A passthrough host matches what the ClientHello offers: no alpn of its own.
        parse(&host(
            "mode = \"passthrough\"\n",
            "",
            "alpn = [\"acme-tls/1\"]\nbackend = \"127.0.0.1:3\"\n",
        ))
        .expect("valid passthrough route");
    }

    #[test]
    fn client_auth_keys_need_client_ca_and_a_terminating_host() {
        let base = "[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\nreject = true\n\
                    [[host]]\nnames = [\"a\"]\nbackend = \"127.0.0.1:2\"\n";
        let tls = "cert = \"c.pem\"\nkey = \"k.pem\"\n";
        // Paths are relative to the file; required is the default mode.
        let c = Config::parse(
            &format!("{base}{tls}client_ca = \"ca.pem\"\nclient_crl = [\"a.crl\", \"/abs.crl\"]\n"),
            Path::new("/etc/sni/sni.toml"),
        )
        .expect("valid");
        let auth = c.hosts[0].client_auth().expect("client auth");
        assert_eq!(auth.ca, Path::new("/etc/sni/ca.pem"));
        assert_eq!(auth.mode, ClientAuth::Required);
        assert_eq!(
            auth.crls,
            [PathBuf::from("/etc/sni/a.crl"), PathBuf::from("/abs.crl")]
        );
        let c = parse(&format!(
            "{base}{tls}client_ca = \"ca.pem\"\nclient_auth = \"optional\"\n"
        ))
        .expect("valid");
        assert_eq!(
            c.hosts[0].client_auth().map(|a| a.mode),
            Some(ClientAuth::Optional)
        );
        assert!(parse(&format!("{base}{tls}")).expect("valid").hosts[0]
            .client_auth()
            .is_none());
        for (extra, at, why) in [
            (
                "client_auth = \"required\"\n",
                "host[0] (a).client_auth",
                "needs client_ca",
            ),
            (
                "client_crl = [\"a.crl\"]\n",
                "host[0] (a).client_crl",
                "needs client_ca",
            ),
        ] {
            let e = parse(&format!("{base}{tls}{extra}")).expect_err(extra);
            assert!(
                e.to_string()
                    .contains(&format!("test.toml:10: {at}: {why}")),
                "{e}"
            );
        }
        let e = parse(&format!("{base}{tls}client_auth = \"sometimes\"\n")).expect_err("mode");
        assert!(e.to_string().contains("client_auth"), "{e}");
        let e = parse(&format!("{base}{tls}client_cert = \"x\"\n")).expect_err("unknown key");
        assert!(e.to_string().contains("client_cert"), "{e}");
        // A passthrough host: TLS ends at the backend.
        for (extra, field) in [
            ("client_ca = \"ca.pem\"\n", "client_ca"),
            ("client_auth = \"optional\"\n", "client_auth"),
            (
                "client_ca = \"ca.pem\"\nclient_crl = [\"a.crl\"]\n",
                "client_ca",
            ),
        ] {
            let e = parse(&format!("{base}mode = \"passthrough\"\n{extra}")).expect_err(extra);
            assert!(
                e.to_string()
                    .contains(&format!("host[0] (a).{field}: a passthrough host")),
                "{e}"
            );
        }
        // [default] takes the same keys, but not with reject = true.
        let text = "[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\ncert = \"c\"\nkey = \"k\"\n";
        let c = parse(&format!("{text}client_ca = \"ca.pem\"\n")).expect("valid");
        assert!(c.default.client_auth().is_some());
        let e = parse(&format!("{text}client_crl = [\"x.crl\"]\n")).expect_err("no ca");
        assert!(
            e.to_string()
                .contains("default.client_crl: needs client_ca"),
            "{e}"
        );
        let e = parse("[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\nreject = true\nclient_ca = \"ca.pem\"\n")
            .expect_err("reject");
        assert!(
            e.to_string()
                .contains("default.client_ca: [default] reject"),
            "{e}"
        );
    }

    #[test]
    fn acme_hosts_need_an_acme_table_no_key_and_no_wildcard() {
        let acme = "[acme]\ndirectory = \"https://ca.example/dir\"\nstate_dir = \"acme\"\n";
        let base = "[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\nreject = true\n";
        let host = |extra: &str| {
            format!("[[host]]\nnames = [\"a.example\"]\ncert = \"acme\"\nbackend = \"builtin\"\n{extra}")
        };
        let c = Config::parse(
            &format!("{base}{acme}{}", host("")),
            Path::new("/etc/sni/sni.toml"),
        )
        .expect("valid");
        assert!(c.hosts[0].is_acme());
        assert_eq!(
            c.acme.as_ref().map(|a| a.state_dir.clone()),
            Some(PathBuf::from("/etc/sni/acme"))
        );
        for (text, field, why) in [
            (format!("{base}{}", host("")), "host[0] (a.example).cert", "needs an [acme] table"),
            (format!("{base}{acme}{}", host("key = \"k\"\n")), "host[0] (a.example).key", "leave key out"),
            (
                format!("{base}{acme}[[host]]\nnames = [\"*.a.example\"]\ncert = \"acme\"\nbackend = \"builtin\"\n"),
                "host[0] (*.a.example).names[0]",
                "DNS-01",
            ),
            (
                format!("{base}[acme]\ndirectory = \"http://ca.example/dir\"\nstate_dir = \"s\"\n"),
                "acme.directory",
                "https://",
            ),
            (
                format!("{base}{acme}contact = [\"ops@example.com\"]\n"),
                "acme.contact",
                "mailto:",
            ),
            (
                "[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\ncert = \"acme\"\nkey = \"k\"\n"
                    .to_owned(),
                "default.cert",
                "no name",
            ),
        ] {
            let e = parse(&text).expect_err(field);
            assert!(e.to_string().contains(field) && e.to_string().contains(why), "{e}");
        }
        // renew_before follows a reload; the rest of [acme] needs a restart.
        let other = parse(&format!("{base}{acme}renew_before = 3.0\n{}", host(""))).expect("valid");
        let same = parse(&format!("{base}{acme}{}", host(""))).expect("valid");
        assert!(same.needs_restart(&other).is_empty());
        let moved = parse(&format!(
            "{base}[acme]\ndirectory = \"https://ca.example/dir\"\nstate_dir = \"elsewhere\"\n{}",
            host("")
        ))
        .expect("valid");
        assert_eq!(
            same.needs_restart(&moved),
            ["[acme] (other than renew_before)"]
        );
    }

    #[test]
    fn ticket_keys_is_relative_to_the_file_and_needs_a_listener() {
        let text = "ticket_keys = \"keys/ticket.keys\"\n[[listen]]\naddress = \"127.0.0.1:1\"\n[default]\nreject = true\n";
        let c = Config::parse(text, Path::new("/etc/sni/sni.toml")).expect("valid");
        assert_eq!(
            c.ticket_keys.as_deref(),
            Some(Path::new("/etc/sni/keys/ticket.keys"))
        );
        let e = parse("ticket_keys = \"/k\"\n").expect_err("no listener");
        assert!(
            e.to_string()
                .starts_with("config test.toml:1: ticket_keys: has no use"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_read_from_a_file_that_does_not_validate_or_parse() {
        // Valid TOML, invalid config (no names): the two keys are read.
        let e = Endpoints::from_text(
            "pin_dir = \"/sys/fs/bpf/e\"\ncontrol_socket = \"/run/e.sock\"\n[[host]]\nnames = []\n",
        );
        assert_eq!(e.pin_dir, Path::new("/sys/fs/bpf/e"));
        assert_eq!(e.control_socket, Path::new("/run/e.sock"));
        assert!(e.parsed);
        // A TOML error further down: the top-level lines still give them.
        let e = Endpoints::from_text(
            "# comment\ncontrol_socket = \"/run/e.sock\"  # here\nworkers = \n[[host]]\nnames = [\n",
        );
        assert_eq!(e.control_socket, Path::new("/run/e.sock"));
        assert_eq!(e.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert!(!e.parsed);
        // A key inside a table is not a top-level one.
        let e = Endpoints::from_text("x = [\n[xdp]\ncontrol_socket = \"/run/no.sock\"\n");
        assert_eq!(e.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        // Nothing at all: the defaults.
        let e = Endpoints::from_text("\u{0}");
        assert_eq!(e.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert!(!e.parsed);
    }

    #[test]
    fn hostile_config_text_is_refused_with_a_reason() {
        for text in [
            "[",
            "[xdp",
            "xdp = 1",
            "[xdp]\ninterfaces = [1]",
            "\u{0}",
            "[[host]]\nnames=[\"\"]",
            "[xdp]\ninterfaces=[\"aaaaaaaaaaaaaaaaaaaaaaaa\"]",
            "[[host]]\nnames=[\"a.example\"]\nunknown_key = 1",
            "[[host]]\nnames=[\"*.*.example\"]",
            "[[host]]\nnames=[\"a.example\"]\nhello_rate = -1",
        ] {
            match parse(text) {
                Ok(_) => panic!("accepted: {text:?}"),
                Err(e) => assert!(!format!("{e:#}").is_empty(), "no reason for {text:?}"),
            }
        }
        // Nothing configured is a valid file (`run` then refuses to start with nothing to do).
        assert!(parse("").is_ok());
    }
}
