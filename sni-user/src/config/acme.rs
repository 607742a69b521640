//! `[acme]`: certificates ordered from an ACME CA (RFC 8555) for hosts with `cert = "acme"`,
//! validated by TLS-ALPN-01 (RFC 8737), which the terminator answers itself.
//!
//! ```toml
//! [acme]
//! directory = "https://acme-v02.api.letsencrypt.org/directory"
//! contact = ["mailto:ops@example.com"]
//! state_dir = "/var/lib/sni/acme"   # account, keys, certificates (0700, the run user's)
//! # directory_ca = "pebble.pem"     # a CA to trust for the directory's own HTTPS (test CAs)
//! # renew_before = 30.0             # days before expiry (default: a third of the lifetime)
//! # eab = { kid = "…", hmac_key = "…" }  # external account binding, for CAs that need it
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// The largest `renew_before`, in days (a century: beyond any certificate's lifetime).
pub const MAX_RENEW_BEFORE_DAYS: f64 = 36_500.0;

/// The value of a host's `cert` that asks for ACME instead of a file.
pub const ACME_CERT: &str = "acme";

/// `[acme]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (HTTPS).
    pub directory: String,
    /// A PEM file of CA certificates to trust for the directory's HTTPS instead of the
    /// system's (a test CA such as Pebble), relative to the config file.
    #[serde(default)]
    pub directory_ca: Option<PathBuf>,
    /// Contact URLs for the account (`mailto:ops@example.com`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Where the account, the keys and the certificates are kept, relative to the config
    /// file.
    pub state_dir: PathBuf,
    /// External account binding, for CAs that require it.
    #[serde(default)]
    pub eab: Option<Eab>,
    /// Days before expiry at which a certificate is renewed (default: when a third of its
    /// lifetime is left).
    #[serde(default)]
    pub renew_before: Option<f64>,
}

/// External account binding (RFC 8555 §7.3.4): the key id and MAC key the CA gave.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Eab {
    /// The key identifier.
    pub kid: String,
    /// The HMAC key, base64url as CAs hand it out.
    pub hmac_key: String,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The MAC key is a secret: never in a log or an error.
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AcmeConfig {
    /// What is wrong with it, as (field under `acme.`, message).
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.directory.starts_with("https://") {
            return Err((
                "directory",
                format!("{:?}: an ACME directory is an https:// URL", self.directory),
            ));
        }
        if let Some(c) = self.contact.iter().find(|c| !c.starts_with("mailto:")) {
            return Err(("contact", format!("{c:?}: contacts are mailto: URLs")));
        }
        if let Some(days) = self.renew_before {
            if !(days > 0.0 && days <= MAX_RENEW_BEFORE_DAYS) {
                return Err((
                    "renew_before",
                    format!("must be a number of days above 0 and at most {MAX_RENEW_BEFORE_DAYS}"),
                ));
            }
        }
        if let Some(eab) = &self.eab {
            use base64::Engine as _;
            if eab.kid.is_empty() {
                return Err(("eab.kid", "is empty".into()));
            }
            if base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(eab.hmac_key.trim_end_matches('='))
                .is_err()
            {
                return Err(("eab.hmac_key", "is not base64url".into()));
            }
        }
        Ok(())
    }
}
