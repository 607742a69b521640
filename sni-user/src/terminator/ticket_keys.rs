//! Session ticket keys shared across a fleet (`ticket_keys = "FILE"`): every process that
//! reads the same file encrypts and decrypts the same tickets, so a session made on one
//! machine resumes on another.
//!
//! The file: one key per line, base64 of 80 random bytes (`openssl rand 80 | base64 -w0`),
//! oldest first; `#` comments and blank lines are allowed. The last key encrypts new tickets;
//! every key decrypts. Of each key, the first 16 bytes are its name (in clear in every ticket,
//! as in OpenSSL's, nginx's and HAProxy's tickets) and the other 64 the secret, from which
//! HKDF-SHA256 derives an AES-256-GCM-SIV key.
//!
//! A ticket is `name (16) || nonce (12) || AEAD(issued_at (8, big-endian Unix seconds) ||
//! rustls' session state) || tag (16)`, with `name || the host's certificate id` as
//! associated data: a ticket resumes only where its name is served with the same
//! certificate, so a certificate rotation ends the old certificate's sessions while the keys
//! stay. GCM-SIV (RFC 8452) rather than GCM: nonces are random, and a fleet sharing a key for
//! a day can pass the 2^32 tickets after which random 96-bit GCM nonces are no longer safe;
//! a repeated GCM-SIV nonce reveals only that two tickets are identical.
//!
//! [`TicketKeys`] holds the keys behind a lock, so that [`TicketKeys::refresh`] swaps them
//! for every host at once; each host's `ServerConfig` gets a [`TicketKeys::for_certificate`]
//! ticketer.

use std::{
    fs,
    io::Read,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV, NONCE_LEN},
    digest, hkdf, rand,
};
use base64::Engine as _;
use rustls::server::ProducesTickets;

/// Bytes of a key as the file holds it (decoded): HAProxy's and nginx's longer size.
pub const KEY_LEN: usize = 80;
/// Seconds a ticket resumes after it was made: the hint clients get, and enforced here too.
/// rustls' own ticketer says the same (12 hours).
pub const TICKET_LIFETIME: u32 = 12 * 60 * 60;
/// The largest file read: far more keys than a rotation needs (about 590 lines).
const MAX_FILE: u64 = 64 * 1024;
/// Bytes of a key's name, the first of the key.
const NAME_LEN: usize = 16;
/// AEAD tag bytes.
const TAG_LEN: usize = 16;
/// Bytes of the issue time inside a ticket.
const ISSUED_LEN: usize = 8;
/// Seconds a ticket's issue time may lie ahead of this machine's clock (another machine of
/// the fleet made it).
const CLOCK_SKEW: u64 = 300;
/// HKDF salt and info: the AEAD key of a file key (a new version would change them).
const HKDF_SALT: &[u8] = b"sni ticket key v1";
const HKDF_INFO: &[u8] = b"aes-256-gcm-siv";

/// A key file that cannot be used, naming the file and, where it applies, the line.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct KeyFileError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line of the bad key.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The keys of one reading of the file, oldest first; the last encrypts.
pub struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet {{ {} keys }}", self.keys.len())
    }
}

impl KeySet {
    /// Parses the file's text. Err: the 1-based line (None: the file as a whole) and why.
    pub fn parse(text: &str) -> Result<Self, (Option<usize>, String)> {
        let mut keys: Vec<Key> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| (Some(line_no), format!("not base64: {e}")))?;
            if bytes.len() != KEY_LEN {
                return Err((
                    Some(line_no),
                    format!(
                        "a key of {} bytes; keys are {KEY_LEN} random bytes \
                         (openssl rand {KEY_LEN} | base64 -w0)",
                        bytes.len()
                    ),
                ));
            }
            let (name, secret) = bytes.split_at(NAME_LEN);
            let mut key_name = [0u8; NAME_LEN];
            key_name.copy_from_slice(name);
            if let Some(k) = keys.iter().position(|k| k.name == key_name) {
                let first = lines.get(k).copied().unwrap_or(0);
                return Err((
                    Some(line_no),
                    format!("the same key name (first 16 bytes) as line {first}"),
                ));
            }
            let unbound: UnboundKey = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT)
                .extract(secret)
                .expand(&[HKDF_INFO], &AES_256_GCM_SIV)
                .map_err(|_| (Some(line_no), "deriving the AEAD key failed".to_owned()))?
                .into();
            keys.push(Key {
                name: key_name,
                aead: LessSafeKey::new(unbound),
            });
            lines.push(line_no);
        }
        if keys.is_empty() {
            return Err((
                None,
                format!(
                    "holds no key (one per line: base64 of {KEY_LEN} random bytes, \
                     openssl rand {KEY_LEN} | base64 -w0)"
                ),
            ));
        }
        Ok(Self { keys })
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a set holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A ticket for `plain` under the newest key, bound to `context`, made at `now`.
    fn encrypt(&self, context: &[u8], plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let key = self.keys.last()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).ok()?;
        let mut body = Vec::with_capacity(ISSUED_LEN + plain.len() + TAG_LEN);
        body.extend_from_slice(&now.to_be_bytes());
        body.extend_from_slice(plain);
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&key.name, context)),
                &mut body,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + body.len());
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&body);
        Some(ticket)
    }

    /// The session state in `ticket` if a key of this set made it for `context` and it is
    /// still within its lifetime at `now`. `ticket` comes from the client: anything goes.
    fn decrypt(&self, context: &[u8], ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        if sealed.len() < ISSUED_LEN + TAG_LEN {
            return None;
        }
        // Names are not secret (they travel in clear), so a plain search is fine.
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(aad(&key.name, context)), &mut body)
            .ok()?;
        let (issued, state) = plain.split_at_checked(ISSUED_LEN)?;
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        let fresh = issued <= now.saturating_add(CLOCK_SKEW)
            && now <= issued.saturating_add(u64::from(TICKET_LIFETIME));
        fresh.then(|| state.to_vec())
    }
}

/// The associated data of a ticket: the key's name, then the context (the host's
/// certificate id).
fn aad(name: &[u8; NAME_LEN], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(NAME_LEN + context.len());
    aad.extend_from_slice(name);
    aad.extend_from_slice(context);
    aad
}

/// What identifies one version of the file at its path (links followed: a Kubernetes Secret
/// update swaps a symlink, so the inode changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The keys of `ticket_keys`, swapped whole when the file changes.
pub struct TicketKeys {
    path: PathBuf,
    keys: RwLock<Arc<KeySet>>,
    /// The version of the file last looked at, good or bad (a bad one is reported once);
    /// None: it could not be read.
    seen: Mutex<Option<Stamp>>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TicketKeys {{ {}, {} keys }}",
            self.path.display(),
            self.len()
        )
    }
}

impl TicketKeys {
    /// Reads `path`; every error names it (and the line of a bad key).
    pub fn load(path: &Path) -> Result<Arc<Self>, KeyFileError> {
        let (stamp, keys) = read(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new(Some(stamp)),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys in use now.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Never true: at least one key is in use.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Reads the file again if it changed since it was last read (its inode, size or times
    /// differ). `Ok(None)`: unchanged; `Ok(Some(n))`: now `n` keys, in use from the next
    /// ticket on; `Err`: the new version is bad and the keys in use stay (the same version
    /// is not reported again).
    pub fn refresh(&self) -> Result<Option<usize>, KeyFileError> {
        let meta = fs::metadata(&self.path);
        let stamp = meta.as_ref().ok().map(Stamp::of);
        {
            let mut seen = match self.seen.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if *seen == stamp {
                return Ok(None);
            }
            *seen = stamp;
        }
        if let Err(e) = meta {
            return Err(KeyFileError {
                file: self.path.clone(),
                line: None,
                message: format!("cannot read: {e}"),
            });
        }
        let (_, keys) = read(&self.path)?;
        let n = keys.len();
        match self.keys.write() {
            Ok(mut k) => *k = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
        Ok(Some(n))
    }

    /// A ticketer for one host: these keys, with tickets bound to the host's leaf
    /// certificate (its DER), so that they resume only where the same certificate is served.
    pub fn for_certificate(self: &Arc<Self>, leaf: &[u8]) -> Arc<dyn ProducesTickets> {
        let mut context = [0u8; 32];
        context.copy_from_slice(digest::digest(&digest::SHA256, leaf).as_ref());
        Arc::new(HostTicketer {
            keys: self.clone(),
            context,
        })
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Reads and parses the file, warning when others may read it.
fn read(path: &Path) -> Result<(Stamp, KeySet), KeyFileError> {
    let err = |line, message| KeyFileError {
        file: path.to_owned(),
        line,
        message,
    };
    // The stamp before the text: a change while reading shows at the next look.
    let meta = fs::metadata(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE {
        return Err(err(
            None,
            format!("{} bytes; at most {MAX_FILE} are read", meta.len()),
        ));
    }
    if meta.permissions().mode() & 0o004 != 0 {
        tracing::warn!(file = %path.display(), "ticket key file is world-readable");
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| err(None, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| err(None, "not text".to_owned()))?;
    let keys = KeySet::parse(&text).map_err(|(line, message)| err(line, message))?;
    Ok((Stamp::of(&meta), keys))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One host's view of the shared keys.
struct HostTicketer {
    keys: Arc<TicketKeys>,
    /// SHA-256 of the host's leaf certificate.
    context: [u8; 32],
}

impl std::fmt::Debug for HostTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostTicketer { .. }")
    }
}

impl ProducesTickets for HostTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys
            .current()
            .encrypt(&self.context, plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys
            .current()
            .decrypt(&self.context, cipher, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> String {
        let bytes: Vec<u8> = (0..KEY_LEN as u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(seed))
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn set(seeds: &[u8]) -> KeySet {
        let text: String = seeds.iter().map(|s| key(*s) + "\n").collect();
        KeySet::parse(&text).unwrap()
    }

    #[test]
    fn a_ticket_round_trips_and_binds_its_context() {
        let keys = set(&[1]);
        let ticket = keys.encrypt(b"cert-a", b"session state", NOW).unwrap();
        assert_eq!(
            keys.decrypt(b"cert-a", &ticket, NOW + 60).as_deref(),
            Some(&b"session state"[..])
        );
        // Another certificate: no resumption.
        assert_eq!(keys.decrypt(b"cert-b", &ticket, NOW), None);
        // Two tickets of the same state differ (random nonces).
        assert_ne!(
            ticket,
            keys.encrypt(b"cert-a", b"session state", NOW).unwrap()
        );
    }

    #[test]
    fn the_newest_key_encrypts_and_every_key_decrypts() {
        let old = set(&[1]);
        let ticket_old = old.encrypt(b"c", b"old", NOW).unwrap();
        let rotated = set(&[1, 2]);
        let ticket_new = rotated.encrypt(b"c", b"new", NOW).unwrap();
        // The name of the last key is in the new ticket.
        assert_eq!(ticket_new[..NAME_LEN], rotated.keys[1].name);
        assert_eq!(ticket_old[..NAME_LEN], rotated.keys[0].name);
        assert_eq!(
            rotated.decrypt(b"c", &ticket_old, NOW).as_deref(),
            Some(&b"old"[..])
        );
        assert_eq!(
            rotated.decrypt(b"c", &ticket_new, NOW).as_deref(),
            Some(&b"new"[..])
        );
        // The old key removed: its tickets are refused, the new ones still decrypt.
        let dropped = set(&[2]);
        assert_eq!(dropped.decrypt(b"c", &ticket_old, NOW), None);
        assert_eq!(
            dropped.decrypt(b"c", &ticket_new, NOW).as_deref(),
            Some(&b"new"[..])
        );
        // An unknown key name (another fleet's file).
        assert_eq!(set(&[3]).decrypt(b"c", &ticket_new, NOW), None);
    }

    #[test]
    fn tampered_short_and_stale_tickets_are_refused() {
        let keys = set(&[1]);
        let ticket = keys.encrypt(b"c", b"state", NOW).unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(keys.decrypt(b"c", &bad, NOW), None, "byte {i} flipped");
        }
        for n in 0..ticket.len() {
            assert_eq!(keys.decrypt(b"c", &ticket[..n], NOW), None, "{n} bytes");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(keys.decrypt(b"c", &longer, NOW), None);
        let life = u64::from(TICKET_LIFETIME);
        assert!(keys.decrypt(b"c", &ticket, NOW + life).is_some());
        assert_eq!(keys.decrypt(b"c", &ticket, NOW + life + 1), None);
        assert!(keys.decrypt(b"c", &ticket, NOW - CLOCK_SKEW).is_some());
        assert_eq!(keys.decrypt(b"c", &ticket, NOW - CLOCK_SKEW - 1), None);
    }

    #[test]
    fn the_file_format_and_its_errors() {
        let text = format!(
            "# fleet keys\n\n{}\n  {}  \n# newest last\n",
            key(1),
            key(2)
        );
        assert_eq!(KeySet::parse(&text).unwrap().len(), 2);
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 48]);
        for (text, line, why) in [
            (String::new(), None, "holds no key"),
            ("# only a comment\n\n".to_owned(), None, "holds no key"),
            (format!("{}\nnot base64!\n", key(1)), Some(2), "not base64"),
            (format!("# a\n{short}\n"), Some(2), "a key of 48 bytes"),
            (
                format!("{}\n{}\n", key(1), key(1)),
                Some(2),
                "same key name (first 16 bytes) as line 1",
            ),
        ] {
            match KeySet::parse(&text) {
                Ok(_) => panic!("accepted {text:?}"),
                Err((l, m)) => {
                    assert_eq!(l, line, "{text:?}: {m}");
                    assert!(m.contains(why), "{text:?}: {m}");
                }
            }
        }
    }

    #[test]
    fn a_changed_file_swaps_the_keys_and_a_bad_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        fs::write(&path, key(1) + "\n").unwrap();
        let keys = TicketKeys::load(&path).unwrap();
        let host = keys.for_certificate(b"leaf");
        let first = host.encrypt(b"one").unwrap();
        assert_eq!(keys.refresh().unwrap(), None, "unchanged");
        // A new key appended (through a rename, as Kubernetes does): it encrypts.
        let tmp = dir.path().join("keys.new");
        fs::write(&tmp, format!("{}\n{}\n", key(1), key(2))).unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(keys.refresh().unwrap(), Some(2));
        let second = host.encrypt(b"two").unwrap();
        assert_ne!(first[..NAME_LEN], second[..NAME_LEN]);
        assert_eq!(host.decrypt(&first).as_deref(), Some(&b"one"[..]));
        // A bad version: refused once, the keys stay.
        fs::write(&path, "garbage\n").unwrap();
        let e = keys.refresh().unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:1: not base64", path.display())),
            "{e}"
        );
        assert_eq!(e.line, Some(1));
        assert_eq!(keys.refresh().unwrap(), None, "reported once");
        assert_eq!(keys.len(), 2);
        assert_eq!(host.decrypt(&second).as_deref(), Some(&b"two"[..]));
        // Another host's certificate: no resumption.
        assert_eq!(keys.for_certificate(b"other leaf").decrypt(&second), None);
        // Gone (a replacement not yet in place): reported once, the keys stay.
        fs::remove_file(&path).unwrap();
        assert!(keys.refresh().is_err());
        assert_eq!(keys.refresh().unwrap(), None, "reported once");
        fs::write(&path, key(3) + "\n").unwrap();
        assert_eq!(keys.refresh().unwrap(), Some(1));
        assert_eq!(host.decrypt(&second), None, "its key is gone");
        // A missing file names itself.
        let e = TicketKeys::load(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing: cannot read"), "{e}");
    }
}
