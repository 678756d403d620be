"""Shared by the browser tests: Debian's Chromium under Playwright, logging in through the
hub's form, opening fedhub's side panels, running a notebook cell in JupyterLab."""

from pathlib import Path

import requests
from playwright.sync_api import expect

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)


def log_in(page, hub, user: str) -> None:
    """The hub's login form with the shared password; lands on the spawn form."""
    page.goto(f"{hub.url}/hub/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(hub.shared_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("table", name="Free capacity per site")).to_be_visible()


def open_side_panel(page, title: str):
    tab = page.locator(f".jp-SideBar .lm-TabBar-tab[title='{title}']")
    if tab.count() == 0:
        tab = page.get_by_role("tab", name=title)
    tab.first.click()
    panel = page.get_by_role("region", name=title)
    if panel.count() == 0:
        panel = page.locator(f"[aria-label='{title}']").first
    return panel


def run_cell_in_notebook(page, hub, user: str, name: str, code: str, expect_output: str):
    """Create an empty notebook in the user's home, open it in JupyterLab, type one cell, save, run."""
    token = hub.create_user(user)
    nb = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [], "execution_count": None}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    r = requests.put(f"{hub.url}/user/{user}/api/contents/{name}", headers={"Authorization": f"token {token}"},
                     json={"type": "notebook", "format": "json", "content": nb})
    assert r.status_code in (200, 201), r.text
    page.goto(f"{hub.url}/user/{user}/lab/tree/{name}?reset")  # ?reset: only this notebook open
    cell = page.locator(".jp-Notebook .jp-Cell").first
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Control+s")
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-OutputArea-output[data-mime-type*=stdout]")).to_contain_text(expect_output, timeout=120_000)


def dismiss_news_prompt(page) -> None:
    """JupyterLab asks about its news feed in a toast; answer No so screenshots show the panels only."""
    no = page.locator(".Toastify").get_by_role("button", name="No", exact=True)
    if no.count():
        no.first.click()
        no.first.wait_for(state="detached", timeout=10_000)
