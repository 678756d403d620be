"""Copyable tritonclient code for a deployment's real endpoint (pure: record -> text)."""

from __future__ import annotations

HTTP = '''import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient(url="{url}")
{headers_line}meta = client.get_model_metadata("{model}", "{version}"{headers_arg})
inputs = []
for spec in meta["inputs"]:
    shape = [1 if d < 0 else d for d in spec["shape"]]
    tensor = httpclient.InferInput(spec["name"], shape, spec["datatype"])
    tensor.set_data_from_numpy(np.zeros(shape, dtype=httpclient.triton_to_np_dtype(spec["datatype"])))
    inputs.append(tensor)
result = client.infer("{model}", inputs, model_version="{version}"{headers_arg})
for spec in meta["outputs"]:
    print(spec["name"], result.as_numpy(spec["name"]))
'''

GRPC = '''import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(url="{url}")
meta = client.get_model_metadata("{model}", "{version}", as_json=True)
inputs = []
for spec in meta["inputs"]:
    shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
    tensor = grpcclient.InferInput(spec["name"], shape, spec["datatype"])
    tensor.set_data_from_numpy(np.zeros(shape, dtype=grpcclient.triton_to_np_dtype(spec["datatype"])))
    inputs.append(tensor)
result = client.infer("{model}", inputs, model_version="{version}")
for spec in meta["outputs"]:
    print(spec["name"], result.as_numpy(spec["name"]))
'''


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def snippet(record: dict) -> dict:
    """{"http": code, "grpc": code, "http_via_hub": code} for an embedded deployment; for
    other targets, what to do instead."""
    ep = record.get("endpoint") or {}
    if record.get("kind") != "embedded" or not ep.get("http"):
        where = record.get("target", "")
        return {"model_name": record.get("model_name"), "target": where, "http": "", "grpc": "",
                "http_via_hub": "",
                "note": (f"Apply the manifests (GET api/deployments/{record['id']}/manifests) on the site, "
                         "then point tritonclient at the site's Triton service."
                         if record.get("kind") == "site" else
                         f"Devices of group {record.get('where')} pull and serve this model with fedhub-edge; "
                         "point tritonclient at a device's address.")}
    model, version = record["model_name"], str(record.get("current_version") or "")
    no_headers = {"headers_line": "", "headers_arg": ""}
    via_hub = {"headers_line": 'headers = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}\n',
               "headers_arg": ", headers=headers"}
    return {
        "model_name": model, "model_version": version, "target": "embedded",
        "http": HTTP.format(url=_hostport(ep["http"]), model=model, version=version, **no_headers),
        "grpc": GRPC.format(url=_hostport(ep["grpc"]), model=model, version=version) if ep.get("grpc") else "",
        "http_via_hub": ("import os\n" + HTTP.format(url=_hostport(ep["http_via_hub"]), model=model,
                                                    version=version, **via_hub)) if ep.get("http_via_hub") else "",
        "note": "http and grpc reach the server directly from the hub machine and its sessions; "
                "http_via_hub goes through the hub's proxy with your hub token.",
    }
