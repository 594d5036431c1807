//! Local write-back (`AUTH_WRITEBACK=all` with `PROFILE_BACKEND=local`):
//! replace a profile file in `LOCAL_PROFILE_DIR` atomically, and only while
//! it still holds what was hydrated from it.
//!
//! Runs on a write-back worker thread. The check and the rename are two
//! steps: an operator's edit landing between them (a few microseconds) is
//! overwritten; one landing any time before is kept.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// What a conditional local replace found.
#[derive(Debug)]
pub enum Replace {
    /// The source held `expected`; it now holds the new bytes.
    Done,
    /// The source holds something else (an operator's edit): kept, and
    /// returned so the next start uses it.
    Changed(Vec<u8>),
    /// The source file is gone: not recreated.
    Missing,
}

/// The file to replace: a symlink (a mounted secret, a managed layout) is
/// followed, so the link stays and its target gets the new content.
fn target_of(path: &Path) -> std::io::Result<PathBuf> {
    if fs::symlink_metadata(path)?.file_type().is_symlink() {
        fs::canonicalize(path)
    } else {
        Ok(path.to_path_buf())
    }
}

/// Replace `path` with `bytes` if it still holds `expected`.
pub fn replace_if_unchanged(
    path: &Path,
    expected: &[u8],
    bytes: &[u8],
) -> std::io::Result<Replace> {
    let target = match target_of(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Replace::Missing),
        Err(e) => return Err(e),
    };
    let current = match fs::read(&target) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Replace::Missing),
        Err(e) => return Err(e),
    };
    if current != expected {
        return Ok(Replace::Changed(current));
    }
    crate::private::write_atomic(&target, bytes)?;
    Ok(Replace::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aisp-wb-local-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_only_what_still_holds_the_base() {
        let d = tmp("replace");
        let p = d.join("a.json");
        fs::write(&p, b"old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            replace_if_unchanged(&p, b"old", b"new").unwrap(),
            Replace::Done
        ));
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // An operator's edit wins, and is handed back.
        fs::write(&p, b"operator").unwrap();
        match replace_if_unchanged(&p, b"new", b"child").unwrap() {
            Replace::Changed(c) => assert_eq!(c, b"operator"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&p).unwrap(), b"operator");
        // A removed profile is not recreated.
        fs::remove_file(&p).unwrap();
        assert!(matches!(
            replace_if_unchanged(&p, b"operator", b"child").unwrap(),
            Replace::Missing
        ));
        assert!(!p.exists());
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_symlinked_source_keeps_its_link() {
        let d = tmp("symlink");
        fs::create_dir_all(d.join("data")).unwrap();
        fs::write(d.join("data/a.json"), b"old").unwrap();
        std::os::unix::fs::symlink("data/a.json", d.join("a.json")).unwrap();
        assert!(matches!(
            replace_if_unchanged(&d.join("a.json"), b"old", b"new").unwrap(),
            Replace::Done
        ));
        assert!(fs::symlink_metadata(d.join("a.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("data/a.json")).unwrap(), b"new");
        let _ = fs::remove_dir_all(&d);
    }
}
