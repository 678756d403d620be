"""The embedded inference server as a JupyterHub-managed service, behind the hub's login.

The hub starts this process for /services/inference/. It runs the embedded
Triton-protocol server (fedhub.hub.deploy.server) on two loopback ports of its own —
HTTP and gRPC, reachable directly from the hub machine and its sessions — and puts a
hub-authenticated gate in front of the HTTP port, so the unmodified tritonclient works
through the hub's proxy too::

    tritonclient.http.InferenceServerClient("hub:8000/services/inference")
    client.infer(..., headers={"Authorization": "token <hub token>"})

Through the gate, any logged-in user may read and infer; loading and unloading models
(the repository API) is left to the deployment manager (which talks to the loopback
port) and to hub admins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httpclient, web

from ..processes import serve_beside, stop_process_group

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length",
              "authorization", "cookie", "x-consumed-content-encoding"}
REPOSITORY_WRITE = re.compile(r"^v2/repository/models/[^/]+/(load|unload)$")


def server_command(model_repository: str, http_port: int, grpc_port: int) -> list[str]:
    """The embedded server's command line (pure, for tests and docs)."""
    return [sys.executable, "-m", "fedhub.hub.deploy.server", "--model-repository", model_repository,
            "--http-port", str(http_port), "--grpc-port", str(grpc_port)]


class InferenceGate(HubOAuthenticated, web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST")

    def get_login_url(self):
        if "text/html" not in self.request.headers.get("Accept", ""):
            raise web.HTTPError(401, "Authentication required: send 'Authorization: token <hub token>'")
        return super().get_login_url()

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        # the v2 protocol's error shape, so tritonclient shows the message as the server's own
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    @web.authenticated
    async def forward(self, path: str):
        if self.request.method == "POST" and REPOSITORY_WRITE.match(path) and not self.current_user.get("admin"):
            raise web.HTTPError(403, "Loading and unloading models goes through the fedhub deployments API")
        query = f"?{self.request.query}" if self.request.query else ""
        upstream = f"{self.settings['server_url']}/{path}{query}"
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in HOP_BY_HOP}
        body = self.request.body if self.request.method == "POST" else None
        try:
            resp = await httpclient.AsyncHTTPClient().fetch(
                upstream, method=self.request.method, headers=headers, body=body,
                follow_redirects=False, raise_error=False, request_timeout=300,
                decompress_response=False)  # pass compressed bodies on as they are, with their header
        except (OSError, httpclient.HTTPClientError) as e:
            raise web.HTTPError(503, f"The inference server is not answering yet ({e})")
        if resp.code == 599:
            raise web.HTTPError(503, "The inference server is starting; try again in a few seconds")
        self.set_status(resp.code, resp.reason)
        for k, v in resp.headers.get_all():
            if k.lower() not in HOP_BY_HOP and k.lower() != "set-cookie":
                self.add_header(k, v)
        if resp.body and self.request.method != "HEAD":
            self.write(resp.body)
        await self.finish()

    get = head = post = forward


def make_gate(prefix: str, server_url: str) -> web.Application:
    return web.Application(
        [(url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
         (url_path_join(prefix, "(.*)"), InferenceGate)],
        cookie_secret=secrets.token_bytes(32), server_url=server_url,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="port of the gate (the service URL)")
    parser.add_argument("--http-port", type=int, required=True, help="loopback HTTP port of the server")
    parser.add_argument("--grpc-port", type=int, required=True, help="loopback gRPC port of the server")
    parser.add_argument("--model-repository", required=True, help="the Triton model repository served")
    args = parser.parse_args(argv)
    if not args.model_repository.startswith("s3://"):  # an S3 repository is the server's to read
        os.makedirs(args.model_repository, exist_ok=True)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/inference/")
    server = subprocess.Popen(server_command(args.model_repository, args.http_port, args.grpc_port),
                              start_new_session=True)
    try:
        # tritonclient may gzip request bodies: the gate passes them on decompressed (the
        # Inference-Header-Content-Length of the binary protocol counts uncompressed bytes)
        asyncio.run(serve_beside(make_gate(prefix, f"http://127.0.0.1:{args.http_port}"), args.port, server,
                                 "inference server", decompress_request=True))
    finally:
        stop_process_group(server)


if __name__ == "__main__":
    main()
