//! The command line, and the control plane of `sni-user run` on tokio: signals, forwarding
//! the kernel's aya-log records, clean detach.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    config::{Config, Mode, XdpConfig, DEFAULT_PIN_DIR},
    loader::{error_chain, Classifier, StartOptions},
    stats::Snapshot,
};

/// How often the kernel's log records are forwarded.
const LOG_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// XDP TLS SNI classifier: counts TLS ClientHellos per server name in the kernel.
#[derive(Debug, Parser)]
#[command(name = "sni-user", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the XDP program, attach it, pin its maps, and run until SIGINT or SIGTERM.
    ///
    /// Without --config: watch TCP port 8443 on `lo` in generic mode.
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
    },
    /// Show the counters of a running classifier: hosts by ClientHellos, then global counters.
    Stats {
        /// Pin directory of the running classifier.
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
        /// Take the pin directory from this configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON object: {"hosts":[…],"global":{…}}.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command line; the exit code is 1 on any error, after printing it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Run { debug: true, .. }));
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sni-user: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Also captures the `log` records aya-log forwards from the kernel.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
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
        } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::demo(),
            };
            if let Some(dir) = pin_dir {
                config.pin_dir = dir;
            }
            if !ifaces.is_empty() || !ports.is_empty() || mode.is_some() {
                let xdp = config.xdp.get_or_insert_with(XdpConfig::demo);
                if !ifaces.is_empty() {
                    xdp.interfaces = ifaces;
                }
                if !ports.is_empty() {
                    xdp.ports = ports;
                }
                if let Some(mode) = mode {
                    xdp.mode = mode;
                }
            }
            config.validate()?;
            run(config, StartOptions { debug })
        }
        Command::Stats {
            pin_dir,
            config,
            json,
        } => {
            let pin_dir = match (pin_dir, config) {
                (Some(dir), _) => dir,
                (None, Some(path)) => Config::load(&path)?.pin_dir,
                (None, None) => PathBuf::from(DEFAULT_PIN_DIR),
            };
            let snapshot = Snapshot::read(&pin_dir)?;
            if json {
                println!("{}", serde_json::to_string(&snapshot)?);
            } else {
                print!("{}", snapshot.table());
            }
            Ok(())
        }
    }
}

fn run(config: Config, opts: StartOptions) -> Result<()> {
    let Some(xdp) = config.xdp.clone() else {
        anyhow::bail!(
            "config {}: nothing to run: no [xdp] section",
            config.source.display()
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut classifier = Classifier::start(&config, &xdp, opts)?;
        // The kernel's log records (only with --debug) are flushed on a short tick: polling
        // the logger's fd through AsyncFd would need `unsafe` registration here.
        let mut logger = match aya_log::EbpfLogger::init(classifier.ebpf_mut()) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!(error = %error_chain(&e), "kernel log records unavailable");
                None
            }
        };
        let mut tick = tokio::time::interval(LOG_FLUSH_INTERVAL);
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        info!("ready; stop with SIGINT or SIGTERM");
        loop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
                _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
                _ = tick.tick() => {
                    if let Some(logger) = logger.as_mut() {
                        logger.flush();
                    }
                }
            }
        }
        drop(logger);
        classifier.shutdown();
        Ok(())
    })
}
