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
