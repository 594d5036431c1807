//! A proxy per account (`PROFILE_PROXIES_FILE`): the outbound proxy each
//! profile's browser uses, so every Google account is seen from an address
//! of its own.
//!
//! The file is written by hand, one line per profile:
//!
//! ```text
//! # profile        proxy URL
//! alice            http://user:pass@10.0.0.5:3128
//! bob              socks5://10.0.0.6:1080
//! ```
//!
//! Blank lines and `#` comments are skipped. A URL must be `http://`,
//! `https://` or `socks5://`, name a host and a port, and carry nothing after
//! the port but an optional `/`. A malformed line is refused with one message
//! naming its line number and profile, never its URL (it may hold
//! credentials); a profile listed twice is malformed too. Profiles the file
//! names that were not hydrated are only warned about (they may come with a
//! reload).
//!
//! At start a bad file is fatal (exit 2). A reload reads it again before
//! anything else changes; a bad file fails the whole reload and the old
//! table stays, so a profile never starts without the proxy it was given.
//! The table is shared by every watcher behind a mutex held only to swap or
//! clone an `Arc`; a child gets its proxy when it starts (`process::env`
//! puts it in that child's environment only). [`redact`] hides the
//! credentials of any URL in a text, for every place a URL is printed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One profile's proxy: the URL as written, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    url: String,
}

impl ProxyUrl {
    /// The URL with its credentials, only for the child's environment.
    pub fn secret(&self) -> &str {
        &self.url
    }
}

/// Never shows the credentials.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// Check one proxy URL; the error says what is wrong without echoing it.
pub fn parse_url(url: &str) -> Result<ProxyUrl, &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("not a URL: write scheme://host:port")?;
    if !["http", "https", "socks5"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err("the scheme must be http, https or socks5");
    }
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !tail.is_empty() && tail != "/" {
        return Err("nothing may follow host:port but an optional /");
    }
    let hostport = match authority.rfind('@') {
        Some(i) => {
            if i == 0 {
                return Err("empty credentials before @");
            }
            if !authority[..i].bytes().all(is_userinfo_byte) {
                return Err("the credentials hold a character that must be percent-encoded (%XX)");
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("an IPv6 host needs its closing ]")?;
        let port = after.strip_prefix(':').ok_or("no port: write host:port")?;
        (h, port)
    } else {
        hostport
            .rsplit_once(':')
            .ok_or("no port: write host:port")?
    };
    if host.is_empty() {
        return Err("no host");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || "@[]/".contains(c))
    {
        return Err("the host is not a host name or address");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("the port must be a number from 1 to 65535"),
    }
    Ok(ProxyUrl {
        url: url.to_string(),
    })
}

/// RFC 3986 `userinfo`: unreserved, percent escapes, sub-delims and `:`;
/// an `@` of the password must be encoded too, but the last `@` is taken
/// as the separator, so one left raw still parses and is still hidden.
fn is_userinfo_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@".contains(&b)
}

/// `text` with everything between `scheme://` and the last `@` before the
/// next whitespace (the user and password of a `scheme://user:pass@host`,
/// whatever their characters) replaced by `***`; an `@` further on in a
/// path hides the path too, which is the safe side. Borrowed when there is
/// nothing to hide.
pub fn redact(text: &str) -> Cow<'_, str> {
    match redact_bytes(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // Only ASCII was cut out and replaced: still UTF-8.
        Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
    }
}

/// [`redact`] over bytes (a child's log lines need not be UTF-8).
pub fn redact_bytes(text: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = find(text, b"://", 0) else {
        return Cow::Borrowed(text);
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = Some(first);
    while let Some(sep) = at {
        let start = sep + 3;
        // Credentials may hold any character but whitespace (a quote, a
        // slash, a bracket): the span ends at whitespace or the end only.
        let end = text[start..]
            .iter()
            .position(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            .map_or(text.len(), |i| start + i);
        if let Some(at_sign) = text[start..end].iter().rposition(|b| *b == b'@') {
            let buf = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
            buf.extend_from_slice(&text[copied..start]);
            buf.extend_from_slice(b"***");
            copied = start + at_sign;
        }
        at = find(text, b"://", end);
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.extend_from_slice(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| from + i)
}

/// Profile name to proxy.
pub type Table = BTreeMap<String, ProxyUrl>;

/// A malformed line: which, for which profile, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub profile: Option<String>,
    pub why: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.profile {
            Some(p) => write!(f, "line {} (profile {p}): {}", self.line, self.why),
            None => write!(f, "line {}: {}", self.line, self.why),
        }
    }
}

/// Parse the file's text; the first malformed line refuses it all.
pub fn parse(text: &str) -> Result<Table, LineError> {
    let mut table = Table::new();
    let mut first_at: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut words = content.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        if name.contains("://") || name.contains('@') {
            // A URL where the name belongs: never echoed (it may hold
            // credentials).
            return Err(LineError {
                line,
                profile: None,
                why: "a line must start with a profile name, then its proxy URL".into(),
            });
        }
        let err = |why: String| LineError {
            line,
            profile: Some(name.clone()),
            why,
        };
        let url = match (words.next(), words.next()) {
            (Some(u), None) => u,
            (None, _) => return Err(err("no proxy URL after the profile name".into())),
            (Some(_), Some(w)) if w.starts_with('#') => {
                return Err(err("a comment must be on a line of its own".into()))
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "more than a profile name and a proxy URL (a URL cannot hold spaces)".into(),
                ))
            }
        };
        if let Some(first) = first_at.get(&name) {
            return Err(err(format!("listed twice (first on line {first})")));
        }
        let proxy = parse_url(url).map_err(|why| err(why.to_string()))?;
        first_at.insert(name.clone(), line);
        table.insert(name, proxy);
    }
    Ok(table)
}

/// The proxies in force, shared by the watchers (read at each start) and
/// the reloader (swapped whole).
#[derive(Debug, Default)]
pub struct Proxies {
    path: Option<PathBuf>,
    table: Mutex<Arc<Table>>,
}

impl Proxies {
    /// Say how many of these profiles have a proxy of their own, and warn
    /// of names in the file that match none of them (a typo, or one still
    /// to come).
    pub fn note(&self, profiles: &[String]) {
        if self.len() == 0 {
            return;
        }
        let unknown = self.unknown(profiles);
        log::info!(
            "PROFILE_PROXIES_FILE: {} of {} profiles have a proxy of their own",
            self.len() - unknown.len(),
            profiles.len()
        );
        if !unknown.is_empty() {
            log::warn!(
                "PROFILE_PROXIES_FILE names profiles that do not exist: {} (a typo, or not hydrated yet)",
                unknown.join(", ")
            );
        }
    }

    /// No file: no profile has a proxy of its own.
    pub fn none() -> Proxies {
        Proxies::default()
    }

    /// Read `path` (PROFILE_PROXIES_FILE), refusing it whole on any error.
    pub fn load(path: Option<&Path>) -> Result<Proxies, String> {
        let table = match path {
            Some(p) => read(p)?,
            None => Table::new(),
        };
        Ok(Proxies {
            path: path.map(Path::to_path_buf),
            table: Mutex::new(Arc::new(table)),
        })
    }

    fn current(&self) -> Arc<Table> {
        // Only an Arc is swapped under it: a poisoned lock is coherent.
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The proxy of `profile`, if it has one.
    pub fn of(&self, profile: &str) -> Option<ProxyUrl> {
        self.current().get(profile).cloned()
    }

    /// How many profiles have a proxy.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Read the file again (a reload). On error nothing changes. Returns
    /// the profiles whose proxy changed (added, removed or replaced).
    #[cfg(test)]
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let fresh = self.read_again()?;
        Ok(self.swap(fresh))
    }

    /// The file as it is now, checked, not yet in force (None: no file).
    pub fn read_again(&self) -> Result<Option<Table>, String> {
        self.path.as_deref().map(read).transpose()
    }

    /// Put `fresh` (from `read_again`) in force. Returns the profiles whose
    /// proxy changed (added, removed or replaced).
    pub fn swap(&self, fresh: Option<Table>) -> Vec<String> {
        let Some(fresh) = fresh else {
            return Vec::new();
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let old = table.clone();
        let mut changed: Vec<String> = old
            .keys()
            .chain(fresh.keys())
            .filter(|n| old.get(*n) != fresh.get(*n))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        *table = Arc::new(fresh);
        changed
    }

    /// The names the file lists that are not among `profiles`, sorted.
    pub fn unknown(&self, profiles: &[String]) -> Vec<String> {
        self.current()
            .keys()
            .filter(|n| !profiles.contains(n))
            .cloned()
            .collect()
    }
}

fn read(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read PROFILE_PROXIES_FILE {}: {e}; fix the path or unset it",
            path.display()
        )
    })?;
    parse(&text).map_err(|e| {
        format!(
            "PROFILE_PROXIES_FILE {} {e}: fix that line (format: profile-name proxy-URL)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_table() {
        let ok = [
            "http://10.0.0.5:3128",
            "http://user:pass@10.0.0.5:3128",
            "http://user:pass@10.0.0.5:3128/",
            "https://proxy.example:443",
            "socks5://u:p@127.0.0.1:1080",
            "SOCKS5://127.0.0.1:1080",
            "http://[::1]:3128",
            "http://us%40er:p%3Ass@host:8080",
            "http://token@host:8080",
        ];
        for u in ok {
            assert!(parse_url(u).is_ok(), "{u} refused: {:?}", parse_url(u));
        }
        let bad = [
            ("10.0.0.5:3128", "not a URL"),
            ("ftp://h:21", "scheme"),
            ("socks4://h:1080", "scheme"),
            ("http://h", "no port"),
            ("http://user:pass@h", "no port"),
            ("http://:3128", "no host"),
            ("http://h:0", "port"),
            ("http://h:65536", "port"),
            ("http://h:31x", "port"),
            ("http://h:3128/path", "nothing may follow"),
            ("http://h:3128?x=1", "nothing may follow"),
            ("http://@h:3128", "empty credentials"),
            ("http://[::1:3128", "closing ]"),
        ];
        for (u, why) in bad {
            let e = parse_url(u).unwrap_err();
            assert!(e.contains(why), "{u}: {e}");
        }
    }

    #[test]
    fn file_lines_comments_and_errors_name_the_line_and_profile() {
        let text =
            "# proxies\n\nalice   http://u:p@10.0.0.5:3128\n  bob\tsocks5://10.0.0.6:1080  \n";
        let t = parse(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t["alice"].secret(), "http://u:p@10.0.0.5:3128");
        assert_eq!(t["alice"].to_string(), "http://***@10.0.0.5:3128");

        let cases: &[(&str, usize, &str, &str)] = &[
            ("a http://u:secretpw@h\n", 1, "a", "no port"),
            (
                "# c\na http://h:1\nb ftp://u:secretpw@h:2\n",
                3,
                "b",
                "scheme",
            ),
            (
                "a http://h:1\na http://h:2\n",
                2,
                "a",
                "listed twice (first on line 1)",
            ),
            ("a\n", 1, "a", "no proxy URL"),
            ("a http://u:secretpw@h:1 extra\n", 1, "a", "more than"),
            ("a http://h:1 # note\n", 1, "a", "own"),
        ];
        for (text, line, profile, why) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}");
            assert_eq!(e.profile.as_deref(), Some(*profile), "{text:?}");
            let shown = e.to_string();
            assert!(shown.contains(why), "{text:?}: {shown}");
            assert!(!shown.contains("secretpw"), "credentials echoed: {shown}");
            assert!(!shown.contains('\n'), "one line: {shown}");
        }
        // A line with only a URL: the URL is not taken for a name and shown.
        for text in ["http://u:secretpw@h:1\n", "u:secretpw@h:1 x\n"] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.profile, None, "{text:?}");
            assert!(!e.to_string().contains("secretpw"), "{e}");
        }
        // Characters that need escaping in a password are refused, unechoed.
        let e = parse("a http://u:se\"cret<pw>@h:1\n").unwrap_err();
        assert!(e.to_string().contains("percent-encoded"), "{e}");
        assert!(!e.to_string().contains("cret"), "{e}");
        assert!(parse("a http://u:se%22cret@h:1\n").is_ok());
    }

    #[test]
    fn redaction_hides_every_userinfo_and_keeps_the_rest() {
        let table: &[(&str, &str)] = &[
            ("no url here", "no url here"),
            ("http://h:1", "http://h:1"),
            ("http://u:p@h:1", "http://***@h:1"),
            ("http://token@h:1/", "http://***@h:1/"),
            (
                "Env var UNIFIED_PROXY_CONFIG: socks5://u:p@w@h:1 and https://a:b@x:2/path?q=c@d",
                "Env var UNIFIED_PROXY_CONFIG: socks5://***@h:1 and https://***@d",
            ),
            ("'http://u:p@h:1'", "'http://***@h:1'"),
            (
                "mail me@host, see http://h/a b@c",
                "mail me@host, see http://h/a b@c",
            ),
            // Whatever the password holds, up to the last @.
            ("x=http://u:p\"'<>`/?#w@h:1 y", "x=http://***@h:1 y"),
            ("\"http://u:a\"b@h:1\"", "\"http://***@h:1\""),
            ("trailing ://", "trailing ://"),
        ];
        for (text, want) in table {
            assert_eq!(redact(text), *want, "{text}");
        }
        assert!(matches!(redact("http://h:1"), Cow::Borrowed(_)));
        let raw = b"\xff http://u:p@h:1 \xfe\n";
        assert_eq!(&*redact_bytes(raw), b"\xff http://***@h:1 \xfe\n");
    }

    #[test]
    fn reload_swaps_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("aisp-outbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxies");
        std::fs::write(&path, "a http://u:p@h:1\nb http://h:2\n").unwrap();
        let p = Proxies::load(Some(&path)).unwrap();
        assert_eq!(p.of("a").unwrap().secret(), "http://u:p@h:1");
        assert_eq!(p.unknown(&["a".into()]), vec!["b".to_string()]);

        std::fs::write(&path, "a http://u:p@h:1\nb nonsense\n").unwrap();
        let e = p.reload().unwrap_err();
        assert!(e.contains("line 2 (profile b)"), "{e}");
        assert!(!e.contains("u:p"), "{e}");
        assert_eq!(
            p.of("b").unwrap().secret(),
            "http://h:2",
            "the old table stays"
        );

        std::fs::write(&path, "a http://u:p@h:1\nc http://h:3\n").unwrap();
        assert_eq!(p.reload().unwrap(), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(p.of("b"), None);
        assert_eq!(p.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);

        let e = Proxies::load(Some(&dir.join("missing"))).unwrap_err();
        assert!(e.starts_with("cannot read PROFILE_PROXIES_FILE"), "{e}");
        assert_eq!(Proxies::none().of("a"), None);
    }
}
