//! A test CA and leaf certificates made with the openssl command line, and a rustls client
//! configuration that trusts the CA.

use std::{path::PathBuf, process::Command, sync::Arc};

use crate::netns::run;

/// A test CA and leaf certificates, made with the openssl command line.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A new CA in a temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Self { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "90",
            "-subj",
            "/CN=sni-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        pki
    }

    /// A file in the CA's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        run(Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path()));
    }

    /// Makes `file.pem` and `file.key` for `names`, signed by the CA.
    pub fn leaf(&self, file: &str, names: &[&str]) {
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        self.leaf_with_san(file, names[0], &san);
    }

    /// Makes `file.pem` and `file.key` with subject CN `cn` and the subjectAltName entries `san`
    /// written as openssl's config has them (`DNS:name`, `IP:198.18.0.1`), signed by the CA.
    pub fn leaf_with_san(&self, file: &str, cn: &str, san: &[String]) {
        let key = format!("{file}.key");
        let csr = format!("{file}.csr");
        let pem = format!("{file}.pem");
        let ext = self.path(&format!("{file}.ext"));
        // A CRL location, as a public CA's leaves carry (nothing fetches it).
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\ncrlDistributionPoints=URI:http://crl.sni-test.invalid/ca.crl\n",
                san.join(",")
            ),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "90",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            &pem,
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A rustls client configuration (aws-lc-rs, post-quantum key share first) trusting `pki`.
pub fn rustls_client(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
