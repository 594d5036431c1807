"""The status page in a real headless Chromium (Debian's, driven by
Playwright without a browser download): it loads with the admin key, shows
the slots, a cooling profile with its time left (and the model it is out
of quota for), a profile that needs a new login, and the usage; a rotate
button works; every request the page makes stays on 127.0.0.1; a profile
named like markup renders as text. Screenshots at laptop and phone widths
go to target/console/. Figures for the report are printed (page size,
render time with 100 profiles)."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AISP_CHROMIUM", "/usr/lib/chromium/chromium")
ADMIN_KEY = "console-admin-key-3e1f"
EVIL = "<img src=x onerror=alert(1)>"
OUT = ROOT / "target" / "console"


def binaries():
    d = ROOT / "target" / "debug"
    main, child = d / "aistudioproxy", d / "aisp-testchild"
    if not (main.is_file() and child.is_file()):
        pytest.skip("build the binaries first: cargo build --bins")
    return main, child


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, key=ADMIN_KEY, auth=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-Admin-Key"] = key
    if auth:
        headers["Authorization"] = "Bearer " + auth
    rq = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers=headers)
    def parse(b):
        try:
            return json.loads(b or b"{}")
        except ValueError:
            return {"raw": b.decode(errors="replace")}
    try:
        with urllib.request.urlopen(rq, timeout=10) as r:
            return r.status, parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())


def wait(what, cond, within=20.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fleet(tmp_path):
    binaries()  # skips when the binaries are not built
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    active = tmp_path / "profiles" / "active"
    active.mkdir(parents=True)
    # alice runs out after one answer; 100 profiles in all, one named like markup.
    (active / "alice.json").write_text(json.dumps({"cookies": [], "testchild": {"exhaust_after": 1}}))
    names = ["bob", EVIL] + [f"p{i:03}" for i in range(96)]
    for n in names:
        (active / f"{n}.json").write_text(json.dumps({"cookies": [], "testchild": {}}))
    # fay's Google session expired long ago: she needs a new login.
    stale = [{"name": c, "value": "x", "domain": ".google.com", "path": "/", "expires": 1e9}
             for c in ("SID", "HSID")]
    (active / "fay.json").write_text(json.dumps({"cookies": stale, "testchild": {}}))
    (tmp_path / "profiles" / "key.txt").write_text("sk-page-test-1  # team-page rpd=1000 tpd=500000\n")
    extra = {"EMPTY_ANSWERS_TO_ROTATE": "1"}
    with running(tmp_path, active, ADMIN_KEY, extra) as port:
        yield port, tmp_path


@contextlib.contextmanager
def running(tmp_path, active, admin_key, extra):
    """The coordinator over the test child with two slots and `extra`
    settings, until both slots are ready; stopped (and its group killed if
    it lingers) on the way out."""
    main, child = binaries()
    port = free_port()
    base = free_port() + 1000
    env = {
        "PATH": os.environ.get("PATH", ""),
        "COORDINATOR_HOST": "127.0.0.1", "COORDINATOR_PORT": str(port),
        "BASE_API_PORT": str(base), "BASE_STREAM_PORT": str(base + 1), "BASE_CAMOUFOX_PORT": str(base + 2),
        "PORT_STEP": "3", "POOL_SIZE": "2",
        "LOCAL_PROFILE_DIR": str(active), "AUTH_PROFILE_CACHE_DIR": str(tmp_path / "cache"),
        "COORDINATOR_LOG_DIR": str(tmp_path / "logs"), "CHILD_WORKDIR": str(tmp_path),
        "ADMIN_KEY": admin_key, "READY_TIMEOUT_S": "20", "CHILD_STOP_GRACE_S": "2",
        **extra,
    }
    stderr = open(tmp_path / "coordinator.stderr", "w")
    p = subprocess.Popen([str(main), "--", str(child)], env=env, cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        wait("two ready slots", lambda: sum(
            s["state"] == "ready" for s in post(port, "/admin/status", {}, key=admin_key)[1].get("slots", [])) == 2)
        yield port
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        stderr.close()


def test_console_page_in_chromium(fleet):
    from playwright.sync_api import sync_playwright

    port, tmp = fleet
    url = f"http://127.0.0.1:{port}/admin/"
    # Traffic for the usage and a cooldown: alice answers once, then empty.
    def alice_cooling():
        for stream in (False, True):
            post(port, "/v1/chat/completions",
                 {"model": "gemini-test", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
                 key=None, auth="sk-page-test-1")
        # Out of quota for the model asked: alice cools for it, not whole.
        return any(p["profile"] == "alice" and "gemini-test" in p.get("cools_for", [])
                   for p in post(port, "/admin/status", {})[1]["profiles"])
    wait("alice cooling", alice_cooling)

    OUT.mkdir(parents=True, exist_ok=True)
    seen, dialogs = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("request", lambda r: seen.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(url)
            page.fill("#key", ADMIN_KEY)
            t0 = time.monotonic()
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-loaded='1']")
            render_ms = (time.monotonic() - t0) * 1000
            rows = page.locator("#profiles tbody tr")
            assert rows.count() == 100
            # Slots, with their profiles.
            slots = page.locator("#slots tbody tr")
            assert slots.count() == 2
            assert "ready" in slots.nth(0).inner_text()
            # The cooling profile, with its time left.
            alice = page.locator("#profiles tbody tr", has_text="alice")
            text = alice.inner_text()
            assert "cools for gemini-test" in text, text
            assert "left" in text and "exhausted" in text, text
            assert "gemini-test:" in text, text
            # The profile that needs a login, plainly marked.
            fay = page.locator("#profiles tbody tr.needs-login", has_text="fay")
            assert fay.count() == 1
            assert "needs login" in fay.inner_text() and "session cookies" in fay.inner_text()
            # Usage: the key's label, never the key.
            keys = page.locator("#keys tbody").inner_text()
            assert "team-page" in keys and "sk-page-test-1" not in page.content()
            # Its budget day: use against its limits.
            assert "/ 1,000 req" in keys and "/ 500,000 tok" in keys, keys
            assert "Today is " in page.locator("#keys-day").inner_text()
            assert "3" in alice.inner_text() or "2" in alice.inner_text()
            # The markup-like profile is text, and nothing ran.
            evil = page.locator("#profiles tbody td", has_text=EVIL)
            assert evil.count() >= 1
            assert page.locator("#profiles img, #slots img, #events img").count() == 0
            assert not dialogs, dialogs
            page.screenshot(path=str(OUT / "status-page-laptop.png"), full_page=False)
            # Rotate slot 0 from its button, confirming.
            before = post(port, "/admin/status", {})[1]["slots"][0]["profile"]
            page.locator("#slots tbody tr").nth(0).locator("button[data-op=rotate]").click()
            wait("slot 0 rotated", lambda: post(port, "/admin/status", {})[1]["slots"][0]["profile"] != before)
            assert dialogs and dialogs[-1].startswith("Rotate slot 0")
            page.wait_for_selector("#events li.k-rotation")
            page.wait_for_selector("#events li.k-operator")
            # Phone width.
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(300)
            page.screenshot(path=str(OUT / "status-page-phone.png"), full_page=False)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 400, f"the page scrolls sideways on a phone ({width}px)"
        finally:
            browser.close()
    outside = [u for u in seen if not u.startswith(f"http://127.0.0.1:{port}/")]
    assert not outside, outside
    assert not any("key" in u.lower() and ADMIN_KEY in u for u in seen), "the key never goes in a URL"
    size = sum(len(urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/{f}", timeout=5).read())
               for f in ("", "console.js", "console.css"))
    print(f"\npage size {size} bytes; first render with 100 profiles {render_ms:.0f} ms; "
          f"{len(seen)} requests, all to 127.0.0.1:{port}")
    (OUT / "figures.txt").write_text(f"page_bytes={size}\nrender_ms_100_profiles={render_ms:.0f}\n")
