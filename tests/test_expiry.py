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
