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
//! ```

use std::{
    collections::HashMap,
    fmt, fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sni_common::{host::NameError, maps::OTHER_HOSTS_DEFAULT_ENTRIES, HostKey};

/// Where the maps are pinned unless the config says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sni";
/// The port watched by default: the demo terminator's.
pub const DEMO_PORT: u16 = 8443;

/// A configuration error, naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
    #[error("config {path}: {field}: {message}")]
    Invalid {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// The field, e.g. `host[2].names[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
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
    /// Hosts the operator knows: their counters are kept apart from other names and are never
    /// evicted.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostConfig>,
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
}

/// `[[host]]`: one served host (more keys come with the terminator).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Names of the host; `*.example.com` covers one label.
    pub names: Vec<String>,
}

impl XdpConfig {
    /// The demo classifier: the demo port on loopback, generic mode (lo has no native XDP).
    pub fn demo() -> Self {
        Self {
            interfaces: vec!["lo".to_owned()],
            mode: Mode::Generic,
            ports: vec![DEMO_PORT],
            other_hosts_capacity: OTHER_HOSTS_DEFAULT_ENTRIES,
        }
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

fn default_ports() -> Vec<u16> {
    vec![443]
}

fn default_other_hosts() -> u32 {
    OTHER_HOSTS_DEFAULT_ENTRIES
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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
        config.validate()?;
        Ok(config)
    }

    /// The configuration used without a file: watch the demo port on loopback, generic mode.
    pub fn demo() -> Self {
        Self {
            pin_dir: default_pin_dir(),
            xdp: Some(XdpConfig::demo()),
            hosts: Vec::new(),
            source: PathBuf::from("<defaults>"),
        }
    }

    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            field: field.into(),
            message: message.into(),
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
            if xdp.other_hosts_capacity == 0 {
                return Err(self.invalid("xdp.other_hosts_capacity", "must be at least 1"));
            }
        }
        let mut seen: HashMap<HostKey, usize> = HashMap::new();
        for (h, host) in self.hosts.iter().enumerate() {
            if host.names.is_empty() {
                return Err(self.invalid(format!("host[{h}].names"), "names no host"));
            }
            for (n, name) in host.names.iter().enumerate() {
                let field = format!("host[{h}].names[{n}]");
                let pattern = name.strip_prefix("*.").unwrap_or(name);
                if pattern.contains('*') {
                    return Err(self.invalid(
                        field,
                        format!("{name:?}: a wildcard is only allowed as the whole first label"),
                    ));
                }
                // A wildcard keeps its "*." in the key, apart from the exact name it extends.
                let key = parse_name(name).map_err(|m| self.invalid(&field, m))?;
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

    /// Exact configured names as map keys (wildcards are matched by the terminator, not here).
    pub fn known_host_keys(&self) -> Vec<HostKey> {
        self.hosts
            .iter()
            .flat_map(|h| h.names.iter())
            .filter(|n| !n.starts_with("*."))
            .filter_map(|n| HostKey::from_name(n.as_bytes()).ok())
            .collect()
    }
}

/// Checks a host name as an operator writes it: letters, digits, hyphens, dots, underscores.
fn parse_name(name: &str) -> Result<HostKey, String> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
    {
        return Err(format!(
            "{name:?} is not a host name (use the punycode xn-- form for IDNs)"
        ));
    }
    HostKey::from_name(name.as_bytes()).map_err(|e| match e {
        NameError::Empty => format!("{name:?} is empty"),
        NameError::TooLong => format!("{name:?} is longer than 255 bytes"),
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
        let keys = c.known_host_keys();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].as_bytes(), b"example.com");

        let c = parse("[xdp]\ninterfaces = [\"lo\"]\n").expect("valid");
        assert_eq!(c.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(c.xdp.expect("xdp").ports, [443]);
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse("[xdp]\ninterfaces = []\n").expect_err("empty");
        assert_eq!(
            e.to_string(),
            "config test.toml: xdp.interfaces: names no interface"
        );
        let e = parse("[xdp]\ninterfaces = [\"lo\"]\nports = [0]\n").expect_err("port 0");
        assert!(e.to_string().contains("xdp.ports[0]"), "{e}");
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
        let e = parse("pin_dir = \"relative\"\n").expect_err("relative");
        assert!(e.to_string().contains("pin_dir"), "{e}");
    }

    #[test]
    fn hostile_config_text_never_panics() {
        for text in [
            "",
            "[",
            "[xdp",
            "xdp = 1",
            "[xdp]\ninterfaces = [1]",
            "\u{0}",
            "[[host]]\nnames=[\"\"]",
            "[xdp]\ninterfaces=[\"aaaaaaaaaaaaaaaaaaaaaaaa\"]",
        ] {
            let _ = parse(text);
        }
    }
}
