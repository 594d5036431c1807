// The status page: reads POST /admin/console every 2 s with the admin key
// (kept in this tab's sessionStorage, sent in a header, never in a URL) and
// draws it. Every value goes in through textContent or a DOM attribute:
// nothing from the server is ever parsed as markup.
"use strict";
(function () {
  const KEY = "aisp-admin-key";
  const REFRESH_MS = 2000;
  const $ = (id) => document.getElementById(id);
  let lastSeq = 0;
  let events = [];
  let skew = 0; // server clock minus ours, ms
  let data = null;
  let timer = null;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v; else e.setAttribute(k, String(v));
    }
    for (const k of kids) {
      if (k === null || k === undefined) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  function td(label, value, cls) { return el("td", { "data-label": label, class: cls }, value); }
  function badge(state) {
    const s = String(state || "-");
    return el("span", { class: "badge s-" + s.replace(/[^a-z0-9_]/gi, "") }, s === "needs_login" ? "needs login" : s);
  }
  function human(ms) {
    if (ms === null || ms === undefined || ms < 0) return "-";
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
  }
  function num(n) { return n === undefined || n === null ? "-" : Number(n).toLocaleString("en-US"); }
  function bytes(n) {
    if (!n) return "-";
    const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + u[i];
  }
  function now() { return Date.now() + skew; }
  function replace(tbody, rows) { tbody.replaceChildren(...rows); }

  async function call(op, fields) {
    const r = await fetch("/admin/" + op, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Admin-Key": sessionStorage.getItem(KEY) || "" },
      body: JSON.stringify(fields || {}),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let body = {};
    try { body = await r.json(); } catch (_) { body = { ok: false, error: "unreadable answer (" + r.status + ")" }; }
    if (r.status === 401) { throw Object.assign(new Error(body.error || "wrong key"), { auth: true }); }
    return body;
  }

  function action(label, op, fields, question) {
    const b = el("button", { type: "button", "data-op": op }, label);
    b.addEventListener("click", async () => {
      if (!window.confirm(question)) return;
      b.disabled = true;
      try {
        const a = await call(op, fields);
        showError(a.ok ? null : a.error);
        if (a.ok && a.message) flash(a.message);
      } catch (e) { showError(e.message); }
      b.disabled = false;
      refresh();
    });
    return b;
  }
  function flash(msg) { const u = $("updated"); u.textContent = msg; }
  function showError(msg) { const e = $("error"); e.hidden = !msg; e.textContent = msg || ""; }

  function queueText(names) {
    if (!names.length) return "-";
    const shown = names.slice(0, 8).join(", ");
    return names.length > 8 ? shown + " and " + (names.length - 8) + " more" : shown;
  }

  function drawSlots(st) {
    const mem = (data.memory || {});
    replace($("slots").tBodies[0], (st.slots || []).map((s) => {
      const up = s.state === "ready" || s.state === "draining" ? human(now() - s.since_unix_ms) : "-";
      return el("tr", {},
        td("Slot", s.slot, "num"), td("State", badge(s.state)), td("Profile", s.profile || "-"),
        td("Up", up), td("In flight", s.in_flight, "num"), td("Restarts", s.restarts, "num"),
        td("Memory", bytes(mem[String(s.slot)])), td("Last error", s.last_error || "", "reason"),
        el("td", { class: "ops" },
          action("Restart", "restart", { slot: s.slot }, "Restart slot " + s.slot + " (" + (s.profile || "-") + ")? Its requests in flight finish first."),
          action("Rotate", "rotate", { slot: s.slot }, "Rotate slot " + s.slot + " to the next profile?")));
    }));
    const q = st.queue || {};
    $("queue").textContent = "Queue: " + num(q.queue_length || 0) + " waiting" +
      (q.oldest_wait_ms ? ", oldest " + human(q.oldest_wait_ms) : "") +
      " · rotation queue: " + queueText(st.rotation_queue || []);
  }

  // Per-model cooldowns: [model, until] of each model the profile cools for.
  function modelCooldowns(p) {
    return (p.model_cooldowns || [])
      .filter((m) => typeof m.until_unix_ms === "number" && m.until_unix_ms > now())
      .map((m) => [String(m.model), m.until_unix_ms, m.reason]);
  }

  function drawProfiles(st, usage) {
    const byProfile = {};
    for (const u of usage.profiles || []) byProfile[u.profile] = u;
    replace($("profiles").tBodies[0], (st.profiles || []).map((p) => {
      const u = byProfile[p.profile] || { total: {}, last_hour: {} };
      const cool = el("td", { "data-label": "Cooldown" });
      if (p.cooling_until_unix_ms) {
        cool.append(el("span", { class: "left", "data-until": p.cooling_until_unix_ms }, human(p.cooling_until_unix_ms - now()) + " left"),
          p.reason ? " (" + p.reason + ")" : "");
      }
      for (const [model, until, reason] of modelCooldowns(p)) {
        cool.append(el("div", { class: "model-cool" }, model + ": ",
          el("span", { class: "left", "data-until": until }, human(until - now()) + " left"),
          reason ? " (" + reason + ") " : " ",
          action("Reset", "reset", { profile: p.profile, model: model },
            "Clear the cooldown of model " + model + " on " + p.profile + "?")));
      }
      if (p.needs_login) {
        cool.append(el("div", { class: "login-why" }, "needs a new login: " + String(p.needs_login.why || "")));
      }
      if (!cool.childNodes.length) cool.textContent = "-";
      const t = u.total || {};
      const errs = (t.child_error || 0) + (t.empty || 0) + (t.exhausted || 0) + (t.request_error || 0);
      return el("tr", { class: p.state === "needs_login" ? "needs-login" : null },
        td("Profile", p.profile),
        el("td", { "data-label": "State" }, badge(p.state),
          (p.cools_for || []).length ? " (cools for " + p.cools_for.map(String).join(", ") + ")" : ""), cool,
        td("Answers", num(t.answers || 0) + (errs ? " (" + num(errs) + " failed)" : ""), "num"),
        td("Tokens", num(t.total_tokens || 0), "num"),
        td("Last hour", num((u.last_hour || {}).answers || 0) + " / " + num((u.last_hour || {}).tokens || 0) + " tok", "num"),
        el("td", { class: "ops" },
          p.disabled ? action("Enable", "enable", { profile: p.profile }, "Enable profile " + p.profile + "?")
                     : action("Disable", "disable", { profile: p.profile }, "Disable profile " + p.profile + "? A running child is drained and rotated out."),
          action("Reset", "reset", { profile: p.profile }, "Clear the cooldowns, the login mark and the failure counts of " + p.profile + "?")));
    }));
  }

  // The account budgets (MODEL_BUDGETS_FILE): the fleet's lines, then each
  // account's; the section says so when no budgets file is in force.
  function resetCell(label, unix) {
    if (typeof unix !== "number") return td(label, "-");
    const at = unix * 1000;
    return el("td", { "data-label": label }, el("span", { class: "in", "data-until": at }, "in " + human(at - now())));
  }
  function drawBudgets(st) {
    const b = st.budgets;
    if (!b || typeof b !== "object") {
      $("budgets-day").textContent = "No account budgets (MODEL_BUDGETS_FILE is not set).";
      replace($("fleet-budgets").tBodies[0], []);
      replace($("budgets").tBodies[0], []);
      return;
    }
    $("budgets-day").textContent = "Budget day " + b.day + " in " + b.zone + "; every budget is whole again at its midnight.";
    const fleet = (b.lines || []).map((f) => el("tr", { class: f.left === 0 ? "spent" : null },
      td("Model line", f.model), td("Accounts", num(f.accounts), "num"),
      td("Used / budget", num(f.used) + " / " + num(f.budget), "num"), td("Left", num(f.left), "num"),
      resetCell("Resets", f.resets_at_unix)));
    if (!fleet.length) fleet.push(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no model line with a budget covers a placed account")));
    replace($("fleet-budgets").tBodies[0], fleet);
    const rows = [];
    for (const p of st.profiles || []) {
      for (const l of p.budgets || []) {
        const off = l.budget === null || l.budget === undefined;
        const spent = !off && l.used >= l.budget;
        rows.push(el("tr", { class: spent ? "spent" : null },
          td("Profile", p.profile), td("Tier", l.tier), td("Model line", l.model),
          td("Used / budget", off ? "off" : num(l.used) + " / " + num(l.budget) + (spent ? " (spent)" : ""), "num"),
          off ? td("Resets", "-") : resetCell("Resets", l.resets_at_unix)));
      }
    }
    replace($("budgets").tBodies[0], rows);
  }

  // A key's budget day: its use against its limits ("3 / 1,000 req").
  function dayText(d) {
    if (!d) return "";
    const u = d.today || {}, l = d.limits || {};
    const of = (n, lim, unit) => num(n || 0) + (lim ? " / " + num(lim) : "") + " " + unit;
    const parts = [of(u.requests, l.rpd, "req"), of(u.tokens, l.tpd, "tok")];
    if (l.rpm) parts.push(num(u.last_minute || 0) + " / " + num(l.rpm) + " per min");
    if (l.models) parts.push("models " + l.models.map(String).join(", "));
    return parts.join(", ");
  }

  function drawKeys(usage) {
    const today = {};
    for (const d of (usage.today || {}).keys || []) today[d.key] = d;
    const seen = new Set();
    const rows = (usage.keys || []).map((k) => {
      seen.add(k.key);
      const t = k.total || {};
      const errs = (t.answers || 0) - (t.ok || 0);
      return el("tr", {}, td("Key", k.key), td("Answers", num(t.answers), "num"), td("ok", num(t.ok), "num"),
        td("Errors", num(errs), "num"), td("Prompt tokens", num(t.prompt_tokens), "num"),
        td("Completion tokens", num(t.completion_tokens), "num"),
        td("Last hour", num((k.last_hour || {}).answers || 0) + " / " + num((k.last_hour || {}).tokens || 0) + " tok", "num"),
        td("Today", dayText(today[k.key])));
    });
    for (const d of Object.values(today)) {
      if (seen.has(d.key)) continue;
      rows.push(el("tr", {}, td("Key", d.key), td("Answers", "0", "num"), td("ok", "0", "num"), td("Errors", "0", "num"),
        td("Prompt tokens", "0", "num"), td("Completion tokens", "0", "num"), td("Last hour", "0 / 0 tok", "num"),
        td("Today", dayText(d))));
    }
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no API keys, or no use yet")));
    replace($("keys").tBodies[0], rows);
    const day = usage.today || {};
    $("keys-day").textContent = day.day ? "Today is " + day.day + " in " + day.zone + "." : "";
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function drawCharts(series) {
    const minutes = 60, W = 600, H = 120, top = 14, bottom = 104;
    const last = Math.floor(now() / 60000);
    const by = {};
    for (const m of series || []) by[m.minute] = m;
    const pts = [];
    for (let i = minutes - 1; i >= 0; i--) pts.push(by[last - i] || { answers: 0, errors: 0, ok: 0, ok_ms_sum: 0, ok_ms_max: 0 });
    const step = W / minutes;
    const maxA = Math.max(1, ...pts.map((p) => p.answers));
    const rpm = $("chart-rpm");
    const kids = [];
    pts.forEach((p, i) => {
      const h = (bottom - top) * p.answers / maxA, he = (bottom - top) * p.errors / maxA;
      if (h > 0) kids.push(svg("rect", { class: "bar", x: (i * step + 1).toFixed(1), y: (bottom - h).toFixed(1), width: (step - 2).toFixed(1), height: h.toFixed(1) }));
      if (he > 0) kids.push(svg("rect", { class: "bar err", x: (i * step + 1).toFixed(1), y: (bottom - he).toFixed(1), width: (step - 2).toFixed(1), height: he.toFixed(1) }));
    });
    kids.push(svg("text", { class: "axis", x: 4, y: 11 }, "most " + maxA + "/min"), svg("text", { class: "axis", x: 4, y: 118 }, "-60 min"), svg("text", { class: "axis", x: W - 30, y: 118 }, "now"));
    rpm.replaceChildren(...kids);
    const mean = pts.map((p) => p.ok ? p.ok_ms_sum / p.ok : null);
    const maxL = Math.max(1, ...pts.map((p) => p.ok_ms_max || 0));
    const line = (vals, cls) => {
      let d = "";
      vals.forEach((v, i) => {
        if (v === null) return;
        const x = (i * step + step / 2).toFixed(1), y = (bottom - (bottom - top) * v / maxL).toFixed(1);
        d += (d && vals[i - 1] !== null ? " L" : " M") + x + " " + y;
      });
      return d ? svg("path", { class: cls, d: d.trim() }) : null;
    };
    const lk = [line(pts.map((p) => p.ok ? p.ok_ms_max : null), "line max"), line(mean, "line"),
      svg("text", { class: "axis", x: 4, y: 11 }, "most " + Math.round(maxL) + " ms"), svg("text", { class: "axis", x: 4, y: 118 }, "-60 min"), svg("text", { class: "axis", x: W - 30, y: 118 }, "now")];
    $("chart-lat").replaceChildren(...lk.filter(Boolean));
  }

  function drawEvents(fresh) {
    events = events.concat(fresh).slice(-300);
    const items = events.slice().reverse().map((e) => {
      const t = new Date(e.at_unix_ms);
      const where = [e.slot !== undefined ? "slot " + e.slot : null, e.profile].filter((x) => x !== null && x !== undefined).join(" · ");
      return el("li", { class: "k-" + String(e.kind).replace(/[^a-z_]/g, "") },
        el("time", { datetime: t.toISOString() }, t.toLocaleTimeString("en-GB")),
        el("span", { class: "kind" }, String(e.kind).replace(/_/g, " ")),
        el("span", { class: "what" }, (where ? where + ": " : "") + e.text));
    });
    $("events").replaceChildren(...items);
  }

  function tick() {
    // Countdowns move between refreshes.
    for (const s of document.querySelectorAll("span.left[data-until]")) {
      s.textContent = human(Number(s.getAttribute("data-until")) - now()) + " left";
    }
    for (const s of document.querySelectorAll("span.in[data-until]")) {
      s.textContent = "in " + human(Number(s.getAttribute("data-until")) - now());
    }
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const a = await call("console", { after: lastSeq });
      if (!a.ok) throw new Error(a.error || "refused");
      data = a;
      skew = a.now_unix_ms - Date.now();
      const st = a.status;
      const ready = (st.slots || []).filter((s) => s.state === "ready").length;
      $("summary").textContent = ready + " of " + (st.slots || []).length + " slots ready · " + (st.profiles || []).length + " profiles" + (st.shutting_down ? " · shutting down" : "");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
      drawSlots(st);
      drawProfiles(st, a.usage || {});
      drawBudgets(st);
      drawKeys(a.usage || {});
      drawCharts((a.usage || {}).fleet);
      drawEvents(a.events || []);
      lastSeq = a.last_seq || lastSeq;
      showError(null);
      document.body.setAttribute("data-loaded", "1");
    } catch (e) {
      if (e.auth) { sessionStorage.removeItem(KEY); return showLogin(e.message); }
      showError("cannot reach the coordinator: " + e.message);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function showLogin(msg) {
    clearTimeout(timer);
    $("main").hidden = true; $("forget").hidden = true; $("login").hidden = false;
    $("login-error").textContent = msg || "";
    $("summary").textContent = "not connected";
    $("key").focus();
  }
  function start() {
    $("login").hidden = true; $("main").hidden = false; $("forget").hidden = false;
    lastSeq = 0; events = [];
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("key").value);
      $("key").value = "";
      start();
    });
    $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });
    $("reload").addEventListener("click", async () => {
      if (!window.confirm("Hydrate the profiles again and apply the changes?")) return;
      try { const a = await call("reload", {}); showError(a.ok ? null : a.error); if (a.ok) flash(a.message); } catch (e) { showError(e.message); }
      refresh();
    });
    setInterval(tick, 1000);
    if (sessionStorage.getItem(KEY)) start(); else showLogin();
  });
})();
