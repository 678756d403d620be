"""Workshop preset: `fedhub up --seats N` gives N seats of the per-seat size; seat N+1 is
refused with a clear message; bad preset values are named."""

import subprocess
import sys

import pytest

from fedhub.hub.workshop import WorkshopError, workshop_catalogue


def test_catalogue_has_exactly_n_seats():
    text = workshop_catalogue(3, 0.5, "512M")
    assert "max_sessions: 3" in text and "cpus: 1.5" in text and "memory: 1536M" in text
    for bad, msg in (((0, 1, "2G"), "--seats"), ((2, 0, "2G"), "--seat-cpus"), ((2, 1, "lots"), "--seat-memory")):
        with pytest.raises(WorkshopError, match=msg):
            workshop_catalogue(*bad)


def test_bad_seat_memory_is_named_by_fedhub_up(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "up", "--data-dir", str(tmp_path), "--seats", "2",
                        "--seat-memory", "lots", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--seat-memory" in r.stderr, r.stderr


@pytest.mark.hub
def test_seat_n_plus_one_gets_a_clear_message(hub_factory):
    hub = hub_factory(args=("--no-mlflow", "--no-inference", "--seats", "2", "--seat-cpus", "1",
                            "--seat-memory", "1G")).start()
    for u in ("seat-a", "seat-b", "seat-c"):
        hub.create_user(u)
    for u in ("seat-a", "seat-b"):
        assert hub.spawn(u).status_code in (201, 202)
        hub.wait_ready(u)
    r = hub.spawn("seat-c")
    assert r.status_code == 409 and "full (2 of 2 sessions)" in r.json()["message"], r.text


@pytest.mark.hub
def test_landing_notebook_in_each_new_home_never_over_a_students_copy(hub_factory, tmp_path):
    nb = tmp_path / "welcome.ipynb"
    nb.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    hub = hub_factory(args=("--no-mlflow", "--no-inference", "--seats", "1",
                            "--landing-notebook", str(nb))).start()
    hub.create_user("stu")
    assert hub.spawn("stu").status_code in (201, 202)
    hub.wait_ready("stu")
    from pathlib import Path
    copy = Path(hub.session_env("stu")["HOME"]) / "welcome.ipynb"
    assert copy.read_text() == nb.read_text()
    copy.write_text("my edits")
    hub.stop_server("stu")
    assert hub.spawn("stu").status_code in (201, 202)
    hub.wait_ready("stu")
    assert copy.read_text() == "my edits"
