"""The spawn form and the one gate for user input."""

import pytest

from fedhub.hub.catalogue import DEFAULT_CATALOGUE_YAML, catalogue_from_dict
from fedhub.spawner.form import RequestError, form_to_options, parse_request, render_form
from fedhub.spawner.inventory import Node, SiteInventory
import yaml

CAT = catalogue_from_dict(yaml.safe_load(DEFAULT_CATALOGUE_YAML), "sites.yaml")


def test_defaults_and_form_values():
    r = parse_request({}, CAT)
    assert (r.cpus, r.memory, r.gpus, r.site, r.session_type) == (0.5, 512 * 10**6, 0, None, "jupyterlab")
    r = parse_request(form_to_options({"cpus": ["2"], "memory": ["4G"], "gpus": ["1"],
                                       "gpu_type": ["t4"], "site": ["local-b"]}), CAT)
    assert (r.cpus, r.memory, r.gpus, r.gpu_type, r.site) == (2.0, 4 * 10**9, 1, "t4", "local-b")
    assert parse_request({"site": "auto", "gpu_type": "auto"}, CAT).site is None


@pytest.mark.parametrize("options, message", [
    ({"site": "mars"}, "site: unknown site 'mars'"),
    ({"gpu_type": "h100", "gpus": 1}, "gpu_type: 'h100' is not offered by any site"),
    ({"gpus": -2}, "gpus: expected 0 to 4, got -2"),
    ({"gpus": 10**9}, "gpus: expected 0 to 4"),
    ({"cpus": 1e6}, "cpus: expected a number above 0 and at most 8"),
    ({"cpus": "nan"}, "cpus: expected a finite number"),
    ({"memory": "1P"}, "memory: expected a size"),
    ({"memory": "1T"}, "memory: at most 16G per session"),
    ({"gpus": "two"}, "gpus: expected a whole number"),
    ({"gpus": True}, "gpus: expected a number"),
    ({"session_type": "emacs"}, "session_type: expected one of"),
    ({"site": "local-a", "gpu_type": "t4", "gpus": 1}, "site 'local-a' offers no t4 GPUs"),
    ({"image": "evil"}, "unknown option(s) ['image']"),
    ({"cpus": ["1", "2"]}, "expected one value, got 2"),
])
def test_bad_input_is_refused_with_the_field_named(options, message):
    with pytest.raises(RequestError) as e:
        parse_request(options, CAT)
    assert message in str(e.value)


def test_form_shows_live_free_capacity_per_site():
    a = SiteInventory("local-a")
    a.add_node(Node("n", 8, 16 * 10**9, {"a100": 2}))
    a.allocate("n", 1, 10**9, "a100", 1)
    html = render_form(CAT, [a])
    assert "<tr data-site='local-a'>" in html
    assert "1/2 a100" in html and "7/8" in html
    assert "<option value='t4'>t4</option>" in html
    assert "<option value='local-b'>local-b</option>" in html


# ------------------------------------------------------------------ time limit

def test_time_limit_field_defaults_to_the_group_and_stops_at_its_max():
    from fedhub.hub.expiry import TimeLimits
    from fedhub.spawner.form import parse_time_limit
    limits = TimeLimits(default_hours=2, max_hours=3, warn_minutes=10)
    html = render_form(CAT, [], time_limits=limits)
    assert "Time limit (hours)" in html
    assert "name='time_limit_hours'" in html and "max='3'" in html and "value='2'" in html
    assert "time_limit_hours" not in render_form(CAT, [])  # no time limits, no field
    assert parse_time_limit({}, limits) == 2 and parse_time_limit({"time_limit_hours": [""]}, limits) == 2
    assert parse_time_limit(form_to_options({"time_limit_hours": ["2.5"]}), limits) == 2.5
    assert parse_request({"time_limit_hours": "2.5"}, CAT).cpus == 0.5  # a known option


@pytest.mark.parametrize("raw, message", [
    ("4", "time_limit_hours: 4 h is beyond your limit of 3 h"),
    ("0", "time_limit_hours: expected a positive number of hours, got 0"),
    ("soon", "time_limit_hours: expected a number, got 'soon'"),
    ("inf", "time_limit_hours: expected a finite number"),
])
def test_time_limit_beyond_the_group_limit_is_refused_naming_it(raw, message):
    from fedhub.hub.expiry import TimeLimits
    from fedhub.spawner.form import parse_time_limit
    with pytest.raises(RequestError) as e:
        parse_time_limit({"time_limit_hours": raw}, TimeLimits(default_hours=2, max_hours=3))
    assert message in str(e.value)


def test_time_limits_come_from_the_file_beside_the_state_dir(tmp_path):
    import json
    from fedhub.hub.expiry import TimeLimits
    from fedhub.spawner.form import time_limits_for
    assert time_limits_for("", ["class"]) is None
    state = tmp_path / "state"
    assert time_limits_for(str(state), ["class"]) == TimeLimits()  # no file: the defaults
    (tmp_path / "time-limits.json").write_text(json.dumps(
        {"default": {"default_hours": 1, "max_hours": 2}, "groups": {"staff": {"default_hours": 4, "max_hours": 48}}}))
    assert time_limits_for(str(state), ["class"]).max_hours == 2
    assert time_limits_for(str(state), ["class", "staff"]).max_hours == 48
    (tmp_path / "time-limits.json").write_text("{not json")
    errors = []

    class Log:
        def error(self, *args):
            errors.append(args[0] % args[1:])
    assert time_limits_for(str(state), [], Log()) == TimeLimits()
    assert "time-limits.json: expected JSON" in errors[0]
