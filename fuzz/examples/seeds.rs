//! Writes the committed seed corpora under `fuzz/seeds/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//!
//! - ClientHellos: the captures in `sni-common/testdata` (openssl, curl, Python; with and
//!   without SNI, TLS 1.2 only, punycode) and one made now by rustls with its default
//!   post-quantum key share (X25519MLKEM768: 1.2 KB, more than one segment on the wire).
//!   Each also re-framed into records of 128 bytes (a ClientHello over several records) for
//!   the targets that read across records, and in the layout each target reads.
//! - Configurations: every ```toml block of README.md and the shapes the tests write.
//!
//! rustls' ClientHello has a fresh random and key share each run, so a rerun changes its seed
//! files; the others come out the same.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Captured ClientHellos (file name in sni-common/testdata).
const CAPTURES: &[&str] = &[
    "openssl-sni.bin",
    "openssl-nosni.bin",
    "openssl-tls12.bin",
    "openssl-punycode.bin",
    "curl.bin",
    "python-ssl.bin",
];

/// Record size of the re-framed copies.
const REFRAME: usize = 128;

/// Configurations in the shapes the tests and the config module's tests write.
const CONFIGS: &[(&str, &str)] = &[
    (
        "xdp-only",
        "pin_dir = \"/sys/fs/bpf/x\"\n[xdp]\ninterfaces = [\"eth0\", \"eth1\"]\nmode = \"native\"\n\
         ports = [443, 8443]\n[[host]]\nnames = [\"Example.com.\", \"*.example.com\"]\n",
    ),
    (
        "actions",
        "[[host]]\nnames = [\"a\"]\nhello_rate = 5\nhello_burst = 10\naction = \"pass\"\n\
         [default]\naction = \"drop\"\n",
    ),
    (
        "terminator",
        "control_socket = \"/tmp/sni-fuzz.sock\"\nworkers = 2\n[[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\naddress = \"[::1]:0\"\n\
         [[host]]\nnames = [\"a.example\", \"*.b.example\"]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
         backend = \"builtin\"\nalpn = [\"h2\", \"http/1.1\"]\nproxy_protocol = true\n\
         [[host]]\nnames = [\"pass.example\"]\nmode = \"passthrough\"\nbackend = \"127.0.0.1:9\"\n\
         [[host]]\nnames = [\"unix.example\"]\ncert = \"u.pem\"\nkey = \"u.key\"\n\
         backend = \"unix:/run/app.sock\"\n\
         [default]\nreject = true\n\
         [limits]\nhandshake_timeout = 2.5\nidle_timeout = 30.0\nmax_connections = 10\n\
         max_connections_per_ip = 2\nmax_client_hello = 512\nbuffer_size = 1024\n",
    ),
    (
        "steering",
        "pin_dir = \"/sys/fs/bpf/sni-fuzz\"\ncontrol_socket = \"/tmp/ctl.sock\"\nworkers = 2\n\
         [xdp]\ninterfaces = [\"veth-s\"]\nmode = \"auto\"\nports = [8443]\n\
         [[listen]]\naddress = \"10.0.0.1:8443\"\n[[listen]]\naddress = \"[fd00::1]:8443\"\n\
         [[host]]\nnames = [\"drop.example\"]\naction = \"drop\"\n\
         [default]\ncert = \"d.pem\"\nkey = \"d.key\"\nbackend = \"builtin\"\n",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.parent().ok_or("fuzz/ has no parent")?;
    let seeds = fuzz.join("seeds");

    let mut hellos = Vec::new();
    for file in CAPTURES {
        let bytes = fs::read(root.join("sni-common/testdata").join(file))?;
        hellos.push((file.trim_end_matches(".bin").to_owned(), bytes));
    }
    hellos.push((
        "rustls-x25519mlkem768".to_owned(),
        rustls_hello("pq.example.com")?,
    ));

    for (name, bytes) in &hellos {
        let reframed = reframe(bytes, REFRAME).ok_or("not a single-record ClientHello")?;
        // The record as captured: tls-parser reads one record.
        write(&seeds, "hello_vs_tls_parser", name, bytes)?;
        // One chunk; chunks of 1, 7 and 200 bytes in turn; records of 128 bytes.
        write(&seeds, "hello_chunks", name, &[&[0][..], bytes].concat())?;
        let cuts = [3, 1, 7, 200];
        write(
            &seeds,
            "hello_chunks",
            &format!("{name}-cut"),
            &[&cuts[..], bytes].concat(),
        )?;
        let rf = format!("{name}-records");
        write(&seeds, "hello_chunks", &rf, &[&[0][..], &reframed].concat())?;
        // Cap 16384 (the default max_client_hello); one read, or reads of 255 bytes.
        let cap = 16384u16.to_be_bytes();
        write(
            &seeds,
            "passthrough_hello",
            name,
            &[&cap[..], &[0], bytes].concat(),
        )?;
        let seg = [&cap[..], &[2, 255, 255], &reframed].concat();
        write(&seeds, "passthrough_hello", &rf, &seg)?;
    }

    let readme = fs::read_to_string(root.join("README.md"))?;
    for (i, block) in toml_blocks(&readme).iter().enumerate() {
        write(&seeds, "config", &format!("readme-{i}"), block.as_bytes())?;
    }
    for (name, text) in CONFIGS {
        write(&seeds, "config", name, text.as_bytes())?;
    }
    Ok(())
}

fn write(seeds: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir: PathBuf = seeds.join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)
}

/// A ClientHello made by rustls with its default provider (post-quantum key share first).
fn rustls_hello(name: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// The handshake bytes of a single-record ClientHello, re-framed into records of `size`.
fn reframe(record: &[u8], size: usize) -> Option<Vec<u8>> {
    let head = record.get(..5)?;
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    let body = record.get(5..5 + len)?;
    let mut out = Vec::new();
    for part in body.chunks(size) {
        out.extend_from_slice(&head[..3]);
        out.extend_from_slice(&u16::try_from(part.len()).ok()?.to_be_bytes());
        out.extend_from_slice(part);
    }
    Some(out)
}

/// The contents of every ```toml fenced block.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}
