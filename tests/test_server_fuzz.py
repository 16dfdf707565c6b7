"""A bounded schemathesis run against the server's own /openapi.json: requests generated from
the schema (valid and not) never get a 5xx, and the worker survives them all. On the tiny F32
checkpoint (conftest's ckpts), so each generation is short."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, settings  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(ckpts):
    from clexrt.server import running

    with running(str(ckpts["plain"][2]), parallel=2, n_ctx=64, n_threads=1, max_queue=8) as served:
        yield served


def test_no_server_errors(fuzz_server):
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{fuzz_server[1]}/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, (case.method, case.path, case.body,
                                                response.status_code, response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()
            seen.append(response.status_code)

        run()
    assert len(seen) >= 100 and any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)


def test_worker_alive_after_fuzzing(fuzz_server):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{fuzz_server[1]}/health", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
