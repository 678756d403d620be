"""Deployment: Triton model repositories and the embedded Triton-protocol inference server.

Kept light to import: nothing here imports JupyterHub, so the edge agent and the
inference server install with a small extra.
"""
