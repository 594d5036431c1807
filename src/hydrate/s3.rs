//! The S3 backend (placeholder until the S3 work lands): refuses clearly.

use super::{HydrateError, Source};
use crate::config::S3Settings;

pub struct S3Source;

impl S3Source {
    pub fn new(_s3: &S3Settings) -> Result<S3Source, HydrateError> {
        Err(HydrateError::Source {
            message:
                "PROFILE_BACKEND=s3 is not supported by this build yet; use PROFILE_BACKEND=local"
                    .into(),
            offline: false,
        })
    }
}

impl Source for S3Source {
    fn location(&self) -> String {
        String::new()
    }
    fn list(&self) -> Result<Vec<String>, HydrateError> {
        Ok(Vec::new())
    }
    fn fetch(&self, _name: &str) -> Result<Vec<u8>, HydrateError> {
        Ok(Vec::new())
    }
    fn key_file(&self) -> Result<Option<Vec<u8>>, HydrateError> {
        Ok(None)
    }
}
