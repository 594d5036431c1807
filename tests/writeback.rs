//! Write-back, from outside: what our S3 test server enforces (write-back's
//! conflict handling rests on it), and the write-back settings of the real
//! binary. The write-back logic itself is tested through the real hydration
//! code by the binary's unit tests (`src/writeback/tests.rs`: there is no
//! library target to call from here); the watcher wiring comes with
//! end-to-end tests of its own.
//!
//! Which server for what: s3s-fs 0.14.1 (installed by scripts/test.sh)
//! enforces `If-Match: <etag>` and `If-None-Match: *` on PutObject, answering
//! 412 PreconditionFailed, which the tests below prove. It checks them
//! before writing, without a lock, so two racing writers could both pass
//! (AWS would answer one of them 409): fine for tests that write from one
//! place at a time. It ignores `If-Match` on DeleteObject, and it has one
//! key pair with every permission, so a 403 on writes only comes from a
//! fake endpoint in the unit tests.

use std::process::Command;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};

use crate::s3::{hydrate_only, s3_env, S3Server, TempDir, ACCESS_KEY, SECRET_KEY};

fn bucket(s3: &S3Server, name: &str) -> Box<Bucket> {
    s3.bucket(name);
    let region = Region::Custom {
        region: "us-east-1".into(),
        endpoint: s3.endpoint(),
    };
    let creds = Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
        .expect("static credentials");
    Bucket::new(name, region, creds)
        .expect("bucket client")
        .with_path_style()
}

fn with_header(b: &Bucket, k: &str, v: &str) -> Bucket {
    let mut b = b.clone();
    b.add_header(k, v);
    b
}

fn status(r: Result<s3::request::ResponseData, S3Error>) -> u16 {
    match r {
        Ok(d) => d.status_code(),
        Err(S3Error::HttpFailWithBody(status, _)) => status,
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

#[test]
fn writeback_s3s_fs_enforces_put_preconditions() {
    let s3 = S3Server::start();
    let b = bucket(&s3, "cond");
    let key = "active/a.json";

    // If-None-Match: * creates once, then refuses.
    let absent = with_header(&b, "if-none-match", "*");
    assert_eq!(status(absent.put_object(key, b"{\"cookies\":[]}")), 200);
    assert_eq!(status(absent.put_object(key, b"{}")), 412);

    // If-Match holds only for the current ETag.
    let etag = b
        .get_object(key)
        .expect("get")
        .headers()
        .get("etag")
        .cloned()
        .expect("an ETag header");
    let stale = with_header(&b, "if-match", "\"00000000000000000000000000000000\"");
    assert_eq!(status(stale.put_object(key, b"{\"x\":1}")), 412);
    let current = with_header(&b, "if-match", &etag);
    assert_eq!(status(current.put_object(key, b"{\"cookies\":[1]}")), 200);
    // ... and the old ETag no longer matches after that write.
    assert_eq!(status(current.put_object(key, b"{\"cookies\":[2]}")), 412);
    // If-Match on a missing object fails too.
    let missing = with_header(&b, "if-match", &etag);
    assert_eq!(status(missing.put_object("active/none.json", b"{}")), 412);
    assert_eq!(
        b.get_object(key).expect("get").as_slice(),
        b"{\"cookies\":[1]}"
    );
}

#[test]
fn writeback_settings_are_checked_before_anything_runs() {
    let tmp = TempDir::new("wb-settings");
    let cache = tmp.path().join("cache");
    for (name, value, expected) in [
        (
            "AUTH_WRITEBACK",
            "local",
            "invalid AUTH_WRITEBACK=\"local\": expected s3, all or off",
        ),
        (
            "AUTH_WRITEBACK_INTERVAL_S",
            "0",
            "invalid AUTH_WRITEBACK_INTERVAL_S=\"0\": expected an integer from 1 to 86400",
        ),
    ] {
        let run = hydrate_only(&[
            ("AUTH_PROFILE_CACHE_DIR", cache.to_str().expect("UTF-8")),
            (name, value),
        ]);
        run.expect_code(2);
        assert_eq!(run.error_line(), expected, "{run}");
        assert!(!cache.exists(), "nothing may be staged on a bad setting");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_aistudioproxy"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--auth-writeback ") && help.contains("AUTH_WRITEBACK_INTERVAL_S"));
}

#[test]
fn writeback_hydration_stages_no_working_copies() {
    // Working copies belong to child starts; hydration only stages active/.
    let s3 = S3Server::start();
    s3.put("auth", "active/a.json", b"{\"cookies\":[]}");
    let tmp = TempDir::new("wb-hydrate");
    let cache = tmp.path().join("cache");
    let endpoint = s3.endpoint();
    let mut env = s3_env(&endpoint, "auth", &cache);
    env.push(("AUTH_WRITEBACK", "all"));
    hydrate_only(&env).expect_code(0);
    assert!(cache.join("active/a.json").is_file());
    assert!(!cache.join("running").exists());
}
