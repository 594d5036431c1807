//! The budgets file (`MODEL_BUDGETS_FILE`), pure: daily request budgets per
//! model for each tier of accounts, and which profiles are in which tier.
//! An operator writes it by hand:
//!
//! ```text
//! default = free                 # the tier of every profile no tier names
//!
//! [free]
//! gemini-2.5-pro   = 20          # requests a day, per account
//! gemini-2.5-flash = 50
//! gemini-3-pro     = off         # never sent to this tier's accounts
//! *                = unlimited   # every other model (the default)
//!
//! [paid]
//! profiles = paid-*, carol       # names or globs (`*`, `?`)
//! gemini-2.5-pro = 1000
//! ```
//!
//! A model line names a model or a prefix: `gemini-2.5-pro` covers that
//! model and every model whose name starts with it (a trailing `*` may say
//! so); the longest line that matches wins, and every model a line covers
//! counts against that line's one budget (a family's quota). A profile is
//! in the first tier (in file order) whose `profiles` match it, else in the
//! `default` tier, else in none: no budget, every model allowed.
//!
//! Parsing only; what an account has left is `accounts`.

use std::fmt;
use std::path::Path;

/// The largest budget a line may give.
const MAX_BUDGET: u64 = 1_000_000_000;
/// The most tiers, and model lines per tier, a file may have.
const MAX_TIERS: usize = 64;
const MAX_RULES: usize = 256;

/// What a tier allows of the models a line covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// This many requests per budget day (never 0: `0` is `Off`).
    Budget(u64),
    /// Never sent to this tier's accounts.
    Off,
    /// No budget.
    Unlimited,
}

/// One model line of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The prefix it covers (`*` dropped); empty for the `*` line.
    pub prefix: String,
    pub allow: Allow,
}

impl Rule {
    /// How the file writes what it covers: `gemini-2.5-pro*`, or `*`.
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    /// Profile names or globs (`*`, `?`).
    pub members: Vec<String>,
    /// Longest prefix first.
    pub rules: Vec<Rule>,
}

impl Tier {
    /// The line that covers `model`: the longest prefix; None when no line
    /// does (the model is unlimited).
    pub fn rule_for(&self, model: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| model.starts_with(&r.prefix))
    }
}

/// A whole budgets file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub tiers: Vec<Tier>,
    /// Index in `tiers` of the default tier.
    pub default: Option<usize>,
}

/// A line of the file that cannot be used: its number, what is wrong and
/// how to fix it, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "MODEL_BUDGETS_FILE: {}", self.message),
            n => write!(f, "MODEL_BUDGETS_FILE line {n}: {}", self.message),
        }
    }
}

fn err(line: usize, message: impl Into<String>) -> PlanError {
    PlanError {
        line,
        message: message.into(),
    }
}

impl Plan {
    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read(path).map_err(|e| {
            err(
                0,
                format!(
                    "cannot read {}: {e}; point MODEL_BUDGETS_FILE at a readable file",
                    path.display()
                ),
            )
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| err(0, "not UTF-8 text; save the file as UTF-8"))?;
        Plan::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        let mut default: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                plan.open_tier(n, rest)?;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(n, format!("{:?} is not `model = budget`, `profiles = ...`, `default = tier` or `[tier]`", clip(line))));
            };
            let (key, value) = (key.trim(), value.trim());
            match (key, plan.tiers.last_mut()) {
                ("default", None) => {
                    if default.is_some() {
                        return Err(err(n, "a second `default` line; keep one"));
                    }
                    default = Some((n, value.to_string()));
                }
                (_, None) => {
                    return Err(err(
                        n,
                        format!("{:?} comes before any `[tier]` header; put model and profiles lines under one", clip(key)),
                    ))
                }
                ("profiles", Some(t)) => members(n, t, value)?,
                (model, Some(t)) => rule(n, t, model, value)?,
            }
        }
        for t in &mut plan.tiers {
            t.rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        }
        if let Some((n, name)) = default {
            let i = plan.tiers.iter().position(|t| t.name == name);
            plan.default = Some(i.ok_or_else(|| {
                err(n, format!("`default = {}` names no tier of the file; add a `[{}]` section or name one of its tiers", clip(&name), clip(&name)))
            })?);
        }
        for (i, t) in plan.tiers.iter().enumerate() {
            if t.members.is_empty() && plan.default != Some(i) {
                return Err(err(0, format!("tier [{}] has no `profiles = ...` line and is not the default; add one, or `default = {}` at the top", t.name, t.name)));
            }
        }
        Ok(plan)
    }

    fn open_tier(&mut self, n: usize, rest: &str) -> Result<(), PlanError> {
        let name = rest
            .strip_suffix(']')
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.chars().all(name_char))
            .ok_or_else(|| {
                err(
                    n,
                    "a tier header is `[name]`, the name of letters, digits, `-`, `_` and `.`",
                )
            })?;
        if self.tiers.iter().any(|t| t.name == name) {
            return Err(err(
                n,
                format!("tier [{name}] again; merge its lines into the first"),
            ));
        }
        if self.tiers.len() >= MAX_TIERS {
            return Err(err(n, format!("more than {MAX_TIERS} tiers")));
        }
        self.tiers.push(Tier {
            name: name.to_string(),
            members: Vec::new(),
            rules: Vec::new(),
        });
        Ok(())
    }

    /// The tier `profile` is in, if any.
    pub fn tier_of(&self, profile: &str) -> Option<&Tier> {
        self.tiers
            .iter()
            .find(|t| t.members.iter().any(|g| glob(g, profile)))
            .or_else(|| self.default.and_then(|i| self.tiers.get(i)))
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// One line for the log: the tiers and how many model lines each has.
    pub fn summary(&self) -> String {
        let tiers: Vec<String> = self
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let default = if self.default == Some(i) {
                    ", the default"
                } else {
                    ""
                };
                format!("[{}] {} models{default}", t.name, t.rules.len())
            })
            .collect();
        format!("{} tiers: {}", tiers.len(), tiers.join("; "))
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn model_char(c: char) -> bool {
    name_char(c) || matches!(c, ':' | '/' | '@' | '+')
}

fn members(n: usize, t: &mut Tier, value: &str) -> Result<(), PlanError> {
    if !t.members.is_empty() {
        return Err(err(
            n,
            format!(
                "a second `profiles` line in [{}]; list every name on one",
                t.name
            ),
        ));
    }
    for g in value.split([',', ' ', '\t']).filter(|g| !g.is_empty()) {
        if !g
            .chars()
            .all(|c| name_char(c) || matches!(c, '*' | '?' | '@' | '+'))
        {
            return Err(err(
                n,
                format!(
                    "{:?} is not a profile name or glob (letters, digits, `-_.@+`, `*` and `?`)",
                    clip(g)
                ),
            ));
        }
        t.members.push(g.to_string());
    }
    if t.members.is_empty() {
        return Err(err(
            n,
            "`profiles =` lists no name; list names or globs such as `paid-*`",
        ));
    }
    Ok(())
}

fn rule(n: usize, t: &mut Tier, model: &str, value: &str) -> Result<(), PlanError> {
    let prefix = model.strip_suffix('*').unwrap_or(model);
    if prefix.contains('*') || !prefix.chars().all(model_char) || model.is_empty() {
        return Err(err(n, format!("{:?} is not a model name or prefix (letters, digits, `-_.:/@+`, an optional `*` at the end)", clip(model))));
    }
    let allow = match value {
        "off" => Allow::Off,
        "unlimited" => Allow::Unlimited,
        v => match v.parse::<u64>() {
            Ok(0) => Allow::Off,
            Ok(b) if b <= MAX_BUDGET => Allow::Budget(b),
            _ => {
                return Err(err(n, format!("{:?} is not a budget; write a whole number of requests per day (at most {MAX_BUDGET}), `off` or `unlimited`", clip(v))))
            }
        },
    };
    if t.rules.iter().any(|r| r.prefix == prefix) {
        return Err(err(
            n,
            format!("{model} again in [{}]; keep one line per model", t.name),
        ));
    }
    if t.rules.len() >= MAX_RULES {
        return Err(err(
            n,
            format!("more than {MAX_RULES} model lines in [{}]", t.name),
        ));
    }
    t.rules.push(Rule {
        prefix: prefix.to_string(),
        allow,
    });
    Ok(())
}

/// At most 60 characters of a file's text, for an error line.
fn clip(s: &str) -> String {
    let cut: String = s.chars().take(60).collect();
    cut.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: one character).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with one backtrack point: linear in
    // practice, never exponential.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some('*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(c) if *c == '?' || *c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
# budgets
default = free

[free]
gemini-2.5-pro   = 20     # pro family
gemini-2.5-flash = 50
gemini-2.5-flash-lite* = 200
gemini-3-pro     = off
*                = unlimited

[paid]
profiles = paid-*, carol
gemini-2.5-pro = 1000
gemini-3-pro = 0
";

    #[test]
    fn a_file_gives_tiers_rules_and_members() {
        let p = Plan::parse(GOOD).unwrap();
        assert_eq!(p.tiers.len(), 2);
        assert_eq!(p.default, Some(0));
        let free = &p.tiers[0];
        let rule = |m: &str| free.rule_for(m).map(|r| (r.prefix.as_str(), r.allow));
        assert_eq!(
            rule("gemini-2.5-pro"),
            Some(("gemini-2.5-pro", Allow::Budget(20)))
        );
        assert_eq!(
            rule("gemini-2.5-pro-preview-06-05"),
            Some(("gemini-2.5-pro", Allow::Budget(20))),
            "a prefix covers the family"
        );
        assert_eq!(
            rule("gemini-2.5-flash-lite"),
            Some(("gemini-2.5-flash-lite", Allow::Budget(200))),
            "the longest line wins"
        );
        assert_eq!(
            rule("gemini-3-pro-preview"),
            Some(("gemini-3-pro", Allow::Off))
        );
        assert_eq!(rule("gpt-4o"), Some(("", Allow::Unlimited)));
        assert_eq!(
            p.tiers[1].rule_for("gemini-3-pro").unwrap().allow,
            Allow::Off,
            "0 is off"
        );
        assert_eq!(
            p.tiers[1].rule_for("gemini-2.5-flash"),
            None,
            "no line: unlimited"
        );
        let tier = |name: &str| p.tier_of(name).map(|t| t.name.as_str());
        assert_eq!(tier("paid-1"), Some("paid"));
        assert_eq!(tier("carol"), Some("paid"));
        assert_eq!(tier("carol2"), Some("free"), "the default for the rest");
        let no_default = Plan::parse("[paid]\nprofiles = p?\nx = 1\n").unwrap();
        assert_eq!(
            no_default.tier_of("p1").map(|t| t.name.as_str()),
            Some("paid")
        );
        assert!(no_default.tier_of("q1").is_none(), "no tier: no budget");
        assert!(Plan::parse("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_their_number_and_the_fix() {
        let table: &[(&str, &str)] = &[
            (
                "gemini = 3\n",
                "line 1: \"gemini\" comes before any `[tier]` header",
            ),
            (
                "[free]\nprofiles = a\npro = twenty\n",
                "line 3: \"twenty\" is not a budget; write a whole number",
            ),
            (
                "[free]\nprofiles = a\npro = -1\n",
                "line 3: \"-1\" is not a budget",
            ),
            (
                "[free]\nprofiles = a\npro = 1\npro* = 2\n",
                "line 4: pro* again in [free]",
            ),
            ("[free\n", "line 1: a tier header is `[name]`"),
            ("[a b]\n", "line 1: a tier header is `[name]`"),
            (
                "[free]\nprofiles = a\n[free]\n",
                "line 3: tier [free] again",
            ),
            (
                "default = gold\n[free]\nprofiles = a\n",
                "line 1: `default = gold` names no tier",
            ),
            (
                "[free]\nx = 1\n",
                "tier [free] has no `profiles = ...` line and is not the default",
            ),
            (
                "[free]\nprofiles = a\nprofiles = b\n",
                "line 3: a second `profiles` line",
            ),
            (
                "[free]\nprofiles = a;b\n",
                "line 2: \"a;b\" is not a profile name or glob",
            ),
            (
                "[free]\nprofiles = a\ngem ini = 1\n",
                "line 3: \"gem ini\" is not a model name",
            ),
            (
                "[free]\nprofiles = a\nge*mini = 1\n",
                "line 3: \"ge*mini\" is not a model name",
            ),
            (
                "[free]\nprofiles = a\njust words\n",
                "line 3: \"just words\" is not `model = budget`",
            ),
            (
                "default = a\ndefault = a\n",
                "line 2: a second `default` line",
            ),
        ];
        for (text, want) in table {
            let e = Plan::parse(text).unwrap_err().to_string();
            assert!(e.starts_with("MODEL_BUDGETS_FILE"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = Plan::load(Path::new("/nonexistent/budgets")).unwrap_err();
        assert!(
            e.to_string()
                .contains("point MODEL_BUDGETS_FILE at a readable file"),
            "{e}"
        );
    }

    #[test]
    fn globs_match_runs_and_single_characters() {
        let table = [
            ("*", "anything", true),
            ("paid-*", "paid-1", true),
            ("paid-*", "paid-", true),
            ("paid-*", "free-1", false),
            ("p?", "p1", true),
            ("p?", "p12", false),
            ("*@example.com", "carol@example.com", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("carol", "carol", true),
            ("carol", "carol2", false),
        ];
        for (p, n, want) in table {
            assert_eq!(glob(p, n), want, "{p} {n}");
        }
        let long = "a".repeat(200);
        assert!(!glob(&format!("{}b", "*a".repeat(30)), &long), "no blow-up");
    }
}
