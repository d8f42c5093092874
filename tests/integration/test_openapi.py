"""The OpenAPI document (issue 14, item 1) against the live engine.

- The document is served at ``/openapi.json``, is valid OpenAPI 3.1, and
  describes every route of the router with its policy, parameters, body and
  answers; ``/docs`` and its files are served from the wheel.
- Schemathesis (its CLI, as a user would run it) tests every operation of the
  running engine: examples, boundary cases and generated requests, valid and
  invalid, each operation bounded (``TIDINGS_OPENAPI_EXAMPLES``, default 12).
  No answer may be a 5xx, and every answer must be one the document lists:
  its status, its content type, its headers and its JSON schema.
  ``TIDINGS_OPENAPI_TAG=<tag>`` tests one tag's operations only; the seed is
  fixed (the suite's run is the same every time), ``TIDINGS_OPENAPI_SEED``
  explores others.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from engine.http import make_app
from policy.types import UserProfile
from tests.integration.helpers import api_session, engine_config, serving

pytestmark = pytest.mark.integration

# The README gives the same list to users. Not positive_data_acceptance: a body
# valid by the schema can still break a rule only the engine knows (a channel
# this deployment has not enabled, a template that does not exist): 422, as
# documented. ignored_auth sends each protected operation without credentials
# and wants a refusal; negative_data_rejection wants a 4xx for what the schema
# forbids.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,ignored_auth,negative_data_rejection")


NO_BODY = {"POST /v1/audit/checkpoints", "POST /v1/event-subscriptions/{id}/secret",
           "POST /v1/event-subscriptions/{id}/dead-letters/replay", "PUT /v1/topics/{topic_id}/subscribers/{user_id}",
           "POST /v1/users/{user_id}/preferences/suggestions/{suggestion_id}"}  # writes that read no body (an action)


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, redis_url, ray_address, smtp, tmp_path_factory):
    overrides = {"ratelimit": {"key_per_s": 1e6, "key_burst": 1e6, "user_per_s": 1e6, "user_burst": 1e6}}
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), smtp_port=smtp.port,
                        redis_url=redis_url, overrides=overrides)
    people = [UserProfile(user_id=u, addresses={"email": f"{u}@example.test"}) for u in ("alice", "bob")]
    async with serving(cfg, database_url, people) as e:
        yield e


async def document(engine) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{engine.base_url}/openapi.json") as r:  # no credentials
        assert r.status == 200 and r.content_type == "application/json"
        return await r.json()


async def test_the_document_describes_every_route(engine):
    doc = await document(engine)
    assert doc["openapi"] == "3.1.0"
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routed = {(r.method, r.resource.canonical) for r in make_app(engine).router.routes() if r.method != "HEAD"}
    assert described == routed
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            assert op["summary"] != where, f"{where}: its handler has no docstring to summarize it"
            assert "security" in op, where
            assert any(s.startswith("2") or s in ("101", "302", "303") for s in op["responses"]), where
            for param in op.get("parameters", []):
                assert param["schema"], (where, param["name"])
            if method in ("post", "put", "patch") and "requestBody" not in op and where not in NO_BODY:
                pytest.fail(f"{where}: no request body described")
    schemes = doc["components"]["securitySchemes"]
    assert {"apiKey", "userToken"} <= set(schemes)
    # the one source of truth: the submission's schema is msgspec's for NotificationRequest
    submit = doc["paths"]["/v1/notifications"]["post"]
    assert {"$ref": "#/components/schemas/NotificationRequest"} in \
        submit["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert submit["security"] == [{"apiKey": ["notifications:send"]}]


def patterns(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "pattern" and isinstance(v, str)] + \
            [p for k, v in node.items() if k != "pattern" for p in patterns(v)]
    return [p for v in node for p in patterns(v)] if isinstance(node, list) else []


async def test_the_document_is_valid_openapi_3_1(engine):
    import jsonschema_rs
    import schemathesis

    doc = await document(engine)
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert all(op.ok() for op in schema.get_all_operations())
    for component in doc["components"]["schemas"].values():  # each a JSON Schema 2020-12
        jsonschema_rs.meta.validate(component)
    schemes = set(doc["components"]["securitySchemes"])
    for ops in doc["paths"].values():
        for op in ops.values():
            assert {n for need in op["security"] for n in need} <= schemes, op["operationId"]
    found = patterns(doc)
    assert len(found) > 10
    for p in found:  # in ECMA-262's dialect, as JSON Schema reads them (Python's \Z is not)
        jsonschema_rs.validator_for({"type": "string", "pattern": p})


async def test_the_documentation_page_is_served_without_a_cdn(engine):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{engine.base_url}/docs") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "http" not in page.replace("http-equiv", "")  # nothing from another origin
        for name in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "init.js"):
            async with s.get(f"{engine.base_url}/docs/{name}") as r:
                assert r.status == 200 and len(await r.read()) > 20, name
        async with s.get(f"{engine.base_url}/docs/..%2Fcore.py") as r:
            assert r.status == 404


@pytest.mark.timeout(900)
async def test_schemathesis_finds_nothing(engine, tmp_path):
    examples = os.environ.get("TIDINGS_OPENAPI_EXAMPLES", "12")
    report = tmp_path / "schemathesis.json"
    args = [sys.executable, "-m", "schemathesis.cli", "run", f"{engine.base_url}/openapi.json",
            "--checks", CHECKS, "--max-examples", examples, "--phases", "examples,coverage,fuzzing,stateful",
            "--mode", "all", "--seed", os.environ.get("TIDINGS_OPENAPI_SEED", "14"), "--workers", "1", "--request-timeout", "30",
            "--header", f"Authorization:{engine.headers['Authorization']}",
            "--suppress-health-check", "all", "--no-color", "--output-truncate", "true",
            "--report", "json", "--report-json-path", str(report)]
    if os.environ.get("TIDINGS_OPENAPI_TAG"):
        args += ["--include-tag", os.environ["TIDINGS_OPENAPI_TAG"]]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)  # its database there
    out, _ = await proc.communicate()  # the engine serves it from this test's own loop meanwhile
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-20000:]
    print(text[-3000:])  # the run's summary, for -rP
    tested = json.loads(report.read_text())
    if os.environ.get("TIDINGS_OPENAPI_REPORT"):
        Path(os.environ["TIDINGS_OPENAPI_REPORT"]).write_text(report.read_text())
    assert tested, text[-3000:]


async def test_an_answer_is_the_struct_the_document_names(engine):
    """The accepted answer is the document's Accepted, and decodes as the
    Struct of that name (the one the client reads)."""
    import msgspec

    from policy.api import Accepted

    answer = (await document(engine))["paths"]["/v1/notifications"]["post"]["responses"]["202"]
    assert {"$ref": "#/components/schemas/Accepted"} in answer["content"]["application/json"]["schema"]["anyOf"]

    async with api_session() as s, s.post(f"{engine.base_url}/v1/notifications", json={
            "user_id": "alice", "category": "orders", "channels": ["email"],
            "content": {"subject": "s", "text": "t"}}) as r:
        assert r.status == 202
        msgspec.json.decode(await r.read(), type=Accepted)
