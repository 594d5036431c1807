//! Account signs in a child's log: the lines by which a child says that its
//! login expired or that its account ran out of quota. The real child says
//! both only in its log (its exit code is 0 and its `/health` stays 200), so
//! the log pump of each child hands every line to [`Signs::classify`].
//!
//! Pure: the patterns are plain substrings (the child's messages are fixed
//! strings), matched in order, the first match wins. The defaults match the
//! current upstream child and the older fork; an operator adds patterns with
//! `CHILD_SIGNALS_FILE` (see [`Signs::parse`] for its format). Rate limits
//! are checked before quotas, so a line that names its type is read as that
//! type; a quota line whose own text says "too many requests" is a rate
//! limit, as the child itself decides.

use std::fmt;
use std::path::Path;

/// What a line says about the child's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sign {
    /// The login expired: the profile needs a new one.
    LoginNeeded,
    /// A rate limit: the account rests briefly.
    RateLimit,
    /// Out of quota: the account rests long.
    Quota,
}

impl Sign {
    fn from_word(w: &str) -> Option<Sign> {
        match w {
            "login" | "login_needed" => Some(Sign::LoginNeeded),
            "rate_limit" => Some(Sign::RateLimit),
            "quota" => Some(Sign::Quota),
            _ => None,
        }
    }
}

impl fmt::Display for Sign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sign::LoginNeeded => "login needed",
            Sign::RateLimit => "rate limit",
            Sign::Quota => "quota exhausted",
        })
    }
}

/// The default patterns: the current child's and the older fork's lines.
const DEFAULTS: &[(Sign, &str)] = &[
    // Current child: both lines, then exit 0.
    (
        Sign::LoginNeeded,
        "Detected redirect to login page in headless mode",
    ),
    (
        Sign::LoginNeeded,
        "Auth failed in headless mode, auth file update required",
    ),
    // The older fork, which then hangs.
    (Sign::LoginNeeded, "无头模式下检测到重定向至登录页面"),
    (Sign::RateLimit, "Type: RATE_LIMIT"),
    (Sign::Quota, "Type: QUOTA_EXCEEDED"),
    (Sign::Quota, "Quota Exceeded"),
    (Sign::Quota, "quota exceeded"),
    (Sign::Quota, "Quota limit hit"),
    (Sign::Quota, "RESOURCE_EXHAUSTED"),
];

/// A quota line with one of these is a rate limit (the child's own rule).
const RATE_WORDS: &[&str] = &["too many requests", "rate limit"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signs {
    rules: Vec<(Sign, String)>,
}

impl Default for Signs {
    fn default() -> Signs {
        Signs {
            rules: DEFAULTS.iter().map(|(s, p)| (*s, p.to_string())).collect(),
        }
    }
}

/// A bad `CHILD_SIGNALS_FILE`.
#[derive(Debug)]
pub enum SignsError {
    Read(std::path::PathBuf, std::io::Error),
    Line { line: usize, why: &'static str },
}

impl fmt::Display for SignsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignsError::Read(p, e) => write!(
                f,
                "cannot read CHILD_SIGNALS_FILE {}: {e}; fix the path or unset it",
                p.display()
            ),
            SignsError::Line { line, why } => write!(
                f,
                "CHILD_SIGNALS_FILE line {line}: {why}; write `login: <text>`, `quota: <text>` or `rate_limit: <text>`"
            ),
        }
    }
}

impl std::error::Error for SignsError {}

impl Signs {
    /// The defaults plus the patterns of the file at `path`.
    pub fn load(path: &Path) -> Result<Signs, SignsError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SignsError::Read(path.to_path_buf(), e))?;
        Signs::parse(&text)
    }

    /// The defaults plus `text`'s patterns: one per line, `kind: text`,
    /// where kind is `login`, `quota` or `rate_limit` and text is matched
    /// as a plain substring (case-sensitive, trimmed); blank lines and
    /// lines starting with `#` are skipped. An operator's patterns are
    /// tried before the defaults.
    pub fn parse(text: &str) -> Result<Signs, SignsError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| SignsError::Line { line: i + 1, why };
            let (kind, pattern) = line.split_once(':').ok_or(bad("no `:`"))?;
            let sign = Sign::from_word(kind.trim()).ok_or(bad("unknown kind"))?;
            let pattern = pattern.trim();
            if pattern.is_empty() {
                return Err(bad("empty pattern"));
            }
            rules.push((sign, pattern.to_string()));
        }
        // Rate limits first among the operator's too, so a line naming both
        // reads as the narrower one.
        rules.sort_by_key(|(s, _)| *s != Sign::RateLimit && *s != Sign::LoginNeeded);
        rules.extend(Signs::default().rules);
        Ok(Signs { rules })
    }

    /// What `line` says, if anything.
    pub fn classify(&self, line: &str) -> Option<Sign> {
        let sign = self
            .rules
            .iter()
            .find(|(_, p)| line.contains(p.as_str()))
            .map(|(s, _)| *s)?;
        if sign == Sign::Quota && !line.contains("Type: QUOTA_EXCEEDED") {
            let lower = line.to_lowercase();
            if RATE_WORDS.iter().any(|w| lower.contains(w)) {
                return Some(Sign::RateLimit);
            }
        }
        Some(sign)
    }

    /// How many patterns are in force.
    pub fn len(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_childrens_lines() {
        let s = Signs::default();
        let table: &[(&str, Option<Sign>)] = &[
            ("2026-12-01 10:00:00 - WARNING - Detected redirect to login page in headless mode, authentication may have expired. Please update the auth file.", Some(Sign::LoginNeeded)),
            ("ERROR - Auth failed in headless mode, auth file update required.", Some(Sign::LoginNeeded)),
            ("ERROR - 无头模式下检测到重定向至登录页面，认证可能已失效。请更新认证文件。", Some(Sign::LoginNeeded)),
            ("WARNING - [abc1234] Quota Exceeded: AI Studio quota exceeded: 429 RESOURCE_EXHAUSTED", Some(Sign::Quota)),
            ("CRITICAL - ⛔ GLOBAL ALERT: Quota Exceeded! Type: RATE_LIMIT (Event Signal Sent)", Some(Sign::RateLimit)),
            ("CRITICAL - ⛔ GLOBAL ALERT: Quota Exceeded! Type: QUOTA_EXCEEDED (Event Signal Sent)", Some(Sign::Quota)),
            ("[x] Quota limit hit during stream: AI Studio quota exceeded: 429. Initiating rotation", Some(Sign::Quota)),
            ("[x] Quota Exceeded: 429 Too Many Requests", Some(Sign::RateLimit)),
            ("INFO - [x] request done in 12.1 s", None),
            ("ERROR:    Application startup failed. Exiting.", None),
        ];
        for (line, want) in table {
            assert_eq!(s.classify(line), *want, "{line}");
        }
    }

    #[test]
    fn an_operators_file_adds_patterns_first() {
        let s = Signs::parse(
            "# our proxy's words\n\nquota: daily limit reached\nlogin: please sign in\nrate_limit:  slow down \n",
        )
        .unwrap();
        assert_eq!(s.len(), DEFAULTS.len() + 3);
        assert_eq!(s.classify("x daily limit reached"), Some(Sign::Quota));
        assert_eq!(s.classify("please sign in now"), Some(Sign::LoginNeeded));
        assert_eq!(s.classify("slow down please"), Some(Sign::RateLimit));
        assert_eq!(s.classify("Type: RATE_LIMIT"), Some(Sign::RateLimit));
    }

    #[test]
    fn bad_lines_name_the_line_and_the_fix() {
        let e = Signs::parse("quota: x\nnonsense\n").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("CHILD_SIGNALS_FILE line 2: no `:`"));
        let e = Signs::parse("banana: x").unwrap_err();
        assert!(e.to_string().contains("unknown kind"));
        let e = Signs::parse("quota:   ").unwrap_err();
        assert!(e.to_string().contains("empty pattern"));
        assert!(e.to_string().contains("`login: <text>`"));
    }
}
