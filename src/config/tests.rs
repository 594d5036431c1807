//! The parser's tests: defaults, flags over variables, one-line refusals.

use super::table::flag_of;
use super::*;

fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(
        args.iter().map(OsString::from).collect(),
        &env,
        Path::new("/srv"),
    )
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Config {
    match parse(args, env).unwrap() {
        Invocation::Run(c) => *c,
        other => panic!("expected a run, got {other:?}"),
    }
}

fn err(args: &[&str], env: &[(&str, &str)]) -> String {
    parse(args, env).unwrap_err().to_string()
}

#[test]
fn defaults_follow_the_spec() {
    let c = run(&[], &[]);
    assert_eq!(c.backend, Backend::Local);
    assert_eq!(
        c.local_profile_dir,
        PathBuf::from("/srv/auth_profiles/active")
    );
    assert_eq!(c.cache_dir, PathBuf::from("/tmp/auth_profiles"));
    assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 2048));
    assert_eq!(
        c.ports.slot(1),
        Ports {
            api: 3101,
            stream: 3201,
            camoufox: 9223
        }
    );
    assert!(c.headless);
    assert!(c.hold_stream_head);
    assert_eq!(c.pool_size, 2);
    assert_eq!(c.ready_timeout, Duration::from_secs(60));
    assert_eq!(c.child_command, vec!["python", "launch_camoufox.py"]);
    assert_eq!(c.s3.region, "us-east-1");
    assert_eq!(c.log_dir, PathBuf::from("/srv/logs/coordinator"));
    assert_eq!(c.header_timeout, Duration::from_secs(30));
    assert_eq!(c.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(c.max_connections, 4096);
    assert_eq!(c.max_inflight_per_child, 1);
    assert_eq!(c.max_queue, 512);
    assert_eq!(c.queue_timeout, Duration::from_secs(120));
    assert_eq!(c.consecutive_5xx_to_evict, 3);
    assert_eq!(c.writeback, WritebackMode::S3);
    assert_eq!(c.writeback_interval, Duration::from_secs(600));
}

#[test]
fn gentle_settings_parse_and_refuse_in_one_line() {
    let c = run(&[], &[]);
    assert_eq!(c.start_stagger, Duration::ZERO);
    assert_eq!(c.recycle, crate::recycle::Limits::default());
    assert_eq!(c.profile_proxies_file, None);
    assert_eq!(c.keepalive.every, Some(Duration::from_secs(43_200)));
    assert_eq!(c.keepalive.max_runtime, None);
    let k = run(
        &["--profile-keepalive-s", "0"],
        &[("PROFILE_MAX_RUNTIME_S", "7200")],
    )
    .keepalive;
    assert_eq!(
        (k.every, k.max_runtime),
        (None, Some(Duration::from_secs(7200)))
    );
    assert_eq!(
        err(&[], &[("PROFILE_KEEPALIVE_S", "12h")]),
        "invalid PROFILE_KEEPALIVE_S=\"12h\": expected an integer from 0 to 31536000"
    );
    let c = run(
        &["--start-stagger-s", "1.5", "--child-max-rss-mb=800"],
        &[
            ("CHILD_MAX_AGE_S", "3600"),
            ("CHILD_RSS_SAMPLE_S", "2"),
            ("PROFILE_PROXIES_FILE", "proxies.txt"),
        ],
    );
    assert_eq!(c.start_stagger, Duration::from_millis(1500));
    assert_eq!(c.recycle.max_rss, Some(800 * 1024 * 1024));
    assert_eq!(c.recycle.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(c.recycle.sample, Duration::from_secs(2));
    assert_eq!(
        c.profile_proxies_file,
        Some(PathBuf::from("/srv/proxies.txt"))
    );
    for (v, ms) in [
        ("0", 0),
        ("2", 2000),
        ("0.25", 250),
        ("3.14159", 3141),
        ("10.0", 10_000),
    ] {
        assert_eq!(
            run(&[], &[("START_STAGGER_S", v)]).start_stagger,
            Duration::from_millis(ms),
            "{v}"
        );
    }
    for v in ["-1", "1.", ".5", "1,5", "soon", "3601", "1e3"] {
        assert_eq!(
            err(&[], &[("START_STAGGER_S", v)]),
            format!(
                "invalid START_STAGGER_S={v:?}: expected seconds from 0 to 3600, such as 2 or 1.5"
            ),
        );
    }
    assert_eq!(
        err(&[], &[("CHILD_RSS_SAMPLE_S", "0")]),
        "invalid CHILD_RSS_SAMPLE_S=\"0\": expected an integer from 1 to 3600"
    );
    assert_eq!(
        err(&[], &[("CHILD_MAX_RSS_MB", "lots")]),
        "invalid CHILD_MAX_RSS_MB=\"lots\": expected an integer from 0 to 16777216"
    );
}

#[test]
fn connection_limits_are_read_and_checked() {
    let c = run(
        &["--header-timeout-s", "1", "--max-connections=50"],
        &[("KEEPALIVE_TIMEOUT_S", "2")],
    );
    assert_eq!(c.header_timeout, Duration::from_secs(1));
    assert_eq!(c.keepalive_timeout, Duration::from_secs(2));
    assert_eq!(c.max_connections, 50);
    assert_eq!(
        err(&[], &[("HEADER_TIMEOUT_S", "0")]),
        "invalid HEADER_TIMEOUT_S=\"0\": expected an integer from 1 to 3600"
    );
    assert_eq!(
        err(&[], &[("KEEPALIVE_TIMEOUT_S", "soon")]),
        "invalid KEEPALIVE_TIMEOUT_S=\"soon\": expected an integer from 1 to 3600"
    );
    assert_eq!(
        err(&[], &[("MAX_CONNECTIONS", "7")]),
        "invalid MAX_CONNECTIONS=\"7\": expected an integer from 8 to 1000000"
    );
}

#[test]
fn writeback_settings_parse_and_refuse_in_one_line() {
    let c = run(
        &["--auth-writeback", "ALL"],
        &[("AUTH_WRITEBACK_INTERVAL_S", "30")],
    );
    assert_eq!(c.writeback, WritebackMode::All);
    assert_eq!(c.writeback_interval, Duration::from_secs(30));
    assert_eq!(
        run(&[], &[("AUTH_WRITEBACK", "off")]).writeback,
        WritebackMode::Off
    );
    assert_eq!(
        err(&[], &[("AUTH_WRITEBACK", "local")]),
        "invalid AUTH_WRITEBACK=\"local\": expected s3, all or off"
    );
    assert_eq!(
        err(&["--auth-writeback-interval-s=0"], &[]),
        "invalid AUTH_WRITEBACK_INTERVAL_S=\"0\": expected an integer from 1 to 86400"
    );
}

#[test]
fn leases_need_s3_a_fitting_ttl_and_a_replica_id() {
    assert_eq!(run(&[], &[]).leases, Leases::Off);
    let s3 = [
        ("PROFILE_BACKEND", "s3"),
        ("PROFILE_LEASES", "s3"),
        ("REPLICA_ID", "pod-1"),
    ];
    assert_eq!(
        run(&[], &s3).leases,
        Leases::S3 {
            ttl: Duration::from_secs(60),
            replica: "pod-1".into()
        }
    );
    let e = err(&[], &[("PROFILE_LEASES", "s3")]);
    assert!(e.contains("needs PROFILE_BACKEND=s3"), "{e}");
    let e = err(&[], &[s3[0], s3[1], s3[2], ("LEASE_TTL_S", "20")]);
    assert!(e.contains("LEASE_TTL_S=20 is too short"), "{e}");
    let e = err(&[], &[s3[0], s3[1], ("REPLICA_ID", "a/b")]);
    assert!(e.contains("REPLICA_ID"), "{e}");
    let e = err(&[], &[("PROFILE_LEASES", "yes")]);
    assert!(e.contains("off or s3"), "{e}");
    // The host name when no REPLICA_ID is given.
    match run(&[], &[s3[0], s3[1], ("HOSTNAME", "web-7")]).leases {
        Leases::S3 { replica, .. } => assert_eq!(replica, "web-7"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn flags_win_over_environment() {
    let c = run(
        &["--base-api-port", "4000", "--port-step=10"],
        &[("BASE_API_PORT", "5000"), ("POOL_SIZE", "3")],
    );
    assert_eq!(c.ports.base_api, 4000);
    assert_eq!(c.ports.slot(2).api, 4020);
    assert_eq!(c.pool_size, 3);
}

#[test]
fn child_command_after_double_dash() {
    let c = run(
        &["--", "python3", "/opt/aisp/launch camoufox.py"],
        &[("CHILD_COMMAND", "x")],
    );
    assert_eq!(
        c.child_command,
        vec!["python3", "/opt/aisp/launch camoufox.py"]
    );
}

#[test]
fn region_and_endpoint_fall_back_to_aws_variables() {
    let c = run(
        &[],
        &[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ],
    );
    assert_eq!(c.s3.region, "eu-west-1");
    assert_eq!(c.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    let c = run(
        &[],
        &[
            ("AWS_REGION", "a"),
            ("AUTH_PROFILE_S3_REGION", "b"),
            ("AUTH_PROFILE_S3_PREFIX", "/x/y/"),
        ],
    );
    assert_eq!(c.s3.region, "b");
    assert_eq!(c.s3.prefix, "x/y");
}

#[test]
fn bad_values_name_the_variable_and_the_accepted_values() {
    assert_eq!(
        err(&[], &[("BASE_API_PORT", "abc")]),
        "invalid BASE_API_PORT=\"abc\": expected an integer from 1 to 65535"
    );
    assert_eq!(
        err(&[], &[("PORT_STEP", "0")]),
        "invalid PORT_STEP=\"0\": expected an integer from 1 to 65535"
    );
    assert_eq!(
        err(&[], &[("PROFILE_BACKEND", "gcs")]),
        "invalid PROFILE_BACKEND=\"gcs\": expected local or s3"
    );
    assert_eq!(
        err(&[], &[("HEADLESS", "maybe")]),
        "invalid HEADLESS=\"maybe\": expected true or false"
    );
    assert_eq!(
        err(&[], &[("HOLD_STREAM_HEAD", "sometimes")]),
        "invalid HOLD_STREAM_HEAD=\"sometimes\": expected true or false"
    );
    assert!(err(&[], &[("BASE_API_PORT", "65535")]).contains("past 65535"));
    assert!(err(&[], &[("BASE_STREAM_PORT", "3101")]).contains("port 3101 is used twice"));
    assert!(err(&[], &[("COORDINATOR_PORT", "3100")]).contains("COORDINATOR_PORT"));
    assert!(err(&[], &[("CHILD_COMMAND", "python 'unclosed")]).starts_with("invalid CHILD_COMMAND"));
    assert_eq!(
        err(&["--nope"], &[]),
        "unknown option --nope: see aistudioproxy --help"
    );
}

#[test]
fn interleaved_ranges_are_fine_when_ports_differ() {
    let c = run(
        &[],
        &[
            ("PORT_STEP", "2"),
            ("BASE_STREAM_PORT", "3101"),
            ("POOL_SIZE", "4"),
        ],
    );
    assert_eq!(
        c.ports.slot(3),
        Ports {
            api: 3106,
            stream: 3107,
            camoufox: 9228
        }
    );
}

#[test]
fn words_split_like_a_shell_without_one() {
    assert_eq!(split_words("  a  b\tc ").unwrap(), vec!["a", "b", "c"]);
    assert_eq!(
        split_words(r#"py "a b" 'c d' e\ f "x\"y" ''"#).unwrap(),
        vec!["py", "a b", "c d", "e f", "x\"y", ""]
    );
    assert_eq!(split_words("$HOME;rm").unwrap(), vec!["$HOME;rm"]);
    assert!(split_words("\"open").is_err());
}

#[test]
fn help_lists_every_setting() {
    let h = help_text();
    for s in SETTINGS {
        assert!(h.contains(s.env) && h.contains(&flag_of(s.env)));
    }
}

/// docs/configuration.md is the table's reference; regenerate it with
/// `AISP_BLESS=1 cargo test config::` after changing a setting.
#[test]
fn the_reference_page_is_the_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let want = reference_markdown();
    if std::env::var_os("AISP_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md differs from the settings table in src/config/table.rs: \
         run AISP_BLESS=1 cargo test config:: and commit the page"
    );
}

#[test]
fn every_setting_is_documented_in_both_texts() {
    for s in SETTINGS {
        assert!(!s.summary.is_empty() && !s.doc.is_empty(), "{}", s.env);
    }
}
