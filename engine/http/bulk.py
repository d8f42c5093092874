"""HTTP routes for bulk preferences: ``POST /v1/preferences/import`` starts a
job (202 with its id) that runs in this process; ``GET /v1/jobs/{id}`` shows its
progress and result; ``GET /v1/preferences/export`` streams every row.

Bounded: an upload is written to a file under ``engine.home/imports`` as it
arrives (``UPLOAD_CHUNK`` at a time, never whole in memory), and the import
reads it back a line at a time (``stores.bulk``); the file goes when the job
ends. An export whose reader takes nothing for ``http.export_stall_s`` is cut
off, which ends its transaction and frees its connection."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson
from aiohttp import web

from engine import prefs_bus
from engine.http.access import Link, Media, Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, UUID_PATH, Problem, path_uuid, reply
from engine.runtime import Engine
from infra import db
from policy.api import FieldError
from policy.sharding import shard_of
from stores import bulk

log = logging.getLogger(__name__)

MAX_IMPORT_BYTES = 512 * 1024 * 1024
UPLOAD_CHUNK = 1 << 20  # bytes read from the request and written to the file at a time
JOBS = web.AppKey("jobs", set)


class ImportStarted(msgspec.Struct):
    """An import job started: its id (``GET /v1/jobs/{id}``), ``running``, and the rows the file holds."""

    job_id: str
    status: str
    total: int


class Job(msgspec.Struct):
    """A job's progress (``done`` of ``total`` rows), its status, and when it ended how (``errors``, ``result``)."""

    id: str
    kind: str
    status: Literal["running", "succeeded", "failed"]
    total: int
    done: int
    errors: list[FieldError]
    result: dict[str, Any] | None  # an import's: {"rows", "users"}
    created_at: float
    finished_at: float | None


def import_format(request: web.Request) -> str:
    fmt = request.query.get("format")
    if fmt is None:
        ctype = request.content_type
        fmt = "csv" if ctype == "text/csv" else "ndjson"
    if fmt not in ("csv", "ndjson"):
        raise Problem(422, "bad format", [{"field": "format", "reason": "csv or ndjson"}])
    return fmt


class Upload:
    """What ``spool`` wrote: the file, its lines (for the job's total), and
    whether any byte was not white space."""

    def __init__(self, path: Path):
        self.path, self.size, self.newlines, self.last, self.blank = path, 0, 0, b"", True

    def lines(self, fmt: str) -> int:
        n = self.newlines + (0 if self.last == b"\n" or not self.size else 1)
        return max(n - (1 if fmt == "csv" else 0), 0)


async def spool(request: web.Request, directory: Path) -> Upload:
    """The body into a new file in ``directory``, ``UPLOAD_CHUNK`` at a time
    (imports are larger than the API's usual body limit; 413 past
    ``MAX_IMPORT_BYTES``). The caller removes the file."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    up = Upload(directory / f"{uuid.uuid4()}.part")
    out = await asyncio.to_thread(open, up.path, "xb")
    try:
        async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
            up.size += len(chunk)
            if up.size > MAX_IMPORT_BYTES:
                raise Problem(413, "body too large",
                              [{"field": "$", "reason": f"imports up to {MAX_IMPORT_BYTES} bytes"}])
            up.newlines += chunk.count(b"\n")
            up.last = chunk[-1:]
            up.blank = up.blank and not chunk.strip()
            await asyncio.to_thread(out.write, chunk)
    except BaseException:
        out.close()
        up.path.unlink(missing_ok=True)
        raise
    await asyncio.to_thread(out.close)
    return up


def import_dir(engine: Engine) -> Path:
    return Path(engine.cfg.engine.home) / "imports"


async def start_import(request: web.Request) -> web.Response:
    """Import preference rows from a CSV or NDJSON file, as a job.

    The rows are checked and applied in one transaction, all or none, once the
    answer (202 with the job's id) is given; ``GET /v1/jobs/{id}`` follows it. The
    format is ``?format=``, else ``text/csv`` for CSV, else NDJSON."""
    engine = request.app[ENGINE]
    fmt = import_format(request)
    up = await spool(request, import_dir(engine))
    try:
        if up.blank:
            raise Problem(422, "empty import", [{"field": "$", "reason": "no rows"}])
        job_id = uuid.uuid4()
        total = up.lines(fmt)
        async with engine.pool.acquire() as conn:
            await conn.execute("INSERT INTO jobs (id, kind, status, total) VALUES ($1, 'preferences.import', "
                               "'running', $2)", job_id, total)
    except BaseException:
        up.path.unlink(missing_ok=True)
        raise
    task = asyncio.get_running_loop().create_task(run_import(engine, job_id, up.path, fmt, actor(request)))
    request.app[JOBS].add(task)
    task.add_done_callback(request.app[JOBS].discard)
    return reply(ImportStarted(job_id=str(job_id), status="running", total=total), 202)


async def run_import(engine: Engine, job_id: uuid.UUID, path: Path, fmt: str, actor: str | None) -> None:
    """Check and apply the file in one transaction, reload the owning shards,
    publish the change feed; the file is removed. The job row says how far it
    got and how it ended."""
    progress = Progress(engine, job_id)
    try:
        try:
            with open(path, "rb") as stream:
                parsed = bulk.parse_csv(stream) if fmt == "csv" else bulk.parse_ndjson(stream)
                async with engine.pool.acquire() as conn:
                    rows, users = await bulk.import_rows(
                        conn, engine.ring, parsed, engine.policy, actor, progress=progress.note,
                        statement_timeout_s=engine.cfg.database.long_statement_timeout_s)
        finally:
            path.unlink(missing_ok=True)  # read: no longer needed, whatever comes next
        # committed: the job succeeded whatever happens below, which is retried, not undone
        await finish(engine, job_id, "succeeded", rows, [], {"rows": rows, "users": len(users)})
        await after_import(engine, users)
    except bulk.ImportFailed as e:
        await finish(engine, job_id, "failed", 0, [{"field": w, "reason": r} for w, r in e.errors], None)
    except Exception as e:
        log.exception("import %s failed", job_id)
        await finish(engine, job_id, "failed", 0, [{"field": "$", "reason": repr(e)}], None)
    finally:
        await progress.close()


async def after_import(engine: Engine, users: list[str], attempts: int = 5) -> None:
    """The owning shards reload the imported users; the change feed is published.
    A failure is retried; the relay publishes what is left anyway."""
    for attempt in range(attempts):
        try:
            await reload_users(engine, users)
            while await prefs_bus.relay_once(engine, older_than_s=0):
                pass
            return
        except Exception as e:  # noqa: BLE001 - the import is committed; keep trying
            log.warning("after import (attempt %d): %r", attempt + 1, e)
            await asyncio.sleep(2 ** attempt)
    log.error("imported users were not reloaded; shards pick them up on their next write or restart")


class Progress:
    """Job progress, written to the job row every half second while it runs:
    staging counts for the first half of the rows, writing for the second."""

    def __init__(self, engine: Engine, job_id: uuid.UUID):
        self.engine, self.job_id = engine, job_id
        self.done = 0
        self.total = 0
        self.task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        written = -1
        while True:
            await asyncio.sleep(0.5)
            if self.done != written:
                written = self.done
                await self.engine.pool.execute(
                    "UPDATE jobs SET done = $2 WHERE id = $1 AND status = 'running'", self.job_id, written)

    def note(self, phase: str, n: int) -> None:
        if phase == "staged":
            self.total = n
            self.done = n // 2
        else:
            self.done = self.total // 2 + n // 2

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def finish(engine: Engine, job_id: uuid.UUID, status: str, done: int, errors: list, result) -> None:
    await engine.pool.execute(
        "UPDATE jobs SET status = $2, done = CASE WHEN $2 = 'succeeded' THEN total ELSE done END, errors = $3, "
        "result = $4, finished_at = now() WHERE id = $1", job_id, status, orjson.dumps(errors).decode(),
        orjson.dumps(result).decode() if result is not None else None)


async def reload_users(engine: Engine, users: list[str], chunk: int = 20_000) -> None:
    n = len(engine.actors.user_shards)
    groups: dict[int, list[str]] = {}
    for u in users:
        groups.setdefault(shard_of(u, n), []).append(u)
    for s, ids in groups.items():
        for i in range(0, len(ids), chunk):
            await engine.actors.user_shards[s].reload.remote(ids[i:i + chunk])


async def get_job(request: web.Request) -> web.Response:
    """A job's progress and, once it ended, its outcome."""
    engine = request.app[ENGINE]
    job_id = path_uuid(request)
    r = await engine.pool.fetchrow(
        "SELECT id::text, kind, status, total, done, errors, result, extract(epoch FROM created_at)::float8 AS "
        "created_at, extract(epoch FROM finished_at)::float8 AS finished_at FROM jobs WHERE id = $1", job_id)
    if r is None:
        raise Problem(404, "not found", [{"field": "id", "reason": "no such job"}])
    return reply(Job(id=r["id"], kind=r["kind"], status=r["status"], total=r["total"], done=r["done"],
                     errors=msgspec.json.decode(r["errors"], type=list[FieldError]),
                     result=orjson.loads(r["result"]) if r["result"] else None,
                     created_at=r["created_at"], finished_at=r["finished_at"]))


async def export(request: web.Request) -> web.StreamResponse:
    """Every user's preference rows, streamed as NDJSON (the default) or CSV."""
    engine = request.app[ENGINE]
    fmt = request.query.get("format", "ndjson")
    if fmt not in ("csv", "ndjson"):
        raise Problem(422, "bad format", [{"field": "format", "reason": "csv or ndjson"}])
    resp = web.StreamResponse(headers={"Content-Type": "text/csv" if fmt == "csv" else "application/x-ndjson"})
    await resp.prepare(request)
    stall = engine.cfg.http.export_stall_s
    async with engine.pool.acquire() as conn, conn.transaction(readonly=True):
        await db.set_local_timeout(conn, engine.cfg.database.long_statement_timeout_s)  # the cursor's first sort
        await conn.execute("SET LOCAL application_name = 'tidings-export'")  # what it is, in pg_stat_activity
        async for chunk in bulk.export_rows(conn, engine.ring, fmt):
            try:  # a write waits while the client's buffers are full: a reader that stopped reading
                await asyncio.wait_for(resp.write(chunk), stall)
            except TimeoutError:
                log.warning("export cut off: the reader took nothing for %g s", stall)
                if request.transport is not None:
                    request.transport.abort()  # the body is incomplete: the client must not take it as whole
                raise ConnectionResetError("export reader stalled") from None
    await resp.write_eof()
    return resp


FORMAT = Param("format", Literal["csv", "ndjson"], "The file's format")
ROWS = (Media("application/x-ndjson", {"type": "string"}), Media("text/csv", {"type": "string"}))
UPLOAD = (Media("application/x-ndjson"), Media("text/csv"))  # any bytes: the rows are checked by the job
ROUTES = [
    Route("POST", "/v1/preferences/import", start_import, Scoped("preferences:write"), body=UPLOAD,
          query=(FORMAT,), answers={202: ImportStarted}, errors=(422,),
          links=(Link("job", "GET", "/v1/jobs/{id}", {"id": "$response.body#/job_id"}),)),
    Route("GET", "/v1/preferences/export", export, Scoped("preferences:read"), answers={200: ROWS},
          query=(Param("format", Literal["csv", "ndjson"], "The format (default ndjson)"),), errors=(422,)),
    Route("GET", "/v1/jobs/{id}", get_job, Scoped("preferences:read"), params=UUID_PATH, errors=(404,),
          answers={200: Job}),
]


def add_routes(app: web.Application) -> None:
    app[JOBS] = set()
    register(app, ROUTES)
