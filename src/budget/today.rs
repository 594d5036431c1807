//! The current budget day's counts, kept in the usage ledger and saved with
//! it: per API key (by label) the completions let in and the tokens their
//! answers reported, per profile and model the answers; plus, unsaved, each
//! rate-limited key's completions of the last 60 s. The per-key limit check
//! ([`Today::admit`]) reads and counts here in one step under the ledger's
//! lock. Everything rolls over at the budget day's end. Pure: the caller
//! passes the time (ms since the epoch, on the budget clock).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Day;
use crate::budget::limits::{Limits, Over, Refusal};

/// The sliding window of `rpm`, in whole seconds.
const MINUTE_S: i64 = 60;

/// One key's day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDay {
    /// Completions let in.
    pub requests: u64,
    /// Tokens their answers reported.
    pub tokens: u64,
    /// Alerts sent today (`rpd:80`, `tpd:100`, ...): each goes once a day.
    #[serde(default)]
    pub alerted: BTreeSet<String>,
    /// The key's limits when it last came (for the token alerts).
    #[serde(skip)]
    pub limits: Option<Arc<Limits>>,
}

/// One profile and model's day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDay {
    pub answers: u64,
    pub ok: u64,
    pub tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Today {
    /// Days since 1970-01-01 in the budget zone (with `ends_unix` 0: unset).
    pub day: i64,
    /// `YYYY-MM-DD` in the budget zone.
    pub date: String,
    /// When the day ends (Unix seconds).
    pub ends_unix: i64,
    pub keys: BTreeMap<String, KeyDay>,
    /// profile -> model -> counts.
    pub profiles: BTreeMap<String, BTreeMap<String, ModelDay>>,
    /// Key label -> its completions of the last 60 s, per second; kept
    /// only for keys with `rpm` (at most 60 buckets each, whatever the rate).
    #[serde(skip)]
    minutes: HashMap<String, VecDeque<(i64, u64)>>,
}

/// A key came near or to one of its daily limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub key: String,
    /// `rpd` or `tpd`.
    pub limit_name: &'static str,
    pub used: u64,
    pub limit: u64,
    /// The limit is reached (else the threshold).
    pub reached: bool,
}

impl Alert {
    pub fn text(&self) -> String {
        let what = match self.limit_name {
            "rpd" => "completions per day",
            _ => "tokens per day",
        };
        let pct = self.used.saturating_mul(100) / self.limit.max(1);
        match self.reached {
            true => format!(
                "key {}: reached its limit of {} {what} ({}={})",
                self.key, self.limit, self.limit_name, self.limit
            ),
            false => format!(
                "key {}: used {pct}% of its {} {what} ({} of {})",
                self.key, self.limit, self.used, self.limit
            ),
        }
    }
}

impl Today {
    /// Start a new day when `now_ms` is past this one's end.
    pub fn roll(&mut self, now_ms: i64) {
        let now_s = now_ms.div_euclid(1000);
        if self.ends_unix != 0 && now_s < self.ends_unix {
            return;
        }
        let d = Day::at(now_s);
        if d.number != self.day || self.ends_unix == 0 {
            self.keys.clear();
            self.profiles.clear();
        }
        self.day = d.number;
        self.date = d.date();
        self.ends_unix = d.ends;
    }

    /// After loading saved counts: the day they belong to is checked
    /// against the zone in force now (it may have changed, or the clock
    /// moved back); counts of another day are dropped, the end is fixed.
    pub fn recheck(&mut self, now_ms: i64) {
        if self.ends_unix == 0 {
            return;
        }
        let d = Day::at(now_ms.div_euclid(1000));
        if d.number != self.day {
            self.ends_unix = 0;
            self.roll(now_ms);
        } else {
            self.ends_unix = d.ends;
        }
    }

    /// Let a completion of key `label` in (and count it) unless one of its
    /// limits is reached; the alerts it brings about.
    pub fn admit(
        &mut self,
        label: &str,
        limits: &Arc<Limits>,
        percent: u8,
        now_ms: i64,
    ) -> Result<Vec<Alert>, Refusal> {
        self.roll(now_ms);
        let until_day_ends = (self.ends_unix - now_ms.div_euclid(1000)).max(1) as u64;
        let day = self.keys.get(label);
        let (requests, tokens) = day.map_or((0, 0), |d| (d.requests, d.tokens));
        if let Some(rpd) = limits.rpd.filter(|l| requests >= *l) {
            return Err(refusal(Over::Daily, rpd, until_day_ends));
        }
        if let Some(tpd) = limits.tpd.filter(|l| tokens >= *l) {
            return Err(refusal(Over::Tokens, tpd, until_day_ends));
        }
        if let Some(rpm) = limits.rpm {
            let now_s = now_ms.div_euclid(1000);
            if !self.minutes.contains_key(label) {
                self.minutes.insert(label.to_string(), VecDeque::new());
            }
            let w = self.minutes.get_mut(label).expect("inserted above");
            while w.front().is_some_and(|(t, _)| t + MINUTE_S <= now_s) {
                w.pop_front();
            }
            if w.iter().map(|(_, n)| n).sum::<u64>() >= rpm {
                let frees = w.front().map_or(now_s, |(t, _)| t + MINUTE_S);
                return Err(refusal(Over::Rate, rpm, (frees - now_s).max(1) as u64));
            }
            match w.back_mut() {
                Some((t, n)) if *t == now_s => *n += 1,
                _ => w.push_back((now_s, 1)),
            }
        }
        if !self.keys.contains_key(label) {
            self.keys.insert(label.to_string(), KeyDay::default());
        }
        let day = self.keys.get_mut(label).expect("inserted above");
        day.requests += 1;
        if !day.limits.as_ref().is_some_and(|l| Arc::ptr_eq(l, limits)) {
            day.limits = Some(limits.clone());
        }
        Ok(alerts(label, day, percent))
    }

    /// One answer of `profile` to a completion for `model`.
    pub fn answered(&mut self, profile: &str, model: &str, ok: bool, now_ms: i64) {
        self.roll(now_ms);
        let m = self.model(profile, model);
        m.answers += 1;
        m.ok += u64::from(ok);
    }

    /// The tokens an answer of `profile` reported, for `key`'s completion.
    pub fn tokens(
        &mut self,
        profile: &str,
        model: &str,
        key: Option<&str>,
        total: u64,
        percent: u8,
        now_ms: i64,
    ) -> Vec<Alert> {
        self.roll(now_ms);
        self.model(profile, model).tokens += total;
        let Some(label) = key else { return vec![] };
        let day = self.keys.entry(label.to_string()).or_default();
        day.tokens += total;
        alerts(label, day, percent)
    }

    /// Served completions of `profile` in budget day `day` that another
    /// replica counted (its lease said so): each model's `ok` is raised to
    /// at least that (never lowered, never added: both may have seen the
    /// same answers). Counts of another day than today's are ignored;
    /// true when they were today's.
    pub fn learn(
        &mut self,
        day: i64,
        profile: &str,
        counts: &BTreeMap<String, u64>,
        now_ms: i64,
    ) -> bool {
        self.roll(now_ms);
        if day != self.day {
            return false;
        }
        for (m, n) in counts {
            let d = self.model(profile, m);
            d.ok = d.ok.max(*n);
            d.answers = d.answers.max(d.ok);
        }
        true
    }

    /// `profile`'s served completions per model today (its budget day and
    /// the counts), None when it served none; read-only, so a day that
    /// ended without a roll counts as none.
    pub fn served(&self, profile: &str, now_ms: i64) -> Option<(i64, BTreeMap<String, u64>)> {
        if self.ends_unix == 0 || now_ms.div_euclid(1000) >= self.ends_unix {
            return None;
        }
        let counts: BTreeMap<String, u64> = self
            .profiles
            .get(profile)?
            .iter()
            .filter(|(_, d)| d.ok > 0)
            .map(|(m, d)| (m.clone(), d.ok))
            .collect();
        (!counts.is_empty()).then_some((self.day, counts))
    }

    fn model(&mut self, profile: &str, model: &str) -> &mut ModelDay {
        let by_model = self.profiles.entry(profile.to_string()).or_default();
        by_model.entry(model.to_string()).or_default()
    }

    /// Completions of `label` in the last 60 s.
    pub fn last_minute(&self, label: &str, now_ms: i64) -> u64 {
        let now_s = now_ms.div_euclid(1000);
        self.minutes.get(label).map_or(0, |w| {
            w.iter()
                .filter(|(t, _)| t + MINUTE_S > now_s)
                .map(|(_, n)| n)
                .sum()
        })
    }
}

impl Today {
    /// One key's day as `/v1/budget` and the usage views show it: its
    /// limits, what it used, what is left, when the day resets.
    pub fn key_view(&self, label: &str, limits: &Limits, now_ms: i64) -> serde_json::Value {
        let mut t = self.clone();
        t.roll(now_ms);
        let day = t.keys.get(label).cloned().unwrap_or_default();
        let minute = t.last_minute(label, now_ms);
        let left = |limit: Option<u64>, used: u64| limit.map(|l| l.saturating_sub(used));
        serde_json::json!({
            "key": label,
            "limits": limits.view(),
            "today": {"requests": day.requests, "tokens": day.tokens, "last_minute": minute},
            "remaining": {
                "rpm": left(limits.rpm, minute),
                "rpd": left(limits.rpd, day.requests),
                "tpd": left(limits.tpd, day.tokens),
            },
            "day": t.date,
            "resets_at_unix": t.ends_unix,
        })
    }

    /// The day for `ctl usage` and the status page: every key's use (with
    /// its limits when it has any) and every profile and model's answers.
    pub fn view(&self, limited: &[(String, Arc<Limits>)], now_ms: i64) -> serde_json::Value {
        let mut t = self.clone();
        t.roll(now_ms);
        let mut labels: BTreeSet<&String> = t.keys.keys().collect();
        labels.extend(limited.iter().map(|(l, _)| l));
        let none = Limits::default();
        let keys: Vec<_> = labels
            .into_iter()
            .map(|l| {
                let limits = limited
                    .iter()
                    .find(|(k, _)| k == l)
                    .map_or(&none, |(_, x)| x);
                t.key_view(l, limits, now_ms)
            })
            .collect();
        let profiles: Vec<_> = t
            .profiles
            .iter()
            .flat_map(|(p, models)| {
                models.iter().map(move |(m, d)| {
                    serde_json::json!({"profile": p, "model": m, "answers": d.answers, "ok": d.ok, "tokens": d.tokens})
                })
            })
            .collect();
        serde_json::json!({
            "day": t.date,
            "zone": super::zone_name(),
            "resets_at_unix": t.ends_unix,
            "keys": keys,
            "profiles": profiles,
        })
    }
}

fn refusal(over: Over, limit: u64, retry_after_s: u64) -> Refusal {
    Refusal {
        over,
        limit,
        retry_after_s,
    }
}

/// The alerts `day`'s counts call for now, each marked sent.
fn alerts(label: &str, day: &mut KeyDay, percent: u8) -> Vec<Alert> {
    let Some(limits) = day.limits.clone() else {
        return vec![];
    };
    let mut out = vec![];
    for (name, limit, used) in [
        ("rpd", limits.rpd, day.requests),
        ("tpd", limits.tpd, day.tokens),
    ] {
        let Some(limit) = limit else { continue };
        let threshold = (limit * u64::from(percent)).div_ceil(100).max(1);
        for (reached, at, tag) in [(false, threshold, percent), (true, limit, 100)] {
            let mark = format!("{name}:{tag}");
            if used >= at && !day.alerted.contains(&mark) {
                day.alerted.insert(mark);
                // At the limit at once: only the "reached" one.
                if reached || used < limit {
                    out.push(Alert {
                        key: label.to_string(),
                        limit_name: name,
                        used,
                        limit,
                        reached,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "today_tests.rs"]
mod tests;
