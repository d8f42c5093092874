"""Secrets the engine keeps in its home when the environment gives none (the
audit signing key, the demo's master keys): read without following a link,
made once, 0600 from the start, appearing whole or not at all."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_or_create(path: Path, make: Callable[[], bytes]) -> tuple[bytes, bool]:
    """(the file's bytes, whether this call made it). Two processes making it at
    once: the first link wins and the other reads the winner's."""
    try:
        return read(path), False
    except FileNotFoundError:
        pass
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)  # appears whole, or not at all if another process made one first
        except FileExistsError:
            return read(path), False
    finally:
        tmp.unlink(missing_ok=True)
    return data, True
