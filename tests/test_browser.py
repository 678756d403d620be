"""The researcher's journey in a real browser: Debian's Chromium driven by Playwright,
through the real hub, into the real JupyterLab with fedhub's panels. Screenshots land in
docs/screenshots/ for the panel pages."""

import pytest
from browser_helpers import SHOTS, launch_chromium, open_side_panel, run_cell_in_notebook
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    return module_hub_factory(None, args=["--no-inference"]).start()  # default catalogue, MLflow on


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def lab(hub, browser):
    """Log in through the hub's form, spawn from the spawn form, land in JupyterLab."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/login")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill(hub.shared_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("table", name="Free capacity per site")).to_be_visible()
    page.get_by_label("GPU type").select_option("t4")
    page.get_by_label("GPUs").fill("1")
    page.screenshot(path=str(SHOTS / "spawn-form.png"))
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/ada/lab**", timeout=180_000)
    page.locator(".jp-LabShell").wait_for()
    yield page
    page.close()


def test_lab_status_bar_names_the_site_and_gpu(lab):
    expect(lab.locator("#fedhub-status")).to_contain_text("local-b", timeout=60_000)
    expect(lab.locator("#fedhub-status")).to_contain_text("t4")


def test_sites_panel_shows_live_inventory(lab):
    open_side_panel(lab, "Sites")
    table = lab.get_by_role("table", name="Sites")
    expect(table).to_contain_text("local-a", timeout=60_000)
    expect(table).to_contain_text("local-b")
    expect(table).to_contain_text("t4")
    lab.screenshot(path=str(SHOTS / "sites-panel.png"))


def show_run_in_panel(page, experiment: str, run_name: str, expect_in_table: str = ""):
    """Experiments panel: refresh, pick the experiment, open the run's details."""
    open_side_panel(page, "Experiments")
    page.get_by_role("button", name="Refresh").first.click()
    page.get_by_label("Experiment", exact=True).select_option(label=experiment)
    runs = page.get_by_role("table", name="Runs")
    expect(runs).to_contain_text(expect_in_table or run_name, timeout=60_000)
    runs.get_by_role("button", name=run_name).first.click()


def test_a_cell_logs_a_run_and_the_experiments_panel_charts_it(lab, hub):
    code = ("import mlflow; mlflow.set_experiment('browser'); r = mlflow.start_run(run_name='from-browser'); "
            "[mlflow.log_metric('acc', 0.80 + i / 100, step=i) for i in range(5)]; "
            "mlflow.log_param('lr', 0.1); mlflow.end_run(); print('logged', r.info.run_id)")
    run_cell_in_notebook(lab, hub, "ada", "browser.ipynb", code, "logged")
    show_run_in_panel(lab, "browser", "from-browser", expect_in_table="0.84")
    expect(lab.get_by_label("acc chart")).to_be_visible(timeout=60_000)
    lab.screenshot(path=str(SHOTS / "experiments-panel.png"))


def test_reproduce_from_the_panel_shows_an_identical_comparison(lab, hub):
    code = ("import mlflow, random; from fedhub.server_ext import track; mlflow.set_experiment('repro'); "
            "r = mlflow.start_run(run_name='deterministic'); track(seed=7, background=False); "
            "mlflow.log_metric('score', random.random()); mlflow.end_run(); print('captured', r.info.run_id)")
    run_cell_in_notebook(lab, hub, "ada", "repro.ipynb", code, "captured")
    show_run_in_panel(lab, "repro", "deterministic")
    lab.get_by_role("button", name="Reproduce").click()
    result = lab.get_by_label("Reproduction", exact=True)
    expect(result).to_contain_text("identical", timeout=240_000)
    expect(lab.get_by_role("table", name="Reproduction comparison")).to_contain_text("score")
    lab.screenshot(path=str(SHOTS / "reproduce.png"))
