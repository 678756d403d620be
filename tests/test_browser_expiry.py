"""Session expiry in a real browser (Debian's Chromium via Playwright) through a real hub:
the spawn form's "Time limit (hours)" field, then JupyterLab's warning notification with its
Extend button. The time-limits file puts the session in its warning phase at once. Screenshot
for docs/workshops.md in docs/screenshots/."""

import json
import re
import time

import pytest
from browser_helpers import SHOTS, dismiss_news_prompt, launch_chromium, log_in
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.hub

USER = "exp-cy"
H = 3600


def clock(end: float) -> str:
    """The end as the notification prints it (24-hour local time, like the browser's)."""
    return time.strftime("%H:%M", time.localtime(end))


def test_time_limit_field_warning_notification_and_extend(hub_factory):
    hub = hub_factory()
    # a 3-minute default within 30 minutes in all; warned 60 minutes ahead: warned at once
    (hub.data_dir / "time-limits.json").write_text(json.dumps(
        {"default": {"default_hours": 0.05, "max_hours": 0.5, "warn_minutes": 60}}))
    hub.start()
    token = hub.create_user(USER)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            log_in(page, hub, USER)
            field = page.get_by_label("Time limit (hours)")
            expect(field).to_have_value("0.05")  # the group's default
            expect(field).to_have_attribute("max", "0.5")  # the group's max
            # beyond the max (the browser's own check bypassed): the hub refuses it on the form
            field.evaluate("el => el.removeAttribute('max')")
            field.fill("2")
            page.get_by_role("button", name="Start").click()
            expect(page.locator(".alert, #error, .error").first).to_contain_text(
                "time_limit_hours: 2 h is beyond your limit of 0.5 h")
            assert hub.server(USER) is None  # nothing started
            field = page.get_by_label("Time limit (hours)")
            field.fill("0.06")
            page.get_by_role("button", name="Start").click()
            page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)
            page.locator(".jp-LabShell").wait_for()

            [rec] = hub.fedhub_api("/expiry", token).json()["sessions"]
            assert rec["end"] == pytest.approx(rec["started"] + 0.06 * H)  # the form's hours
            toasts = page.locator(".Toastify")
            warning = toasts.locator(".Toastify__toast", has_text="This session ends at")
            expect(warning).to_contain_text(f"ends at {clock(rec['end'])}", timeout=60_000)
            extend = warning.get_by_role("button", name=re.compile(r"^Extend"))
            expect(extend).to_have_text("Extend 26 min")  # what is left of 30 min, to the minute
            expect(page.locator("#fedhub-status")).to_contain_text(f"ends {clock(rec['end'])}")
            dismiss_news_prompt(page)
            page.screenshot(path=str(SHOTS / "expiry-notification.png"))

            extend.click()
            [after] = hub.fedhub_api("/expiry", token).json()["sessions"]
            deadline = time.monotonic() + 30
            while after["end"] == rec["end"] and time.monotonic() < deadline:
                time.sleep(0.3)
                [after] = hub.fedhub_api("/expiry", token).json()["sessions"]
            assert after["end"] == pytest.approx(rec["end"] + 26 * 60)  # the hub has the later end
            assert any(e["kind"] == "extended" for e in after["events"])
            expect(toasts).to_contain_text(f"Session extended by 26 min: it now ends at {clock(after['end'])}")
            expect(page.locator("#fedhub-status")).to_contain_text(f"ends {clock(after['end'])}")

            # still within the warning: warned again for the new end; nothing is left to extend,
            # so Extend answers with the hub's refusal, which names the limit
            again = toasts.locator(".Toastify__toast", has_text=f"This session ends at {clock(after['end'])}")
            again.get_by_role("button", name=re.compile(r"^Extend")).click()
            expect(toasts).to_contain_text(re.compile(r"Could not extend the session: extend by 1(\.0)? h "
                                                      r"refused: sessions may run at most 0\.5 h in all"))
            [last] = hub.fedhub_api("/expiry", token).json()["sessions"]
            assert last["end"] == after["end"]
        finally:
            browser.close()
