"""Fuzzing the NATS subjects (issue 12, item 8): Hypothesis publishes random
payloads on a running engine's notify, priority and broadcast subjects — random
bytes, any JSON, requests with fields mutated (wrong types, huge or NUL or
surrogate strings, deep nesting, huge numbers), invalid UTF-8, raw NUL bytes,
payloads of hundreds of kilobytes — and each one must come out answered: dead-
lettered with its reason (in the DLQ stream, with a ``rejected`` tracking row
giving the same reason) or, being a valid request, processed (its tracking
rows). Never left to redelivery, never dead-lettered for failing to process.
Afterwards no actor has restarted and the engine is ready.
``TIDINGS_FUZZ_EXAMPLES`` sets how many payloads (in batches of ``BATCH``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from ray._private import state as ray_state

from infra import dead_letters, streams
from policy.types import UserProfile, derive_id
from sandbox import WebhookSink
from tests.integration.fuzzing import JSON_VALUES, RAW_BODIES, dumps, examples, mutated
from tests.integration.helpers import api_session, engine_config, serving

pytestmark = pytest.mark.integration

BATCH = 50  # payloads published at once, then waited for
PAYLOADS = examples(400)
MAX_PAYLOAD = 1024 * 1024 - 64 * 1024  # below nats-server's default max_payload (1 MiB), headers included
WAIT_S = 60.0  # every payload of a batch answered by then (below ack_wait: a stuck batch is not redelivered first)

NOTE = {"user_id": "alice", "category": "job_alerts", "channels": ["webhook"], "priority": "normal",
        "content": {"subject": "s", "text": "t", "data": {"n": 1, "list": [1, "two"]}}, "fallback": ["webhook"],
        "fallback_after_s": 30, "content_type": "news", "context": {"device": "mobile"}, "metadata": {"k": "v"},
        "channel_content": {"webhook": {"text": "hook"}}, "accepted_at": 1.7e9}
BROADCAST = {"category": "marketing", "channels": ["webhook"], "content": {"text": "everyone"}, "audience": "all"}


@pytest.fixture(scope="module")
async def engine(nats_url, database_url, redis_url, ray_address, tmp_path_factory):
    hook = WebhookSink("test-secret", port=0)
    await hook.start()
    cfg = engine_config(nats_url, database_url, str(tmp_path_factory.mktemp("home")), webhook_url=hook.url,
                        channels=("webhook",), redis_url=redis_url)
    people = [UserProfile(user_id=u, addresses={"webhook": "https://example.test/h"}) for u in ("alice", "bob")]
    try:
        async with serving(cfg, database_url, people) as eng:
            n = cfg.nats
            eng.dlq = await eng.js.pull_subscribe(streams.dlq_subject(n), durable=f"fuzz-{uuid.uuid4().hex[:8]}",
                                                  stream=streams.dlq_stream(n))
            eng.dead = {}  # stream seq -> (reason, error) of what reached the DLQ
            eng.restarts_before = restarts(eng)
            yield eng
            await eng.dlq.unsubscribe()
    finally:
        await hook.stop()


def actor_ids(engine) -> list[str]:
    a = engine.actors
    handles = [a.recorder, a.scheduler, *a.user_shards, *a.ingestors,
               *(s for shards in a.channel_shards.values() for s in shards)]
    return [h._actor_id.hex() for h in handles]


def restarts(engine) -> dict[str, int]:
    """Restarts per actor, from the GCS actor table (the state API in
    ``ray.util.state`` needs the dashboard, which the tests' Ray runs without)."""
    return {aid: ray_state.actors(aid)["NumRestarts"] for aid in actor_ids(engine)}


# -- payloads -----------------------------------------------------------------------

@dataclass
class Payload:
    kind: str
    subject_kind: str  # notify | priority | broadcast
    data: bytes
    expect: str  # "dead" | "processed" | "either"
    headers: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (f"Payload({self.kind}, {self.subject_kind}, expect={self.expect}, headers={self.headers}, "
                f"{self.data[:200]!r})")


def _note(nid: uuid.UUID, **extra) -> dict:
    return {**NOTE, "id": str(nid), **extra}


SUBJECTS = st.sampled_from(("notify", "priority", "broadcast"))
# A category token NATS routes (no space, ".", "*", ">"); the engine may refuse it.
CATEGORIES = st.sampled_from(("job_alerts", "marketing")) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=".*>"), min_size=1, max_size=20)


@st.composite
def payloads(draw) -> tuple[Payload, str]:
    nid = uuid.uuid4()  # fresh, not drawn: Hypothesis repeats values, and an id seen before is "processed" already
    kind = draw(st.sampled_from(("bytes", "raw", "json", "valid", "mutated", "mutated", "mutated", "big", "utf8",
                                 "nul")))
    where = draw(SUBJECTS)
    if kind == "bytes":
        p = Payload(kind, where, draw(st.binary(max_size=400)), "dead")
    elif kind == "raw":
        p = Payload(kind, where, draw(RAW_BODIES), "dead")
    elif kind == "json":
        p = Payload(kind, where, dumps(draw(JSON_VALUES)), "either")
    elif kind == "valid":
        body = {**BROADCAST, "id": str(nid)} if where == "broadcast" else _note(nid)
        p = Payload(kind, where, dumps(body), "processed")
    elif kind == "mutated":
        sample = {**BROADCAST, "id": str(nid)} if where == "broadcast" else _note(nid)
        p = Payload(kind, where, dumps(draw(mutated(sample))), "either")
    elif kind == "big":  # hundreds of kilobytes: a valid request, or bytes that are not one
        if draw(st.booleans()):
            text = "x" * draw(st.integers(100_000, 700_000))
            p = Payload(kind, "notify", dumps(_note(nid, content={"text": text})), "processed")
        else:
            p = Payload(kind, where, b"\xff" * draw(st.integers(100_000, 700_000)), "dead")
    elif kind == "utf8":  # bytes that are not UTF-8 inside a string
        p = Payload(kind, where, dumps(_note(nid)).replace(b'"alice"', b'"al\xff\xfeice"'), "dead")
    else:  # a raw NUL byte in a string (not JSON), or an escaped one where the schema forbids it
        body = dumps(_note(nid)).replace(b'"t"', b'"t\x00"') if draw(st.booleans()) else \
            dumps(_note(nid, content={"text": "a\u0000b"}))
        p = Payload(kind, where, body, "dead")
    if len(p.data) > MAX_PAYLOAD:  # cut to what NATS carries: no longer JSON
        p = Payload(f"{p.kind}, cut", p.subject_kind, p.data[:MAX_PAYLOAD], "dead")
    if draw(st.integers(0, 9)) == 0:  # a header the Ingestor reads, with values it must ignore (a well-formed
        # one claims another message's id, as a replay does: tests/integration/test_dlq.py)
        p.headers = {dead_letters.REPLAY_OF: draw(st.sampled_from(("\u00b2", "\u0661", "-1", "", "x", "1" * 30,
                                                                   " 7", "18446744073709551616", "9" * 5000)))}
    category = "job_alerts" if p.expect == "processed" else draw(CATEGORIES)
    return p, category


def subject(cfg, kind: str, category: str) -> str:
    return {"notify": streams.notify_subject, "priority": streams.priority_subject,
            "broadcast": streams.broadcast_subject}[kind](cfg, category)


def candidate_ids(p: Payload, seq: int, stream: str) -> list[uuid.UUID]:
    """The ids a processed payload's rows may carry: its ``id``, else its
    idempotency key's, else its stream sequence's (policy.types.notification_id)."""
    ids = [derive_id(f"{stream}:{seq}")]
    try:
        doc = json.loads(p.data)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("idempotency_key"), str):
            ids.append(derive_id(doc["idempotency_key"]))
        try:
            ids.append(str(uuid.UUID(doc.get("id"))))
        except (TypeError, ValueError, AttributeError):
            pass
    return [uuid.UUID(i) for i in ids]


async def drain_dlq(engine) -> None:
    try:
        msgs = await engine.dlq.fetch(200, timeout=0.5)
    except TimeoutError:
        return
    for m in msgs:  # keyed by the work-stream sequence its Nats-Msg-Id ("dlq:<stream>:<seq>") names
        seq = int(m.headers["Nats-Msg-Id"].rsplit(":", 1)[1])
        engine.dead[seq] = (m.headers.get(dead_letters.REASON, ""), m.headers.get(dead_letters.ERROR, ""))
        await m.ack()


async def outcome(engine, p: Payload, seq: int) -> str | None:
    """"dead", "processed", or None while neither is visible yet."""
    pool, stream = engine.pool, engine.cfg.nats.stream
    if seq in engine.dead:
        row = await pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                  uuid.UUID(derive_id(f"{stream}:{seq}")))
        return "dead" if row is not None else None  # the rejected row follows the dead letter
    column = "parent_id" if p.subject_kind == "broadcast" else "notification_id"
    # any row of its channels (the Ingestor's rejection is the one row on channel "*"); a row may say
    # rejected too (content.missing: a UserShard's decision)
    found = await pool.fetchval(f"SELECT count(*) FROM delivery_tracking WHERE {column} = ANY($1::uuid[]) "
                                "AND channel <> '*'", candidate_ids(p, seq, stream))
    return "processed" if found else None


@pytest.mark.timeout(300 + PAYLOADS // 10)  # a long run (TIDINGS_FUZZ_EXAMPLES) gets its time
@settings(max_examples=math.ceil(PAYLOADS / BATCH), deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure lists every payload that failed
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payloads(), min_size=BATCH, max_size=BATCH))
async def test_every_payload_is_dead_lettered_with_a_reason_or_processed(engine, batch):
    n = engine.cfg.nats
    sent: list[tuple[Payload, int]] = []
    for p, category in batch:
        ack = await engine.js.publish(subject(n, p.subject_kind, category), p.data, headers=p.headers)
        sent.append((p, ack.seq))
    seen: dict[int, str] = {}
    deadline = time.monotonic() + WAIT_S
    while len(seen) < len(sent) and time.monotonic() < deadline:
        await drain_dlq(engine)
        for p, seq in sent:
            if seq not in seen and (got := await outcome(engine, p, seq)) is not None:
                seen[seq] = got
        await asyncio.sleep(0.2)
    wrong = []
    for p, seq in sent:
        got = seen.get(seq)
        reason = engine.dead.get(seq, ("", ""))[0]
        if got is None or (p.expect != "either" and got != p.expect) or (got == "dead" and not reason.startswith(
                "payload.")):
            wrong.append(f"seq {seq}: {p!r} -> {got} {engine.dead.get(seq)}")
    assert not wrong, "\n".join(wrong)
    # a dead letter's tracking row says the same reason
    for seq, got in seen.items():
        if got != "dead":
            continue
        reason = engine.dead[seq][0]
        row = await engine.pool.fetchrow("SELECT status, reason FROM delivery_tracking WHERE notification_id = $1",
                                         uuid.UUID(derive_id(f"{n.stream}:{seq}")))
        assert (row["status"], row["reason"]) == ("rejected", reason), seq


async def test_no_actor_restarted_and_the_engine_is_ready(engine):
    """Runs after the fuzzing (the file's order)."""
    assert engine.dead, "the fuzzing dead-lettered nothing: it did not run"
    assert restarts(engine) == engine.restarts_before
    for ingestor in engine.actors.ingestors:
        assert (await ingestor.info.remote())["running"]
    async with api_session() as client, client.get(f"{engine.base_url}/readyz") as r:
        assert r.status == 200, await r.text()
