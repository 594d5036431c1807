//! The account budgets (`MODEL_BUDGETS_FILE`) as `ctl status` and `ctl
//! usage` print them: a table per account and model line (used / budget,
//! the reset) and one of the fleet's lines. Reads the JSON answers only
//! (`budget::view::Fleet` and `accounts::Line`); runs in the `ctl` process.

use serde_json::Value;

use super::text::{columns, human, text};

/// `budgets` (the `budgets` object of a status or usage answer) and each
/// account's `lines`, as tables; empty when no budgets file is in force.
pub fn table<'a>(
    budgets: &Value,
    lines: impl IntoIterator<Item = &'a Value>,
    now_ms: u64,
) -> String {
    if !budgets.is_object() {
        return String::new();
    }
    let reset = |v: &Value| {
        v.as_i64().map_or("-".to_string(), |s| {
            let ms = (s.max(0) as u64).saturating_mul(1000);
            format!("in {}", human(ms.saturating_sub(now_ms)))
        })
    };
    let mut out = format!(
        "\nbudgets today {} ({}), reset {} at {}:\n",
        text(&budgets["day"]),
        text(&budgets["zone"]),
        reset(&budgets["resets_at_unix"]),
        budgets["resets_at_unix"]
            .as_i64()
            .map_or("-".to_string(), |s| crate::civil::utc(s, ' ')),
    );
    let mut rows = vec![["PROFILE", "TIER", "MODEL", "USED/BUDGET", "RESETS"]
        .map(String::from)
        .to_vec()];
    for l in lines {
        let used = l["used"].as_u64().unwrap_or(0);
        let (of, resets) = match l["budget"].as_u64() {
            None => ("off".to_string(), "-".to_string()),
            Some(b) if used >= b => (format!("{used}/{b} spent"), reset(&l["resets_at_unix"])),
            Some(b) => (format!("{used}/{b}"), reset(&l["resets_at_unix"])),
        };
        rows.push(vec![
            text(&l["profile"]),
            text(&l["tier"]),
            text(&l["model"]),
            of,
            resets,
        ]);
    }
    if rows.len() > 1 {
        out.push_str(&columns(&rows));
    }
    let mut fleet = vec![["FLEET MODEL", "ACCOUNTS", "USED/BUDGET", "LEFT", "RESETS"]
        .map(String::from)
        .to_vec()];
    for f in budgets["lines"].as_array().into_iter().flatten() {
        fleet.push(vec![
            text(&f["model"]),
            text(&f["accounts"]),
            format!("{}/{}", text(&f["used"]), text(&f["budget"])),
            text(&f["left"]),
            reset(&f["resets_at_unix"]),
        ]);
    }
    match fleet.len() {
        1 => out.push_str("no model line with a budget covers a placed account\n"),
        _ => out.push_str(&columns(&fleet)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn budgets_read_as_an_account_table_and_a_fleet_table() {
        let b = json!({"zone": "America/Los_Angeles", "day": "2026-12-07", "resets_at_unix": 1_796_716_800,
            "lines": [{"model": "gemini-test*", "accounts": 2, "budget": 5, "used": 5, "left": 0, "resets_at_unix": 1_796_716_800}]});
        let lines = [
            json!({"profile": "alice", "tier": "free", "model": "gemini-test*", "used": 3, "budget": 3, "resets_at_unix": 1_796_716_800}),
            json!({"profile": "alice", "tier": "free", "model": "gemini-pro*", "used": 0, "budget": null, "resets_at_unix": 1_796_716_800}),
            json!({"profile": "paid-bob", "tier": "paid", "model": "gemini-test*", "used": 1, "budget": 2, "resets_at_unix": 1_796_716_800}),
        ];
        let now_ms = (1_796_716_800 - 2 * 3600 - 60) * 1000;
        let t = table(&b, &lines, now_ms);
        assert!(
            t.contains("budgets today 2026-12-07 (America/Los_Angeles), reset in 2h01m at 2026-12-08 08:00:00Z:"),
            "{t}"
        );
        assert!(
            t.contains("PROFILE   TIER  MODEL         USED/BUDGET  RESETS"),
            "{t}"
        );
        assert!(
            t.contains("alice     free  gemini-test*  3/3 spent    in 2h01m"),
            "{t}"
        );
        assert!(
            t.contains("alice     free  gemini-pro*   off          -"),
            "{t}"
        );
        assert!(
            t.contains("paid-bob  paid  gemini-test*  1/2          in 2h01m"),
            "{t}"
        );
        assert!(
            t.contains("FLEET MODEL   ACCOUNTS  USED/BUDGET  LEFT  RESETS"),
            "{t}"
        );
        assert!(
            t.contains("gemini-test*  2         5/5          0     in 2h01m"),
            "{t}"
        );
        assert_eq!(table(&Value::Null, &lines, now_ms), "");
    }
}
