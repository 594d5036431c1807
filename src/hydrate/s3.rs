//! The S3 backend (`PROFILE_BACKEND=s3`): lists `<prefix>/active/*.json` in
//! a bucket and fetches each object and `<prefix>/key.txt`, through rust-s3's
//! synchronous (attohttpc) client. Owns addressing (AWS or any S3-compatible
//! endpoint), credential resolution, listing pagination, the classification
//! of object keys, and the mapping of every S3 failure to one line naming
//! the fix.
//!
//! Runs on the main thread (`list`, `key_file`) and on the bounded hydration
//! threads (`fetch`). It never writes anything: staging is `stage.rs`'s job.
//! It must never log or put into a message a secret (credentials, tokens) or
//! object contents; S3 error bodies are reduced to their `<Code>`.
//!
//! # Credentials
//!
//! Resolved in this order, the first source that is configured wins, and a
//! configured source that fails is an error (not a silent fall-through), so
//! the message names the source the operator meant to use:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`).
//! 2. The shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//!    `~/.aws/credentials`), section `AWS_PROFILE` (else `default`), static
//!    `aws_access_key_id` / `aws_secret_access_key` / `aws_session_token` only.
//!    aws-creds 0.40 reads no `~/.aws/config`: profiles built on `role_arn`,
//!    `source_profile`, `sso_*` or `credential_process` do not work.
//!    aws-creds ignores `AWS_PROFILE` itself; we pass it explicitly.
//! 3. Web identity (EKS IRSA): `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`,
//!    exchanged by aws-creds at the global `https://sts.amazonaws.com/`
//!    (regional STS endpoints are not supported), refreshed on expiry.
//! 4. Container credentials (ECS task roles, EKS Pod Identity):
//!    `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` / `_TOKEN`.
//! 5. EC2 instance metadata, IMDSv2 then v1; aws-creds only tries it when
//!    `/sys/hypervisor/uuid` or the DMI board vendor says this is EC2.
//!
//! All of these are synchronous HTTP calls in aws-creds (attohttpc), so they
//! work without an async runtime.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use s3::creds::error::CredentialsError;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};

use super::wire::{error_code, io_reason};
use super::{HydrateError, Source};
use crate::config::S3Settings;

/// Largest profile we accept; real ones are a few KiB of cookies.
const MAX_PROFILE_BYTES: u64 = 64 << 20;
/// Deadline of one S3 request (connect, send, receive). attohttpc also caps
/// connect and each read at 30 s; rust-s3 retries a transient failure once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one credentials request (STS, container, instance metadata).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);
/// Listing pages of 1,000 keys each; the cap only stops a server that never
/// ends its listing (ten million keys is far beyond any profile set).
const MAX_LIST_PAGES: usize = 10_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

pub struct S3Source {
    bucket_name: String,
    /// `<prefix>/active/`, or `active/` without a prefix.
    active_prefix: String,
    /// `<prefix>/key.txt`, or `key.txt`.
    key_object: String,
    region: String,
    /// The custom endpoint, if any (path-style addressing).
    endpoint: Option<String>,
    threads: usize,
    /// Built on first use (in `list`), so that credential sources that need
    /// the network fail inside hydration, where "offline" can fall back to
    /// the cache, rather than in the constructor.
    bucket: OnceLock<Box<Bucket>>,
}

/// What an object key below `<prefix>/active/` is to us.
#[derive(Debug, PartialEq, Eq)]
enum KeyKind {
    /// `active/<name>.json`: a profile named `<name>.json`.
    Profile(String),
    /// Not a `.json` object (or the `active/` folder marker): ignored.
    Other,
    /// A hidden `.name.json` (editor or macOS `._` litter): skipped, as the
    /// local backend skips hidden files.
    Hidden,
    /// `active/sub/x.json` with plain path segments: not directly under
    /// `active/`, so not a profile; skipped with a warning.
    Nested,
    /// A `.json` key with `..`, `.` or empty segments (`active/../x.json`,
    /// `active//x.json`), or a name `check_name` refuses (backslash, control
    /// characters). S3 keys are literal strings, but a careless mapping to a
    /// path would write outside the cache, and URL normalisation would fetch
    /// a different object than was listed: refused, which fails hydration.
    Hostile,
}

fn classify(rel: &str) -> KeyKind {
    if !rel.ends_with(".json") {
        return KeyKind::Other;
    }
    if rel.contains('/') {
        let unsafe_segment = rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
        return if unsafe_segment || rel.contains(['\\', '\0']) || rel.chars().any(char::is_control)
        {
            KeyKind::Hostile
        } else {
            KeyKind::Nested
        };
    }
    // Separator-like and control characters first: `..\x.json` is merely
    // hidden on Linux, but a traversal wherever `\` is a separator.
    if rel.contains(['\\', '\0']) || rel.chars().any(char::is_control) {
        return KeyKind::Hostile;
    }
    if rel.starts_with('.') {
        return KeyKind::Hidden;
    }
    match super::check_name(rel) {
        Ok(()) => KeyKind::Profile(rel.to_string()),
        Err(_) => KeyKind::Hostile,
    }
}

impl S3Source {
    pub fn new(s3: &S3Settings) -> Result<S3Source, HydrateError> {
        let bucket_name = s3
            .bucket
            .clone()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| HydrateError::Source {
                message: "AUTH_PROFILE_S3_BUCKET is not set: PROFILE_BACKEND=s3 needs a bucket"
                    .into(),
                offline: false,
            })?;
        let base = if s3.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", s3.prefix)
        };
        Ok(S3Source {
            bucket_name,
            active_prefix: format!("{base}active/"),
            key_object: format!("{base}key.txt"),
            region: s3.region.clone(),
            endpoint: s3.endpoint.clone(),
            threads: s3.download_threads.max(1),
            bucket: OnceLock::new(),
        })
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket_name)
    }

    /// The endpoint requests go to, for messages.
    fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => aws_endpoint(&self.region),
        }
    }

    /// "(at <endpoint>)" or "(at <endpoint>, region r)": where we looked.
    fn at(&self) -> String {
        match &self.endpoint {
            Some(_) => format!("at {}", self.endpoint_url()),
            None => format!("at {}, region {}", self.endpoint_url(), self.region),
        }
    }

    fn client(&self) -> Result<&Bucket, HydrateError> {
        if let Some(b) = self.bucket.get() {
            return Ok(b);
        }
        let (credentials, from) = resolve_credentials()?;
        info!("S3: using AWS credentials from {from}");
        let bucket = self.build(credentials)?;
        Ok(self.bucket.get_or_init(|| bucket))
    }

    /// With fixed credentials instead of the chain: unit tests run in
    /// threads of one process and cannot each set the environment.
    #[cfg(test)]
    pub fn with_credentials(
        s3: &S3Settings,
        credentials: Credentials,
    ) -> Result<S3Source, HydrateError> {
        let source = S3Source::new(s3)?;
        let bucket = source.build(credentials)?;
        let _ = source.bucket.set(bucket);
        Ok(source)
    }

    fn build(&self, credentials: Credentials) -> Result<Box<Bucket>, HydrateError> {
        let region = Region::Custom {
            region: self.region.clone(),
            endpoint: self.endpoint_url(),
        };
        let bucket = Bucket::new(&self.bucket_name, region, credentials)
            .and_then(|b| b.with_request_timeout(REQUEST_TIMEOUT))
            .map_err(|e| HydrateError::Source {
                message: format!(
                    "cannot set up the S3 client for {}: {e}",
                    self.url(&self.active_prefix)
                ),
                offline: false,
            })?;
        // Custom endpoints (MinIO, R2, Ceph, s3s) are addressed path-style;
        // on AWS a dotted bucket name would break the TLS wildcard match of
        // virtual-hosted addressing, so it goes path-style too.
        Ok(
            if self.endpoint.is_some() || self.bucket_name.contains('.') {
                bucket.with_path_style()
            } else {
                bucket
            },
        )
    }

    /// A client for conditional operations below `<prefix>/active/` with the
    /// same credentials and addressing as hydration, each request bounded
    /// by `timeout`.
    pub fn cond_store(&self, timeout: Duration) -> Result<super::cond::Store, HydrateError> {
        let bucket =
            self.client()?
                .with_request_timeout(timeout)
                .map_err(|e| HydrateError::Source {
                    message: format!(
                        "cannot set up the S3 client for {}: {e}",
                        self.url(&self.active_prefix)
                    ),
                    offline: false,
                })?;
        Ok(super::cond::Store::new(
            bucket,
            self.active_prefix.clone(),
            self.endpoint_url(),
        ))
    }

    /// One line naming the fix for a failed S3 request. `action` is what we
    /// were doing ("listing s3://b/p/active/"), `permission` the IAM action
    /// that request needs, `object` the URL it needs it on.
    fn request_error(
        &self,
        err: S3Error,
        action: &str,
        permission: &str,
        object: &str,
    ) -> HydrateError {
        let (message, offline) = match &err {
            S3Error::HttpFailWithBody(status, body) => {
                self.http_failure(*status, body, action, permission, object)
            }
            S3Error::Atto(e) => self.transport_error(e, action),
            S3Error::Credentials(e) => (
                format!("cannot refresh the AWS credentials {action}: {}", creds_reason(e)),
                false,
            ),
            S3Error::SerdeXml(_) | S3Error::Utf8(_) | S3Error::FromUtf8(_) => (
                format!(
                    "S3 {} answered {action} with something that is not S3 XML: check that AUTH_PROFILE_S3_ENDPOINT points at an S3 API",
                    self.at()
                ),
                false,
            ),
            other => (format!("S3 request failed {action}: {other}"), false),
        };
        HydrateError::Source { message, offline }
    }

    /// An HTTP error answer, by its S3 error code and status: the message
    /// and whether the store counts as offline (the cache may serve).
    fn http_failure(
        &self,
        status: u16,
        body: &str,
        action: &str,
        permission: &str,
        object: &str,
    ) -> (String, bool) {
        let creds =
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (or AWS_PROFILE)";
        let code = error_code(body);
        let shown = code.unwrap_or("no error code");
        match (code, status) {
            (Some("NoSuchBucket"), _) => (self.no_bucket(), false),
            (Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem"), _) => (
                format!(
                    "access denied {action} ({shown}): the credentials need {permission} on {object}; grant it or {creds}"
                ),
                false,
            ),
            (Some("SignatureDoesNotMatch"), _) => (
                format!(
                    "S3 rejected the request signature {action} (SignatureDoesNotMatch): the secret key does not match the access key id; check AWS_SECRET_ACCESS_KEY (or the AWS_PROFILE entry of the credentials file); this request needs {permission} on {object}"
                ),
                false,
            ),
            (Some("InvalidAccessKeyId" | "InvalidClientTokenId" | "NotSignedUp"), _) => (
                format!(
                    "S3 does not know the access key id {action} ({shown}): check AWS_ACCESS_KEY_ID (or the AWS_PROFILE entry of the credentials file) and that it may use {permission} on {object}"
                ),
                false,
            ),
            (Some("ExpiredToken" | "InvalidToken" | "TokenRefreshRequired"), _) => (
                format!(
                    "S3 refused the session token {action} ({shown}): refresh AWS_SESSION_TOKEN together with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ),
                false,
            ),
            (Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"), _)
            | (None, 301) => (
                format!(
                    "S3 bucket {:?} is not in region {} ({shown}): set AUTH_PROFILE_S3_REGION to the bucket's region",
                    self.bucket_name, self.region
                ),
                false,
            ),
            (_, 403) => (
                format!(
                    "access denied {action} (HTTP 403, {shown}): the credentials need {permission} on {object}; grant it or {creds}"
                ),
                false,
            ),
            // The store (or the gateway before it) is unavailable,
            // even after rust-s3's retry: the cache may serve.
            (_, 502..=504) => (
                format!(
                    "S3 {} failed {action} (HTTP {status}, {shown}): the store is unavailable; retry later or check AUTH_PROFILE_S3_ENDPOINT",
                    self.at()
                ),
                true,
            ),
            _ => (
                format!(
                    "S3 {} answered HTTP {status} ({shown}) {action}: check AUTH_PROFILE_S3_BUCKET, AUTH_PROFILE_S3_PREFIX and AUTH_PROFILE_S3_ENDPOINT",
                    self.at()
                ),
                false,
            ),
        }
    }

    fn no_bucket(&self) -> String {
        let check = if self.endpoint.is_some() {
            "AUTH_PROFILE_S3_ENDPOINT"
        } else {
            "AUTH_PROFILE_S3_REGION"
        };
        format!(
            "S3 bucket {:?} does not exist ({}): check AUTH_PROFILE_S3_BUCKET and {check}",
            self.bucket_name,
            self.at()
        )
    }

    /// Failures below HTTP. Anything that means "could not get through"
    /// (refused, unresolvable, timed out, reset) is `offline`.
    fn transport_error(&self, e: &attohttpc_error::Error, action: &str) -> (String, bool) {
        use attohttpc_error::ErrorKind;
        let endpoint = self.endpoint_url();
        match e.kind() {
            ErrorKind::Io(io) => {
                let why = io_reason(io);
                let tls = io.kind() == std::io::ErrorKind::InvalidData;
                if tls {
                    // rustls reports handshake failures as InvalidData.
                    (
                        format!(
                            "cannot talk to S3 at {endpoint} {action} ({why}): check AUTH_PROFILE_S3_ENDPOINT (http:// or https://?) and the server's certificate"
                        ),
                        false,
                    )
                } else {
                    let check = if self.endpoint.is_some() {
                        "check that the store is up and AUTH_PROFILE_S3_ENDPOINT"
                    } else {
                        "check the network, AUTH_PROFILE_S3_REGION and AUTH_PROFILE_S3_ENDPOINT"
                    };
                    (
                        format!("cannot reach S3 at {endpoint} {action} ({why}): {check}"),
                        true,
                    )
                }
            }
            ErrorKind::Tls(t) => (
                format!(
                    "TLS with S3 at {endpoint} failed {action} ({t}): check AUTH_PROFILE_S3_ENDPOINT and the server's certificate"
                ),
                false,
            ),
            ErrorKind::InvalidUrlHost | ErrorKind::InvalidUrlPort | ErrorKind::InvalidDNSName(_) => (
                format!("S3 endpoint {endpoint} is not a usable URL ({e}): fix AUTH_PROFILE_S3_ENDPOINT"),
                false,
            ),
            _ => (
                format!("S3 at {endpoint} failed {action} ({e}): check AUTH_PROFILE_S3_ENDPOINT"),
                false,
            ),
        }
    }
}

/// attohttpc's error type, as rust-s3 exposes it (rust-s3 does not re-export
/// attohttpc; aws-creds does, through its error enum).
mod attohttpc_error {
    pub use attohttpc::{Error, ErrorKind};
}

fn aws_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://s3.{region}.amazonaws.com.cn")
    } else {
        format!("https://s3.{region}.amazonaws.com")
    }
}

/// A credentials failure, described without echoing anything it carried.
fn creds_reason(e: &CredentialsError) -> String {
    match e {
        CredentialsError::Atto(a) => match a.kind() {
            attohttpc_error::ErrorKind::Io(io) => io_reason(io),
            _ => "request failed".into(),
        },
        CredentialsError::UnexpectedStatusCode(s) => format!("HTTP {s}"),
        CredentialsError::SerdeXml(_) => "the answer was not credentials (rejected?)".into(),
        CredentialsError::Io(io) => format!("cannot read a file: {io}"),
        CredentialsError::Ini(_) => "the credentials file is not valid INI".into(),
        CredentialsError::ConfigNotFound => "no such section".into(),
        CredentialsError::ConfigMissingAccessKeyId => "the section has no aws_access_key_id".into(),
        CredentialsError::ConfigMissingSecretKey => {
            "the section has no aws_secret_access_key".into()
        }
        CredentialsError::ContainerCredentialsRequest => {
            "request failed or answer unreadable".into()
        }
        CredentialsError::InvalidContainerCredentialsUri => {
            "the endpoint URI is not allowed".into()
        }
        CredentialsError::InvalidContainerAuthorization => {
            "the authorization token is empty or invalid".into()
        }
        other => other.to_string(),
    }
}

fn creds_offline(e: &CredentialsError) -> bool {
    match e {
        CredentialsError::Atto(a) => matches!(a.kind(), attohttpc_error::ErrorKind::Io(_)),
        CredentialsError::ContainerCredentialsRequest => true,
        _ => false,
    }
}

fn env_set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The credential chain described in the module docs. Returns the
/// credentials and a description of their source (never their values).
/// What one credential source found: credentials and where they came
/// from, a failure worth stopping for, or nothing (ask the next source).
type Found = Option<Result<(Credentials, String), HydrateError>>;

fn fail(message: String, offline: bool) -> HydrateError {
    HydrateError::Source { message, offline }
}

fn resolve_credentials() -> Result<(Credentials, String), HydrateError> {
    s3::creds::set_request_timeout(Some(CREDENTIALS_TIMEOUT));
    from_environment()
        .or_else(from_credentials_file)
        .or_else(from_web_identity)
        .or_else(from_container)
        .or_else(from_instance_metadata)
        .unwrap_or_else(|| Err(fail(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE with a credentials file, or run with a web-identity, container or EC2 instance role".into(),
            false,
        )))
}

/// Source 1: The environment.
fn from_environment() -> Found {
    let key_id = env_set("AWS_ACCESS_KEY_ID");
    let secret = env_set("AWS_SECRET_ACCESS_KEY");
    Some(match (&key_id, &secret) {
        (Some(_), Some(_)) => Credentials::from_env()
            .map(|c| (c, "the environment (AWS_ACCESS_KEY_ID)".into()))
            .map_err(|e| {
                fail(format!("cannot read AWS credentials from the environment: {}", creds_reason(&e)), false)
            }),
        (Some(_), None) => Err(fail(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither to use another credential source".into(),
            false,
        )),
        (None, Some(_)) => Err(fail(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both, or neither to use another credential source".into(),
            false,
        )),
        (None, None) => return None,
    })
}

/// Source 2: The shared credentials file (aws-creds reads
/// `AWS_SHARED_CREDENTIALS_FILE` itself but not `AWS_PROFILE`).
fn from_credentials_file() -> Found {
    let profile = env_set("AWS_PROFILE");
    let file = env_set("AWS_SHARED_CREDENTIALS_FILE").or_else(|| {
        std::env::var_os("HOME").map(|h| format!("{}/.aws/credentials", h.to_string_lossy()))
    });
    let file_exists = file
        .as_deref()
        .is_some_and(|f| std::path::Path::new(f).is_file());
    if !file_exists && profile.is_none() {
        return None;
    }
    let section = profile.as_deref().unwrap_or("default");
    let shown_file = file.as_deref().unwrap_or("~/.aws/credentials");
    match Credentials::from_profile(Some(section)) {
        Ok(c) => Some(Ok((c, format!("profile [{section}] of {shown_file}")))),
        // Without AWS_PROFILE a file without [default] is not a choice
        // the operator made: keep looking.
        Err(e) if profile.is_some() => Some(Err(fail(
            format!(
                "AWS_PROFILE={section:?} is unusable: {} in {shown_file}: add aws_access_key_id and aws_secret_access_key to [{section}] (role_arn, sso and credential_process profiles are not supported), or unset AWS_PROFILE",
                creds_reason(&e)
            ),
            false,
        ))),
        Err(e) => {
            debug!("no [default] credentials in {shown_file}: {}", creds_reason(&e));
            None
        }
    }
}

/// Source 3: Web identity.
fn from_web_identity() -> Found {
    if env_set("AWS_ROLE_ARN").is_none() || env_set("AWS_WEB_IDENTITY_TOKEN_FILE").is_none() {
        return None;
    }
    Some(match Credentials::from_sts_env("aistudioproxy") {
        Ok(c) => Ok((c, "web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)".into())),
        Err(e) => Err(fail(
            format!(
                "cannot get AWS credentials by web identity from https://sts.amazonaws.com ({}): check AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE and the role's trust policy",
                creds_reason(&e)
            ),
            creds_offline(&e),
        )),
    })
}

/// Source 4: Container credentials.
fn from_container() -> Found {
    if env_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none()
        && env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_none()
    {
        return None;
    }
    Some(match Credentials::from_container_credentials_provider() {
        Ok(c) => Ok((c, "the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_*)".into())),
        Err(e) => Err(fail(
            format!(
                "cannot get AWS credentials from the container credentials endpoint ({}): check AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / AWS_CONTAINER_CREDENTIALS_FULL_URI and the task role",
                creds_reason(&e)
            ),
            creds_offline(&e),
        )),
    })
}

/// Source 5: EC2 instance metadata (aws-creds checks it runs on EC2 first).
fn from_instance_metadata() -> Found {
    match Credentials::from_instance_metadata_v2(false).or_else(|e| match e {
        CredentialsError::NotEc2 => Err(e),
        _ => Credentials::from_instance_metadata(false),
    }) {
        Ok(c) => Some(Ok((c, "EC2 instance metadata".into()))),
        Err(CredentialsError::NotEc2) => None,
        Err(e) => Some(Err(fail(
            format!(
                "cannot get AWS credentials from EC2 instance metadata ({}): attach an instance role, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                creds_reason(&e)
            ),
            creds_offline(&e),
        ))),
    }
}

/// What a listing of `<prefix>/active/` found, object by object.
#[derive(Default)]
struct Listing {
    names: Vec<String>,
    seen: usize,
    hidden: usize,
    other: usize,
    nested: Vec<String>,
    hostile: BTreeSet<String>,
}

impl Listing {
    /// One listed object.
    fn take(
        &mut self,
        src: &S3Source,
        key: &str,
        size: u64,
        where_: &str,
    ) -> Result<(), HydrateError> {
        self.seen += 1;
        let Some(rel) = key.strip_prefix(&src.active_prefix) else {
            return Ok(());
        };
        match classify(rel) {
            KeyKind::Profile(name) => {
                if size > MAX_PROFILE_BYTES {
                    return Err(fail(
                        format!(
                            "{} is {size} bytes, larger than {MAX_PROFILE_BYTES}: is it really a profile? remove it from {where_}",
                            src.url(key),
                        ),
                        false,
                    ));
                }
                self.names.push(name);
            }
            KeyKind::Other => self.other += 1,
            KeyKind::Hidden => self.hidden += 1,
            KeyKind::Nested => self.nested.push(key.to_string()),
            KeyKind::Hostile => {
                self.hostile.insert(key.to_string());
            }
        }
        Ok(())
    }

    /// Say what was skipped; refuse a listing with a key that would
    /// escape the cache.
    fn finish(self, src: &S3Source, where_: &str) -> Result<Vec<String>, HydrateError> {
        if let Some(first) = self.nested.first() {
            warn!(
                "skipping {} objects nested below {where_} (only objects directly under active/ are profiles), e.g. {first:?}",
                self.nested.len(),
            );
        }
        if self.hidden > 0 {
            warn!(
                "skipping {} hidden .*.json objects {}",
                self.hidden,
                src.location()
            );
        }
        if self.other > 0 {
            debug!(
                "ignoring {} objects that do not end in .json {}",
                self.other,
                src.location()
            );
        }
        for key in &self.hostile {
            warn!("refusing object {key:?}: its key would escape the cache directory");
        }
        if let Some(first) = self.hostile.into_iter().next() {
            return Err(HydrateError::UnsafeName { name: first });
        }
        Ok(self.names)
    }
}

impl Source for S3Source {
    fn location(&self) -> String {
        format!("under {}", self.url(&self.active_prefix))
    }

    fn key_location(&self) -> String {
        self.url(&self.key_object)
    }

    fn list(&self) -> Result<Vec<String>, HydrateError> {
        let bucket = self.client()?;
        let where_ = self.url(&self.active_prefix);
        let action = format!("listing {where_}");
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut token: Option<String> = None;
        let mut listing = Listing::default();
        for page in 0.. {
            if page >= MAX_LIST_PAGES {
                return Err(fail(format!(
                    "listing {where_} did not end after {MAX_LIST_PAGES} pages: is AUTH_PROFILE_S3_ENDPOINT a conforming S3 API?"
                ), false));
            }
            let (result, _) = bucket
                .list_page(
                    self.active_prefix.clone(),
                    None,
                    token.clone(),
                    None,
                    Some(1000),
                )
                .map_err(|e| self.request_error(e, &action, "s3:ListBucket", &where_))?;
            debug!(
                "listing {where_}: page {} holds {} objects (truncated: {})",
                page + 1,
                result.contents.len(),
                result.is_truncated
            );
            for object in &result.contents {
                listing.take(self, &object.key, object.size, &where_)?;
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                info!("listing {where_}: {} objects so far", listing.seen);
                last_report = Instant::now();
            }
            match (result.is_truncated, result.next_continuation_token) {
                (false, _) => break,
                (true, Some(next)) if Some(&next) != token.as_ref() => token = Some(next),
                (true, _) => {
                    return Err(fail(format!(
                        "listing {where_} is truncated without a new continuation token: is AUTH_PROFILE_S3_ENDPOINT a conforming S3 API?"
                    ), false))
                }
            }
        }
        let seen = listing.seen;
        let names = listing.finish(self, &where_)?;
        info!(
            "listed {seen} objects {} in {:.2?}: {} profiles",
            self.location(),
            started.elapsed(),
            names.len()
        );
        Ok(names)
    }

    fn fetch(&self, name: &str) -> Result<Vec<u8>, HydrateError> {
        self.fetch_versioned(name).map(|(bytes, _)| bytes)
    }

    fn fetch_versioned(&self, name: &str) -> Result<(Vec<u8>, Option<String>), HydrateError> {
        let bucket = self.client()?;
        let key = format!("{}{name}", self.active_prefix);
        let url = self.url(&key);
        let data = bucket
            .get_object(&key)
            .map_err(|e| match e {
                S3Error::HttpFailWithBody(404, ref body) if error_code(body) == Some("NoSuchKey") => {
                    HydrateError::Source {
                        message: format!(
                            "{url} vanished between listing and download: retry once the bucket stops changing"
                        ),
                        offline: false,
                    }
                }
                e => self.request_error(e, &format!("downloading {url}"), "s3:GetObject", &url),
            })?;
        let etag = super::cond::etag_of(&data);
        Ok((data.to_vec(), etag))
    }

    fn key_file(&self) -> Result<Option<Vec<u8>>, HydrateError> {
        let bucket = self.client()?;
        let url = self.url(&self.key_object);
        match bucket.get_object(&self.key_object) {
            Ok(data) => Ok(Some(data.to_vec())),
            // Missing key.txt means "no API keys"; hydrate_from says so.
            Err(S3Error::HttpFailWithBody(404, body))
                if error_code(&body) != Some("NoSuchBucket") =>
            {
                Ok(None)
            }
            Err(e) => {
                Err(self.request_error(e, &format!("downloading {url}"), "s3:GetObject", &url))
            }
        }
    }

    fn parallelism(&self) -> usize {
        self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_where_they_would_land() {
        for (rel, kind) in [
            ("a.json", KeyKind::Profile("a.json".into())),
            ("x y.json", KeyKind::Profile("x y.json".into())),
            ("", KeyKind::Other),
            ("notes.txt", KeyKind::Other),
            ("sub/", KeyKind::Other),
            ("../x.txt", KeyKind::Other),
            (".a.json", KeyKind::Hidden),
            ("._a.json", KeyKind::Hidden),
            ("sub/a.json", KeyKind::Nested),
            ("a/b/c.json", KeyKind::Nested),
            ("../a.json", KeyKind::Hostile),
            ("../../etc/a.json", KeyKind::Hostile),
            ("sub/../../a.json", KeyKind::Hostile),
            ("/a.json", KeyKind::Hostile),
            ("//etc/a.json", KeyKind::Hostile),
            ("./a.json", KeyKind::Hostile),
            ("sub//a.json", KeyKind::Hostile),
            ("a\\b.json", KeyKind::Hostile),
            ("..\\a.json", KeyKind::Hostile),
            ("a\n.json", KeyKind::Hostile),
            ("sub/a\n.json", KeyKind::Hostile),
        ] {
            assert_eq!(classify(rel), kind, "{rel:?}");
        }
    }

    fn source(prefix: &str, endpoint: Option<&str>) -> S3Source {
        S3Source::new(&S3Settings {
            bucket: Some("b".into()),
            prefix: prefix.into(),
            region: "eu-west-1".into(),
            endpoint: endpoint.map(str::to_string),
            download_threads: 8,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn layout_follows_the_spec_with_and_without_prefix() {
        let s = source("prod/coordinator", None);
        assert_eq!(s.active_prefix, "prod/coordinator/active/");
        assert_eq!(s.key_object, "prod/coordinator/key.txt");
        assert_eq!(s.location(), "under s3://b/prod/coordinator/active/");
        assert_eq!(s.endpoint_url(), "https://s3.eu-west-1.amazonaws.com");
        let s = source("", Some("http://127.0.0.1:9000/"));
        assert_eq!(s.active_prefix, "active/");
        assert_eq!(s.key_object, "key.txt");
        assert_eq!(s.endpoint_url(), "http://127.0.0.1:9000");
        assert!(s.no_bucket().contains("AUTH_PROFILE_S3_ENDPOINT"));
    }

    #[test]
    fn a_missing_bucket_setting_is_one_line_naming_the_variable() {
        let err = S3Source::new(&S3Settings {
            bucket: None,
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            download_threads: 8,
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("AUTH_PROFILE_S3_BUCKET is not set: PROFILE_BACKEND=s3 needs a bucket")
        );
    }
}
