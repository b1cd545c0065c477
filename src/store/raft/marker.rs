//! The durability marker: a small file beside the sled database recording a log index that is
//! known to be on disk (flushed and applied). sled recovers from a damaged or truncated file by
//! silently keeping the longest valid prefix, which would lose acknowledged writes without a
//! word; comparing what sled recovered against this independent record turns that into a
//! start-up failure, as etcd refuses to start when its WAL ends before its last snapshot or HardState.

use super::{codec, Error};
use std::path::Path;

pub const MARKER_FILE: &str = "durable";

/// The recorded index, or None when no marker exists yet (a fresh store).
pub fn read(dir: &Path) -> Result<Option<u64>, Error> {
    let path = dir.join(MARKER_FILE);
    let buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { context: format!("reading {}", path.display()), source: e }),
    };
    let payload = codec::unframe(MARKER_FILE.as_bytes(), &buf, &format!("the durability marker {}", path.display()))?;
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| Error::Corrupt(format!("the durability marker {} has the wrong size", path.display())))?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// Atomically records `index` (write a temporary file, fsync, rename, fsync the directory).
pub fn write(dir: &Path, index: u64) -> Result<(), Error> {
    use std::io::Write;
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let io = |context: &str, source| Error::Io { context: format!("{context} {}", tmp.display()), source };
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    f.write_all(&codec::frame(MARKER_FILE.as_bytes(), &index.to_be_bytes())).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, dir.join(MARKER_FILE)).map_err(|e| io("renaming", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Fails when the store on disk ends before the recorded index.
pub fn check(dir: &Path, on_disk: Option<u64>) -> Result<(), Error> {
    let Some(recorded) = read(dir)? else { return Ok(()) };
    match on_disk {
        Some(i) if i >= recorded => Ok(()),
        _ => Err(Error::Corrupt(format!(
            "the database in {} ends at raft entry {} but entry {recorded} was already durable: \
             its files were truncated or damaged",
            dir.display(),
            on_disk.map(|i| i.to_string()).unwrap_or_else(|| "(none)".into()),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_ending_before_the_marker_is_reported_corrupt() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(check(dir.path(), None).is_ok(), "no marker yet: a fresh store");
        write(dir.path(), 7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(7));
        assert!(check(dir.path(), Some(7)).is_ok());
        assert!(matches!(check(dir.path(), Some(6)), Err(Error::Corrupt(_))));
        assert!(matches!(check(dir.path(), None), Err(Error::Corrupt(_))));
        std::fs::write(dir.path().join(MARKER_FILE), b"junk").unwrap();
        assert!(matches!(read(dir.path()), Err(Error::Corrupt(_))));
    }
}
