//! The control socket of `sni-user run`: a Unix stream socket that answers each connection
//! with the terminator's counters as one JSON document, then closes. `sni-user stats` reads it.

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

use crate::server::Terminator;

/// How long a reader may take before the control thread moves on.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The serving thread; [`Control::stop`] ends it and removes the socket.
pub struct Control {
    path: PathBuf,
    /// The socket's directory, when this process made it.
    made_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Serves `terminator`'s counters on `path` (replacing a stale socket file).
pub fn serve(path: &Path, terminator: &Terminator) -> Result<Control> {
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
    let counters = terminator.counters.clone();
    let labels = terminator.labels.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sni-control".into())
        .spawn(move || {
            while !stop_thread.load(Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                        let body = counters.snapshot(&labels).to_string();
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
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing the control socket");
        }
        if let Some(dir) = &self.made_dir {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Reads the counters from a running terminator's control socket.
pub fn query(path: &Path) -> Result<serde_json::Value> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to {}", path.display()))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(serde_json::from_str(&body)?)
}
