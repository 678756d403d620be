"""A real fedhub (JupyterHub + configurable-http-proxy + fedhub API service) spawning real
single-user servers on two local sites. Nothing here is mocked."""

import json
import re
import time

import pytest
import requests

pytestmark = pytest.mark.hub

CATALOGUE = """
sites:
  - name: site-a
    kind: local
    cpus: 4
    memory: 8G
    gpus: [{type: a100, count: 2}]
  - name: site-b
    kind: local
    cpus: 4
    memory: 8G
    gpus: [{type: a100, count: 1}, {type: t4, count: 2}]
defaults: {cpus: 0.5, memory: 512M}
"""


@pytest.fixture(scope="module")
def hub(module_hub_factory):
    return module_hub_factory(CATALOGUE).start()


@pytest.fixture
def users(hub):
    """Fresh user names for a test; their servers are stopped afterwards."""
    made = []

    def make(n):
        base = f"u{len(made)}x{int(time.time() * 1000) % 10**7}"
        names = [f"{base}{i}" for i in range(n)]
        for name in names:
            hub.create_user(name)
        made.extend(names)
        return names

    yield make
    for name in made:
        if hub.server(name) is not None:
            hub.stop_server(name)


def progress_messages(hub, name):
    r = hub.api("GET", f"/users/{name}/server/progress", stream=True, timeout=120)
    messages = []
    for line in r.iter_lines():
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            messages.append(event.get("message", ""))
            if event.get("ready") or event.get("failed"):
                break
    return messages


def sites_by_name(hub, token):
    r = hub.fedhub_api("/sites", token)
    assert r.status_code == 200, r.text
    return {s["name"]: s for s in r.json()["sites"]}


def test_gpu_session_is_placed_with_reason_and_sees_its_gpus(hub, users):
    (alice,) = users(1)
    token = hub.create_user(alice)
    r = hub.spawn(alice, gpus=2, gpu_type="a100")  # only site-a has 2 a100s
    assert r.status_code in (201, 202), r.text
    server = hub.wait_ready(alice)
    alloc = server["state"]["fedhub"]["allocation"]
    assert alloc["site"] == "site-a" and alloc["gpu_ids"] == [0, 1]
    env = hub.session_env(alice)
    assert env["FEDHUB_SITE"] == "site-a"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["FEDHUB_GPU_TYPE"] == "a100"
    sessions = hub.fedhub_api("/sessions", token).json()["sessions"]
    assert [(s["site"], s["gpu_ids"], s["status"]) for s in sessions] == [("site-a", [0, 1], "running")]
    assert "a100" in sessions[0]["reason"]
    assert sites_by_name(hub, token)["site-a"]["gpus"][0]["free"] == 0
    # the server answers through the proxy with the user's token
    r = requests.get(f"{hub.url}/user/{alice}/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200


def test_progress_streams_placement_while_spawning(hub, users):
    import threading
    (bob,) = users(1)
    poster = threading.Thread(target=hub.spawn, args=(bob,), kwargs={"cpus": 1, "gpus": 1, "gpu_type": "t4"})
    poster.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # open the stream while the spawn is pending
        server = hub.server(bob)
        if server and server["pending"] == "spawn":
            break
        time.sleep(0.05)
    messages = progress_messages(hub, bob)
    poster.join()
    hub.wait_ready(bob)
    text = "\n".join(messages)
    assert "Placing a jupyterlab session: 1 CPU, 512M memory, 1 t4 GPU" in text, text
    assert re.search(r"Placed on site-b \(the only site with room: 2 of 2 t4 GPUs free\), GPUs t4 \[0\]", text), text
    assert "Session on site-b is answering" in text
    assert "ready" in messages[-1].lower()


def test_full_site_spills_to_the_other_and_then_refuses(hub, users):
    a, b, c = users(3)
    token = hub.create_user(a)
    assert hub.spawn(a, gpus=2, gpu_type="a100").status_code in (201, 202)
    hub.wait_ready(a)
    assert hub.spawn(b, gpus=1, gpu_type="a100").status_code in (201, 202)  # site-a is full
    assert hub.wait_ready(b)["state"]["fedhub"]["allocation"]["site"] == "site-b"
    r = hub.spawn(c, gpus=1, gpu_type="a100")
    assert r.status_code == 409
    body = r.json()
    assert body["message"].startswith("No site can run 0.5 CPU, 512M memory, 1 a100 GPU now.")
    assert "site-a: 1 a100 GPUs requested, at most 0 free on one node (2 in total)" in body["message"]
    assert hub.server(c) is None
    assert hub.api("GET", "/").status_code == 200  # hub keeps serving
    assert sites_by_name(hub, token)["site-b"]["gpus"][0] == {
        "type": "a100", "capacity": 1, "used": 1, "free": 0, "max_free_on_a_node": 0}
    # stopping a session frees its GPUs for the next one
    hub.stop_server(a)
    assert hub.spawn(c, gpus=1, gpu_type="a100").status_code in (201, 202)
    assert hub.wait_ready(c)["state"]["fedhub"]["allocation"]["site"] == "site-a"


def test_named_site_and_gpu_type(hub, users):
    (d,) = users(1)
    assert hub.spawn(d, site="site-b", gpus=2, gpu_type="t4").status_code in (201, 202)
    alloc = hub.wait_ready(d)["state"]["fedhub"]["allocation"]
    assert (alloc["site"], alloc["gpu_type"], alloc["gpu_ids"]) == ("site-b", "t4", [0, 1])
    assert hub.session_env(d)["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.parametrize("options, status, message", [
    ({"site": "nowhere"}, 400, "site: unknown site 'nowhere'"),
    ({"gpu_type": "h100", "gpus": 1}, 400, "gpu_type: 'h100' is not offered by any site"),
    ({"gpus": -2}, 400, "gpus: expected 0 to 16, got -2"),
    ({"gpus": 10**12}, 400, "gpus: expected 0 to 16"),
    ({"cpus": 10**6}, 400, "cpus: expected a number above 0"),
    ({"site": "site-a", "gpu_type": "t4", "gpus": 1}, 400, "site 'site-a' offers no t4 GPUs"),
    ({"gpus": 3, "gpu_type": "a100"}, 409, "site-a: 3 a100 GPUs requested, at most 2 free on one node"),
])
def test_bad_requests_are_refused_clearly_and_nothing_spawns(hub, users, options, status, message):
    (e,) = users(1)
    r = hub.spawn(e, **options)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]
    assert hub.server(e) is None
    assert hub.api("GET", "/").status_code == 200


def test_api_serves_the_inventory_before_any_spawn(module_hub_factory):
    fresh = module_hub_factory(CATALOGUE).start()
    token = fresh.create_user("early")
    sites = sites_by_name(fresh, token)
    assert set(sites) == {"site-a", "site-b"} and sites["site-a"]["gpus"][0]["free"] == 2
    fresh.stop()


def test_fedhub_api_auth_scopes_and_json_errors(hub, users):
    (f,) = users(1)
    token = hub.create_user(f)
    assert hub.fedhub_api("/sites", "").status_code == 401
    assert hub.fedhub_api("/sites", "forged-token").status_code in (401, 403)
    # a token without the custom scope is refused, with the scope named
    r = hub.api("POST", f"/users/{f}/tokens", json={"scopes": ["read:users!user"]})
    narrow = r.json()["token"]
    r = hub.fedhub_api("/sites", narrow)
    assert r.status_code == 403
    assert r.json() == {"status": 403, "message": "Forbidden: this route needs the scope custom:fedhub:sites:read"}
    r = hub.fedhub_api("/sites/atlantis", token)
    assert r.status_code == 404 and "No site 'atlantis'" in r.json()["message"]
    r = hub.fedhub_api("/no/such/route", token)
    assert r.status_code == 404 and r.json()["status"] == 404
    assert hub.fedhub_api("", token).json()["user"] == f
    site = hub.fedhub_api("/sites/site-b", token).json()
    assert {g["type"] for g in site["gpus"]} == {"a100", "t4"}


def test_browser_login_spawn_form_and_landing_in_jupyterlab(hub, users):
    (g,) = users(1)
    s = requests.Session()
    page = s.get(f"{hub.url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    r = s.post(f"{hub.url}/hub/login?next=/hub/spawn",
               data={"username": g, "password": "wrong-password", "_xsrf": xsrf})
    assert "Invalid username or password" in r.text
    r = s.post(f"{hub.url}/hub/login?next=/hub/spawn",
               data={"username": g, "password": hub.shared_password, "_xsrf": xsrf})
    assert r.url.endswith("/hub/spawn"), r.url
    form = r.text
    assert "Free capacity per site" in form and "<tr data-site='site-a'>" in form
    assert "<option value='t4'>t4</option>" in form
    xsrf = re.search(r'xsrf_token: "([^"]+)"', form).group(1)
    # bad input in the form: the form comes back with the error, nothing spawned
    r = s.post(f"{hub.url}/hub/spawn", data={"_xsrf": xsrf, "gpus": "-1", "gpu_type": "any",
                                              "site": "auto", "cpus": "1", "memory": "1G",
                                              "session_type": "jupyterlab"})
    assert "gpus: expected 0 to 16, got -1" in r.text
    assert hub.server(g) is None
    r = s.post(f"{hub.url}/hub/spawn", data={"_xsrf": xsrf, "gpus": "1", "gpu_type": "t4",
                                              "site": "auto", "cpus": "1", "memory": "1G",
                                              "session_type": "jupyterlab"})
    hub.wait_ready(g)
    r = s.get(f"{hub.url}/user/{g}/lab")
    assert r.status_code == 200 and "JupyterLab" in r.text, r.url
    assert hub.session_env(g)["FEDHUB_GPU_TYPE"] == "t4"


def test_fedhub_sites_cli_prints_the_live_inventory(hub, users):
    import subprocess
    import sys

    from conftest import fedhub_env
    (h,) = users(1)
    token = hub.create_user(h)
    assert hub.spawn(h, gpus=1, gpu_type="t4").status_code in (201, 202)
    hub.wait_ready(h)
    # inside the session: the session's own token and hub URL are enough
    session = hub.session_env(h)
    assert session["FEDHUB_URL"] == hub.url
    env = {**fedhub_env(), "FEDHUB_URL": session["FEDHUB_URL"],
           "JUPYTERHUB_API_TOKEN": session["JUPYTERHUB_API_TOKEN"]}
    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "sites"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1/2 t4" in out.stdout
    env = {**fedhub_env(), "FEDHUB_URL": hub.url, "FEDHUB_TOKEN": token}
    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "sites"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "1/2 t4" in lines["site-b"] and "local" in lines["site-b"]
    env["FEDHUB_TOKEN"] = "forged"
    out = subprocess.run([sys.executable, "-m", "fedhub.server_ext.cli", "sites"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "fedhub sites: 40" in out.stderr
