//! The single-process rule for a SQLite file: an exclusive lock on a file beside the database
//! (`<file>.lock`), held for as long as the store is open and released by the kernel when the
//! process ends in any way (`kill -9` included), so a crash never leaves a stale lock behind.
//!
//! Two processes sweeping one file would both deliver every alert (SQLite serialises their writes,
//! it does not make them agree on who delivers). A lock file, rather than SQLite's
//! `locking_mode=EXCLUSIVE`, keeps the database itself readable by other tools while connmon runs,
//! and says who holds it: the holder writes its process id and host name into the file.
//!
//! The rule is per process: stores opened on one file within one process (the conformance tests'
//! "instances") share its lock, which is released when the last of them closes.

use super::StoreError;
use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// A lock file's identity on its file system: (device, inode).
type FileId = (u64, u64);

/// The lock files this process holds: a second store on a file shares the lock.
static HELD: Mutex<Option<HashMap<FileId, Weak<File>>>> = Mutex::new(None);

/// The lock on one SQLite file; the file stays locked until the last holder in this process is
/// dropped.
#[derive(Debug)]
pub(crate) struct ProcessLock {
    _file: Arc<File>,
}

impl ProcessLock {
    /// Takes the lock beside `db` (or shares it, when this process holds it already), or fails
    /// naming the file and, when it says, the holder.
    pub(crate) fn take(db: &Path) -> Result<ProcessLock, StoreError> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open the lock file {} beside the SQLite file {}: {e}",
                    path.display(),
                    db.display()
                ))
            })?;
        let key = file.metadata().map(|m| (m.dev(), m.ino())).map_err(|e| {
            StoreError::Unavailable(format!("cannot read the lock file {}: {e}", path.display()))
        })?;
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        let held = held.get_or_insert_with(HashMap::new);
        held.retain(|_, lock| lock.strong_count() > 0);
        if let Some(shared) = held.get(&key).and_then(Weak::upgrade) {
            return Ok(ProcessLock { _file: shared });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another connmon process".to_string()
                } else {
                    format!("another connmon process ({holder})")
                };
                return Err(StoreError::Unavailable(format!(
                    "{who} is using the SQLite file {} (it holds {}): only one process may use a \
                     SQLite file; stop that one first, or use CONNMON_STORE=table to run several",
                    db.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot lock {} beside the SQLite file {} (only one process may use it): {e}",
                    path.display(),
                    db.display()
                )))
            }
        }
        // Who holds it, for the message a second process prints. Best effort: the lock is what
        // counts, and it is already held.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", holder()))
            .and_then(|()| file.flush());
        let file = Arc::new(file);
        held.insert(key, Arc::downgrade(&file));
        Ok(ProcessLock { _file: file })
    }
}

/// `connmon.db` → `connmon.db.lock`.
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// `pid 1234 on host web-7f9c` (the host name tells two containers on one volume apart).
fn holder() -> String {
    let pid = std::process::id();
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(host) if !host.trim().is_empty() => format!("pid {pid} on host {}", host.trim()),
        _ => format!("pid {pid}"),
    }
}
