"""R4 (bounded for CI): every fedhub API route fuzzed from its OpenAPI spec with schemathesis,
against a real hub, as a user holding every fedhub scope: no response may be a 5xx.
benchmarks/r4_fuzz.py runs the same driver with many more examples per route.
The module's hub runs the workshop tmp login, tested here too (one hub start for both)."""

from __future__ import annotations

import collections
import time

import pytest
import requests

pytestmark = pytest.mark.hub

CI_EXAMPLES_PER_ROUTE = 6


def fuzz_api(base_url: str, token: str, max_examples: int, derandomize: bool = True) -> dict:
    """Fuzz every operation of hub/service/openapi.yaml at `base_url` (…/services/fedhub).
    Returns {"requests", "by_status", "server_errors": [(operation, status, body)], "seconds",
    "per_operation": {label: {"statuses": Counter, "latencies": [s]}}}."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    from fedhub.hub.service.app import OPENAPI_PATH

    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
    headers = {"Authorization": f"token {token}"}
    by_status: collections.Counter = collections.Counter()
    per_operation: dict = {}
    server_errors: list[tuple[str, int, str]] = []
    count = 0
    started = time.monotonic()
    session = requests.Session()
    def runner(op):
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=derandomize,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            nonlocal count
            # long-polls ask the server to wait: keep fuzzing fast
            if isinstance(case.query, dict) and "wait" in case.query:
                case.query["wait"] = 0
            resp = case.call(base_url=base_url, headers=headers, session=session, timeout=30)
            count += 1
            by_status[resp.status_code] += 1
            stats = per_operation.setdefault(op.label, {"statuses": collections.Counter(), "latencies": []})
            stats["statuses"][resp.status_code] += 1
            elapsed = resp.elapsed  # seconds (a float in schemathesis' response)
            stats["latencies"].append(elapsed.total_seconds() if hasattr(elapsed, "total_seconds") else float(elapsed))
            if resp.status_code >= 500:
                server_errors.append((op.label, resp.status_code, resp.text[:300]))
        return run

    for result in schema.get_all_operations():
        runner(result.ok())()
    return {"requests": count, "by_status": dict(sorted(by_status.items())), "server_errors": server_errors,
            "seconds": time.monotonic() - started, "per_operation": per_operation}


@pytest.fixture(scope="module")
def workshop_hub(module_hub_factory):
    """One hub for this module, with the workshop's tmp login (a fresh account per visitor)."""
    return module_hub_factory(None, args=("--no-mlflow", "--no-inference", "--authenticator", "tmp")).start()


def test_tmp_login_gives_each_visitor_a_fresh_account(workshop_hub):
    hub = workshop_hub
    names = set()
    for _ in range(2):
        s = requests.Session()
        r = s.get(f"{hub.url}/hub/tmplogin", timeout=30)
        assert r.status_code == 200, r.text[:200]
        names.add(s.get(f"{hub.url}/hub/api/user", timeout=30, headers={"Referer": f"{hub.url}/hub/"}).json().get("name"))
    assert len(names) == 2 and None not in names


def test_no_fedhub_route_answers_5xx_to_fuzzed_requests(workshop_hub):
    hub = workshop_hub
    token = hub.create_user("fuzzer")
    (hub.data_dir / "homes" / "fuzzer").mkdir(parents=True, exist_ok=True)
    report = fuzz_api(f"{hub.url}/services/fedhub", token, CI_EXAMPLES_PER_ROUTE)
    print(f"\nR4 (CI bound, {CI_EXAMPLES_PER_ROUTE} examples/route): {report['requests']} requests, "
          f"by status {report['by_status']}, 5xx: {len(report['server_errors'])}")
    assert report["requests"] >= 60
    assert report["server_errors"] == [], report["server_errors"]
    assert requests.get(f"{hub.url}/hub/api/", timeout=10).status_code == 200
