"""Outbound status events (issue 14, item 3): every status change on NATS
``<prefix>.events.<channel>.<status>`` and POSTed to webhook subscriptions
made through ``/v1/event-subscriptions`` — signed, retried in order per
notification, dead-lettered after the last try, replayed on request.

A loopback receiver checks signatures, delivery ids and the order of each
notification's events; it refuses chosen events for a while to force retries."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import msgspec
import nats
import pytest
from aiohttp import web

from engine.client import Client, SyncClient, TidingsError
from providers.webhook.signing import verify
from sandbox import WebhookSink
from tests.integration.helpers import admin_headers, api_session, engine_config, serving

pytestmark = pytest.mark.integration

# ack_wait_s 2: a lane holding an event for longer (the "slow" test) must keep the events behind it
EVENTS = {"retry_backoff_s": [0.4, 0.4, 0.4], "egress_allow": ["127.0.0.0/8"], "refresh_s": 0.5,
          "relay_idle_s": 0.2, "ack_wait_s": 2.0}
ORDER = ["accepted", "sent", "delivered", "opened", "clicked"]


class Receiver:
    """A subscriber's endpoint: keeps every event it took, per path; refuses
    (HTTP 500) what ``refuse`` says, counting the refusals."""

    def __init__(self):
        self.took: dict[str, list[dict]] = defaultdict(list)  # path -> events, in the order taken
        self.headers: dict[str, list[dict]] = defaultdict(list)
        self.refused: dict[tuple[str, str], int] = defaultdict(int)  # (notification, status) -> refusals
        self.refuse: dict[tuple[str, str], int] = {}  # (notification, status) -> how many times to refuse it
        self.refuse_all: set[str] = set()  # paths that refuse everything
        self.slow: dict[str, float] = {}  # path -> seconds each answer takes
        self.answer: dict[str, int] = {}  # path -> the status it answers every event with
        self.secrets: dict[str, str] = {}  # path -> the subscription's secret
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path}", self.take)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def take(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.read()
        try:
            verify(self.secrets[path], request.headers["Tidings-Signature"], body, now=time.time())
        except Exception:  # noqa: BLE001 - counted; the test asserts there were none
            self.bad_signatures += 1
            return web.Response(status=400)
        event = msgspec.json.decode(body)
        assert request.headers["Tidings-Delivery-Id"] == event["id"]
        if path in self.slow:
            await asyncio.sleep(self.slow[path])
        if path in self.answer:
            self.refused[(path, event["id"])] += 1
            return web.Response(status=self.answer[path])
        key = (event["notification_id"], event["status"])
        if path in self.refuse_all or (path == "all" and self.refused[key] < self.refuse.get(key, 0)):
            self.refused[key] += 1
            return web.Response(status=500)
        self.took[path].append(event)
        self.headers[path].append(dict(request.headers))
        return web.Response(status=204)

    def of(self, path: str, nid: str) -> list[str]:
        return [e["status"] for e in self.took[path] if e["notification_id"] == nid]


async def subscribe(engine, receiver: Receiver, path: str, **filters) -> dict:
    async with api_session() as s, s.post(f"{engine.base_url}/v1/event-subscriptions",
                                          json={"url": f"{receiver.base}/{path}", **filters}) as r:
        body = await r.json()
        assert r.status == 201, body
    receiver.secrets[path] = body["secret"]
    return body


async def until(check, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def submit(engine, n: int, ids: list[str] | None = None) -> list[str]:
    ids = ids or [str(uuid.uuid4()) for _ in range(n)]
    async with api_session() as s:
        for i, nid in enumerate(ids):
            async with s.post(f"{engine.base_url}/v1/notifications", json={
                    "id": nid, "user_id": f"ev-user-{i % 5}", "category": "job_alerts", "channels": ["webhook"],
                    "content": {"text": "hello"}}) as r:
                assert r.status == 202, await r.text()
    return ids


async def row_sent(engine, nid: str) -> None:
    for _ in range(300):
        if await engine.pool.fetchval("SELECT status FROM delivery_tracking WHERE notification_id = $1",
                                      uuid.UUID(nid)) == "sent":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{nid} was not sent")


@pytest.fixture(scope="module")
async def env(nats_url, database_url, redis_url, ray_address, tmp_path_factory):
    sink = WebhookSink("test-secret", port=0)
    await sink.start()
    receiver = Receiver()
    await receiver.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("events")), webhook_url=sink.url,
                        channels=("webhook",), redis_url=redis_url, overrides={"events": EVENTS})
    async with serving(cfg, database_url) as engine:
        yield engine, receiver
    await receiver.stop()
    await sink.stop()


async def test_events_reach_nats_and_subscribers_signed_and_in_order(env):
    engine, receiver = env
    everything = await subscribe(engine, receiver, "all", channels=["webhook"])
    await subscribe(engine, receiver, "opens", statuses=["opened"], categories=["job_alerts"])
    await subscribe(engine, receiver, "other", categories=["billing"])  # takes nothing of this test's
    nc = await nats.connect(engine.nats_url)
    seen: list[tuple[str, dict]] = []

    async def on_event(msg) -> None:
        seen.append((msg.subject, msgspec.json.decode(msg.data)))

    await nc.subscribe(f"{engine.cfg.nats.prefix}.events.>", cb=on_event)
    try:
        await asyncio.sleep(1.0)  # the sender has read the subscriptions (refresh_s 0.5)
        ids = [str(uuid.uuid4()) for _ in range(12)]
        first = ids[0]
        # the first notification's "sent" is refused twice: its later events must wait behind it
        receiver.refuse[(first, "sent")] = 2
        await submit(engine, 12, ids)
        async with api_session() as s:
            for nid in ids[:4]:
                await row_sent(engine, nid)
                for kind in ("opened", "clicked"):
                    async with s.post(f"{engine.base_url}/v1/notifications/{nid}/events",
                                      json={"channel": "webhook", "type": kind}) as r:
                        assert r.status == 201, await r.text()

        def done() -> bool:
            return all(len(receiver.of("all", nid)) == (5 if nid in ids[:4] else 2) for nid in ids)

        await until(done, what="every event at the subscriber")
        for nid in ids:
            statuses = receiver.of("all", nid)
            assert statuses == [s for s in ORDER if s in statuses], (nid, statuses)
        assert receiver.bad_signatures == 0
        # NATS has them too, on their subjects
        prefix = engine.cfg.nats.prefix
        on_nats = {(e["notification_id"], e["status"]) for subject, e in seen
                   if subject == f"{prefix}.events.{e['channel']}.{e['status']}"}
        assert {(nid, "accepted") for nid in ids} <= on_nats and {(nid, "sent") for nid in ids} <= on_nats
        assert {(nid, "opened") for nid in ids[:4]} <= on_nats
        # the filtered subscription took the opens only; the billing one nothing
        await until(lambda: len(receiver.took["opens"]) == 4, what="the opens")
        assert {e["status"] for e in receiver.took["opens"]} == {"opened"}
        assert receiver.took["other"] == []
        # the refused event was taken at its third attempt, after which the rest of its notification came
        assert receiver.refused[(first, "sent")] == 2
        attempts = [int(h["Tidings-Attempt"]) for h, e in zip(receiver.headers["all"], receiver.took["all"],
                                                                strict=True) if (e["notification_id"], e["status"]) == (first, "sent")]
        assert attempts == [3]
        assert everything["secret"].startswith("whsec_")
        # the outbox empties once published (the relay deletes after JetStream's acks)
        for _ in range(100):
            if await engine.pool.fetchval("SELECT count(*) FROM status_events") == 0:
                break
            await asyncio.sleep(0.1)
        assert await engine.pool.fetchval("SELECT count(*) FROM status_events") == 0
    finally:
        await nc.close()


async def test_a_url_that_never_takes_them_gets_dead_letters_then_a_replay(env):
    engine, receiver = env
    receiver.refuse_all.add("down")
    sub = await subscribe(engine, receiver, "down", statuses=["accepted"])
    await asyncio.sleep(1.0)
    ids = await submit(engine, 3)
    url = f"{engine.base_url}/v1/event-subscriptions/{sub['id']}/dead-letters"
    async with api_session() as s:
        letters: list = []
        for _ in range(300):
            async with s.get(url) as r:
                letters = (await r.json())["dead_letters"]
            if len(letters) == 3:
                break
            await asyncio.sleep(0.1)
        assert {d["event"]["notification_id"] for d in letters} == set(ids)
        assert all(d["attempts"] == 4 and d["last_error"] == "HTTP 500" for d in letters)
        receiver.refuse_all.discard("down")
        pages, before = [], None  # a page at a time: none skipped, none twice
        for _ in range(4):
            async with s.get(url, params={"limit": "1", **({"before": before} if before else {})}) as r:
                page = await r.json()
                assert r.status == 200, page
            pages += [d["event"]["id"] for d in page["dead_letters"]]
            if (before := page["next_before"]) is None:
                break
        assert sorted(pages) == sorted(d["event"]["id"] for d in letters)
        async with s.get(url, params={"before": "yesterday"}) as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "before"
        async with s.post(url + "/replay") as r:
            assert r.status == 202 and (await r.json())["taken"] == 3
        await until(lambda: len(receiver.took["down"]) == 3, what="the replayed dead letters")
        async with s.get(url) as r:
            assert (await r.json())["dead_letters"] == []


async def test_subscriptions_are_managed_and_their_input_checked(env):
    engine, receiver = env
    sub = await subscribe(engine, receiver, "managed", statuses=["bounced"])
    one = f"{engine.base_url}/v1/event-subscriptions/{sub['id']}"
    async with api_session() as s:
        async with s.get(one) as r:
            body = await r.json()
            assert r.status == 200 and "secret" not in body and body["statuses"] == ["bounced"]
        async with s.patch(one, json={"enabled": False, "channels": ["email"]}) as r:
            body = await r.json()
            assert r.status == 200 and body["enabled"] is False and body["channels"] == ["email"]
            assert body["statuses"] == ["bounced"]
        async with s.post(one + "/secret") as r:
            new = (await r.json())["secret"]
            assert r.status == 200 and new != sub["secret"]
        async with s.get(f"{engine.base_url}/v1/event-subscriptions?limit=1") as r:
            page = await r.json()
            assert r.status == 200 and len(page["subscriptions"]) == 1 and page["next"]
        for bad, field in (({"url": "http://169.254.169.254/latest"}, "url"),
                           ({"url": "ftp://127.0.0.1/x"}, "url"),
                           ({"url": f"{receiver.base}/x", "statuses": ["lost"]}, "statuses"),
                           ({"url": f"{receiver.base}/x", "secret": "short"}, "secret")):
            async with s.post(f"{engine.base_url}/v1/event-subscriptions", json=bad) as r:
                body = await r.json()
                assert r.status == 422, body
                assert field in body["errors"][0]["field"], body
        async with s.delete(one) as r:
            assert r.status == 204
        async with s.get(one) as r:
            assert r.status == 404
        async with s.get(f"{engine.base_url}/v1/event-subscriptions/not-a-uuid") as r:
            assert r.status == 400


async def test_a_slow_subscriber_gets_each_event_once_in_order(env):
    """Each answer takes 0.3 s and the ack wait is 2 s: events wait in their
    lanes far longer than that, and none may be given out again (a copy, out
    of order) while they wait."""
    engine, receiver = env
    receiver.slow["slow"] = 0.3
    await subscribe(engine, receiver, "slow", statuses=["accepted", "sent"])
    await asyncio.sleep(1.0)
    ids = await submit(engine, 12)
    await until(lambda: sum(len(receiver.of("slow", nid)) for nid in ids) >= 24, 120, "the slow subscriber's events")
    await asyncio.sleep(2.5)  # a copy given out after the ack wait would arrive by now
    for nid in ids:
        assert receiver.of("slow", nid) == ["accepted", "sent"], (nid, receiver.of("slow", nid))


async def test_a_changed_subscription_goes_on_and_a_lost_consumer_is_made_again(env):
    engine, receiver = env
    sub = await subscribe(engine, receiver, "before-move", statuses=["accepted"])
    receiver.secrets["after-move"] = sub["secret"]
    one = f"{engine.base_url}/v1/event-subscriptions/{sub['id']}"
    await asyncio.sleep(1.0)
    first = await submit(engine, 2)
    await until(lambda: {e["notification_id"] for e in receiver.took["before-move"]} >= set(first), what="before")
    async with api_session() as s, s.patch(one, json={"url": f"{receiver.base}/after-move"}) as r:
        assert r.status == 200
    second = await submit(engine, 2)
    await until(lambda: {e["notification_id"] for e in receiver.took["after-move"]} >= set(second), what="moved")
    # the consumer deleted under it: its loop fails, starts again and makes it again
    js = engine.nc.jetstream()
    await js.delete_consumer(f"{engine.cfg.nats.stream}_EVENTS", f"hook-{sub['id']}")
    third = await submit(engine, 2)
    await until(lambda: {e["notification_id"] for e in receiver.took["after-move"]} >= set(third), 60, "after loss")
    info = await engine.actors.events.info.remote()
    assert info["hooks"][sub["id"]]["restarts"] >= 1


async def test_events_the_stream_dropped_before_a_subscription_read_them_are_counted(env):
    engine, receiver = env
    sub = await subscribe(engine, receiver, "behind", statuses=["accepted"])
    one = f"{engine.base_url}/v1/event-subscriptions/{sub['id']}"
    await asyncio.sleep(1.0)
    first = await submit(engine, 1)
    await until(lambda: len(receiver.took["behind"]) == 1, what="the first event")
    async with api_session() as s:
        async with s.patch(one, json={"enabled": False}) as r:
            assert r.status == 200
        waiting = await submit(engine, 4)  # while it is disabled: they wait in the stream...
        for nid in waiting:  # ...their "accepted" published (by the Ingestor, before the row is written)...
            await row_sent(engine, nid)
        js = engine.nc.jetstream()
        name = f"{engine.cfg.nats.stream}_EVENTS"
        cfg = (await js.stream_info(name)).config
        for _ in range(100):  # ...and the rest (the relay runs every 0.2 s at most)
            if await engine.pool.fetchval("SELECT count(*) FROM status_events") == 0:
                break
            await asyncio.sleep(0.1)
        kept = cfg.max_msgs
        cfg.max_msgs = 1  # ...until the stream drops all but its newest
        await js.update_stream(cfg)
        cfg.max_msgs = kept
        await js.update_stream(cfg)
        async with s.patch(one, json={"enabled": True}) as r:
            assert r.status == 200
        last = await submit(engine, 1)
        await until(lambda: last[0] in {e["notification_id"] for e in receiver.took["behind"]}, what="the last")
        async with s.get(one) as r:
            body = await r.json()
    assert body["lost_events"] >= 1, body
    assert first[0] in {e["notification_id"] for e in receiver.took["behind"]}


async def test_the_python_client_manages_subscriptions_and_pages_dead_letters(env):
    engine, receiver = env
    headers = admin_headers(engine.cfg)
    async with Client(engine.base_url, headers=headers) as client:
        made = await client.subscribe(f"{receiver.base}/by-client", statuses=["accepted"], description="client")
        receiver.secrets["by-client"] = made["secret"]
        assert made["id"] in [s["id"] async for s in client.event_subscriptions(page_size=1)]
        changed = await client.change_subscription(made["id"], {"description": "changed"})
        assert changed["description"] == "changed" and changed["statuses"] == ["accepted"]
        receiver.refuse_all.add("by-client")
        await asyncio.sleep(1.0)
        await submit(engine, 3)
        letters: list[dict] = []
        for _ in range(300):
            letters = [d async for d in client.dead_letters(made["id"], page_size=2)]
            if len(letters) == 3:
                break
            await asyncio.sleep(0.1)
        assert len({d["event"]["id"] for d in letters}) == 3
        receiver.refuse_all.discard("by-client")
        assert await client.replay_dead_letters(made["id"]) == 3
        await until(lambda: len(receiver.took["by-client"]) == 3, what="the replay")
        await client.delete_subscription(made["id"])
        with pytest.raises(TidingsError) as refused:
            await client.change_subscription(made["id"], {"enabled": False})
        assert refused.value.status == 404

    def synchronously() -> list[str]:
        with SyncClient(engine.base_url, headers=headers) as sync:
            return [s["id"] for s in sync.event_subscriptions(page_size=2)]

    assert made["id"] not in await asyncio.to_thread(synchronously)


async def test_an_event_refused_for_good_is_dead_lettered_at_once(env):
    """A 4xx other than 408/409/423/425/429 refuses the event itself: retrying
    it would only hold its lane."""
    engine, receiver = env
    receiver.answer["gone"], receiver.answer["busy"] = 422, 429
    gone = await subscribe(engine, receiver, "gone", statuses=["accepted"])
    busy = await subscribe(engine, receiver, "busy", statuses=["accepted"])
    await asyncio.sleep(1.0)
    await submit(engine, 2)
    async with Client(engine.base_url, headers=admin_headers(engine.cfg)) as client:
        for sub, attempts in ((gone, 1), (busy, 4)):
            letters: list[dict] = []
            for _ in range(300):
                letters = [d async for d in client.dead_letters(sub["id"])]
                if len(letters) == 2:
                    break
                await asyncio.sleep(0.1)
            assert [d["attempts"] for d in letters] == [attempts, attempts], (sub["url"], letters)
            assert {d["last_error"] for d in letters} == {"HTTP 422" if attempts == 1 else "HTTP 429"}
