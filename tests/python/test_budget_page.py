"""The status page's account budgets in a real headless Chromium: with a
MODEL_BUDGETS_FILE and a few completions, the fleet's line shows its
accounts, used / budget, what is left and the time to the reset; each
account's lines show its tier, used / budget (or `off`) and the reset; a
profile named like markup renders as text and nothing runs. A screenshot
goes to target/console/."""
import json
from pathlib import Path

import pytest

from test_console_page import CHROMIUM, EVIL, OUT, binaries, post, running, wait

ADMIN_KEY = "budget-page-admin-key-8d2a"
BUDGETS = """\
default = free
[free]
gemini-test = 3
gemini-pro  = off
"""


@pytest.fixture
def fleet(tmp_path):
    binaries()  # skips when the binaries are not built
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    active = tmp_path / "profiles" / "active"
    active.mkdir(parents=True)
    for n in ("alice", EVIL):
        (active / f"{n}.json").write_text(json.dumps({"cookies": [], "testchild": {}}))
    (tmp_path / "budgets.txt").write_text(BUDGETS)
    extra = {"MODEL_BUDGETS_FILE": str(tmp_path / "budgets.txt")}
    with running(tmp_path, active, ADMIN_KEY, extra) as port:
        yield port


def used(port):
    st = post(port, "/admin/status", {}, key=ADMIN_KEY)[1]
    return sum(l["used"] for p in st["profiles"] for l in p.get("budgets", []))


def test_budget_tables_in_chromium(fleet):
    from playwright.sync_api import sync_playwright

    port = fleet
    for i in (1, 2):
        status, body = post(port, "/v1/chat/completions",
                            {"model": "gemini-test", "messages": [{"role": "user", "content": "hi"}]}, key=None)
        assert status == 200, body
        wait("the answer counted", lambda: used(port) == i)

    OUT.mkdir(parents=True, exist_ok=True)
    dialogs = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(f"http://127.0.0.1:{port}/admin/")
            page.fill("#key", ADMIN_KEY)
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-loaded='1']")
            day = page.locator("#budgets-day").inner_text()
            assert "America/Los_Angeles" in day, day
            fleet_rows = page.locator("#fleet-budgets tbody tr")
            assert fleet_rows.count() == 1
            cells = [fleet_rows.nth(0).locator("td").nth(i).inner_text() for i in range(5)]
            assert cells[:4] == ["gemini-test*", "2", "2 / 6", "4"], cells
            assert cells[4].startswith("in ") and "h" in cells[4], cells
            rows = page.locator("#budgets tbody tr")
            assert rows.count() == 4, page.locator("#budgets tbody").inner_text()
            texts = [rows.nth(i).inner_text() for i in range(4)]
            off = [t for t in texts if "gemini-pro*" in t]
            assert len(off) == 2 and all("off" in t for t in off), texts
            test_lines = [t for t in texts if "gemini-test*" in t]
            assert sorted("1 / 3" in t for t in test_lines) == [True, True], texts
            assert all("free" in t for t in texts), texts
            # The markup-like profile is text in its cells, and nothing ran.
            evil = page.locator("#budgets tbody td", has_text=EVIL)
            assert evil.count() == 2
            assert page.locator("#budgets img, #fleet-budgets img").count() == 0
            assert not dialogs, dialogs
            page.locator("#budgets-section").screenshot(path=str(OUT / "budgets-laptop.png"))
        finally:
            browser.close()
