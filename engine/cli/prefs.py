"""``tidings prefs import FILE`` / ``tidings prefs export``: bulk preferences
through a running engine's HTTP API, with a progress bar for imports. The file
is sent as it is read, ``CHUNK`` bytes at a time (never whole in memory); the
export is written as it arrives."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.cli.common import api_headers

console = Console(stderr=True)
CHUNK = 1 << 20  # bytes of the file read and sent at a time


def add_parser(sub) -> None:
    prefs = sub.add_parser("prefs", help="bulk preferences: `prefs import FILE`, `prefs export`")
    prefs.add_argument("action", choices=("import", "export"))
    prefs.add_argument("file", nargs="?", help="import: the file (.csv or .ndjson); export: output (default stdout)")
    prefs.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file name, else ndjson")
    prefs.add_argument("--url", default="http://127.0.0.1:8080", help="engine HTTP address")
    prefs.set_defaults(run=cmd_prefs)


def file_format(args) -> str:
    if args.format:
        return args.format
    return "csv" if (args.file or "").endswith(".csv") else "ndjson"


async def cmd_prefs(cfg, args) -> int:
    return await (do_import(cfg, args) if args.action == "import" else do_export(cfg, args))


async def file_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    """The file, ``size`` bytes at a time, read off the event loop."""
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk


async def do_import(cfg, args) -> int:
    if not args.file:
        console.print("[red]give the file to import[/red]")
        return 2
    path = Path(args.file)
    if not path.is_file():
        console.print(f"[red]no file {escape(args.file)}[/red]")
        return 2
    fmt = file_format(args)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout, headers=api_headers(cfg, args.url)) as s:
        # an async generator: aiohttp sends it chunked, as it is read
        async with s.post(f"{args.url}/v1/preferences/import?format={fmt}", data=file_chunks(path)) as r:
            body = await r.json()
        if r.status != 202:
            console.print(json.dumps(body, indent=2))
            return 1
        job = body
        columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("import", total=job["total"] or 1)
            while job["status"] == "running":
                await asyncio.sleep(0.25)
                async with s.get(f"{args.url}/v1/jobs/{body['job_id']}") as r:
                    job = await r.json()
                bar.update(task, completed=job["done"])
    if job["status"] != "succeeded":
        console.print(f"[red]import failed, nothing applied[/red] ({len(job['errors'])} errors shown)")
        for e in job["errors"][:20]:
            console.print(f"  {e['field']}: {e['reason']}")
        return 1
    console.print(f"imported {job['result']['rows']} rows for {job['result']['users']} users")
    return 0


async def do_export(cfg, args) -> int:
    fmt = file_format(args)
    out = open(args.file, "wb") if args.file else sys.stdout.buffer
    try:
        async with aiohttp.ClientSession(headers=api_headers(cfg, args.url)) as s, s.get(f"{args.url}/v1/preferences/export?format={fmt}") as r:
            if r.status != 200:
                console.print(await r.text())
                return 1
            async for chunk in r.content.iter_chunked(1 << 16):
                out.write(chunk)
    finally:
        if args.file:
            out.close()
    return 0
