//! `[[fingerprint]]`: actions on TLS clients by their JA4 fingerprint (FoxIO), taken in XDP
//! at the end of the ClientHello; and the `[xdp]` keys that size and show fingerprints.
//!
//! ```toml
//! [xdp]
//! interfaces = ["eth0"]
//! ja4 = true                  # read ClientHellos to the end and fingerprint them (default)
//! ja4_other_capacity = 16384  # fingerprints not configured, counted (least recent go first)
//! ja4_hosts_capacity = 65536  # (host, fingerprint) pairs counted
//! ja4_top = 10                # fingerprints shown per host by stats, top and /metrics
//!
//! [[fingerprint]]
//! ja4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
//! action = "drop"             # pass | drop, as a host's
//! # hello_rate = 50           # new ClientHellos per second with this fingerprint
//! # hello_burst = 100
//! ```
//!
//! A flow's verdict is the stricter of its host's and its fingerprint's: drop, then
//! rate-limited, then pass.

use serde::Deserialize;
use sni_common::{
    ja4::Ja4,
    maps::{JA4_HOSTS_DEFAULT_ENTRIES, JA4_OTHER_DEFAULT_ENTRIES, JA4_SLOTS_ENTRIES},
};

use super::{Action, ActionConfig};

/// Per-host fingerprints shown by readers unless `[xdp] ja4_top` says otherwise.
pub const DEFAULT_JA4_TOP: usize = 10;
/// The largest `ja4_top` (each is a row per host in `stats` and a series in `/metrics`).
pub const MAX_JA4_TOP: usize = 100;

/// `[[fingerprint]]`: one configured JA4 fingerprint and what the classifier does with it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FingerprintConfig {
    /// The JA4 string, e.g. `t13d1516h2_8daaf6152771_e5627efa2ab1`.
    pub ja4: String,
    /// `pass` or `drop`.
    #[serde(default)]
    pub action: Action,
    /// New ClientHellos per second with this fingerprint (over all hosts); those over it are
    /// dropped in XDP with their flow.
    #[serde(default)]
    pub hello_rate: Option<u32>,
    /// How many may come at once (default: `hello_rate`).
    #[serde(default)]
    pub hello_burst: Option<u32>,
}

impl FingerprintConfig {
    /// Its action and rate limit.
    pub fn actions(&self) -> ActionConfig {
        ActionConfig {
            action: self.action,
            hello_rate: self.hello_rate,
            hello_burst: self.hello_burst,
        }
    }

    /// The JA4 string, parsed (always `Some` once [`super::Config::validate`] passed).
    pub fn parsed(&self) -> Option<Ja4> {
        Ja4::parse(&self.ja4).ok()
    }
}

/// What is wrong with the `[[fingerprint]]` tables, as (field, message): a JA4 string that
/// does not parse, one configured twice, or the action fields as a host's are checked.
pub(super) fn check(fingerprints: &[FingerprintConfig]) -> Result<(), (String, String)> {
    if fingerprints.len() > JA4_SLOTS_ENTRIES as usize {
        return Err((
            "fingerprint".to_owned(),
            format!(
                "{} tables: the kernel's map of configured keys holds {JA4_SLOTS_ENTRIES}",
                fingerprints.len()
            ),
        ));
    }
    let mut seen: std::collections::HashMap<Ja4, usize> = std::collections::HashMap::new();
    for (i, f) in fingerprints.iter().enumerate() {
        let ja4 = Ja4::parse(&f.ja4)
            .map_err(|m| (format!("fingerprint[{i}].ja4"), format!("{:?}: {m}", f.ja4)))?;
        if !f.ja4.starts_with('t') {
            // QUIC (q) and DTLS (d) ClientHellos never reach a TCP classifier: such a table
            // could never match.
            return Err((
                format!("fingerprint[{i}].ja4"),
                format!(
                    "{:?}: the classifier reads TLS over TCP, whose JA4 starts with t",
                    f.ja4
                ),
            ));
        }
        if let Some(first) = seen.insert(ja4, i) {
            return Err((
                format!("fingerprint[{i}].ja4"),
                format!(
                    "{:?} is already configured by fingerprint[{first}]; one table per \
                     fingerprint",
                    f.ja4
                ),
            ));
        }
        f.actions()
            .check()
            .map_err(|(field, m)| (format!("fingerprint[{i}].{field}"), m.to_owned()))?;
    }
    Ok(())
}

/// `[xdp] ja4` unless set: fingerprints are taken.
pub(super) fn default_ja4() -> bool {
    true
}

/// `[xdp] ja4_other_capacity` unless set.
pub(super) fn default_other_capacity() -> u32 {
    JA4_OTHER_DEFAULT_ENTRIES
}

/// `[xdp] ja4_hosts_capacity` unless set.
pub(super) fn default_hosts_capacity() -> u32 {
    JA4_HOSTS_DEFAULT_ENTRIES
}

/// `[xdp] ja4_top` unless set.
pub(super) fn default_top() -> usize {
    DEFAULT_JA4_TOP
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    const CURLISH: &str = "t13d3112h1_e8f1e7e78f70_6bebaf5329ac";
    const SPEC: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("[xdp]\ninterfaces = [\"lo\"]\n{text}"),
            Path::new("t.toml"),
        )
    }

    #[test]
    fn fingerprints_and_xdp_keys_parse_with_their_defaults() {
        let c = parse(&format!(
            "[[fingerprint]]\nja4 = \"{SPEC}\"\naction = \"drop\"\n\
             [[fingerprint]]\nja4 = \"{CURLISH}\"\nhello_rate = 5\nhello_burst = 10\n"
        ))
        .expect("valid");
        let xdp = c.xdp.as_ref().expect("xdp");
        assert!(xdp.ja4);
        assert_eq!(xdp.ja4_other_capacity, JA4_OTHER_DEFAULT_ENTRIES);
        assert_eq!(xdp.ja4_hosts_capacity, JA4_HOSTS_DEFAULT_ENTRIES);
        assert_eq!(xdp.ja4_top, DEFAULT_JA4_TOP);
        assert_eq!(c.fingerprints.len(), 2);
        assert_eq!(c.fingerprints[0].action, Action::Drop);
        assert_eq!(
            c.fingerprints[0].parsed().map(|j| j.to_string()).as_deref(),
            Some(SPEC)
        );
        assert_eq!(
            c.fingerprints[1].actions().policy(),
            sni_common::flow::Policy::new(false, Some(5), Some(10))
        );
        let c = Config::parse(
            "[xdp]\ninterfaces = [\"lo\"]\nja4 = false\nja4_other_capacity = 10\n\
             ja4_hosts_capacity = 20\nja4_top = 3\n",
            Path::new("t.toml"),
        )
        .expect("valid");
        let xdp = c.xdp.expect("xdp");
        assert_eq!(
            (
                xdp.ja4,
                xdp.ja4_other_capacity,
                xdp.ja4_hosts_capacity,
                xdp.ja4_top
            ),
            (false, 10, 20, 3)
        );
    }

    #[test]
    fn bad_fingerprints_are_refused_with_their_field_and_line() {
        for (text, wants) in [
            (
                "[[fingerprint]]\nja4 = \"t13d1516h2\"\n".to_owned(),
                "t.toml:4: fingerprint[0].ja4: \"t13d1516h2\": a JA4 is 36 characters",
            ),
            (
                format!("[[fingerprint]]\nja4 = \"{SPEC}\"\n[[fingerprint]]\nja4 = \"{SPEC}\"\n"),
                "t.toml:6: fingerprint[1].ja4: \"t13d1516h2_8daaf6152771_e5627efa2ab1\" is \
                 already configured by fingerprint[0]",
            ),
            (
                format!("[[fingerprint]]\nja4 = \"{SPEC}\"\nhello_rate = 0\n"),
                "fingerprint[0].hello_rate: must be at least 1",
            ),
            (
                format!("[[fingerprint]]\nja4 = \"{SPEC}\"\naction = \"drop\"\nhello_rate = 3\n"),
                "fingerprint[0].hello_rate: has no effect with action = \"drop\"",
            ),
            (
                format!("[[fingerprint]]\nja4 = \"{SPEC}\"\nhello_burst = 3\n"),
                "fingerprint[0].hello_burst: needs hello_rate",
            ),
            (
                format!("[[fingerprint]]\nja4 = \"{SPEC}\"\nnames = [\"a\"]\n"),
                "unknown field `names`",
            ),
            (
                "[[fingerprint]]\naction = \"drop\"\n".to_owned(),
                "missing field `ja4`",
            ),
            (
                format!("[[fingerprint]]\nja4 = \"{SPEC}\"\naction = \"block\"\n"),
                "unknown variant `block`",
            ),
        ] {
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(wants), "{text}: {e}");
        }
        let e = Config::parse(
            "[xdp]\ninterfaces = [\"lo\"]\nja4_top = 101\n",
            Path::new("t.toml"),
        )
        .expect_err("top");
        assert!(
            e.to_string().contains("t.toml:3: xdp.ja4_top: at most 100"),
            "{e}"
        );
        let e = Config::parse(
            "[xdp]\ninterfaces = [\"lo\"]\nja4_other_capacity = 0\n",
            Path::new("t.toml"),
        )
        .expect_err("capacity");
        assert!(e.to_string().contains("xdp.ja4_other_capacity"), "{e}");
        // Fingerprints are taken in XDP: not without [xdp], nor with ja4 = false.
        let text = format!("[[fingerprint]]\nja4 = \"{SPEC}\"\n");
        let e = Config::parse(&text, Path::new("t.toml")).expect_err("no xdp");
        assert!(e.to_string().contains("without [xdp]"), "{e}");
        let e = Config::parse(
            &format!("[xdp]\ninterfaces = [\"lo\"]\nja4 = false\n{text}"),
            Path::new("t.toml"),
        )
        .expect_err("ja4 off");
        assert!(e.to_string().contains("ja4 = false"), "{e}");
    }

    #[test]
    fn fingerprints_and_ja4_top_change_in_place_the_rest_needs_a_restart() {
        let a = parse(&format!("[[fingerprint]]\nja4 = \"{SPEC}\"\n")).expect("valid");
        let b = parse(&format!(
            "ja4_top = 3\n[[fingerprint]]\nja4 = \"{CURLISH}\"\naction = \"drop\"\n"
        ))
        .expect("valid");
        assert!(a.needs_restart(&b).is_empty(), "{:?}", a.needs_restart(&b));
        let c = parse("ja4 = false\n").expect("valid");
        assert_eq!(
            a.needs_restart(&c),
            ["[xdp] (other than ports and ja4_top)"]
        );
    }
}
