"""Edge bundles and the fedhub-edge agent.

Bundles are built for real (onnxruntime int8 quantisation of a scikit-learn digits MLP,
Ed25519 signature with the hub's key kept in a data dir). The agent runs for real: it pulls
over HTTP, verifies, loads with onnxruntime and serves the v2 protocol, called with the
unmodified tritonclient. The hub side of the contract is StandInDeployAPI below: a tiny real
HTTP server that serves bundles from a folder, standing in for the hub's deployment API.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from tritonclient.utils import InferenceServerException

from fedhub.hub.deploy.edge import contract
from fedhub.hub.deploy.edge import manifest as fmt
from fedhub.hub.deploy.edge.agent import EdgeAgent
from fedhub.hub.deploy.edge.bundle import (BundleError, build_bundle, build_bundle_for_deployment, hub_key,
                                           read_manifest)
from fedhub.hub.deploy.packaging import Tensor, package_model, sklearn_to_onnx

TOKEN = "device-owner-token"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """An fp32 ONNX digits classifier (MLP: MatMul weights that int8 quantisation shrinks)
    and a held-out sample it never saw."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    with warnings.catch_warnings():  # few iterations on purpose: fast, and accurate enough
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=120, random_state=0).fit(X[:1400], y[:1400])
    path = tmp_path_factory.mktemp("fp32") / "digits.onnx"
    path.write_bytes(sklearn_to_onnx(mlp, [Tensor("input", "FP32", (-1, 64))]).SerializeToString())
    return path, X[1400:], y[1400:]


@pytest.fixture(scope="module")
def hub_state(tmp_path_factory):
    """The hub's data dir: its Ed25519 key is created there on first use."""
    return tmp_path_factory.mktemp("hub-state")


@pytest.fixture(scope="module")
def bundles(digits_model, hub_state, tmp_path_factory):
    """Two good versions of the bundle, signed with the hub's key."""
    path, X, y = digits_model
    out = tmp_path_factory.mktemp("bundles")
    key = hub_key(hub_state)
    return {v: build_bundle(path, out, name="digits", version=v, key=key, held_out=(X, y), provenance_id=f"prov-{v}")
            for v in (1, 2)}


def unpacked(archive: Path, into: Path) -> Path:
    return fmt.unpack(archive, into / "content")


def repacked(directory: Path, archive: Path) -> Path:
    """An attacker's rebuild: the zip itself is well-formed, only the content is altered."""
    return fmt.pack(directory, archive)


class StandInDeployAPI:
    """Stand-in for the hub's deployment API (the edge part of fedhub.hub.deploy.edge.contract):
    a real HTTP server on loopback that serves bundle archives from a folder and records
    registrations and status reports."""

    def __init__(self, public_key_pem: str):
        self.assigned: dict[str, Path] = {}
        self.registrations: list[dict] = []
        self.statuses: list[dict] = []
        self.public_key_pem = public_key_pem
        api = "/" + contract.API_PREFIX + "/"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body=b"", ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def authorized(self):
                if self.headers.get("Authorization") != f"token {TOKEN}":
                    self.reply(403, b'{"error": "bad token"}')
                    return False
                return True

            def do_GET(self):  # noqa: N802
                if not self.authorized():
                    return
                if self.path == api + contract.PUBLIC_KEY:
                    return self.reply(200, outer.public_key_pem.encode(), "application/x-pem-file")
                m = re.fullmatch(api + r"edge/groups/([^/]+)/bundle", self.path)
                if m:
                    archive = outer.assigned.get(m[1])
                    if archive is None:
                        return self.reply(204)
                    doc = contract.assignment_doc(archive, f"/files/{archive.parent.name}/{archive.name}", "digits",
                                                  archive.name)
                    return self.reply(200, json.dumps(doc).encode())
                m = re.fullmatch(r"/files/([^/]+)/([^/]+)", self.path)
                for archive in outer.assigned.values():
                    if m and (archive.parent.name, archive.name) == (m[1], m[2]):
                        return self.reply(200, archive.read_bytes(), "application/zip")
                self.reply(404, b'{"error": "not found"}')

            def do_POST(self):  # noqa: N802
                if not self.authorized():
                    return
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    if self.path == api + contract.REGISTER:
                        outer.registrations.append(contract.check_registration(doc))
                        return self.reply(201, json.dumps({"name": doc["name"], "group": doc["group"]}).encode())
                    if re.fullmatch(api + r"edge/devices/[^/]+/status", self.path):
                        outer.statuses.append(contract.check_status(doc))
                        return self.reply(204)
                except contract.ContractError as exc:
                    return self.reply(400, json.dumps({"error": str(exc)}).encode())
                self.reply(404, b'{"error": "not found"}')

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub_api(hub_state):
    api = StandInDeployAPI(fmt.public_key_pem(hub_key(hub_state).public_key()))
    yield api
    api.close()


@pytest.fixture
def agent(hub_api, tmp_path):
    agents = []

    def start(state_dir=None, **kw):
        a = EdgeAgent(hub_api.url, "pi-7", "field", state_dir or tmp_path / "device", token=TOKEN, **kw)
        agents.append(a)
        a.register()
        a.start()
        return a
    yield start
    for a in agents:
        a.stop()


def infer(port: int, X: np.ndarray, binary: bool = True) -> tuple[np.ndarray, str]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X.astype(np.float32), binary_data=binary)
    outputs = None if binary else [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("digits", [inp], outputs=outputs)
    return result.as_numpy("label"), result.get_response()["model_version"]


# ---------------------------------------------------------------- bundles

def test_bundle_is_int8_smaller_and_its_signed_manifest_carries_accuracy(bundles, digits_model, hub_state, tmp_path):
    path, X, y = digits_model
    manifest = read_manifest(bundles[1])
    sizes, accuracy = manifest["sizes"], manifest["accuracy"]
    assert sizes["fp32_bytes"] == path.stat().st_size
    assert sizes["int8_bytes"] < 0.5 * sizes["fp32_bytes"]
    assert accuracy["sample"] == "held-out" and accuracy["samples"] == len(y)
    fp32_pred = ort.InferenceSession(str(path)).run(["label"], {"input": X.astype(np.float32)})[0]
    assert accuracy["fp32"] == round(float((fp32_pred == y).mean()), 6)
    assert accuracy["fp32"] > 0.85 and abs(accuracy["int8"] - accuracy["fp32"]) < 0.03
    assert manifest["provenance_id"] == "prov-1" and manifest["name"] == "digits" and manifest["version"] == "1"
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in manifest["outputs"]] == ["label", "probabilities"]
    assert manifest["files"]["model.onnx"]["bytes"] == sizes["int8_bytes"]
    content = unpacked(bundles[1], tmp_path)
    assert fmt.verify_directory(content, hub_key(hub_state).public_key()) == manifest
    assert manifest["key_id"] == fmt.key_id(hub_key(hub_state).public_key())
    print(f"\nedge digits MLP: fp32 {sizes['fp32_bytes']} B acc {accuracy['fp32']:.4f} | "
          f"int8 {sizes['int8_bytes']} B acc {accuracy['int8']:.4f} | size ratio "
          f"{sizes['fp32_bytes'] / sizes['int8_bytes']:.2f}x, agreement {accuracy['agreement']:.4f}")


def test_static_quantisation_calibrates_on_held_out_rows(digits_model, hub_state, tmp_path):
    path, X, y = digits_model
    lines = []
    archive = build_bundle(path, tmp_path, name="digits", version="s1", key=hub_key(hub_state), held_out=(X, y),
                           quantization="static", progress=lines.append)
    manifest = read_manifest(archive)
    assert manifest["quantization"]["method"] == "static" and manifest["quantization"]["calibration_rows"] == 128
    assert "calibrated on 128 held-out rows" in lines[0]
    assert manifest["sizes"]["int8_bytes"] < 0.6 * manifest["sizes"]["fp32_bytes"]
    assert abs(manifest["accuracy"]["int8"] - manifest["accuracy"]["fp32"]) < 0.03
    content = unpacked(archive, tmp_path)
    ops = {node.op_type for node in __import__("onnx").load(str(content / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ format
    with pytest.raises(BundleError, match="static quantization calibrates on held-out rows"):
        build_bundle(path, tmp_path, name="digits", version="s2", key=hub_key(hub_state), quantization="static")
    with pytest.raises(BundleError, match="quantization must be one of dynamic, static"):
        build_bundle(path, tmp_path, name="digits", version="s3", key=hub_key(hub_state), quantization="fp8")


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def tamper_model(d: Path):
    flip_byte(d / "model.onnx")


def tamper_manifest(d: Path):
    text = (d / "manifest.json").read_text()
    assert '"provenance_id": "prov-' in text
    (d / "manifest.json").write_text(text.replace('"provenance_id": "prov-', '"provenance_id": "forged-'))


def sign_with_another_key(d: Path):
    other = Ed25519PrivateKey.generate()
    (d / "manifest.sig").write_text(base64.b64encode(other.sign((d / "manifest.json").read_bytes())).decode())


def add_file(d: Path):
    (d / "extra.py").write_text("print('hi')")


def drop_signature(d: Path):
    (d / "manifest.sig").unlink()


TAMPERING = {
    "one byte of the model": (tamper_model, r"model.onnx: sha256 .* does not match the manifest"),
    "the manifest": (tamper_manifest, r"manifest.sig does not match manifest.json under the hub's key"),
    "signed by another key": (sign_with_another_key, r"manifest.sig does not match manifest.json"),
    "an unlisted file": (add_file, r"files not listed in the manifest: extra.py"),
    "no signature": (drop_signature, r"manifest.sig is missing"),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_verify_refuses_any_alteration_with_the_reason(case, bundles, hub_state, tmp_path):
    content = unpacked(bundles[1], tmp_path)
    TAMPERING[case][0](content)
    with pytest.raises(fmt.BundleRefused, match=TAMPERING[case][1]):
        fmt.verify_directory(content, hub_key(hub_state).public_key())


def test_archive_with_unexpected_entries_or_a_broken_zip_is_refused(bundles, tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(fmt.BundleRefused, match=r"unexpected entries in the archive: \.\./escape\.txt"):
        fmt.unpack(evil, tmp_path / "out")
    broken = tmp_path / "broken.zip"
    shutil.copyfile(bundles[1], broken)
    flip_byte(broken, offset=len(broken.read_bytes()) // 2)  # inside the stored model: CRC fails
    with pytest.raises(fmt.BundleRefused, match="not a bundle archive"):
        fmt.unpack(broken, tmp_path / "out2")


def test_bundle_for_deployment_from_a_packaged_repository_entry(digits_model, hub_state, tmp_path):
    path, X, y = digits_model
    packaged = package_model(path, tmp_path / "repo", "digits-edge", version=4)
    np.savez(tmp_path / "held.npz", X=X, y=y)
    record = {"id": "d0c0ffee", "owner": "alice", "name": "digits", "model_name": "alice--digits", "target": "edge:field"}
    lines = []
    archive = build_bundle_for_deployment(packaged.model_dir, tmp_path / "out", hub_state, record, 4,
                                          {"held_out": str(tmp_path / "held.npz")}, progress=lines.append)
    assert lines == ["quantising to int8 (onnxruntime dynamic quantisation)",
                     f"comparing fp32 and int8 on {len(y)} held-out rows",
                     f"signing the manifest with the hub key {fmt.key_id(hub_key(hub_state).public_key())}"]
    manifest = read_manifest(archive)
    assert (manifest["name"], manifest["version"], manifest["provenance_id"]) == ("alice--digits", "4", "d0c0ffee")
    assert manifest["deployment"] == {"id": "d0c0ffee", "owner": "alice", "target": "edge:field"}
    assert manifest["accuracy"]["sample"] == "held-out" and manifest["accuracy"]["int8"] > 0.85
    fmt.verify_directory(unpacked(archive, tmp_path), hub_key(hub_state).public_key())


# ---------------------------------------------------------------- the agent

def test_agent_registers_pulls_verifies_and_serves_v2(hub_api, agent, bundles, digits_model):
    _, X, y = digits_model
    hub_api.assigned["field"] = bundles[1]
    a = agent()
    assert hub_api.registrations[0]["name"] == "pi-7" and hub_api.registrations[0]["group"] == "field"
    assert a.poll_once() == contract.SERVING
    assert hub_api.statuses[-1]["state"] == "serving" and hub_api.statuses[-1]["serving"] == a.state["current"]
    assert a.poll_once() == contract.SERVING and len(hub_api.statuses) == 1  # unchanged: nothing re-pulled

    int8 = ort.InferenceSession(str(a.state_dir / "bundles" / a.state["current"] / "model.onnx"))
    expected = int8.run(["label"], {"input": X.astype(np.float32)})[0]
    labels, version = infer(a.server.port, X)  # binary tensors, tritonclient's default
    np.testing.assert_array_equal(labels, expected)
    assert version == "1" and (labels == y).mean() > 0.85
    labels_json, _ = infer(a.server.port, X[:5], binary=False)
    np.testing.assert_array_equal(labels_json, expected[:5])

    client = httpclient.InferenceServerClient(f"127.0.0.1:{a.server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    bad = httpclient.InferInput("input", [2, 63], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 63), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[2, 63\] does not match \[-1, 64\]"):
        client.infer("digits", [bad])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [bad])
    assert client.is_server_live()  # bad requests never take the server down


def test_tampered_bundles_are_refused_and_the_previous_keeps_serving(hub_api, agent, bundles, digits_model, tmp_path):
    _, X, _ = digits_model
    hub_api.assigned["field"] = bundles[1]
    a = agent()
    a.poll_once()
    serving = a.state["current"]
    before, _ = infer(a.server.port, X)

    for case in ("one byte of the model", "the manifest", "signed by another key"):
        content = unpacked(bundles[2], tmp_path / case.replace(" ", "-"))
        TAMPERING[case][0](content)
        hub_api.assigned["field"] = repacked(content, tmp_path / case.replace(" ", "-") / "digits-2.zip")
        assert a.poll_once() == contract.REFUSED, case
        status = hub_api.statuses[-1]
        assert status["state"] == "refused" and re.search(TAMPERING[case][1], status["reason"]), status
        assert status["serving"] == serving and a.state["current"] == serving
        labels, version = infer(a.server.port, X)
        assert version == "1"
        np.testing.assert_array_equal(labels, before)
    assert sorted(p.name for p in (a.state_dir / "bundles").iterdir()) == [serving]  # nothing refused was kept

    hub_api.assigned["field"] = bundles[2]  # the genuine version 2 is taken
    assert a.poll_once() == contract.SERVING
    assert infer(a.server.port, X[:3])[1] == "2" and a.state["previous"] == serving

    hub_api.assigned["field"] = bundles[1]  # the hub rolls the group back: the kept bundle serves again
    assert a.poll_once() == contract.SERVING and a.state["current"] == serving
    assert infer(a.server.port, X[:3])[1] == "1"


def test_a_new_bundle_that_fails_to_load_leaves_the_current_one_serving(hub_api, agent, bundles, digits_model,
                                                                        hub_state, tmp_path):
    _, X, _ = digits_model
    hub_api.assigned["field"] = bundles[1]
    a = agent()
    a.poll_once()
    # correctly signed by the hub, but the model is not a loadable ONNX graph
    content = unpacked(bundles[2], tmp_path)
    (content / "model.onnx").write_bytes(b"\x08\x07garbage that onnxruntime cannot parse")
    fmt.sign_directory(content, {k: v for k, v in json.loads((content / "manifest.json").read_text()).items()
                                 if k not in ("files", "format", "key_id")}, hub_key(hub_state))
    hub_api.assigned["field"] = repacked(content, tmp_path / "broken-2.zip")
    assert a.poll_once() == contract.LOAD_FAILED
    assert hub_api.statuses[-1]["state"] == "load-failed" and "onnxruntime" in hub_api.statuses[-1]["reason"]
    assert infer(a.server.port, X[:4])[1] == "1"
    assert a.poll_once() == contract.LOAD_FAILED and hub_api.statuses[-1]["state"] == "load-failed"
    assert len([s for s in hub_api.statuses if s["state"] == "load-failed"]) == 1  # reported once, not retried


def test_agent_rolls_back_to_the_previous_bundle_when_the_current_fails_at_start(hub_api, agent, bundles,
                                                                                 digits_model, tmp_path):
    _, X, _ = digits_model
    state_dir = tmp_path / "device"
    hub_api.assigned["field"] = bundles[1]
    first = agent(state_dir)
    first.poll_once()
    hub_api.assigned["field"] = bundles[2]
    first.poll_once()
    v1, v2 = first.state["previous"], first.state["current"]
    first.stop()

    flip_byte(state_dir / "bundles" / v2 / "model.onnx")  # the disk went bad while it was off
    second = agent(state_dir)
    assert second.state["current"] == v1 and second.state["previous"] is None
    status = hub_api.statuses[-1]
    assert status["state"] == "rolled-back" and status["bundle_id"] == v2 and "sha256" in status["reason"]
    assert infer(second.server.port, X[:4])[1] == "1"


def test_agent_keeps_serving_when_the_hub_goes_away_and_is_idle_with_nothing_assigned(hub_api, agent, bundles,
                                                                                      digits_model):
    import requests

    _, X, _ = digits_model
    a = agent()
    assert a.poll_once() == contract.IDLE  # registered, nothing assigned yet (204)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{a.server.port}")
    assert client.is_server_live() and not client.is_server_ready()
    hub_api.assigned["field"] = bundles[1]
    assert a.poll_once() == contract.SERVING
    hub_api.close()
    with pytest.raises(requests.ConnectionError):
        a.poll_once()
    assert infer(a.server.port, X[:2])[1] == "1"


def test_the_hub_token_is_not_sent_to_a_bundle_url_on_another_host(hub_api, agent, bundles, digits_model):
    """The assignment may point at object storage; only the hub gets the owner's token."""
    _, X, _ = digits_model
    seen = []

    class Storage(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            body = bundles[1].read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
    threading.Thread(target=storage.serve_forever, daemon=True).start()
    try:
        a = agent()
        url = f"http://localhost:{storage.server_address[1]}/bucket/digits-1.zip"  # another origin
        a.assignment = lambda: contract.assignment_doc(bundles[1], url, "digits", 1)
        assert a.poll_once() == contract.SERVING and seen == [None]
        assert infer(a.server.port, X[:2])[1] == "1"
    finally:
        storage.shutdown()
        storage.server_close()


def test_agent_pins_the_hub_key_on_first_contact_and_refuses_a_wrong_given_key(hub_api, bundles, hub_state, tmp_path):
    hub_api.assigned["field"] = bundles[1]
    a = EdgeAgent(hub_api.url, "pi-8", "field", tmp_path / "dev", token=TOKEN)
    try:
        assert (tmp_path / "dev" / "hub-key.pem").read_text() == hub_api.public_key_pem
    finally:
        a.stop()
    stranger = tmp_path / "stranger.pem"
    stranger.write_text(fmt.public_key_pem(Ed25519PrivateKey.generate().public_key()))
    b = EdgeAgent(hub_api.url, "pi-9", "field", tmp_path / "dev2", token=TOKEN, public_key=stranger)
    try:
        b.start()
        assert b.poll_once() == contract.REFUSED and "under the hub's key" in b.last_status["reason"]
    finally:
        b.stop()


def test_fedhub_edge_console_script_serves_the_assigned_bundle(hub_api, bundles, digits_model, hub_state, tmp_path):
    _, X, _ = digits_model
    hub_api.assigned["field"] = bundles[1]
    key = tmp_path / "hub.pem"
    key.write_text(fmt.public_key_pem(hub_key(hub_state).public_key()))
    exe = Path(sys.executable).parent / "fedhub-edge"
    proc = subprocess.Popen([str(exe), "--hub", hub_api.url, "--name", "pi-cli", "--group", "field",
                             "--state-dir", str(tmp_path / "cli"), "--public-key", str(key), "--port", "0", "--once"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"FEDHUB_EDGE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})
    try:
        port, deadline = None, time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"serving on http://127.0.0.1:(\d+)/v2", line)
            port = int(m[1]) if m else port
            if line.startswith("fedhub-edge: serving ") and "serving on" not in line:
                break
        assert port, "the agent did not start"
        assert infer(port, X[:6])[1] == "1"
        assert hub_api.registrations[-1]["name"] == "pi-cli" and hub_api.statuses[-1]["state"] == "serving"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert proc.returncode == 0


def test_the_agent_imports_nothing_beyond_its_edge_dependencies():
    """`pip install fedhub[edge]` is onnxruntime, numpy, requests, cryptography: the agent must
    not pull in the hub's stack (checked in a fresh interpreter)."""
    hub_stack = ["jupyterhub", "tornado", "grpc", "tritonclient", "mlflow", "onnx", "skl2onnx", "torch",
                 "google", "sklearn", "kubespawner", "kubernetes_asyncio", "traitlets", "yaml", "flwr"]
    code = ("import sys, json; import fedhub.hub.deploy.edge.agent; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({hub_stack!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_bad_settings_and_payloads_are_named():
    with pytest.raises(contract.ContractError, match="--name: 'name' must be 1-64 letters"):
        EdgeAgent("http://127.0.0.1:9", "bad name", "g", "/tmp/never")
    with pytest.raises(contract.ContractError, match="'state' must be one of serving, refused"):
        contract.check_status({"state": "happy"})
    with pytest.raises(contract.ContractError, match="'sha256' must be 64 lowercase hex digits"):
        contract.check_assignment({"bundle_id": "a", "name": "n", "version": 1, "url": "/x", "sha256": "zz", "size": 3})
