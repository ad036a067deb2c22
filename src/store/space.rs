//! Room to write: the database's size, the free space left to it (its filesystem's, and what
//! `store.max_size_mb` leaves), and a probe that says whether a write fits again after the
//! disk filled.

use super::{Db, StoreError};
use std::path::Path;

/// A probe finds room once this much is free: a sweep's transaction of new history rows.
pub const MIN_ROOM_BYTES: u64 = 4 * 1024 * 1024;

/// The database's size and the room left to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// The database file and its WAL, bytes.
    pub size_bytes: u64,
    /// What it may still grow by: its filesystem's space available to this user, less what
    /// the size cap leaves if that is less.
    pub free_bytes: u64,
}

/// The size and room of the database at `path`; under a size cap, `cap` is the cap and the
/// bytes its pages use ([`Db::used_bytes`]). Reads only metadata, so it answers on a full disk.
pub fn measure(path: &Path, cap: Option<(u64, u64)>) -> std::io::Result<Space> {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let size_bytes = size(path) + size(Path::new(&wal));
    let mut free_bytes = available_beside(path)?;
    if let Some((max_bytes, used_bytes)) = cap {
        free_bytes = free_bytes.min(max_bytes.saturating_sub(used_bytes));
    }
    Ok(Space {
        size_bytes,
        free_bytes,
    })
}

/// The bytes available to this (unprivileged) user on the filesystem of the database at `path`
/// (where its WAL grows too).
fn available_beside(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs reads the NUL-terminated path and writes only into the struct given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

impl Db {
    /// Caps the database file at `max_bytes` (0: no cap); SQLite then answers a write past it
    /// as a full disk.
    pub fn set_max_size(&mut self, max_bytes: u64) -> Result<(), StoreError> {
        if max_bytes == 0 {
            return Ok(());
        }
        let page = self.pragma("page_size")?;
        let pages = (max_bytes / page.max(1)).max(1);
        // SQLite keeps a cap under the current size at the current size.
        let set: u64 =
            self.conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                    r.get(0)
                })?;
        if set > pages {
            tracing::warn!(
                max_size_mb = max_bytes / (1024 * 1024),
                size_mb = set * page / (1024 * 1024),
                "the database is already larger than store.max_size_mb: it may not grow, and has no room until rows are pruned"
            );
        }
        Ok(())
    }

    /// The bytes the database's pages hold (its pages less the free ones), WAL included.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let pages = self
            .pragma("page_count")?
            .saturating_sub(self.pragma("freelist_count")?);
        Ok(pages.saturating_mul(self.pragma("page_size")?))
    }

    /// A numeric pragma's value.
    fn pragma(&self, name: &str) -> Result<u64, StoreError> {
        let value: i64 = self
            .conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?;
        Ok(value.max(0) as u64)
    }

    /// Whether a write fits again: `min_bytes` are free inside the size cap (pages on the
    /// freelist count) and on the filesystem, and a small write commits. `Ok(false)` while not.
    pub fn has_room(&mut self, min_bytes: u64) -> Result<bool, StoreError> {
        let page = self.pragma("page_size")?;
        let max_pages = self.pragma("max_page_count")?;
        let pages = self.pragma("page_count")?;
        let free_pages = self.pragma("freelist_count")?;
        let cap_room = (max_pages.saturating_sub(pages) + free_pages).saturating_mul(page);
        if cap_room < min_bytes {
            return Ok(false);
        }
        if let Some(path) = self.conn.path().filter(|p| !p.is_empty()) {
            if available_beside(Path::new(path)).is_ok_and(|free| free < min_bytes) {
                return Ok(false);
            }
        }
        // Rewriting the header's user_version is a real commit: a WAL frame and a sync.
        let version = self.pragma("user_version")?;
        match self
            .conn
            .execute_batch(&format!("PRAGMA user_version = {version}"))
        {
            Ok(()) => Ok(true),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_size_cap_fills_like_a_disk_and_frees_like_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capped.db");
        let mut db = Db::open(&path, Duration::from_secs(1)).unwrap();
        let base = db.used_bytes().unwrap();
        db.set_max_size(base + 64 * 1024).unwrap();
        assert!(
            !db.has_room(MIN_ROOM_BYTES).unwrap(),
            "64 KiB left is not room"
        );
        assert!(db.has_room(16 * 1024).unwrap());
        db.conn
            .execute_batch("CREATE TABLE filler (b BLOB)")
            .unwrap();
        let err = (0..100)
            .find_map(|_| {
                db.conn
                    .execute("INSERT INTO filler VALUES (zeroblob(8192))", [])
                    .err()
            })
            .expect("the cap is reached");
        assert!(StoreError::from(err).is_full());
        let cap = (base + 64 * 1024, db.used_bytes().unwrap());
        let space = measure(&path, Some(cap)).unwrap();
        assert!(space.size_bytes > 0, "{space:?}");
        assert!(space.free_bytes < 16 * 1024, "{space:?}");
        // Rows deleted free their pages for new ones.
        db.conn.execute_batch("DELETE FROM filler").unwrap();
        assert!(db.has_room(16 * 1024).unwrap());
    }
}
