//! Conversations on disk: one JSON file per conversation (`<data dir>/conversations/<id>.json`),
//! written whenever it changes through a temporary file of its own, fsynced, renamed over the old
//! one, and the directory fsynced, so a crash, a power cut or a closed window never leaves a
//! half-written file or loses more than the reply being streamed (saved at least every half second
//! while it streams). [`DataDirLock`] keeps a second app off the same data directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::engine::ReplyStats;
use crate::error::{Error, Result};
use crate::tokenizer::{Message, DEFAULT_SYSTEM};

/// One turn as the app keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    /// Timing of an assistant reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ReplyStats>,
    /// Why a reply ended (`eos`, `length`, `context`, `cancelled`), or `error: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

impl Turn {
    pub fn user(text: impl Into<String>) -> Turn {
        Turn { role: "user".into(), content: text.into(), stats: None, stop: None }
    }
    pub fn assistant(text: impl Into<String>) -> Turn {
        Turn { role: "assistant".into(), content: text.into(), stats: None, stop: None }
    }
    pub fn is_user(&self) -> bool {
        self.role == "user"
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// File stem: letters, digits, `-` and `_` only.
    pub id: String,
    pub title: String,
    /// This conversation's system prompt.
    #[serde(default = "default_system")]
    pub system: String,
    #[serde(default)]
    pub turns: Vec<Turn>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub updated: u64,
}

fn default_system() -> String {
    DEFAULT_SYSTEM.to_string()
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Conversation {
    /// An empty conversation with a fresh id.
    pub fn new(title: impl Into<String>) -> Conversation {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let now = now_secs();
        Conversation {
            id: format!("c{nanos:x}"),
            title: title.into(),
            system: default_system(),
            turns: Vec::new(),
            created: now,
            updated: now,
        }
    }

    /// The messages for the model: the system prompt, then the turns `..end` (which must end with
    /// the user's turn).
    pub fn messages(&self, end: usize) -> Vec<Message> {
        let mut v = vec![Message::new("system", self.system.trim())];
        v.extend(self.turns[..end.min(self.turns.len())].iter().map(|t| Message::new(&t.role, &t.content)));
        v
    }
}

/// The conversation files of one data directory.
pub struct Store {
    dir: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Write `bytes` to `path` atomically and durably: a temporary file of this write alone (hidden,
/// `.tmp`, beside `path`), fsynced, renamed over `path`, then the directory fsynced so the rename
/// itself survives a power cut. Concurrent writers of one path never see each other's halves.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
}

/// fsync a directory (its entries: a rename). Only Unix can open a directory as a file; file
/// systems that cannot sync one (`EINVAL`) are taken as they are.
fn sync_dir(dir: &Path) -> Result<()> {
    if cfg!(unix) {
        let synced = File::open(dir).and_then(|d| d.sync_all());
        if let Err(e) = synced {
            if !matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported) {
                return Err(Error::io(dir, e));
            }
        }
    }
    Ok(())
}

/// An advisory OS lock on a data directory (`<dir>/zhinao-chat.lock`, holding the owner's pid),
/// held while the app runs: two apps on one directory would overwrite each other's conversations
/// and settings. Released when dropped or when the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Option<File>,
}

impl DataDirLock {
    /// Takes the lock, or refuses with an error naming the directory (and the holder's pid). On a
    /// file system without locks the app runs unlocked.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
        let path = data_dir.join("zhinao-chat.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                // Best effort: the pid only makes the refusal message of a second app clearer.
                let _ = file.set_len(0).and_then(|()| write!(file, "{}", std::process::id()));
                Ok(DataDirLock { _file: Some(file) })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder.trim();
                let pid = if pid.is_empty() || pid.len() > 20 { String::new() } else { format!(" (pid {pid})") };
                Err(Error::io(
                    data_dir,
                    std::io::Error::new(
                        ErrorKind::WouldBlock,
                        format!("in use by another zhinao-chat{pid}: close it, or give this one another --data-dir"),
                    ),
                ))
            }
            Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => Ok(DataDirLock { _file: None }),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

impl Store {
    /// The store under `data_dir` (created if missing).
    pub fn open(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.join("conversations");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(Error::Input(format!("invalid conversation id {id:?}")));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Every readable conversation, most recently updated first, and a message per file that
    /// could not be read (such files are left alone).
    pub fn list(&self) -> (Vec<Conversation>, Vec<String>) {
        let mut convs = Vec::new();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => return (convs, vec![format!("{}: {e}", self.dir.display())]),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Conversation>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(c) if path.file_stem().and_then(|s| s.to_str()) == Some(c.id.as_str()) => convs.push(c),
                Ok(c) => errors.push(format!("{}: id {:?} does not match the file name", path.display(), c.id)),
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        convs.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| b.id.cmp(&a.id)));
        (convs, errors)
    }

    pub fn save(&self, c: &Conversation) -> Result<()> {
        let path = self.path(&c.id)?;
        let bytes = serde_json::to_vec_pretty(c).map_err(|e| Error::Input(format!("conversation to JSON: {e}")))?;
        write_atomic(&path, &bytes)
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}
