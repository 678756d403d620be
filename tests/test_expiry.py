"""Session time limits as pure functions: deadline from the form or the group, warning phase,
extend within the group's limit (refused beyond, naming it), expired at the end."""

import pytest

from fedhub.hub.expiry import ExpiryError, TimeLimits, deadline, extend, limits_for, phase

H = 3600
CLASS = TimeLimits(default_hours=2, max_hours=3, warn_minutes=10)
STAFF = TimeLimits(default_hours=8, max_hours=48, warn_minutes=15)


def test_limits_from_the_most_generous_group():
    by_group = {"class": CLASS, "staff": STAFF}
    assert limits_for(["class"], by_group, TimeLimits()) == CLASS
    assert limits_for(["class", "staff"], by_group, TimeLimits()) == STAFF
    assert limits_for(["other"], by_group, TimeLimits()) == TimeLimits()


def test_deadline_from_form_or_default_and_refused_beyond_limit():
    assert deadline(1000, None, CLASS) == 1000 + 2 * H
    assert deadline(1000, 0.5, CLASS) == 1000 + 0.5 * H
    with pytest.raises(ExpiryError, match="beyond your limit of 3 h"):
        deadline(1000, 4, CLASS)
    with pytest.raises(ExpiryError, match="positive number"):
        deadline(1000, 0, CLASS)


def test_warning_extend_and_end():
    start = 0.0
    end = deadline(start, None, CLASS)
    assert phase(end - 11 * 60, end, CLASS) == "running"
    assert phase(end - 9 * 60, end, CLASS) == "warning"
    end = extend(start, end, 1, CLASS)  # up to the 3 h limit
    assert end == 3 * H and phase(2 * H, end, CLASS) == "running"
    with pytest.raises(ExpiryError, match=r"at most 3 h in all \(0.00 h left"):
        extend(start, end, 0.25, CLASS)
    assert phase(end, end, CLASS) == "expired"


def test_bad_limits_are_named():
    with pytest.raises(ExpiryError, match="default_hours=5, max_hours=2"):
        TimeLimits(default_hours=5, max_hours=2)


@pytest.mark.hub
def test_warning_extend_and_end_on_a_real_session(hub_factory):
    """A real session with a 60 s limit (70 s at most, warning 60 s before the end, so from the
    start: a start slowed by a loaded machine must not eat the whole limit): the warning event
    appears, extending by 5 s works, extending past the limit is refused naming it, and the
    session is stopped at its end."""
    import json
    import time

    hub = hub_factory()
    (hub.data_dir / "time-limits.json").write_text(json.dumps(
        {"default": {"default_hours": 60 / H, "max_hours": 70 / H, "warn_minutes": 1.0}}))
    hub.start()
    tok = hub.create_user("exp-ann")
    assert hub.spawn("exp-ann").status_code in (201, 202)
    hub.wait_ready("exp-ann")

    def mine():
        return hub.fedhub_api("/expiry", tok).json()["sessions"]

    deadline = time.monotonic() + 60
    sessions = mine()
    while time.monotonic() < deadline and not (sessions and any(e["kind"] == "warning"
                                                                for e in sessions[0]["events"])):
        time.sleep(0.5)
        sessions = mine()
    [rec] = sessions
    warning = next(e for e in rec["events"] if e["kind"] == "warning")
    assert "ends in" in warning["message"] and rec["end"] - warning["time"] <= 60.5
    r = hub.fedhub_api("/expiry/extend", tok, "POST", json={"hours": 5 / H})
    assert r.status_code == 200 and r.json()["end"] == pytest.approx(rec["end"] + 5), r.text
    r = hub.fedhub_api("/expiry/extend", tok, "POST", json={"hours": 1})
    assert r.status_code == 400 and "at most" in r.json()["message"], r.text
    r = hub.fedhub_api("/expiry/extend", tok, "POST", json={"hours": "soon"})
    assert r.status_code == 400 and "expected JSON" in r.json()["message"]
    deadline = time.monotonic() + 120
    while hub.server("exp-ann") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hub.server("exp-ann") is None
    assert time.time() >= rec["end"] + 5 - 1  # not before the extended end


@pytest.mark.hub
def test_time_limit_from_the_spawn_request_and_extend_through_the_session(hub_factory):
    """A time limit asked for at spawn (REST user_options, as the form sends it) is refused beyond
    the group's max with the limit named, and a valid one becomes the session's end. The session's
    own API (what the JupyterLab notification calls) shows that end and extends it."""
    import json
    import time

    import requests

    hub = hub_factory()
    (hub.data_dir / "time-limits.json").write_text(json.dumps(
        {"default": {"default_hours": 1, "max_hours": 2, "warn_minutes": 10}}))
    hub.start()
    tok = hub.create_user("exp-bo")
    r = hub.spawn("exp-bo", time_limit_hours=5)
    assert r.status_code == 400 and "time_limit_hours: 5 h is beyond your limit of 2 h" in r.json()["message"]
    assert hub.server("exp-bo") is None  # nothing started
    r = hub.spawn("exp-bo", time_limit_hours="never")
    assert r.status_code == 400 and "time_limit_hours: expected a number" in r.json()["message"]
    assert hub.spawn("exp-bo", time_limit_hours=1.5).status_code in (201, 202)
    hub.wait_ready("exp-bo")
    session = f"{hub.url}/user/exp-bo/fedhub/api"
    headers = {"Authorization": f"token {tok}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mine = requests.get(f"{session}/expiry", headers=headers, timeout=30).json()
        if mine["session"]:
            break
        time.sleep(0.5)
    rec = mine["session"]
    assert rec["end"] == pytest.approx(rec["started"] + 1.5 * H) and rec["phase"] == "running"
    assert abs(mine["now"] - time.time()) < 5 and rec["limits"]["max_hours"] == 2
    r = requests.post(f"{session}/expiry/extend", headers=headers, json={"hours": 0.25}, timeout=30)
    assert r.status_code == 200 and r.json()["end"] == pytest.approx(rec["end"] + 0.25 * H), r.text
    r = requests.post(f"{session}/expiry/extend", headers=headers, json={"hours": 1}, timeout=30)
    assert r.status_code == 400 and "at most 2 h in all (0.25 h left" in r.json()["message"], r.text
    r = requests.post(f"{session}/expiry/extend", headers=headers, data="{oops", timeout=30)
    assert r.status_code == 400 and "expected a JSON object" in r.json()["message"]
    assert hub.fedhub_api("/expiry", tok).json()["sessions"][0]["end"] == pytest.approx(rec["end"] + 0.25 * H)

    # the same from a terminal (VS Code users): `fedhub expiry [--extend HOURS]` with the session's env
    import subprocess
    import sys
    env = hub.session_env("exp-bo")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "expiry", *args], env=env,
                              capture_output=True, text=True, timeout=60)
    out = cli()
    assert out.returncode == 0 and "at most 2 h in all, 0.25 h left to extend" in out.stdout, out
    out = cli("--extend", "1")
    assert out.returncode == 1 and "400: extend by 1.0 h refused" in out.stderr, out
    out = cli("--extend", "0.25")
    assert out.returncode == 0 and "extended by 0.25 h" in out.stdout and "0.00 h left" in out.stdout, out
    assert hub.fedhub_api("/expiry", tok).json()["sessions"][0]["end"] == pytest.approx(rec["end"] + 0.5 * H)


def watcher_over(tmp_path, sessions: list[dict], default_limits: dict):
    """An ExpiryWatcher reading `sessions` as the hub's snapshot, with these default limits,
    no groups, and no session due to end."""
    import json

    from fedhub.hub.expiry import ExpiryWatcher

    (tmp_path / "time-limits.json").write_text(json.dumps({"default": default_limits}))

    class Snapshot:  # the SnapshotStore's read side, over a list
        def read(self):
            return {"sessions": [{"server_name": "", "status": "running", "since": 100.0, **s} for s in sessions]}

    async def no_groups(user):
        return []

    async def stop(user, server):
        raise AssertionError("nothing has ended")

    return ExpiryWatcher(Snapshot(), tmp_path / "state", no_groups, stop)


def lengths(watcher) -> dict[str, float]:
    return {r["user"]: (r["end"] - r["started"]) / H for r in watcher.sessions.values()}


async def test_watcher_takes_the_form_hours_and_clamps_to_a_since_lowered_limit(tmp_path):
    """The watcher reads each session's `time_limit_hours` from the hub's snapshot; hours the form
    accepted before the limits file was lowered end at the new max instead of stopping the watcher."""
    watcher = watcher_over(tmp_path, [{"user": "a", "time_limit_hours": 1.5}, {"user": "b", "time_limit_hours": 9},
                                      {"user": "c"}], {"default_hours": 1, "max_hours": 2})
    await watcher.poll(now=200.0)
    assert lengths(watcher) == {"a": 1.5, "b": 2, "c": 1}


async def test_a_sites_walltime_caps_the_end_and_the_extensions(tmp_path):
    """On a Slurm site with --time=2:00:00 a session asked for 6 h ends (with its warning) after 2 h,
    and cannot be extended past the walltime: Slurm would kill it there without a word."""
    from fedhub.hub.expiry import ExpiryError

    watcher = watcher_over(tmp_path, [
        {"user": "a", "time_limit_hours": 6, "site_max_hours": 2.0}, {"user": "b", "site_max_hours": 2.0},
        {"user": "c", "time_limit_hours": 1, "site_max_hours": 2.0},
        {"user": "d", "time_limit_hours": 6, "site_max_hours": None}], {"default_hours": 4, "max_hours": 12})
    await watcher.poll(now=160.0)
    assert lengths(watcher) == {"a": 2, "b": 2, "c": 1, "d": 6}
    with pytest.raises(ExpiryError, match="at most 2.0 h in all"):
        watcher.extend("a", "", 0.5)
    assert watcher.extend("c", "", 1)["end"] == 100 + 2 * H  # up to the walltime is fine
    assert watcher.extend("d", "", 6)["end"] == 100 + 12 * H  # no site limit: the group's 12 h
