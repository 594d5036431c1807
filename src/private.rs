//! Owner-only files and directories: profiles, keys and the coordinator's
//! own state are credentials or derived from them, so every file holding
//! them is 0600 in a 0700 directory, and replaced atomically (a 0600 temp
//! file beside it, fsynced, renamed over it, the directory fsynced), so a
//! reader sees the old or the new file whole, never a mix, and a crash never
//! leaves a half-written one. One implementation for hydration, write-back
//! and the profile book.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Create `dir` (and its parents) 0700; an existing one is set to 0700.
pub fn make_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Replace `path` with `bytes`, atomically, mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only narrow the mode; say it anyway for credentials.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_whole_and_leave_no_temp() {
        let d = std::env::temp_dir().join(format!("aisp-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        make_dir(&d.join("x")).unwrap();
        let p = d.join("x/f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(d.join("x")).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::read_dir(d.join("x")).unwrap().count(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
