//! `sni-user check`: validates a config as `run` would, without attaching or binding
//! anything, and prints the routing table it resolves to. Errors are reported as
//! `FILE:LINE: FIELD: REASON`, like a compiler's, so an editor can jump to them.

use std::{fmt::Write as _, path::Path};

use sni_common::{pattern, HostPattern};

use crate::{
    config::{locate, Action, Config, ConfigError, HostMode},
    terminator::routes::CertSource,
    terminator::routes::Routes,
};

/// Days before expiry under which a certificate is warned about.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// What `check` found.
#[derive(Debug)]
pub struct Report {
    /// Whether `run` would accept the config.
    pub ok: bool,
    /// The text to print: errors, or warnings and the routing table.
    pub text: String,
}

/// Checks the config at `path`.
pub fn check(path: &Path) -> Report {
    let mut text = String::new();
    let display = path.display().to_string();
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            return Report {
                ok: false,
                text: format!("{display}: cannot read: {e}\n"),
            }
        }
    };
    let config = match Config::parse(&source, path) {
        Ok(c) => c,
        Err(e) => {
            return Report {
                ok: false,
                text: config_error(&display, &e) + "\n",
            }
        }
    };
    let mut errors = Vec::new();
    let line_of = |field: &str| match locate(&source, field) {
        Some(l) => format!("{display}:{l}"),
        None => display.clone(),
    };
    if config.xdp.is_none() && config.listen.is_empty() {
        errors.push(format!(
            "{display}: nothing to run: no [xdp] section and no [[listen]]"
        ));
    }
    if let Some(user) = &config.user {
        if let Err(e) = crate::daemon::privileges::Target::resolve(user) {
            errors.push(format!("{}: user: {e:#}", line_of("user")));
        }
    }
    if config.xdp.is_some() {
        if let Some(reason) = crate::kernel::loader::pin_dir_unusable(&config.pin_dir) {
            errors.push(format!("{}: pin_dir: {reason}", line_of("pin_dir")));
        }
    }
    if let Some(xdp) = &config.xdp {
        for (i, iface) in xdp.interfaces.iter().enumerate() {
            if !Path::new("/sys/class/net").join(iface).exists() {
                let field = format!("xdp.interfaces[{i}]");
                errors.push(format!(
                    "{}: {field}: no interface named {iface:?} here",
                    line_of(&field)
                ));
            }
        }
    }
    let routes = if config.listen.is_empty() {
        None
    } else {
        match Routes::load(&config) {
            Ok(r) => Some(r),
            Err(e) => {
                let file = if e.file.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", e.file)
                };
                errors.push(format!(
                    "{}: {}: {file}{}",
                    line_of(&e.field),
                    e.field,
                    e.message
                ));
                None
            }
        }
    };
    if !errors.is_empty() {
        for e in &errors {
            let _ = writeln!(text, "{e}");
        }
        return Report { ok: false, text };
    }
    for w in overlaps(&config).into_iter().chain(http1_only(&config)) {
        let _ = writeln!(text, "{}: warning: {w}", line_of(&w.field));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Some(routes) = &routes {
        for r in &routes.routes {
            let Some(end) = r.not_after else { continue };
            let days = (end - now).div_euclid(86_400);
            if end <= now {
                let _ = writeln!(
                    text,
                    "{display}: warning: {}: the certificate expired {} days ago; clients \
                     will refuse it",
                    r.label, -days
                );
            } else if days < EXPIRY_WARNING_DAYS {
                let _ = writeln!(
                    text,
                    "{display}: warning: {}: the certificate expires in {days} days",
                    r.label
                );
            }
        }
    }
    if let Some(keys) = routes.as_ref().and_then(Routes::ticket_keys) {
        let _ = writeln!(
            text,
            "session ticket keys: {} ({} key{}; the last encrypts)",
            keys.path().display(),
            keys.len(),
            if keys.len() == 1 { "" } else { "s" }
        );
    }
    text.push_str(&table(&config, routes.as_ref(), now));
    Report { ok: true, text }
}

/// A config error as `FILE:LINE: …`.
fn config_error(display: &str, e: &ConfigError) -> String {
    match e {
        ConfigError::Parse { message, .. } => {
            // toml's message starts "TOML parse error at line L, column C".
            let line = message
                .split("line ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .filter(|l| !l.is_empty());
            let message = message.replace('\n', "\n  ");
            match line {
                Some(l) => format!("{display}:{l}: {message}"),
                None => format!("{display}: {message}"),
            }
        }
        ConfigError::Invalid {
            line,
            field,
            message,
            ..
        } => match line {
            Some(l) => format!("{display}:{l}: {field}: {message}"),
            None => format!("{display}: {field}: {message}"),
        },
        ConfigError::Read { error, .. } => format!("{display}: cannot read: {error}"),
    }
}

/// A warning about names, with the field it points at.
#[derive(Debug)]
struct Overlap {
    field: String,
    message: String,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Hosts offering "h2" in front of the built-in backend, which answers HTTP/1.1 only: a
/// client that picks h2 (curl and browsers do) gets no answer.
fn http1_only(config: &Config) -> Vec<Overlap> {
    config
        .hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            h.backend.as_deref() == Some("builtin") && h.alpn.iter().any(|p| p == "h2")
        })
        .map(|(i, _)| Overlap {
            field: format!("host[{i}].alpn"),
            message: "offers \"h2\", but the builtin backend answers HTTP/1.1 only; clients \
                      that choose h2 get no answer"
                .to_owned(),
        })
        .collect()
}

/// Names that another name also covers: an exact name under a wildcard of another host (the
/// exact name wins, so the wildcard's host never sees it), or of the same host (redundant).
/// Duplicates are errors already (`Config::validate`).
fn overlaps(config: &Config) -> Vec<Overlap> {
    let mut wildcards = std::collections::HashMap::new();
    for (h, host) in config.hosts.iter().enumerate() {
        for name in &host.names {
            if let Ok(HostPattern::Wildcard(key)) = HostPattern::parse(name.as_bytes()) {
                wildcards.insert(key, (h, name));
            }
        }
    }
    let mut out = Vec::new();
    for (h, host) in config.hosts.iter().enumerate() {
        for (n, name) in host.names.iter().enumerate() {
            let Ok(HostPattern::Exact(name)) = HostPattern::parse(name.as_bytes()) else {
                continue;
            };
            // The wildcard a client naming this name would reach were it not configured (an
            // exact name is never a wildcard's key, so `find` goes on to the pattern).
            let Some((w, written)) = pattern::find(&name, |k| wildcards.get(k)) else {
                continue;
            };
            let name = String::from_utf8_lossy(name.as_bytes());
            let message = if *w == h {
                format!("{name:?} is also covered by {written:?} of the same host")
            } else {
                format!(
                    "{name:?} is also covered by {written:?} of host[{w}]: the exact name \
                     wins, so host[{w}] never gets {name:?}"
                )
            };
            out.push(Overlap {
                field: format!("host[{h}].names[{n}]"),
                message,
            });
        }
    }
    out
}

fn action_text(action: Action, rate: Option<u32>, burst: Option<u32>) -> String {
    match (action, rate) {
        (Action::Drop, _) => "drop".to_owned(),
        (Action::Pass, None) => "pass".to_owned(),
        (Action::Pass, Some(r)) => format!("pass, {r}/s burst {}", burst.unwrap_or(r)),
    }
}

fn expiry(not_after: Option<i64>, now: i64) -> String {
    match not_after {
        Some(t) => {
            let days = (t - now).div_euclid(86_400);
            let date = x509_parser::time::ASN1Time::from_timestamp(t)
                .map(|a| a.to_string())
                .unwrap_or_else(|_| t.to_string());
            format!("{date} ({days} d)")
        }
        None => "-".to_owned(),
    }
}

/// The resolved routing table.
fn table(config: &Config, routes: Option<&Routes>, now: i64) -> String {
    let mut out = String::new();
    let names: usize = config.hosts.iter().map(|h| h.names.len()).sum();
    let _ = writeln!(
        out,
        "{}: OK: {} host{}, {names} name{}",
        config.source.display(),
        config.hosts.len(),
        if config.hosts.len() == 1 { "" } else { "s" },
        if names == 1 { "" } else { "s" },
    );
    if let Some(xdp) = &config.xdp {
        let _ = writeln!(
            out,
            "classifier: interfaces {} ({} mode), ports {:?}, pin_dir {}",
            xdp.interfaces.join(", "),
            xdp.mode,
            xdp.ports,
            config.pin_dir.display()
        );
        if xdp.ja4 {
            let _ = writeln!(
                out,
                "fingerprints (JA4): {} configured; {} others and {} (host, fingerprint) pairs \
                 counted; top {} per host shown",
                config.fingerprints.len(),
                xdp.ja4_other_capacity,
                xdp.ja4_hosts_capacity,
                xdp.ja4_top
            );
        } else {
            let _ = writeln!(out, "fingerprints (JA4): off (ja4 = false)");
        }
    }
    if !config.listen.is_empty() {
        let listen: Vec<String> = config
            .listen
            .iter()
            .map(|l| l.address.to_string())
            .collect();
        let _ = writeln!(out, "terminator: listening on {}", listen.join(", "));
    }
    if let Some(m) = config.metrics {
        let _ = writeln!(out, "metrics: http://{m}/metrics");
    }
    let _ = writeln!(out, "control socket: {}", config.control_socket.display());
    if let Some(u) = &config.user {
        let _ = writeln!(out, "runs as: {u}");
    }
    if let Some(a) = &config.acme {
        let _ = writeln!(
            out,
            "acme: {} (state in {})",
            a.directory,
            a.state_dir.display()
        );
    }
    let _ = writeln!(out);
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "HOST".into(),
        "MODE".into(),
        "BACKEND".into(),
        "XDP".into(),
        "CERTIFICATE EXPIRES".into(),
        "CLIENT CERT".into(),
    ]];
    let route_of = |label: &str| routes.and_then(|r| r.routes.iter().find(|x| x.label == label));
    for host in &config.hosts {
        let label = host.label();
        let route = route_of(label);
        for name in &host.names {
            rows.push([
                name.clone(),
                label.to_owned(),
                match host.mode {
                    HostMode::Terminate => "terminate".into(),
                    HostMode::Passthrough => "passthrough".into(),
                },
                route.map_or_else(
                    || host.backend.clone().unwrap_or_else(|| "-".into()),
                    |r| backend_text(r),
                ),
                action_text(host.action, host.hello_rate, host.hello_burst),
                match route.map(|r| r.source) {
                    Some(CertSource::AcmePlaceholder) => {
                        "acme: none yet (self-signed placeholder)".into()
                    }
                    Some(CertSource::Acme) => {
                        format!("acme: {}", expiry(route.and_then(|r| r.not_after), now))
                    }
                    _ => expiry(route.and_then(|r| r.not_after), now),
                },
                client_cert_text(route),
            ]);
        }
    }
    let d = &config.default;
    let default_route = route_of("default");
    rows.push([
        "(any other name, or none)".into(),
        if routes.is_some() && default_route.is_none() {
            "rejected: unrecognized_name".into()
        } else {
            "default".into()
        },
        if routes.is_some() {
            "terminate".into()
        } else {
            "-".into()
        },
        default_route.map_or_else(|| "-".into(), |r| backend_text(r)),
        action_text(d.action, d.hello_rate, d.hello_burst),
        expiry(default_route.and_then(|r| r.not_after), now),
        client_cert_text(default_route),
    ]);
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if !config.fingerprints.is_empty() {
        let _ = writeln!(out);
        let width = config
            .fingerprints
            .iter()
            .map(|f| f.ja4.len())
            .max()
            .unwrap_or(0)
            .max("FINGERPRINT (JA4)".len());
        let _ = writeln!(out, "{:<width$}  XDP", "FINGERPRINT (JA4)");
        for f in &config.fingerprints {
            let _ = writeln!(
                out,
                "{:<width$}  {}",
                f.ja4,
                action_text(f.action, f.hello_rate, f.hello_burst)
            );
        }
    }
    out
}

/// A route's client-certificate check (mTLS): `required`, `optional (1 CRL)`, or `-`.
fn client_cert_text(r: Option<&std::sync::Arc<crate::terminator::routes::Route>>) -> String {
    match r.and_then(|r| r.client_auth.as_ref()) {
        None => "-".into(),
        Some(c) if c.crls == 0 => c.mode.to_string(),
        Some(c) => format!(
            "{} ({} CRL{})",
            c.mode,
            c.crls,
            if c.crls == 1 { "" } else { "s" }
        ),
    }
}

/// The host's backend, after its ALPN routes: `h2 → 127.0.0.1:8081; else 127.0.0.1:8080`.
fn backend_text(r: &crate::terminator::routes::Route) -> String {
    let name = |b: &crate::config::Backend| match b {
        crate::config::Backend::Tcp(a) => a.to_string(),
        crate::config::Backend::Unix(p) => format!("unix:{}", p.display()),
        crate::config::Backend::Builtin => "builtin".into(),
    };
    let mut b = String::new();
    for route in &r.alpn_routes {
        let _ = write!(b, "{} → {}; else ", route.alpn_text(), name(&route.backend));
    }
    b.push_str(&name(&r.backend));
    if r.proxy_protocol {
        format!("{b} (PROXY v2)")
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_name_the_exact_name_and_the_wildcard() {
        let c = Config::parse(
            "[[host]]\nnames = [\"*.wild.example\", \"a.wild.example\"]\n\
             [[host]]\nnames = [\"b.wild.example\", \"wild.example\"]\n",
            Path::new("t.toml"),
        )
        .expect("valid");
        let o = overlaps(&c);
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(o[0].field, "host[0].names[1]");
        assert!(o[0].message.contains("same host"), "{}", o[0]);
        assert_eq!(o[1].field, "host[1].names[0]");
        assert!(o[1].message.contains("host[0] never gets"), "{}", o[1]);
    }

    #[test]
    fn fingerprints_are_listed_with_their_action() {
        let c = Config::parse(
            "[xdp]\ninterfaces = [\"lo\"]\nja4_top = 4\n\
             [[fingerprint]]\nja4 = \"t13d1516h2_8daaf6152771_e5627efa2ab1\"\naction = \"drop\"\n\
             [[fingerprint]]\nja4 = \"t13i0000h1_000000000000_000000000000\"\nhello_rate = 2\n",
            Path::new("t.toml"),
        )
        .expect("valid");
        let t = table(&c, None, 0);
        assert!(t.contains("fingerprints (JA4): 2 configured"), "{t}");
        assert!(t.contains("top 4 per host"), "{t}");
        assert!(
            t.contains("t13d1516h2_8daaf6152771_e5627efa2ab1  drop\n"),
            "{t}"
        );
        assert!(
            t.contains("t13i0000h1_000000000000_000000000000  pass, 2/s burst 2\n"),
            "{t}"
        );
        let c = Config::parse(
            "[xdp]\ninterfaces = [\"lo\"]\nja4 = false\n",
            Path::new("t.toml"),
        )
        .expect("valid");
        assert!(table(&c, None, 0).contains("fingerprints (JA4): off"));
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let dir = std::env::temp_dir().join(format!("sni-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[xdp]\ninterfaces = [\"lo\"]\nmode = \"fast\"\n").expect("write");
        let r = check(&path);
        assert!(!r.ok);
        assert!(
            r.text.starts_with(&format!("{}:3: ", path.display())),
            "{}",
            r.text
        );
        std::fs::write(
            &path,
            "[xdp]\ninterfaces = [\"lo\"]\n\n[[host]]\nnames = [\"a.example\"]\n\
             [[host]]\nnames = [\"b.example\",\n  \"A.example\"]\n",
        )
        .expect("write");
        let r = check(&path);
        assert!(!r.ok);
        assert!(
            r.text
                .starts_with(&format!("{}:8: host[1].names[1]: ", path.display())),
            "{}",
            r.text
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
