"""The promise a ``session_free`` pool makes (``infra.db.create_pool``): the code
that uses one leaves nothing in a session, so a connection given back is not
reset. The Recorder's and the UserShards' pools are such pools. This reads their
modules, and every store module they import, for SQL that holds a session (a
session advisory lock, LISTEN, SET outside a transaction, a cursor WITH HOLD,
PREPARE, set_config(…, false)) and for imports of the code the docstring names
as never to get such a connection (migrations, retention, bulk import). Only the
source is read: a new session-holding statement in these modules fails here
before it leaks a setting into another caller's connection."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USERS = [ROOT / "actors" / "recorder.py", *sorted((ROOT / "actors").glob("user_*.py"))]
FORBIDDEN_IMPORTS = {"engine.migrations", "stores.retention", "stores.bulk", "infra.db.migrate",
                     "infra.db.rollback", "infra.db._advisory_lock"}
# called by these names (a function or a method): the migrations, bulk import, the
# migrator's session lock, and asyncpg's LISTEN (``Connection.add_listener``)
FORBIDDEN_CALLS = {"migrate", "migrate_url", "import_rows", "_advisory_lock", "add_listener"}
# each statement of a string (split at ";"), whatever its case
SESSION_SQL = {
    "a SET outside a transaction": re.compile(
        r"^\s*SET\s+(?!LOCAL\b)(SESSION\s+)?([\w.\"]+\s*(=|TO\b)|ROLE\b|TIME\s+ZONE\b|AUTHORIZATION\b)", re.I),
    "a RESET": re.compile(r"^\s*RESET\b", re.I),
    "a session advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
    "LISTEN": re.compile(r"^\s*(UN)?LISTEN\s+[\w\"*]+\s*$", re.I),
    "a cursor WITH HOLD": re.compile(r"\bWITH\s+HOLD\b", re.I),
    "PREPARE": re.compile(r"^\s*PREPARE\s+\w+\s*(\(|AS\b)", re.I),
    # set_config(name, value, is_local): anything but a literal true may set it for the session
    "set_config for the session": re.compile(r"set_config\s*\((?![^;]*,\s*true\s*\))", re.I),
}


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def store_modules(trees: dict[Path, ast.Module]) -> set[Path]:
    """The ``stores`` modules the users import."""
    found = set()
    for tree in trees.values():
        for name in imported(tree):
            parts = name.split(".")
            if parts[0] == "stores" and len(parts) > 1 and (ROOT / "stores" / f"{parts[1]}.py").exists():
                found.add(ROOT / "stores" / f"{parts[1]}.py")
    return found


def texts(tree: ast.Module) -> list[str]:
    """Every string literal but docstrings, an f-string's parts joined (``{}`` for each value)."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    out = []
    for node in ast.walk(tree):
        if id(node) in docs or id(node) in parts:  # an f-string is read whole, below
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
    return out


def parsed(paths) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in paths}


USER_TREES = parsed(USERS)
CHECKED = {**USER_TREES, **parsed(store_modules(USER_TREES))}


def test_the_users_and_their_stores_are_found():
    names = {p.name for p in CHECKED}
    assert {"recorder.py", "user_shard.py", "tracking.py", "state.py"} <= names, names


def test_every_session_free_pool_of_the_engine_is_checked():
    """A new pool made with session_free=True puts its module here, or this fails."""
    makers = {p for package in ("actors", "engine", "infra", "stores", "providers")
              for p in (ROOT / package).rglob("*.py") if "session_free=True" in p.read_text()}
    assert makers and makers <= set(CHECKED), makers - set(CHECKED)


@pytest.mark.parametrize("path", sorted(CHECKED), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_session_is_held(path):
    tree = CHECKED[path]
    assert not imported(tree) & FORBIDDEN_IMPORTS, f"{path.name} imports {imported(tree) & FORBIDDEN_IMPORTS}"
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & FORBIDDEN_CALLS, f"{path.name} calls {calls & FORBIDDEN_CALLS}"
    for text in texts(tree):
        for statement in text.split(";"):
            for what, pattern in SESSION_SQL.items():
                assert not pattern.search(statement), f"{path.name}: {what}: {statement.strip()[:120]!r}"


@pytest.mark.parametrize("sql", ["SET search_path = x", "select pg_advisory_lock(1)", "LISTEN tidings",
                                 "DECLARE c CURSOR WITH HOLD FOR select 1", "select set_config('a', 'b', false)",
                                 "\n    SET statement_timeout = 0", "BEGIN; SET search_path = x",
                                 "set search_path = x", "SELECT set_config($1, $2, $3)", "SET ROLE app",
                                 "PREPARE q AS SELECT 1", "UNLISTEN *"])
def test_the_patterns_catch_session_statements(sql):
    assert any(p.search(s) for s in sql.split(";") for p in SESSION_SQL.values())


@pytest.mark.parametrize("sql", ["SET LOCAL statement_timeout = 5", "UPDATE users SET state = $2", "prepare",
                                 "set up before the first message", "listen to the lane",
                                 "select pg_advisory_xact_lock(1)", "select set_config('a', 'b', true)"])
def test_the_patterns_pass_transaction_statements(sql):
    assert not any(p.search(s) for s in sql.split(";") for p in SESSION_SQL.values())


def test_an_f_string_is_read_whole():
    tree = ast.parse('t = "x"\nq = f"UPDATE {t} SET a = $1"\n')
    assert texts(tree) == ["x", "UPDATE {} SET a = $1"]
    assert not any(p.search(s) for text in texts(tree) for s in text.split(";") for p in SESSION_SQL.values())
