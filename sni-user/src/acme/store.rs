//! The ACME state directory (`[acme] state_dir`): the account, and each host's certificate
//! chain and key, under names a person can read:
//!
//! ```text
//! state_dir/            0700, the run user's
//!   account.json        the account's URL and key (instant-acme's credentials), 0600
//!   lock                held while an order runs (see `Store::lock`)
//!   certs/<host>.pem    the chain, leaf first, as the CA sent it, then its key (PKCS#8),
//!                       in one file so that they are replaced together; 0600
//!   challenges/<name>   a TLS-ALPN-01 digest (hex) while an order waits for it
//! ```
//!
//! `<host>` is the host's label (its first name). Every file is written whole to a
//! temporary file in the same directory, synced, then renamed over the old one: a reader
//! (a reload, another machine sharing the directory) sees the old file or the new one, never
//! half of one.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// A state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The directory at `dir` (not touched until [`Store::prepare`]).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the directory and `certs/` (0700) if missing.
    pub fn prepare(&self) -> io::Result<()> {
        // Parents as any directory (so that the run user can reach its own inside), the
        // directory and its subdirectories private.
        if let Some(parent) = self.dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        for dir in [
            self.dir.clone(),
            self.dir.join("certs"),
            self.dir.join("challenges"),
        ] {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What the run user must own to keep the directory up: the directories and the files
    /// already in them (handed over before privileges are dropped).
    pub fn owned_paths(&self) -> Vec<PathBuf> {
        let dirs = [
            self.dir.clone(),
            self.dir.join("certs"),
            self.dir.join("challenges"),
        ];
        let mut paths = dirs.to_vec();
        for dir in &dirs {
            if let Ok(entries) = fs::read_dir(dir) {
                paths.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
        paths
    }

    /// The account's credentials.
    pub fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Host `label`'s chain and key, in one file: replaced together, never one without the
    /// other.
    pub fn certificate(&self, label: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{label}.pem"))
    }

    /// The file of host `label`'s chain and key, when there is one (give it as both the
    /// certificate and the key: each reader takes its own PEM blocks).
    pub fn issued(&self, label: &str) -> Option<PathBuf> {
        let path = self.certificate(label);
        path.is_file().then_some(path)
    }

    /// Writes host `label`'s new chain and key, whole.
    pub fn save_certificate(&self, label: &str, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        let mut both = String::with_capacity(chain_pem.len() + key_pem.len() + 1);
        both.push_str(chain_pem);
        if !both.ends_with('\n') {
            both.push('\n');
        }
        both.push_str(key_pem);
        write_atomic(&self.certificate(label), both.as_bytes())
    }

    /// The challenge of `name` while its order waits: the hex SHA-256 of its key
    /// authorization, for every machine sharing the directory to answer (the CA's
    /// validation may reach any of them).
    pub fn challenge(&self, name: &str) -> PathBuf {
        self.dir.join("challenges").join(name)
    }

    /// Publishes `name`'s challenge digest.
    pub fn publish_challenge(&self, name: &str, digest: &[u8]) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir.join("challenges"))?;
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        write_atomic(&self.challenge(name), hex.as_bytes())
    }

    /// Withdraws `name`'s challenge.
    pub fn withdraw_challenge(&self, name: &str) {
        let _ = fs::remove_file(self.challenge(name));
    }

    /// Withdraws challenges published more than `age` ago: an order that ran that long has
    /// failed, and a machine that crashed mid-order leaves its files behind.
    pub fn sweep_challenges(&self, age: std::time::Duration) {
        let Ok(entries) = fs::read_dir(self.dir.join("challenges")) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|elapsed| elapsed > age);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Every published challenge: (name, digest). Files that are not one are skipped.
    pub fn challenges(&self) -> Vec<(String, Vec<u8>)> {
        let Ok(entries) = fs::read_dir(self.dir.join("challenges")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.starts_with('.') {
                    return None;
                }
                let hex = fs::read_to_string(e.path()).ok()?;
                let hex = hex.trim();
                if hex.len() != 64 {
                    return None;
                }
                let digest = (0..32)
                    .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
                Some((name, digest))
            })
            .collect()
    }

    /// Takes the directory's lock (`flock` on `lock`) if no one holds it (None: another
    /// machine sharing the directory does): machines order one at a time, and each finds
    /// the others' certificates when its turn comes. Released when the value drops.
    pub fn try_lock(&self) -> io::Result<Option<Flock<File>>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io::Error::from(e)),
        }
    }
}

/// Writes `bytes` to `path` whole: a temporary file (0600) beside it, synced, renamed over
/// it, the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique across the machines sharing the directory (where every pod's process may be
    // PID 1): the time's nanoseconds besides the PID, and never an existing file.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos:x}.tmp", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_written_whole_private_and_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(&dir.path().join("acme"));
        store.prepare().expect("prepare");
        assert!(store.issued("a.example").is_none());
        store
            .save_certificate("a.example", "CHAIN", "KEY")
            .expect("save");
        let file = store.issued("a.example").expect("issued");
        assert_eq!(fs::read_to_string(&file).expect("file"), "CHAIN\nKEY");
        let mode = fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(dir.path().join("acme"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Replaced whole, no temporary file left.
        store
            .save_certificate("a.example", "CHAIN2\n", "KEY2")
            .expect("save");
        assert_eq!(fs::read_to_string(&file).expect("file"), "CHAIN2\nKEY2");
        let left: Vec<_> = fs::read_dir(dir.path().join("acme/certs"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let lock = store.try_lock().expect("lock").expect("free");
        // Held: a second taker (another open file description, as another machine) waits.
        assert!(store.try_lock().expect("lock").is_none());
        drop(lock);
        store
            .publish_challenge("a.example", &[0xab; 32])
            .expect("publish");
        assert_eq!(
            store.challenges(),
            vec![("a.example".to_owned(), vec![0xab; 32])]
        );
        store.withdraw_challenge("a.example");
        assert!(store.challenges().is_empty());
        assert!(store
            .owned_paths()
            .iter()
            .any(|p| p.ends_with("certs/a.example.pem")));
    }
}
