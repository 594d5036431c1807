//! The local backend: profiles are `*.json` files in `LOCAL_PROFILE_DIR`
//! (symlinks followed, as Kubernetes secret volumes use them) and the key
//! file is `key.txt` in that directory's parent.

use std::fs;
use std::path::{Path, PathBuf};

use super::{HydrateError, Source};

/// Largest profile we read; real ones are a few KiB of cookies.
const MAX_PROFILE_BYTES: u64 = 64 << 20;

pub struct LocalDir {
    dir: PathBuf,
}

impl LocalDir {
    pub fn new(dir: &Path) -> LocalDir {
        LocalDir {
            dir: dir.to_path_buf(),
        }
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, HydrateError> {
        let meta = fs::metadata(path).map_err(|e| self.err(path, e))?;
        if meta.len() > MAX_PROFILE_BYTES {
            return Err(HydrateError::Source {
                message: format!(
                    "{} is larger than {MAX_PROFILE_BYTES} bytes: is it really a profile?",
                    path.display()
                ),
                offline: false,
            });
        }
        fs::read(path).map_err(|e| self.err(path, e))
    }

    fn err(&self, path: &Path, e: std::io::Error) -> HydrateError {
        HydrateError::Source {
            message: format!(
                "cannot read {}: {e}; check LOCAL_PROFILE_DIR and its permissions",
                path.display()
            ),
            offline: false,
        }
    }
}

impl Source for LocalDir {
    fn location(&self) -> String {
        format!("in {}", self.dir.display())
    }

    fn key_location(&self) -> String {
        match self.dir.parent() {
            Some(p) => p.join("key.txt").display().to_string(),
            None => "key.txt".to_string(),
        }
    }

    fn list(&self) -> Result<Vec<String>, HydrateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HydrateError::NoProfiles {
                    location: format!(
                        "in {} (no such directory: set LOCAL_PROFILE_DIR)",
                        self.dir.display()
                    ),
                })
            }
            Err(e) => return Err(self.err(&self.dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.err(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Hidden names include Kubernetes' `..data` bookkeeping links.
            if name.starts_with('.') || !name.ends_with(".json") || !entry.path().is_file() {
                continue;
            }
            names.push(name);
        }
        Ok(names)
    }

    fn fetch(&self, name: &str) -> Result<Vec<u8>, HydrateError> {
        self.read(&self.dir.join(name))
    }

    fn key_file(&self) -> Result<Option<Vec<u8>>, HydrateError> {
        let Some(parent) = self.dir.parent() else {
            return Ok(None);
        };
        let path = parent.join("key.txt");
        if !path.is_file() {
            return Ok(None);
        }
        self.read(&path).map(Some)
    }
}
