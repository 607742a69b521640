//! The control socket of `sni-user run`: a Unix stream socket (mode 0600) that reads one
//! command line and answers it, then closes:
//! - `stats` (or nothing): the terminator's counters as one JSON document (`null` without a
//!   terminator); `sni-user stats` and `top` read it;
//! - `reload`: reloads the configuration as SIGHUP does, and answers `{"ok":true}` or
//!   `{"ok":false,"error":"…"}` once it is applied or refused; `sni-user reload` sends it.

use std::{
    fs,
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{daemon::ReloadCounters, terminator::server::Shared};

/// How long a client may take to send its command or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `sni-user reload` waits for the answer (certificates of every host are read).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest command line.
const MAX_COMMAND: u64 = 64;

/// A reload asked for over the socket, with where to send its result.
/// A success names the file read and its number of hosts.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<Reloaded, String>>;

/// A command, as the client writes it (one line) and the server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The terminator's counters (also what an empty line asks for).
    Stats,
    /// Reload the configuration, as SIGHUP does, and answer with a [`ReloadAnswer`].
    Reload,
}

impl Command {
    /// Its line on the socket.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stats => "stats",
            Self::Reload => "reload",
        }
    }

    /// The command of a line, if known.
    pub fn parse(line: &str) -> Option<Self> {
        match line {
            "" | "stats" => Some(Self::Stats),
            "reload" => Some(Self::Reload),
            _ => None,
        }
    }
}

/// The answer to `reload` (and to a command the server does not know), as the server writes
/// it and the client reads it: `{"ok":true,"config":…,"hosts":…}` or
/// `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    /// Whether the reload was applied.
    pub ok: bool,
    /// What it read, when applied.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<Reloaded>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<Result<Reloaded, String>> for ReloadAnswer {
    fn from(result: Result<Reloaded, String>) -> Self {
        match result {
            Ok(r) => Self {
                ok: true,
                reloaded: Some(r),
                error: None,
            },
            Err(e) => Self {
                ok: false,
                reloaded: None,
                error: Some(e),
            },
        }
    }
}

/// What a successful reload read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The config file the running process read (its own `--config`).
    pub config: PathBuf,
    /// Its `[[host]]` blocks.
    pub hosts: usize,
}

/// The serving thread; [`Control::stop`] ends it and removes the socket.
pub struct Control {
    path: PathBuf,
    /// The socket's directory, when this process made it.
    made_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Serves on `path` (replacing a stale socket file): `terminator`'s counters, and reloads
/// through `reloads` (the control plane's loop answers each).
pub fn serve(
    path: &Path,
    terminator: Option<Arc<Shared>>,
    reload_counters: Arc<ReloadCounters>,
    reloads: tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
) -> Result<Control> {
    let mut made_dir = None;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            made_dir = Some(dir.to_owned());
        }
    }
    if path.exists() {
        // A live owner would answer; a dead one left its file.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use: another sni-user is running",
                path.display()
            );
        }
        fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sni-control".into())
        .spawn(move || {
            while !stop_thread.load(Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
                        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                        let body = answer(
                            read_command(&mut stream),
                            &terminator,
                            &reload_counters,
                            &reloads,
                        );
                        let _ = stream.write_all(body.as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(Control {
        path: path.to_owned(),
        made_dir,
        stop,
        thread: Some(thread),
    })
}

impl Control {
    /// What `stop` removes: the socket, and its directory when this process made it.
    pub fn owned_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.made_dir.clone());
        paths
    }

    /// Ends the thread and removes the socket file.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            // After the switch to `user`, in a directory only root may write (as systemd's
            // RuntimeDirectory, which systemd removes itself): harmless, the next start
            // replaces the socket, and nothing answers on it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => tracing::info!(
                path = %self.path.display(),
                "the control socket stays: its directory is not writable after the switch to \
                 `user`; the next start replaces it"
            ),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "removing the control socket");
            }
        }
        if let Some(dir) = &self.made_dir {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The command a client sent: its first line, up to [`MAX_COMMAND`] bytes (empty when it
/// sent nothing before closing its side or the timeout).
fn read_command(stream: &mut std::os::unix::net::UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = (&*stream).take(MAX_COMMAND);
    while let Ok(1) = reader.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim().to_owned()
}

fn answer(
    command: String,
    terminator: &Option<Arc<Shared>>,
    counters: &ReloadCounters,
    reloads: &tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
) -> String {
    let reload_answer = |result: Result<Reloaded, String>| {
        serde_json::to_string(&ReloadAnswer::from(result))
            .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"encoding the answer: {e}\"}}"))
    };
    match Command::parse(&command) {
        Some(Command::Stats) => match terminator {
            Some(t) => {
                let mut snapshot = t.snapshot();
                if let Some(global) = snapshot["global"].as_object_mut() {
                    global.insert("reloads".into(), counters.reloads.load(Relaxed).into());
                    global.insert(
                        "reload_failures".into(),
                        counters.failures.load(Relaxed).into(),
                    );
                    let keys = t.routes().ticket_keys().map_or(0, |k| k.len());
                    global.insert("ticket_keys".into(), keys.into());
                    global.insert(
                        "ticket_key_reloads".into(),
                        counters.ticket_key_reloads.load(Relaxed).into(),
                    );
                    global.insert(
                        "ticket_key_failures".into(),
                        counters.ticket_key_failures.load(Relaxed).into(),
                    );
                }
                snapshot.to_string()
            }
            None => "null".to_owned(),
        },
        Some(Command::Reload) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let result = match reloads.send(tx) {
                Ok(()) => rx
                    .blocking_recv()
                    .unwrap_or_else(|_| Err("the process is stopping".to_owned())),
                Err(_) => Err("the process is stopping".to_owned()),
            };
            reload_answer(result)
        }
        None => reload_answer(Err(format!(
            "unknown command {command:?} ({}, {})",
            Command::Stats.as_str(),
            Command::Reload.as_str()
        ))),
    }
}

fn send(path: &Path, command: Command, timeout: Duration) -> Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is `sni-user run` running with this control_socket?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(format!("{}\n", command.as_str()).as_bytes())?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .with_context(|| format!("reading the answer of {}", path.display()))?;
    Ok(body)
}

/// Reads the counters from a running terminator's control socket (`null`: no terminator).
pub fn query(path: &Path) -> Result<serde_json::Value> {
    let body = send(path, Command::Stats, CLIENT_TIMEOUT)?;
    serde_json::from_str(&body).with_context(|| format!("answer of {}", path.display()))
}

/// Asks the running process to reload its configuration; Err with its reason when refused.
pub fn reload(path: &Path) -> Result<Reloaded> {
    let body = send(path, Command::Reload, RELOAD_TIMEOUT)?;
    let answer: ReloadAnswer =
        serde_json::from_str(&body).with_context(|| format!("answer of {}", path.display()))?;
    match answer {
        ReloadAnswer {
            ok: true,
            reloaded: Some(reloaded),
            ..
        } => Ok(reloaded),
        ReloadAnswer { error, .. } => anyhow::bail!(
            "reload refused; the running configuration stays: {}",
            error.as_deref().unwrap_or("no reason given")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_answers_keep_their_wire_form_both_ways() {
        let applied = ReloadAnswer::from(Ok(Reloaded {
            config: PathBuf::from("/etc/sni/sni.toml"),
            hosts: 3,
        }));
        let text = serde_json::to_string(&applied).unwrap();
        assert_eq!(
            text,
            r#"{"ok":true,"config":"/etc/sni/sni.toml","hosts":3}"#
        );
        assert_eq!(
            serde_json::from_str::<ReloadAnswer>(&text).unwrap(),
            applied
        );
        let refused = ReloadAnswer::from(Err("bad file".to_owned()));
        let text = serde_json::to_string(&refused).unwrap();
        assert_eq!(text, r#"{"ok":false,"error":"bad file"}"#);
        assert_eq!(
            serde_json::from_str::<ReloadAnswer>(&text).unwrap(),
            refused
        );
    }

    #[test]
    fn commands_read_what_clients_write() {
        for c in [Command::Stats, Command::Reload] {
            assert_eq!(Command::parse(c.as_str()), Some(c));
        }
        assert_eq!(Command::parse(""), Some(Command::Stats));
        assert_eq!(Command::parse("shutdown"), None);
    }
}
