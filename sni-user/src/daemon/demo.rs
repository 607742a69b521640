//! The ready demo that `sni-user run` serves without a config: a local CA and certificates for
//! a few demo names (rcgen) under a state directory, the terminator on 127.0.0.1:8443 with the
//! built-in backend, and the classifier watching port 8443 on `lo`.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::config::{
    Action, Config, DefaultConfig, HostConfig, HostMode, ListenConfig, XdpConfig, DEMO_PORT,
};

/// Where demo certificates are kept unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sni";

/// The demo hosts: (certificate file stem, names).
const HOSTS: [(&str, &[&str]); 3] = [
    ("alpha", &["alpha.demo.test"]),
    ("beta", &["beta.demo.test"]),
    ("apps", &["*.apps.demo.test"]),
];

/// Where the demo serves Prometheus metrics.
pub const DEMO_METRICS_PORT: u16 = 9100;

/// Makes (or reuses) the demo certificates under `state_dir/demo` and returns the demo
/// configuration with the lines to print.
pub fn prepare(state_dir: &Path) -> Result<(Config, String)> {
    let dir = state_dir.join("demo");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let ca_pem = dir.join("ca.pem");
    let complete = ca_pem.is_file()
        && HOSTS
            .iter()
            .chain([("default", &["default.demo.test"][..])].iter())
            .all(|(stem, _)| dir.join(format!("{stem}.pem")).is_file());
    if !complete {
        generate(&dir).context("making the demo certificates")?;
    }
    let mut config = Config::demo();
    config.listen = vec![ListenConfig {
        address: ([127, 0, 0, 1], DEMO_PORT).into(),
    }];
    config.default = DefaultConfig {
        cert: Some(dir.join("default.pem")),
        key: Some(dir.join("default.key")),
        reject: false,
        backend: Some("builtin".into()),
        ..DefaultConfig::default()
    };
    config.hosts = HOSTS
        .iter()
        .map(|(stem, names)| HostConfig {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            cert: Some(dir.join(format!("{stem}.pem"))),
            key: Some(dir.join(format!("{stem}.key"))),
            backend: Some("builtin".into()),
            mode: HostMode::Terminate,
            alpn: vec!["http/1.1".into()],
            proxy_protocol: false,
            client_ca: None,
            client_auth: None,
            client_crl: Vec::new(),
            action: Action::Pass,
            hello_rate: None,
            hello_burst: None,
            routes: Vec::new(),
        })
        .collect();
    config.xdp = Some(XdpConfig::demo());
    config.metrics = Some(([127, 0, 0, 1], DEMO_METRICS_PORT).into());
    config.validate()?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "sni-user".into());
    let mut text = format!(
        "sni demo: TLS on 127.0.0.1:{DEMO_PORT} for alpha.demo.test, beta.demo.test and \
         *.apps.demo.test; XDP counting on lo.\nTry:\n"
    );
    for name in ["alpha.demo.test", "beta.demo.test", "shop.apps.demo.test"] {
        text.push_str(&format!(
            "  curl --cacert {} --resolve {name}:{DEMO_PORT}:127.0.0.1 https://{name}:{DEMO_PORT}/\n",
            ca_pem.display()
        ));
    }
    text.push_str(&format!(
        "Watch the counters (another shell, as root):\n  {exe} stats --pin-dir {}\n  \
         {exe} top --pin-dir {}\n  curl http://127.0.0.1:{DEMO_METRICS_PORT}/metrics\n",
        config.pin_dir.display(),
        config.pin_dir.display()
    ));
    Ok((config, text))
}

fn generate(dir: &Path) -> Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        DnType::CommonName,
        "sni demo CA (local, do not trust elsewhere)",
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    let issuer = Issuer::new(ca, ca_key);
    for (stem, names) in HOSTS
        .iter()
        .chain([("default", &["default.demo.test"][..])].iter())
    {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        let cert = params.signed_by(&key, &issuer)?;
        write(&dir.join(format!("{stem}.pem")), &cert.pem(), 0o644)?;
        write(
            &dir.join(format!("{stem}.key")),
            &key.serialize_pem(),
            0o600,
        )?;
    }
    Ok(())
}

fn write(path: &PathBuf, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}
