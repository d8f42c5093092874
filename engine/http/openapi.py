"""The OpenAPI 3.1 document of the HTTP API, made from the routes as registered
(engine/http/access.py ``Route``): each one's method, path, access policy, the
msgspec types its handler decodes and encodes, its query parameters and its
error answers. The JSON Schemas come from msgspec (``schema_components``), so
the document cannot drift from what the handlers check and write; the suite
runs Schemathesis against a live engine to hold the handlers to it
(tests/integration/test_openapi.py)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from engine.http.access import Authenticated, Media, Ops, Public, Route, Scoped, UserOwned
from policy.api import ErrorAnswer

REF = "#/components/schemas/{name}"
PATH_PARAM = re.compile(r"\{(\w+)\}")
PAGES = ("/u/", "/p/")  # the pages for people (unsubscribe, preference center): their errors are pages too

# What a path parameter is when its route says nothing: one line of text, as
# the check_path middleware enforces (no control characters, at most 256), and
# no brace or slash (aiohttp's router matches a parameter as [^{}/]+).
PATH_TEXT = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[^\x00-\x1f\x7f{}/]+$"}
PYTHON_END = re.compile(r"(?<!\\)\\Z")  # msgspec copies Python's \Z (end of text); ECMA-262 says $

ERROR_TEXT = {
    400: "Malformed: not JSON, or a path or query parameter that is not what it must be",
    401: "No credentials, or invalid, expired or revoked ones (with `WWW-Authenticate: Bearer`)",
    403: "Valid credentials that may not call this route (a missing scope, another user's token)",
    404: "Not found",
    409: "Conflict",
    410: "Gone",
    412: "The `If-Match` version is not the current one",
    413: "The body is larger than `http.max_body_bytes`",
    415: "Not `Content-Type: application/json`",
    422: "The body or a parameter breaks the schema or a rule; each violation names its field",
    423: "Locked",
    428: "`If-Match` is required",
    429: "Over the rate limit (with `Retry-After`)",
    503: "Busy: JetStream did not ack, the database timed out, or a dependency is down (with `Retry-After`)",
}

HEADERS = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}},
    "WWW-Authenticate": {"description": "The authentication scheme", "schema": {"type": "string"}},
}


def _is_type(t: Any) -> bool:
    """A type to describe with msgspec (not ``None``, a ``Media`` or several)."""
    return t is not None and not isinstance(t, (Media, tuple))


def _members(t: Any) -> tuple:
    """A body or answer's alternatives: the tuple's members, or ``t`` alone."""
    return t if isinstance(t, tuple) else (t,)


def errors_of(route: Route, ops_access: str = "loopback") -> set[int]:
    """The error statuses ``route`` may answer: its policy's, its body's, its
    parameters', the busy answer, and the handler's own. ``ops_access`` is
    ``http.ops_access``: with ``"scope"`` an ``Ops`` route is a key's route."""
    statuses = {503} | set(route.errors)
    if isinstance(route.policy, Ops) and ops_access == "loopback":
        statuses.add(403)
    elif not isinstance(route.policy, Public):
        statuses |= {401, 403, 429}
    if PATH_PARAM.search(route.path):
        # 404: aiohttp matches a parameter as [^{}/]+, so one holding a brace finds no route
        statuses |= {400, 404, 422}
    if any(q.where == "query" for q in route.query):
        statuses.add(400)
    if route.body is not None:
        statuses |= {400, 413}
        if any(_is_type(t) for t in _members(route.body)):
            statuses |= {415, 422}  # read_json wants application/json; msgspec names the field
    return statuses


def security(policy: Any, ops_access: str = "loopback") -> list[dict[str, list[str]]]:
    if isinstance(policy, Public):
        return []
    if isinstance(policy, Ops):  # loopback clients need nothing, anyone else is refused (http.ops_access)
        return [] if ops_access == "loopback" else [{"apiKey": ["ops:read"]}]
    if isinstance(policy, Authenticated):  # each operation inside checks its own scope
        return [{"apiKey": []}, {"userToken": []}]
    need = [{"apiKey": [policy.scope]}]
    if isinstance(policy, UserOwned) or (isinstance(policy, Scoped) and policy.user):
        need.append({"userToken": []})
    if isinstance(policy, Scoped) and policy.query_token:
        need.append({"userTokenQuery": []})
    return need


def who(policy: Any, ops_access: str = "loopback") -> str:
    """The policy in a sentence, for the operation's description."""
    if isinstance(policy, Public):
        return f"Public: {policy.why}."
    if isinstance(policy, Ops):
        if ops_access == "loopback":
            return "Operators: loopback clients only, no credentials (`http.ops_access = \"loopback\"`)."
        return "Operators: a key with `ops:read` (`http.ops_access = \"scope\"`)."
    if isinstance(policy, Authenticated):
        return f"Any valid API key or end-user token: {policy.why}."
    text = f"A key with the scope `{policy.scope}` (or `admin`)"
    if isinstance(policy, UserOwned):
        return text + ", or an end-user token for the resource's own user."
    if isinstance(policy, Scoped) and policy.user:
        return text + ", or an end-user token for the `{user_id}` of the path."
    return text + "."


def _content(t: Any, refs: dict[Any, dict]) -> dict:
    """The ``content`` of a body or an answer: a type's JSON, a ``Media``, or a
    tuple of them (a JSON answer of one of several types is ``anyOf``: a Struct
    allows properties it does not name, so one value may fit two)."""
    members = _members(t)
    out = {m.type: {"schema": m.schema} if m.schema else {} for m in members if isinstance(m, Media)}
    shapes = [refs[m] for m in members if _is_type(m)]
    if shapes:
        out["application/json"] = {"schema": shapes[0] if len(shapes) == 1 else {"anyOf": shapes}}
    return out


def _operation_id(route: Route, seen: set[str]) -> str:
    module = route.handler.__module__.rsplit(".", 1)[-1]
    name = base = f"{module}_{route.handler.__name__}"
    if name in seen:
        name = base = f"{base}_{route.method.lower()}"
    n = 2
    while name in seen:
        name, n = f"{base}_{n}", n + 1
    seen.add(name)
    return name


def _types(routes: Iterable[Route]) -> list[Any]:
    out: list[Any] = [ErrorAnswer]
    for r in routes:
        for t in (r.body, *r.answers.values(), *r.params.values(), *(q.type for q in r.query)):
            out += [m for m in _members(t) if _is_type(m)]
    return list(dict.fromkeys(out))


def document(routes: list[Route], version: str, ops_access: str = "loopback") -> dict:
    types = _types(routes)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict] = {}
    seen: set[str] = set()
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = operation(r, refs, seen, ops_access)
    for r in routes:
        if r.links:
            # the answer the links follow from: 202 where there is one (a submission's, with
            # its id; the dry run's 200 has none), else the first success
            first = str(202 if 202 in r.answers else min(s for s in r.answers if 200 <= s < 300))
            paths[r.path][r.method.lower()]["responses"][first]["links"] = {
                link.name: {"operationId": paths[link.path][link.method.lower()]["operationId"],
                            "parameters": link.parameters} for link in r.links}
    return _ecma_patterns({
        "openapi": "3.1.0",
        "info": {
            "title": "Tidings",
            "version": version,
            "summary": "Notification delivery: submit notifications, manage users, preferences, consent, "
                       "templates and the in-app inbox, follow outcomes.",
            "description": "Every route says who may call it (see each operation). API keys and end-user tokens "
                           "are sent as `Authorization: Bearer …`; a key's scopes are listed beside the scheme. "
                           "Every error answer is `{\"error\": …, \"errors\": [{\"field\", \"reason\"}]}` "
                           "except the pages for people (`/u/…`, `/p/…`), which answer HTML.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "API key (tk_…)",
                           "description": "An API key (`tidings keys create`); the scopes an operation "
                                          "lists are the ones the key needs (`admin` holds them all)."},
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "An end-user token (`POST /v1/tokens`): only its own user's "
                                             "resources."},
                "userTokenQuery": {"type": "apiKey", "in": "query", "name": "access_token",
                                   "description": "An end-user token in the query, for a browser's WebSocket "
                                                  "(never an API key)."},
            },
        },
    })


def _ecma_patterns(node: Any) -> Any:
    """``node`` with every ``pattern`` in ECMA-262's dialect, which JSON Schema
    uses (msgspec writes the Python regexes of the Structs as they are)."""
    if isinstance(node, dict):
        return {k: PYTHON_END.sub("$", v) if k == "pattern" and isinstance(v, str) else _ecma_patterns(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_ecma_patterns(v) for v in node]
    return node


def operation(r: Route, refs: dict[Any, dict], seen: set[str], ops_access: str = "loopback") -> dict:
    doc = inspect.getdoc(r.handler) or ""
    summary, _, rest = doc.partition("\n")
    op: dict[str, Any] = {
        "operationId": _operation_id(r, seen),
        "tags": list(r.tags) or [r.handler.__module__.rsplit(".", 1)[-1]],
        "summary": " ".join(summary.split()) or f"{r.method} {r.path}",
        "description": " ".join(rest.split()) + ("\n\n" if rest.strip() else "") + who(r.policy, ops_access),
        "security": security(r.policy, ops_access),
    }
    params = [{"name": name, "in": "path", "required": True,
               "schema": refs[r.params[name]] if name in r.params else PATH_TEXT}
              for name in PATH_PARAM.findall(r.path)]
    params += [{"name": q.name, "in": q.where, "required": q.required, "description": q.doc,
                "schema": refs[q.type]} for q in r.query]
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {"required": True, "content": _content(r.body, refs)}
        if r.example is not None:  # of the JSON body where there is one, else of each form the body takes
            content = op["requestBody"]["content"]
            for media in [content["application/json"]] if "application/json" in content else content.values():
                media["example"] = r.example
    responses: dict[str, dict] = {}
    for status, t in sorted(r.answers.items()):
        answer: dict[str, Any] = {"description": _answer_text(status)}
        if t is not None:
            answer["content"] = _content(t, refs)
        if r.headers and status < 300:
            answer["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                 for name, text in r.headers.items()}
        responses[str(status)] = answer
    for status in sorted(errors_of(r, ops_access) - set(r.answers)):
        content = {"application/json": {"schema": refs[ErrorAnswer]}}
        if r.path.startswith(PAGES):  # a page for people answers its errors as a page (aiohttp's 413 stays JSON)
            content["text/html"] = {"schema": {"type": "string"}}
        answer = {"description": ERROR_TEXT.get(status, "Error"), "content": content}
        if status in (429, 503):  # the rate limiter always sends it; not every 503 does
            answer["headers"] = {"Retry-After": {**HEADERS["Retry-After"], "required": status == 429}}
        elif status == 401:  # sent by the authorization middleware; a webhook's bad signature has none
            answer["headers"] = {"WWW-Authenticate": {**HEADERS["WWW-Authenticate"],
                                                      "required": not isinstance(r.policy, Public)}}
        responses[str(status)] = answer
    op["responses"] = responses
    return op


def _answer_text(status: int) -> str:
    return {200: "OK", 201: "Created", 202: "Accepted", 204: "No content",
            101: "Switching to WebSocket", 302: "Redirect", 303: "See other"}.get(status, "Answer")
