"""Turning msgspec's validation messages into (field path, reason) pairs for
API answers, and finding every violation of a body, not only the first."""

from __future__ import annotations

import re
import typing
from typing import Any

import msgspec
import orjson

_AT = re.compile(r"^(?P<reason>.*?)(?: - at (?P<key>`key` in )?`(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")


def field_error(e: msgspec.ValidationError | str, root: str = "$") -> dict:
    """``{"field": "$.channels[0]", "reason": "…"}`` from a msgspec error."""
    m = _AT.match(str(e))
    reason, path = m.group("reason"), m.group("path") or "$"
    if m.group("key"):  # the error is in one of the mapping's keys
        reason += " (in a key)"
    named = _MISSING.search(reason) or _UNKNOWN.search(reason)
    if named:
        path = f"{path}.{named.group('name')}"
    if root != "$":
        path = root + path[1:]
    return {"field": path, "reason": reason}


def all_violations(body: bytes, typ: Any, first: msgspec.ValidationError) -> list[dict]:
    """Every violation of ``typ`` in the JSON ``body`` whose decoding raised
    ``first``; at least ``first``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [field_error(first)]
    return violations(data, typ) or [field_error(first)]


def _struct_of(typ: Any) -> type | None:
    return typ if isinstance(typ, type) and issubclass(typ, msgspec.Struct) else None


def violations(data: Any, typ: Any, root: str = "$", limit: int = 100) -> list[dict]:
    """Every violation of ``typ`` in ``data`` (parsed JSON), not only msgspec's
    first: each field of a Struct is checked on its own (missing, unknown, or
    its value against its type, whose own first error names the inner path), and
    each item of a list of Structs. At most ``limit``."""
    out: list[dict] = []
    origin = typing.get_origin(typ)
    item = typing.get_args(typ)[0] if origin is list and typing.get_args(typ) else None
    if item is not None and _struct_of(item) is not None and isinstance(data, list):
        for i, d in enumerate(data):
            out += violations(d, item, f"{root}[{i}]", limit - len(out))
            if len(out) >= limit:
                break
        return out[:limit]
    struct = _struct_of(typ)
    if struct is None or not isinstance(data, dict):
        try:
            msgspec.convert(data, typ)
        except msgspec.ValidationError as e:
            out.append(field_error(e, root))
        return out
    fields = msgspec.structs.fields(struct)
    names = {f.encode_name for f in fields}
    if struct.__struct_config__.forbid_unknown_fields:
        out += [{"field": f"{root}.{k}", "reason": f"unknown field `{k}`"} for k in data if k not in names]
    for f in fields:
        if f.encode_name not in data:
            if f.required:
                out.append({"field": f"{root}.{f.encode_name}", "reason": f"missing required field `{f.encode_name}`"})
            continue
        try:
            msgspec.convert(data[f.encode_name], f.type)
        except msgspec.ValidationError as e:
            out.append(field_error(e, f"{root}.{f.encode_name}"))
        if len(out) >= limit:
            break
    return out[:limit]
