//! Conditional S3 object operations below the profile prefix
//! (`<prefix>/active/`): read with the ETag, write only over a known ETag
//! (`If-Match`), create only where nothing is (`If-None-Match: *`), delete
//! only a known ETag. Write-back uses them so that an operator's upload wins
//! over a child's refresh; a lease can use them to take and release a
//! profile.
//!
//! Runs on whichever thread calls it; each call is one blocking request,
//! bounded by the client's request timeout (set by `S3Source::cond_store`).
//! rust-s3 never retries a PUT or DELETE; a GET may be retried once after a
//! transient failure. Nothing here logs, and no error carries an object's
//! content or an S3 error body beyond its `<Code>`.
//!
//! How the conditions travel: rust-s3 0.38 sends a bucket's `extra_headers`
//! with every request, signed like the rest, so each call sets the header
//! on a per-call clone of the bucket (`Bucket::add_header`).
//!
//! Servers differ: AWS S3 honours `If-Match` and `If-None-Match: *` on
//! PutObject (and answers 409 `ConditionalRequestConflict` to a conditional
//! write racing another); `If-Match` on DeleteObject only where AWS supports
//! conditional deletes. s3s-fs 0.14.1 (our test server) enforces both
//! PutObject preconditions but ignores `If-Match` on DeleteObject.

use std::fmt;

use s3::error::S3Error;
use s3::request::ResponseData;
use s3::Bucket;

/// A bucket client and the prefix profile names live under.
pub struct Store {
    bucket: Box<Bucket>,
    /// `<prefix>/active/` or `active/`.
    prefix: String,
    /// The endpoint, for messages.
    endpoint: String,
}

/// Why a conditional operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CondError {
    /// The condition did not hold: the object changed (or appeared, for
    /// `put_if_absent`) since the ETag was read. Also S3's 409
    /// `ConditionalRequestConflict` (another conditional write raced ours).
    PreconditionFailed,
    /// The object does not exist (404 `NoSuchKey`).
    NotFound,
    /// HTTP 403: the credentials lack the permission (`code` is S3's).
    Denied { code: String },
    /// The store could not be reached or is unavailable (connection,
    /// timeout, 5xx): worth retrying later.
    Unreachable(String),
    /// Anything else, described in one line without content.
    Other(String),
}

impl fmt::Display for CondError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CondError::PreconditionFailed => f.write_str("the object changed in the meantime"),
            CondError::NotFound => f.write_str("the object does not exist"),
            CondError::Denied { code } => write!(f, "access denied ({code})"),
            CondError::Unreachable(why) => write!(f, "S3 unreachable: {why}"),
            CondError::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CondError {}

/// The ETag header of an answer, as S3 sent it (quotes included), if it
/// is a value we can send back in a header.
pub fn etag_of(data: &ResponseData) -> Option<String> {
    data.headers()
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v)
        .filter(|v| header_safe(v))
}

/// Visible ASCII and spaces only: what `Bucket::add_header` can parse
/// without panicking, and all a well-formed ETag ever holds.
fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Store {
    pub fn new(bucket: Box<Bucket>, prefix: String, endpoint: String) -> Store {
        Store {
            bucket,
            prefix,
            endpoint,
        }
    }

    /// The same client for the sibling folder `dir` of `active/`
    /// (`<prefix>/<dir>/`): the profile leases live in `leases/`.
    pub fn beside(&self, dir: &str) -> Store {
        let parent = self.prefix.strip_suffix("active/").unwrap_or(&self.prefix);
        Store {
            bucket: self.bucket.clone(),
            prefix: format!("{parent}{dir}/"),
            endpoint: self.endpoint.clone(),
        }
    }

    /// The object key of the file name `name` (`<name>.json`).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `s3://bucket/key` of `name`, for messages.
    pub fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket.name, self.key(name))
    }

    /// `s3://bucket/<prefix>/active/`, for messages.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket.name, self.prefix)
    }

    /// The endpoint URL, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A clone of the client that sends `header: value` too.
    fn with_header(&self, header: &str, value: &str) -> Result<Bucket, CondError> {
        if !header_safe(value) {
            return Err(CondError::Other(format!(
                "cannot send {header}: the value is not plain ASCII"
            )));
        }
        let mut b = (*self.bucket).clone();
        // Cannot panic: `header` is a static lowercase token and `value`
        // was checked by `header_safe` above.
        b.add_header(header, value);
        Ok(b)
    }

    /// The object `name` and its ETag.
    pub fn get_with_etag(&self, name: &str) -> Result<(Vec<u8>, Option<String>), CondError> {
        let data = self
            .bucket
            .get_object(self.key(name))
            .map_err(|e| self.map(e))?;
        let etag = etag_of(&data);
        Ok((data.to_vec(), etag))
    }

    /// Replace `name` only while its ETag is still `etag`; the new ETag.
    pub fn put_if_match(
        &self,
        name: &str,
        bytes: &[u8],
        etag: &str,
    ) -> Result<Option<String>, CondError> {
        let b = self.with_header("if-match", etag)?;
        self.put(&b, name, bytes)
    }

    /// Create `name` only where no object is; the new ETag.
    pub fn put_if_absent(&self, name: &str, bytes: &[u8]) -> Result<Option<String>, CondError> {
        let b = self.with_header("if-none-match", "*")?;
        self.put(&b, name, bytes)
    }

    /// Delete `name` only while its ETag is still `etag`, where the server
    /// honours the condition (see the module docs: s3s-fs does not).
    pub fn delete_if_match(&self, name: &str, etag: &str) -> Result<(), CondError> {
        let b = self.with_header("if-match", etag)?;
        b.delete_object(self.key(name))
            .map(|_| ())
            .map_err(|e| self.map(e))
    }

    fn put(&self, b: &Bucket, name: &str, bytes: &[u8]) -> Result<Option<String>, CondError> {
        let data = b
            .put_object_with_content_type(self.key(name), bytes, "application/json")
            .map_err(|e| self.map(e))?;
        // rust-s3 hands a PUT's ETag header back as the body.
        let etag = String::from_utf8_lossy(data.as_slice()).trim().to_string();
        Ok(Some(etag).filter(|e| header_safe(e)))
    }

    fn map(&self, e: S3Error) -> CondError {
        classify(e, &self.endpoint)
    }
}

/// One S3 failure as a `CondError`; split out so it is testable without a
/// server.
pub fn classify(e: S3Error, endpoint: &str) -> CondError {
    match e {
        S3Error::HttpFailWithBody(status, body) => {
            let code = super::wire::error_code(&body);
            let shown = code.unwrap_or("no error code").to_string();
            match (status, code) {
                (412, _) | (409, Some("ConditionalRequestConflict")) => {
                    CondError::PreconditionFailed
                }
                (404, Some("NoSuchKey")) => CondError::NotFound,
                (403, _) => CondError::Denied { code: shown },
                (500..=599, _) => {
                    CondError::Unreachable(format!("{endpoint} answered HTTP {status} ({shown})"))
                }
                _ => CondError::Other(format!("{endpoint} answered HTTP {status} ({shown})")),
            }
        }
        S3Error::Atto(e) => match e.kind() {
            attohttpc::ErrorKind::Io(io) => {
                CondError::Unreachable(format!("{endpoint}: {}", super::wire::io_reason(io)))
            }
            _ => CondError::Other(format!("request to {endpoint} failed: {e}")),
        },
        S3Error::Credentials(_) => {
            CondError::Other("cannot refresh the AWS credentials".to_string())
        }
        other => CondError::Other(format!("S3 request failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(status: u16, code: &str) -> CondError {
        classify(
            S3Error::HttpFailWithBody(
                status,
                format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>secret stuff</Message></Error>"),
            ),
            "http://127.0.0.1:1",
        )
    }

    #[test]
    fn failures_map_to_what_a_caller_decides_on() {
        assert_eq!(
            fail(412, "PreconditionFailed"),
            CondError::PreconditionFailed
        );
        assert_eq!(
            fail(409, "ConditionalRequestConflict"),
            CondError::PreconditionFailed
        );
        assert_eq!(fail(404, "NoSuchKey"), CondError::NotFound);
        assert_eq!(
            fail(403, "AccessDenied"),
            CondError::Denied {
                code: "AccessDenied".into()
            }
        );
        assert!(matches!(fail(503, "SlowDown"), CondError::Unreachable(_)));
        assert!(matches!(fail(404, "NoSuchBucket"), CondError::Other(_)));
        assert!(matches!(fail(409, "BucketNotEmpty"), CondError::Other(_)));
        // Bodies are reduced to their code.
        for e in [fail(503, "SlowDown"), fail(400, "InvalidRequest")] {
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn only_plain_ascii_values_become_headers() {
        assert!(header_safe("\"d41d8cd98f00b204e9800998ecf8427e\""));
        assert!(header_safe("\"abc-3\""));
        assert!(!header_safe(""));
        assert!(!header_safe("a\r\nx-evil: 1"));
        assert!(!header_safe("ä"));
    }
}
