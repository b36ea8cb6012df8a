//! Owner-only folders and files: what Berth creates or reuses on disk (the
//! data directory, the plugins folder, the compile cache and what it
//! writes into them) is readable and writable by its own user only, even
//! when the folder was made beforehand with wider modes. Someone else who
//! could write there could mount a plugin or, in the compile cache, have
//! native code loaded.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The user this process runs as.
fn me() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether only this process's user can change what is at `path`: it is
/// theirs, and neither its group nor others may write it. Symbolic links
/// are not followed.
pub fn only_mine(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.uid() == me() && m.mode() & 0o022 == 0 && !m.file_type().is_symlink())
}

/// Create the folder `dir` (and its parents) owner-only, or make an
/// existing one of this user's owner-only. False when it belongs to
/// another user, whose modes are left alone: the caller decides whether
/// that is safe.
pub fn dir(dir: &Path) -> io::Result<bool> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != me() {
        return Ok(false);
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(true)
}

/// Write `bytes` to `path` owner-only, whole or not at all: into a
/// dot-file beside it first (which the plugins folder's watcher ignores),
/// then renamed over it.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| io::Write::write_all(&mut f, bytes));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_and_files_are_owner_only_whatever_they_were() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!only_mine(&open));
        assert!(dir(&open).unwrap());
        assert_eq!(mode(&open), 0o700);
        assert!(only_mine(&open));

        let nested = t.path().join("a/b");
        assert!(dir(&nested).unwrap());
        assert_eq!(mode(&nested), 0o700);

        let file = open.join("f");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&file, b"new").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        assert_eq!(mode(&file), 0o600);
        assert!(only_mine(&file));

        let link = open.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(!only_mine(&link), "a link is not trusted");
    }
}
