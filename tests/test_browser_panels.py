"""The Federated and Deploy panels in a real browser (Debian's Chromium via Playwright),
through the real hub: a federated job of the example digits app on the local sites with
real SuperNodes, and a scikit-learn model a notebook cell logged to MLflow, deployed to
the hub's embedded inference server and called from the panel. Screenshots land in
docs/screenshots/ for docs/panels/federated.md and deploy.md."""

import re
import shutil
from pathlib import Path

import pytest
from browser_helpers import (SHOTS, dismiss_news_prompt, launch_chromium, log_in, open_side_panel,
                             run_cell_in_notebook)
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.hub

USER = "fay"
EXAMPLE_APP = Path(__file__).resolve().parents[1] / "hub" / "federation" / "examples" / "digits"


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    return module_hub_factory(None, args=[]).start()  # default catalogue (two local sites), MLflow on


@pytest.fixture(scope="module")
def lab(hub):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        log_in(page, hub, USER)
        page.get_by_role("button", name="Start").click()
        page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)
        page.locator(".jp-LabShell").wait_for()
        yield page
        browser.close()


def launch(panel, app: str, sites: list[str], rounds: int, compression: str = "none") -> str:
    """Fill the form, press Launch; the new job's id once the panel follows it."""
    panel.get_by_label("Flower app").select_option(app)
    for box in panel.get_by_role("group", name="Sites").get_by_role("checkbox").all():
        box.uncheck()
    for site in sites:
        panel.get_by_role("checkbox", name=site).check()
    panel.get_by_role("spinbutton", name="Rounds").fill(str(rounds))
    panel.get_by_label("Compression").select_option(compression)
    rows = panel.get_by_role("table", name="Jobs").locator("tbody tr")
    before = rows.count()
    panel.get_by_role("button", name="Launch").click()
    expect(rows).to_have_count(before + 1, timeout=60_000)  # newest first
    job_id = rows.first.get_by_role("button").inner_text()
    expect(panel.get_by_label("Current job").get_by_role("heading")).to_have_text(f"Job {job_id}")
    return job_id


def test_federated_panel_launches_the_example_and_charts_each_round(lab, hub):
    home = hub.data_dir / "homes" / USER
    shutil.copytree(EXAMPLE_APP, home / "digits")  # the user's workspace
    broken = home / "broken-digits"  # the same app, with a ServerApp that raises
    shutil.copytree(EXAMPLE_APP, broken)
    server_app = broken / "digits_app" / "server_app.py"
    server_app.write_text(server_app.read_text().replace(
        "    cfg = context.run_config\n", '    raise RuntimeError("the data went missing on purpose")\n'))
    panel = open_side_panel(lab, "Federated")
    panel.get_by_role("button", name="Refresh").click()
    expect(panel.get_by_label("Flower app").locator("option[value='digits']")).to_have_count(1)

    good = launch(panel, "digits", ["local-a", "local-b"], 2, compression="int8")
    job = panel.get_by_label("Current job")
    # the chart appears with the first finished round, while the job still runs
    expect(job.get_by_label("Metrics per round chart")).to_be_visible(timeout=240_000)
    jobs = panel.get_by_role("table", name="Jobs")

    # meanwhile a job whose ServerApp raises (each job has its own SuperLink and SuperNodes):
    # its reason and the ServerApp's log tail
    launch(panel, "broken-digits", ["local-a"], 1)
    expect(job.get_by_role("status")).to_contain_text("State: failed", timeout=180_000)
    expect(job.get_by_role("alert")).to_contain_text("Failed:")
    expect(job.get_by_label("Log tail")).to_contain_text("the data went missing on purpose")

    # back to the good job, picked from the list
    jobs.get_by_role("button", name=good, exact=True).click()
    expect(job.get_by_role("status")).to_contain_text("State: succeeded", timeout=240_000)
    expect(job.get_by_role("status")).to_contain_text("round 2 of 2")
    expect(job).to_contain_text("compression int8")  # the choice reached the hub
    expect(job.get_by_label("Metrics per round chart")).to_be_visible()
    expect(job.get_by_label("Bytes per round chart")).to_be_visible()
    rounds = job.get_by_role("table", name="Per-round figures")
    expect(rounds.locator("tbody tr")).to_have_count(2)
    sites = job.get_by_role("table", name="Site status")
    expect(sites).to_contain_text("local-a")
    expect(sites).to_contain_text("local-b")
    expect(job.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(jobs.locator("tbody tr", has_text="succeeded")).to_contain_text("digits")
    expect(jobs.locator("tbody tr", has_text="broken-digits")).to_contain_text("failed")
    dismiss_news_prompt(lab)
    lab.screenshot(path=str(SHOTS / "federated-panel.png"))

    # Cancel stops a running job
    launch(panel, "digits", ["local-b"], 50)
    job.get_by_role("button", name="Cancel").click()
    expect(job.get_by_role("status")).to_contain_text("State: cancelled", timeout=120_000)


def test_deploy_panel_deploys_a_logged_model_and_runs_a_test_inference(lab, hub):
    code = ("import mlflow; from sklearn.datasets import load_digits; "
            "from sklearn.linear_model import LogisticRegression; "
            "from mlflow.models import infer_signature; X, y = load_digits(return_X_y=True); "
            "X = X.astype('float32'); m = LogisticRegression(max_iter=300).fit(X, y); "
            "mlflow.set_experiment('deploy'); r = mlflow.start_run(run_name='digits-lr'); "
            "mlflow.sklearn.log_model(m, name='clf', signature=infer_signature(X, m.predict(X)), "
            "pip_requirements=['scikit-learn']); mlflow.end_run(); print('logged', r.info.run_id)")
    run_cell_in_notebook(lab, hub, USER, "deploy.ipynb", code, "logged")
    panel = open_side_panel(lab, "Deploy")
    panel.get_by_role("button", name="Refresh").click()
    model = panel.get_by_label("Model", exact=True)
    option = model.locator("option", has_text="digits-lr / clf")
    expect(option).to_have_count(1, timeout=60_000)
    model.select_option(option.get_attribute("value"))
    expect(panel.get_by_label("Model URI or ONNX path")).to_have_value(re.compile(r"^runs:/[0-9a-f]+/clf$"))
    panel.get_by_label("Deployment name").fill("digits-clf")
    panel.get_by_label("Target").select_option("embedded")
    panel.get_by_role("button", name="Deploy", exact=True).click()

    current = panel.get_by_label("Deployment", exact=True)
    steps = current.get_by_role("list", name="Deployment steps")
    expect(current.get_by_role("status")).to_contain_text("Status: ready", timeout=180_000)
    for step in ("resolve", "package", "write", "load", "ready"):
        expect(steps).to_contain_text(f"{step} — done")
    expect(current.get_by_label("Endpoint")).to_contain_text("digits-clf")
    snippet = current.get_by_label("tritonclient snippet")
    expect(snippet).to_contain_text("tritonclient")
    expect(current.get_by_role("button", name="Copy snippet")).to_be_enabled()
    current.get_by_role("button", name="Test inference").click()
    output = current.get_by_role("region", name="Inference output")
    expect(output).to_contain_text("answered in", timeout=60_000)
    expect(output).to_contain_text("[1")  # an output tensor's shape: one sample row
    deployments = panel.get_by_role("table", name="Deployments")
    expect(deployments).to_contain_text("digits-clf")
    expect(deployments).to_contain_text("ready")
    dismiss_news_prompt(lab)
    lab.screenshot(path=str(SHOTS / "deploy-panel.png"))

    # a second version of the same name, then roll back to the first, then undeploy
    panel.get_by_role("button", name="Deploy", exact=True).click()
    expect(current.get_by_role("status")).to_contain_text("serving version 2", timeout=180_000)
    expect(current.get_by_role("status")).to_contain_text("Status: ready")
    deployments.get_by_role("button", name="Roll back digits-clf").click()
    expect(current.get_by_role("status")).to_contain_text("serving version 1", timeout=60_000)
    lab.once("dialog", lambda dialog: dialog.accept())
    deployments.get_by_role("button", name="Undeploy digits-clf").click()
    expect(panel.get_by_label("Your deployments")).to_contain_text("No deployments yet.", timeout=60_000)
