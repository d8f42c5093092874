"""Two ``tidings up`` processes on one deployment (issue 15 item 2), run by
tests/integration/test_instances.py as its own process (a process joins one Ray:
the test session has its own). It prints one JSON line: what each instance said,
the actors alive in the cluster, and what PostgreSQL and the loopback receiver saw.

A Ray cluster (Ray's own head and a worker node, as ``ray start`` makes them), two
engine processes joined to it with their own HTTP ports, sharing NATS, PostgreSQL
and Redis. Notifications go to both front doors in turn; half-way through, the
instance that started the actors is killed (SIGKILL) and the rest go to the other.
A third instance with another shard count is refused. The survivor is then stopped
(SIGTERM): as the last, it ends the actors.

    python -m tests.integration.instances NATS_URL DATABASE_URL REDIS_URL [N]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import ray

from engine import auth
from engine.children import die_with_parent
from sandbox import WebhookSink
from tests.integration.drivers import Cluster, on_cluster
from tests.sealing import MASTER_KEYS

SECRET = "instances-secret"
BATCH = 100
START_S = 180.0  # the longest an instance may take to answer /readyz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(home: str, tag: str, nats_url: str, database_url: str, redis_url: str, ray_address: str, sink_url: str,
           user_shards: int = 2) -> str:
    """The development profile, isolated (its own stream and schema), webhooks only."""
    q = json.dumps  # a JSON string is a TOML basic string
    return f"""
[engine]
home = {q(home)}
user_shards = {user_shards}
fetch_timeout_s = 0.02
[nats]
url = {q(nats_url)}
prefix = "i{tag}"
stream = "I{tag}"
consumer = "c{tag}"
ack_wait_s = 10.0
[database]
url = {q(database_url)}
schema = "i_{tag}"
[redis]
url = {q(redis_url)}
[ray]
address = {q(ray_address)}
dashboard = false
actor_cpus = 0.25
[recorder]
linger_ms = 5
[privacy]
master_keys = {q(MASTER_KEYS)}
[channels.email]
enabled = false
[channels.in_app]
enabled = false
[channels.webhook]
shards = 2
[[channels.webhook.providers]]
name = "webhook-local"
type = "webhook"
priority = 1
concurrency = 64
timeout_s = 10
[channels.webhook.providers.settings]
url = {q(sink_url)}
secret = {q(SECRET)}
"""


class Instance:
    """One ``tidings up`` process; its output goes to a file (read when it ends)."""

    def __init__(self, name: str, config_path: str, workdir: str):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(workdir) / f"{name}.log"
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "400"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "--profile", "development", "--config", config_path, "up",
                 "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=die_with_parent())  # killed with this driver, however it ends

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def leads(self, http: aiohttp.ClientSession) -> bool:
        async with http.get(f"{self.url}/readyz") as r:
            return bool((await r.json()).get("leader"))

    async def ready(self, http: aiohttp.ClientSession) -> bool:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                async with http.get(f"{self.url}/readyz") as r:
                    if r.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 90) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def alive_actors() -> dict[str, int]:
    """Generation token -> the engine's named actors in the cluster with it
    (a dead actor's name is let go)."""
    out: dict[str, int] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith("tidings-"):
            gen = a["name"].split("-")[1]
            out[gen] = out.get(gen, 0) + 1
    return out


def batches(n: int) -> list[list[dict]]:
    notes = [{"id": str(uuid.uuid4()), "user_id": f"in-{i % 500}", "category": "job_alerts",
              "channels": ["webhook"], "content": {"text": f"hello {i}"}} for i in range(n)]
    return [notes[i:i + BATCH] for i in range(0, n, BATCH)]


async def submit(http: aiohttp.ClientSession, url: str, batch: list[dict]) -> bool:
    """True once the front door answered 202 for the batch (its ids are then in JetStream)."""
    try:
        async with http.post(f"{url}/v1/notifications", json=batch) as r:
            return r.status == 202
    except aiohttp.ClientError:
        return False


async def run(cluster: Cluster, _nodes, nats_url: str, database_url: str, redis_url: str, n: int) -> dict:
    sink = WebhookSink(SECRET)
    await sink.start()
    work = tempfile.mkdtemp(prefix="tidings-instances-work-")
    home = str(Path(work) / "home")  # shared: the admin key the first start writes, read here
    tag = uuid.uuid4().hex[:10]
    args = (nats_url, database_url, redis_url, cluster.address, sink.url)
    path = Path(work) / "tidings.toml"
    path.write_text(config(home, tag, *args))
    odd = Path(work) / "odd.toml"
    odd.write_text(config(home, tag, *args, user_shards=3))
    out: dict = {"n": n}
    first = second = None
    extra: list[Instance] = []
    pool = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as plain:
            t0 = time.monotonic()
            first = Instance("first", str(path), work)
            out["first_ready"] = await first.ready(plain)
            out["first_start_s"] = round(time.monotonic() - t0, 1)  # makes the actors
            if not out["first_ready"]:
                out["first_output"] = first.output()[-3000:]
                return out
            t0 = time.monotonic()
            second = Instance("second", str(path), work)
            out["second_ready"] = await second.ready(plain)
            out["second_start_s"] = round(time.monotonic() - t0, 1)  # joins them
            if not out["second_ready"]:
                out["second_output"] = second.output()[-3000:]
                return out
            out["generations_running"] = alive_actors()
            out["leaders"] = [await first.leads(plain), await second.leads(plain)]
            odd_one = Instance("odd", str(odd), work)
            extra.append(odd_one)
            out["odd_exit"] = odd_one.proc.wait(START_S)
            out["odd_output"] = odd_one.output()[-600:]

        key = auth.read_admin_key(home, environ={})
        headers = {"Authorization": f"Bearer {key}"}
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2,
                                         server_settings={"search_path": f"i_{tag}"})
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as http:
            # a preference written through one front door is what the other reads
            put = {"timezone": "Europe/Paris"}
            async with http.put(f"{first.url}/v1/users/in-pref/preferences", json=put) as r:
                out["pref_put"] = r.status
            async with http.get(f"{second.url}/v1/users/in-pref/preferences") as r:
                out["pref_seen_by_other"] = (await r.json()).get("timezone") if r.status == 200 else r.status

            parts = batches(n)
            ids = [x["id"] for b in parts for x in b]
            doors = [first, second]
            resent = 0
            t0 = time.monotonic()
            for i, batch in enumerate(parts):
                if i == len(parts) // 2:
                    first.stop(signal.SIGKILL)  # the instance that started the actors, mid-run
                    out["killed_at_batch"] = i
                    killed_at = time.monotonic()
                door = doors[i % 2] if first.proc.poll() is None else second
                if not await submit(http, door.url, batch):
                    resent += 1  # the same ids again, through the survivor: nothing twice
                    if not await submit(http, second.url, batch):
                        out["lost_batch"] = i
                        return out
            out["resent_batches"] = resent
            out["submit_s"] = round(time.monotonic() - t0, 1)
            deadline = time.monotonic() + 240
            done = 0
            while time.monotonic() < deadline:
                done = await pool.fetchval(
                    "SELECT count(*) FROM delivery_tracking WHERE notification_id = ANY($1::uuid[])", ids)
                if done >= n:
                    break
                await asyncio.sleep(0.5)
            out["settled_s"] = round(time.monotonic() - killed_at, 1)
            out["all_settled_s"] = round(time.monotonic() - t0, 1)
            out["rows"] = done
            rows = await pool.fetch(
                "SELECT status, count(*) AS n FROM delivery_tracking WHERE notification_id = ANY($1::uuid[]) "
                "GROUP BY status", ids)
            out["statuses"] = {r["status"]: r["n"] for r in rows}
            out["rows_per_notification_max"] = await pool.fetchval(
                "SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM delivery_tracking "
                "WHERE notification_id = ANY($1::uuid[]) GROUP BY notification_id, channel) x", ids)
            out["survivor_ready"] = (await http.get(f"{second.url}/readyz")).status
            out["survivor_leads"] = await second.leads(http)
            # the preference writes over NATS were the first's to pull (it led): the survivor takes over
            out["nats_pref_seen_s"] = await nats_preference(http, second.url, nats_url, f"i{tag}")
        out["sink_notifications"] = len([i for i in ids if sink.accepted[i] > 0])
        out["sent_twice"] = sum(1 for i in ids if sink.accepted[i] > 1)
        out["sink_duplicates"] = sink.duplicates

        # one started again while the other runs joins the same actors, and leaves them running
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as plain:
            again = Instance("again", str(path), work)
            extra.append(again)
            out["again_ready"] = await again.ready(plain)
            out["generations_with_again"] = alive_actors()
            out["again_exit"] = again.stop(signal.SIGTERM)
            out["generations_after_again"] = alive_actors()
            out["second_ready_after_again"] = (await plain.get(f"{second.url}/readyz")).status
        out["second_exit"] = second.stop(signal.SIGTERM)
        deadline = time.monotonic() + 15  # the names go once Ray has the actors dead
        while (after := alive_actors()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        out["generations_after"] = after
        out["deployment_rows_after"] = await pool.fetchval("SELECT count(*) FROM engine_deployment")
        out["second_output"] = second.output()[-1500:]
    finally:
        for inst in (first, second, *extra):
            if inst is not None:
                inst.stop(signal.SIGKILL)
        if pool is not None:
            await pool.close()
        await clean_up(path, database_url)
        await sink.stop()
    return out


async def nats_preference(http: aiohttp.ClientSession, url: str, nats_url: str, prefix: str) -> float | None:
    """Seconds until a preference write published on NATS reads back through ``url``; None: not in 30 s."""
    import nats
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(f"{prefix}.prefs.set.in-nats", b'{"put": {"timezone": "Asia/Tokyo"}}')
    finally:
        await nc.close()
    started = time.monotonic()
    while time.monotonic() - started < 30:
        async with http.get(f"{url}/v1/users/in-nats/preferences") as r:
            if r.status == 200 and (await r.json()).get("timezone") == "Asia/Tokyo":
                return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.25)
    return None


async def clean_up(config_path: Path, database_url: str) -> None:
    """The run's schema and streams go."""
    import nats

    from engine import settings
    from infra import streams
    cfg = settings.load("development", config_path, env={})
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.database.schema}" CASCADE')
    finally:
        await conn.close()
    nc = await nats.connect(cfg.nats.url)
    try:
        for name in streams.every_stream(cfg.nats):
            try:
                await nc.jetstream().delete_stream(name)
            except Exception:  # noqa: BLE001 - never made (a start refused before it)
                pass
    finally:
        await nc.close()


if __name__ == "__main__":
    on_cluster(20_000, lambda cluster: cluster.add_node(num_cpus=4), run, join=True)  # joined: to list the actors
