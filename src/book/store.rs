//! The profile book on disk: `AUTH_PROFILE_CACHE_DIR/profile-state.json`,
//! written atomically (a temp file in the same directory, fsync, rename,
//! fsync of the directory) with mode 0600, read once at start. A file that
//! is missing means a first run; one that cannot be read or parsed is
//! reported by the caller and ignored, never fatal: the worst it costs is
//! one retry of a profile that was cooling.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Entry;

pub const FILE_NAME: &str = "profile-state.json";

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    profiles: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub enum StoreError {
    Read(PathBuf, std::io::Error),
    Parse(PathBuf, serde_json::Error),
    Version(PathBuf, u32),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            StoreError::Parse(p, e) => write!(f, "{} is not valid profile state: {e}", p.display()),
            StoreError::Version(p, v) => {
                write!(f, "{} has unknown version {v}", p.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

pub fn path_in(cache_dir: &Path) -> PathBuf {
    cache_dir.join(FILE_NAME)
}

/// The saved records; empty when there is no file yet.
pub fn load(path: &Path) -> Result<BTreeMap<String, Entry>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(StoreError::Read(path.to_path_buf(), e)),
    };
    let d: OnDisk =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse(path.to_path_buf(), e))?;
    if d.version != 1 {
        return Err(StoreError::Version(path.to_path_buf(), d.version));
    }
    Ok(d.profiles)
}

/// Replace the file with `profiles`, atomically.
pub fn save(path: &Path, profiles: &BTreeMap<String, Entry>) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(&OnDisk {
        version: 1,
        profiles: profiles.clone(),
    })
    .map_err(std::io::Error::other)?;
    crate::private::write_atomic(path, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aisp-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_private_and_missing_is_empty() {
        let d = dir("rt");
        let p = path_in(&d);
        assert!(load(&p).unwrap().is_empty());
        let mut m = BTreeMap::new();
        let e = Entry {
            cooling_until_unix_ms: Some(42),
            cool_reason: Some(super::super::CoolReason::StartFailures),
            ..Entry::default()
        };
        m.insert("a".to_string(), e);
        save(&p, &m).unwrap();
        assert_eq!(load(&p).unwrap(), m);
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let d = dir("bad");
        let p = path_in(&d);
        fs::write(&p, b"{not json").unwrap();
        assert!(matches!(load(&p), Err(StoreError::Parse(..))));
        fs::write(&p, br#"{"version": 9, "profiles": {}}"#).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("version 9"));
        fs::remove_dir_all(&d).unwrap();
    }
}
