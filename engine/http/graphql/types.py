"""GraphQL object types made from the msgspec Structs the REST handlers
answer with, so both APIs show the same fields with the same meaning (as the
OpenAPI document is made from them too): a field per Struct field, camelCased;
a Struct field that is a Struct is that Struct's type, a list a list, and a
free-form mapping (``dict``, ``Any``) the ``JSON`` scalar. A field that is not
optional in the Struct is non-null here. Resolvers return the Structs
themselves: each field is read from its attribute.

GraphQL's ``Int`` is 32 bits: every integer these Structs carry (versions,
counts, attempts, inbox seqs) stays far below it in practice; one past it is
answered as that field's error, never a wrong number."""

from __future__ import annotations

import types
import typing
import uuid
from typing import Annotated, Any, Literal, Union

import msgspec
import strawberry
from strawberry.scalars import JSON

SCALARS = {str: str, int: int, float: float, bool: bool}

_made: dict[type, Any] = {}
_names: dict[str, type] = {}


def graphql_type(t: Any) -> Any:
    """The GraphQL type (as strawberry takes it) of a Struct field's type ``t``."""
    origin = typing.get_origin(t)
    if origin is Annotated:
        return graphql_type(typing.get_args(t)[0])
    if t in SCALARS:
        return SCALARS[t]
    if t is uuid.UUID:
        return str
    if t is Any:  # null too
        return JSON | None
    if t is dict or origin is dict or t is msgspec.Raw:
        return JSON
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(t) if a is not Ellipsis]
        return list[graphql_type(args[0]) if args else JSON]  # type: ignore[misc]
    if origin is Literal:
        values = typing.get_args(t)
        if all(isinstance(v, str) for v in values):
            return str
        return JSON
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(t) if a is not type(None)]
        inner = graphql_type(members[0]) if len(members) == 1 else JSON
        return inner | None if type(None) in typing.get_args(t) else inner
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        return object_type(t)
    raise TypeError(f"no GraphQL type for {t!r}")


def object_type(struct: type[msgspec.Struct], name: str | None = None, description: str | None = None,
                **fields: Any) -> Any:
    """The GraphQL object type of ``struct`` (made once), named ``name`` or as
    the Struct. ``fields`` replace or add fields: name -> ``strawberry.field``
    with a resolver (it takes the Struct as ``root``)."""
    if struct in _made:
        return _made[struct]
    name = name or struct.__name__
    if name in _names and _names[name] is not struct:
        raise TypeError(f"two Structs would make the GraphQL type {name!r}: name one of them")
    _names[name] = struct
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    for f in msgspec.structs.fields(struct):
        if f.name in fields:
            continue
        annotations[f.name] = graphql_type(f.type)
        if f.encode_name != f.name:  # ``from_`` is "from" on the wire, and here
            namespace[f.name] = strawberry.field(name=f.encode_name)
    namespace.update(fields)
    doc = struct.__dict__.get("__doc__") or ""  # its own, not msgspec.Struct's
    made = strawberry.type(type(name, (), namespace), description=description or " ".join(doc.split()) or None)
    _made[struct] = made
    return made


__all__ = ["JSON", "graphql_type", "object_type"]
