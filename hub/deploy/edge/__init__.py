"""Edge devices: signed int8 bundles (bundle.py, built on the hub), their verification
(manifest.py) and the `fedhub-edge` agent (agent.py, v2http.py) that pulls and serves them.

The agent side imports only the standard library, numpy, onnxruntime, requests and
cryptography, so `pip install fedhub[edge]` is enough on a device.
"""
