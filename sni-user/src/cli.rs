//! The command line (clap): the commands, their flags, and their dispatch to the daemon
//! ([`crate::daemon::run`]) or a tool ([`crate::tools`]).

use std::{
    fmt::Write as _,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::warn;

use crate::{
    config::{Config, Endpoints, Mode, DEFAULT_CONTROL_SOCKET, DEFAULT_PIN_DIR},
    daemon::{self, control, Overrides},
    kernel::{loader::StartOptions, readers::Snapshot},
};

/// Per-host TLS at the edge: an XDP program counts, drops and rate-limits TLS ClientHellos by
/// server name in the kernel; a TLS terminator (rustls) serves each name with its
/// certificate and hands the plaintext to its backend.
///
/// Start with `run`; watch with `stats`, `top` or the Prometheus endpoint (`metrics` in the
/// config); validate a config with `check`; apply a changed config with `reload`.
#[derive(Debug, Parser)]
#[command(name = "sni-user", version, about, long_about)]
pub struct Cli {
    /// Log format on stderr: `text` (default) or `json` (one object per line, for journald
    /// or a log shipper). Also SNI_LOG_FORMAT. Log levels: RUST_LOG (e.g. `info`,
    /// `sni_user=debug`).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SNI_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per record.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the classifier (XDP) and the terminator (TLS) of a config until SIGINT or SIGTERM.
    ///
    /// SIGHUP (or `sni-user reload`) applies a changed config without dropping connections.
    /// Counters: `stats`, `top`, and the Prometheus endpoint when the config has `metrics`.
    ///
    /// Without --config: a ready demo. A local CA and demo certificates are made under
    /// --state-dir, TLS is served on 127.0.0.1:8443 by a built-in backend, XDP counts on `lo`,
    /// metrics are on 127.0.0.1:9100, and the commands to try are printed.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Interface to attach to, instead of the config's (repeatable).
        #[arg(long = "iface", value_name = "IFACE")]
        ifaces: Vec<String>,
        /// TCP destination port to watch, instead of the config's (repeatable).
        #[arg(long = "port", value_name = "PORT")]
        ports: Vec<u16>,
        /// Attach mode, instead of the config's.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Pin directory, instead of the config's.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Log every ClientHello the kernel reads (costs time on the packet path).
        #[arg(long)]
        debug: bool,
        /// Where the demo keeps its CA and certificates (without --config).
        #[arg(long, default_value = crate::daemon::demo::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Validate a config as `run` would, and print its routing table.
    ///
    /// Checks the TOML, every value, certificates and keys (readable, matching, covering each
    /// name, expiry), duplicate and overlapping names, backends, the user and the
    /// interfaces, without attaching or binding anything. Prints the resolved routing table,
    /// or each error as FILE:LINE: FIELD: REASON with exit status 1 (what the TOML parser
    /// rejects: FILE:LINE: and its message).
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a running `sni-user run` apply its changed config, and say whether it did.
    ///
    /// As SIGHUP does: the config and certificates are read again and validated whole
    /// first; a bad one leaves the running one in place and the reason is printed (exit
    /// status 1). New connections get the new certificates and hosts; open ones go on
    /// untouched; the kernel's maps are updated in place.
    Reload {
        /// Control socket of the running process.
        #[arg(long, conflicts_with = "config")]
        control: Option<PathBuf>,
        /// Take the control socket from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the counters of a running classifier: hosts by ClientHellos, then global counters.
    Stats {
        /// Pin directory of the running classifier.
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        /// Take the pin directory and control socket from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON object: {"hosts":[…],"global":{…},"terminator":{…}}.
        #[arg(long)]
        json: bool,
        /// Control socket of the running terminator (its counters are shown too).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Watch a running classifier live: hosts ranked by ClientHellos per second, with drops,
    /// rate limits, handshake failures and a sparkline of the last minute.
    ///
    /// Keys: q, Esc or Ctrl-C quit; sort by h hellos/s (default), d drops/s, r rate-limited/s,
    /// f handshake failures, n name, t total hellos; / filter by name (Enter keeps it, Esc
    /// clears it); o shows or hides hosts that are not configured; j shows the JA4
    /// fingerprints instead (with a filter: the matching hosts' own); up, down, PgUp, PgDn
    /// scroll.
    Top {
        /// Pin directory of the running classifier.
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        /// Take the pin directory and control socket from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Control socket of the running terminator (its counters are shown too).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Seconds between reads (more than 0, at most 60).
        #[arg(long, default_value = "1.0", value_parser = crate::tools::top::parse_interval)]
        interval: std::time::Duration,
    },
    /// Read a pcap or pcapng capture with the classifier's own state machine: one line per
    /// ClientHello with client, server, SNI (or why there is none), ECH, segments used.
    ///
    /// Flows are followed as the XDP program follows them (split ClientHellos resumed on the
    /// next in-order segment, retransmissions skipped, a hole makes the ClientHello
    /// incomplete), so a capture taken on an edge shows what its counters will say.
    Classify {
        /// The capture (tcpdump -w, tshark, dumpcap; Ethernet, Linux cooked or raw IP).
        file: PathBuf,
        /// Only flows to these server ports, like the classifier's `ports` (repeatable).
        #[arg(long = "port", value_name = "PORT")]
        ports: Vec<u16>,
        /// One JSON object: {"flows":[…],"frames":N,"skipped":N}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; the exit code is 1 on any error, after printing it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        matches!(cli.command, Command::Run { debug: true, .. }),
        cli.log_format,
    );
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sni-user: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a command's output to stdout. A reader that went away (`| head`) is not an error:
/// `print!` would panic on the broken pipe.
fn output(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn init_logging(debug: bool, format: LogFormat) {
    // rustls warns about what a peer sent (an illegal name, a bad message): one line per
    // connection, at whatever rate an attacker sends them. The terminator counts those per
    // host and reason instead; rustls' own lines show with RUST_LOG (e.g. `rustls=warn`).
    let default = if debug {
        "debug,rustls=info"
    } else {
        "info,rustls=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Also captures the `log` records aya-log forwards from the kernel.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            ifaces,
            ports,
            mode,
            pin_dir,
            debug,
            state_dir,
        } => {
            let demo_state = config.is_none().then(|| state_dir.clone());
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => {
                    let (config, text) = crate::daemon::demo::prepare(&state_dir)?;
                    print!("{text}");
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    config
                }
            };
            let overrides = Overrides {
                pin_dir,
                ifaces,
                ports,
                mode,
            };
            overrides.apply(&mut config);
            config.validate()?;
            daemon::run(
                config,
                &overrides,
                StartOptions {
                    debug,
                    ..StartOptions::default()
                },
                demo_state,
            )
        }
        Command::Check { config } => {
            let report = crate::tools::check::check(&config);
            output(&report.text)?;
            if report.ok {
                Ok(())
            } else {
                anyhow::bail!("{}: not valid", config.display())
            }
        }
        Command::Reload { control, config } => {
            let (_, socket) = running(None, config.clone(), control)?;
            let done = control::reload(&socket)?;
            // The process reads its own file: say which, and whether it is the one named here.
            let mut text = format!(
                "reloaded {} ({} hosts)\n",
                done.config.display(),
                done.hosts
            );
            if let Some(given) = &config {
                let same = |p: &Path| std::fs::canonicalize(p).ok();
                if same(given) != same(&done.config) {
                    let _ = writeln!(
                        text,
                        "note: the running process reads {}, not {}",
                        done.config.display(),
                        given.display()
                    );
                }
            }
            output(&text)
        }
        Command::Classify { file, ports, json } => {
            let mut report = crate::tools::capture::classify_file(&file)?;
            if !ports.is_empty() {
                report.flows.retain(|f| ports.contains(&f.server.port()));
            }
            if json {
                output(&(serde_json::to_string_pretty(&report)? + "\n"))?;
            } else {
                output(&crate::tools::capture::table(&report))?;
            }
            Ok(())
        }
        Command::Top {
            pin_dir,
            config,
            control,
            interval,
        } => {
            let view = fingerprint_view(config.as_deref());
            let (pin_dir, control) = running(pin_dir, config, control)?;
            crate::tools::top::run(crate::tools::top::Options {
                pin_dir,
                control,
                interval,
                view,
            })
        }
        Command::Stats {
            pin_dir,
            config,
            json,
            control,
        } => {
            let view = fingerprint_view(config.as_deref());
            let (pin_dir, control) = running(pin_dir, config, control)?;
            let snapshot = Snapshot::read(&pin_dir, &control, &view)?;
            if json {
                output(&(serde_json::to_string(&snapshot)? + "\n"))?;
            } else {
                output(&snapshot.table())?;
            }
            Ok(())
        }
    }
}

/// How `stats` and `top` show fingerprints: as the config file says (`ja4_top`, the
/// configured fingerprints, also those not seen yet) when it is given and valid, else the
/// defaults and what the maps hold.
fn fingerprint_view(config: Option<&std::path::Path>) -> crate::kernel::fingerprint_rows::View {
    let Some(path) = config else {
        return crate::kernel::fingerprint_rows::View::default();
    };
    match Config::load(path) {
        Ok(c) => crate::kernel::fingerprint_rows::View::of(&c),
        Err(e) => {
            eprintln!(
                "sni-user: fingerprints shown without the config ({e:#}): the defaults and what \
                 the maps hold"
            );
            crate::kernel::fingerprint_rows::View::default()
        }
    }
}

/// The pin directory and control socket of a running `sni-user run`: as given, else from its
/// config file, else the defaults.
fn running(
    pin_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    control: Option<PathBuf>,
) -> Result<(PathBuf, PathBuf)> {
    // Only the two keys: a file being edited, or one a reload will refuse, must still lead to
    // the running process (which then says what is wrong with it).
    let found = config.as_deref().map(Endpoints::read).transpose()?;
    if let (Some(found), Some(path)) = (&found, &config) {
        if !found.parsed {
            warn!(
                config = %path.display(),
                "the file is not valid TOML; its pin_dir and control_socket lines were read one by one"
            );
        }
    }
    let pin_dir = pin_dir
        .or_else(|| found.as_ref().map(|f| f.pin_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    let control = control
        .or_else(|| found.as_ref().map(|f| f.control_socket.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    Ok((pin_dir, control))
}
