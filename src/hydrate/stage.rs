//! The cache directory: stages a new profile set beside the live one and
//! swaps it in as a whole, so readers only ever see a complete set.
//!
//! Layout: `<cache>/active/*.json`, `<cache>/key.txt`, and while hydrating a
//! `<cache>/.staging-<pid>` directory. Everything is owner-only (0700 dirs,
//! 0600 files). A failure before `commit` leaves the previous set untouched.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::{info, warn};

use super::{Base, HydrateError, Hydrated, Profile};

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> HydrateError + '_ {
    move |source| HydrateError::Cache {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `path` atomically: a 0600 temp file beside it, then rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HydrateError> {
    crate::private::write_atomic(path, bytes).map_err(cache_err(path))
}

fn make_private_dir(dir: &Path) -> Result<(), HydrateError> {
    crate::private::make_dir(dir).map_err(cache_err(dir))
}

/// A new profile set being assembled; dropped without `commit`, it vanishes.
pub struct Staging {
    cache_dir: PathBuf,
    dir: PathBuf,
}

impl Staging {
    pub fn create(cache_dir: &Path) -> Result<Staging, HydrateError> {
        make_private_dir(cache_dir)?;
        // Leftovers of runs that died mid-hydration hold nothing live.
        if let Ok(entries) = fs::read_dir(cache_dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".staging-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = cache_dir.join(format!(".staging-{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(cache_err(&dir))?;
        Ok(Staging {
            cache_dir: cache_dir.to_path_buf(),
            dir,
        })
    }

    /// Stage one profile; `name` was checked by `check_name`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), HydrateError> {
        let path = self.dir.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(cache_err(&path))?;
        f.write_all(bytes).map_err(cache_err(&path))
    }

    /// Swap the staged set in as `active`, then write or remove `key.txt`.
    pub fn commit(
        self,
        key: Option<&[u8]>,
        skipped: Vec<String>,
    ) -> Result<Hydrated, HydrateError> {
        let active = self.cache_dir.join("active");
        let key_path = self.cache_dir.join("key.txt");
        // Stage the key first so a failure here still leaves the old set whole.
        let key_tmp = self.dir.join(".key.txt");
        if let Some(key) = key {
            write_private(&key_tmp, key)?;
        }
        sync_dir(&self.dir);
        swap_in(&self.dir, &active)?;
        // After the swap `self.dir` holds the previous set (or nothing).
        let old = &self.dir;
        if key.is_some() {
            fs::rename(active.join(".key.txt"), &key_path).map_err(cache_err(&key_path))?;
        } else if let Err(e) = fs::remove_file(&key_path) {
            if e.kind() != ErrorKind::NotFound {
                return Err(cache_err(&key_path)(e));
            }
        }
        let _ = fs::remove_dir_all(old);
        sync_dir(&self.cache_dir);
        let mut hydrated = read_set(&self.cache_dir)?;
        hydrated.skipped = skipped;
        Ok(hydrated)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Atomically exchange `staged` and `active` when both exist (Linux
/// renameat2 RENAME_EXCHANGE), else a plain rename.
fn swap_in(staged: &Path, active: &Path) -> Result<(), HydrateError> {
    if active.exists() {
        let a = CString::new(staged.as_os_str().as_bytes()).map_err(|_| bad_path(staged))?;
        let b = CString::new(active.as_os_str().as_bytes()).map_err(|_| bad_path(active))?;
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if !active.is_dir() {
            return Err(cache_err(active)(std::io::Error::other(
                "exists and is not a directory",
            )));
        }
        // Filesystems without RENAME_EXCHANGE: move the old set aside first.
        warn!(
            "atomic directory exchange unavailable ({err}); swapping {} in two steps",
            active.display()
        );
        let aside = staged.with_extension("old");
        let _ = fs::remove_dir_all(&aside);
        fs::rename(active, &aside).map_err(cache_err(active))?;
        fs::rename(staged, active).map_err(cache_err(active))?;
        fs::rename(&aside, staged).map_err(cache_err(staged))?;
        return Ok(());
    }
    fs::rename(staged, active).map_err(cache_err(active))?;
    let _ = fs::create_dir(staged);
    Ok(())
}

fn bad_path(p: &Path) -> HydrateError {
    cache_err(p)(std::io::Error::new(
        ErrorKind::InvalidInput,
        "path contains NUL",
    ))
}

/// The set currently in `<cache>/active`, in name order.
fn read_set(cache_dir: &Path) -> Result<Hydrated, HydrateError> {
    let active = cache_dir.join("active");
    let _ = fs::set_permissions(&active, fs::Permissions::from_mode(0o700));
    let mut profiles = Vec::new();
    for entry in fs::read_dir(&active).map_err(cache_err(&active))? {
        let entry = entry.map_err(cache_err(&active))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if super::check_name(&name).is_err() || !entry.path().is_file() {
            continue;
        }
        profiles.push(Profile {
            name: name.trim_end_matches(".json").to_string(),
            path: entry.path(),
        });
    }
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    let key_path = cache_dir.join("key.txt");
    Ok(Hydrated {
        profiles_dir: active,
        key_file: key_path.is_file().then_some(key_path),
        profiles,
        skipped: Vec::new(),
        bases: Default::default(),
    })
}

/// Use the set already in the cache (the entrypoint staged it, or S3 is
/// unreachable and an earlier run left it). Invalid JSON is left out.
pub fn adopt(cache_dir: &Path, reason: Option<&str>) -> Result<Hydrated, HydrateError> {
    let active = cache_dir.join("active");
    let mut set = read_set(cache_dir).map_err(|_| HydrateError::NoProfiles {
        location: format!("in {}", active.display()),
    })?;
    let mut bases = std::collections::BTreeMap::new();
    set.profiles.retain(|p| {
        let bytes = fs::read(&p.path)
            .ok()
            .filter(|b| serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok());
        let ok = bytes.is_some();
        if let Some(bytes) = bytes {
            // No version tag: the source's copy may differ from this cache.
            bases.insert(
                p.name.clone(),
                Base {
                    content: bytes.into(),
                    etag: None,
                },
            );
        } else {
            warn!(
                "profile {}.json in {} is not valid JSON, leaving it out",
                p.name,
                active.display()
            );
            set.skipped.push(format!("{}.json", p.name));
        }
        ok
    });
    set.bases = bases;
    if set.profiles.is_empty() {
        return Err(HydrateError::NoProfiles {
            location: format!("in {}", active.display()),
        });
    }
    if reason.is_none() {
        info!(
            "using the {} profiles already staged in {}",
            set.profiles.len(),
            active.display()
        );
    }
    Ok(set)
}
