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
    """A real session with a 20 s limit (30 s at most, warning 12 s before the end): the warning
    event appears, extending by 5 s works, extending past the limit is refused naming it, and the
    session is stopped at its end."""
    import json
    import time

    hub = hub_factory()
    (hub.data_dir / "time-limits.json").write_text(json.dumps(
        {"default": {"default_hours": 20 / H, "max_hours": 30 / H, "warn_minutes": 0.2}}))
    hub.start()
    tok = hub.create_user("exp-ann")
    assert hub.spawn("exp-ann").status_code in (201, 202)
    hub.wait_ready("exp-ann")

    def mine():
        return hub.fedhub_api("/expiry", tok).json()["sessions"]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (mine() and any(e["kind"] == "warning" for e in mine()[0]["events"])):
        time.sleep(0.5)
    [rec] = mine()
    warning = next(e for e in rec["events"] if e["kind"] == "warning")
    assert "ends in" in warning["message"] and rec["end"] - warning["time"] <= 12.5
    r = hub.fedhub_api("/expiry/extend", tok, "POST", json={"hours": 5 / H})
    assert r.status_code == 200 and r.json()["end"] == pytest.approx(rec["end"] + 5), r.text
    r = hub.fedhub_api("/expiry/extend", tok, "POST", json={"hours": 1})
    assert r.status_code == 400 and "at most" in r.json()["message"], r.text
    r = hub.fedhub_api("/expiry/extend", tok, "POST", json={"hours": "soon"})
    assert r.status_code == 400 and "expected JSON" in r.json()["message"]
    deadline = time.monotonic() + 60
    while hub.server("exp-ann") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hub.server("exp-ann") is None
    assert time.time() >= rec["end"] + 5 - 1  # not before the extended end
