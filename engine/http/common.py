"""What every route module shares: the engine key, the JSON error answer, body
reading and decoding, path parameters. Route modules import this one; nothing
here imports a route module."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec
import orjson
from aiohttp import web

from engine.http.errors import all_violations, field_error
from engine.runtime import Engine
from infra import streams
from policy.types import UserId

ENGINE = web.AppKey("engine", Engine)

_json = msgspec.json.Encoder()


class Problem(web.HTTPException):
    """An error answer with a JSON body: ``{"error": …, "errors": [{"field", "reason"}]}``."""

    def __init__(self, status: int, error: str, errors: list[dict] | None = None):
        self.status_code = status
        super().__init__(body=orjson.dumps({"error": error, "errors": errors or []}),
                         content_type="application/json")


def reply(data, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(data), status=status, content_type="application/json")


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[ENGINE].cfg.http.max_body_bytes
        raise Problem(413, "body too large", [{"field": "$", "reason": f"body exceeds {limit} bytes"}]) from None


async def read_json(request: web.Request) -> bytes:
    """The body of a JSON route: ``Content-Type: application/json`` (or
    ``+json``) is required, so a cross-site form (``text/plain``, which a browser
    sends without asking) can never reach one (415 otherwise)."""
    body = await read_body(request)  # bounded: a body too large is a 413 first
    ctype = request.content_type
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise Problem(415, "unsupported media type", [{"field": "Content-Type",
                                                       "reason": "expected application/json"}])
    return body


def decode(decoder: msgspec.json.Decoder, body: bytes, what: str):
    """``body`` decoded, or the answer: 422 naming the field when it breaks the
    schema, 400 when it is not JSON at all."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:  # every violation, as the API promises
        try:
            found = all_violations(body, decoder.type, e)
        except RecursionError:  # a recursive type (a segment filter) nested near the decoder's limit
            found = [field_error(e)]
        raise Problem(422, f"invalid {what}", found) from None
    except msgspec.DecodeError as e:
        raise Problem(400, "malformed JSON", [{"field": "$", "reason": str(e)}]) from None
    except RecursionError:  # msgspec's own depth limit, inside a free-form (Any) field
        raise Problem(400, "malformed JSON", [{"field": "$", "reason": "nested too deeply"}]) from None


RETRY_AFTER_S = 5  # how long a 503 for a publish JetStream refused or did not ack asks a client to wait


def not_accepted(e: BaseException) -> Problem:
    """JetStream refused a publish or did not ack it in time: 503 with
    ``Retry-After``; the client retries (part of a batch may have been taken: a
    retry is deduplicated when it carries ids or idempotency keys). A full work
    stream is back-pressure, named as such."""
    if streams.is_stream_full(e):
        problem = Problem(503, "stream full", [{"field": "$", "reason": "the work stream is at its limit "
                                                "(nats.max_msgs / max_bytes) or NATS is out of storage: the engine is "
                                                "behind; retry later"}])
    else:
        problem = Problem(503, "not accepted", [{"field": "$", "reason": f"JetStream did not ack: {e!r}; retry"}])
    problem.headers["Retry-After"] = str(RETRY_AFTER_S)
    return problem


# A statement or lock wait that ran past [database]'s bounds: PostgreSQL is busy, not broken
DB_BUSY = (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.QueryCanceledError)


def db_busy(e: BaseException) -> bool:
    """``e`` is such a timeout, here or in an actor (Ray's error wraps it as ``cause``)."""
    return isinstance(e, DB_BUSY) or isinstance(getattr(e, "cause", None), DB_BUSY)


def busy() -> Problem:
    problem = Problem(503, "database busy", [{"field": "$", "reason": "a database statement or lock wait timed "
                                              "out; retry"}])
    problem.headers["Retry-After"] = str(RETRY_AFTER_S)
    return problem


def path_uuid(request: web.Request) -> uuid.UUID:
    """The ``{id}`` of the path as a UUID, or a 400 naming it."""
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Problem(400, "bad id", [{"field": "id", "reason": f"{raw!r} is not a UUID"}]) from None


def json_body(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Problem(400, "malformed JSON", [{"field": "$", "reason": str(e)}]) from None


# The documented types of the path parameters ``path_uuid`` and ``path_user`` read (Route.params)
UUID_PATH = {"id": uuid.UUID}
USER_PATH = {"user_id": UserId}


def path_param(request: web.Request, name: str, typ, what: str) -> str:
    """The path's ``{name}`` as ``typ`` (its bounds and pattern), or a 422
    "invalid <what>" naming it."""
    try:
        return msgspec.convert(request.match_info[name], typ)
    except msgspec.ValidationError as e:
        raise Problem(422, f"invalid {what}", [{"field": name, "reason": str(e)}]) from None


def path_user(request: web.Request) -> str:
    """The ``{user_id}`` of the path, or a 422 naming it."""
    return path_param(request, "user_id", UserId, "user id")


MAX_TEXT = 256  # a path parameter or an id in a query


def unprintable(value: str, max_len: int = MAX_TEXT) -> bool:
    """Too long, or holding a control character (a NUL would otherwise reach
    PostgreSQL and fail there)."""
    return len(value) > max_len or any(c < " " or c == "\x7f" for c in value)


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A query parameter as an integer in [low, high]; absent is ``default``;
    400 naming it otherwise, the empty value too (a negative or
    64-bit-overflowing number never reaches PostgreSQL)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise Problem(400, "bad query", [{"field": name, "reason": f"expected an integer from {low} to {high}"}])
    return value


def query_after(request: web.Request, typ) -> str:
    """A page's ``after`` (a key of type ``typ``: its bounds and pattern); absent
    is "" (the first page); anything else that is not one, the empty value
    too, is a 400 naming it."""
    raw = request.query.get("after")
    if raw is None:
        return ""
    try:
        return msgspec.convert(raw, typ)
    except msgspec.ValidationError as e:
        raise Problem(400, "bad query", [{"field": "after", "reason": str(e)}]) from None


def query_bool(request: web.Request, name: str) -> bool:
    """A boolean query parameter: ``true``/``false`` or ``1``/``0`` (any case);
    absent is false. Anything else, the empty value too, is a 400 (as the
    OpenAPI document's boolean says)."""
    raw = request.query.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise Problem(400, "bad query", [{"field": name, "reason": "expected true or false"}])
