"""A/B experiments (``experiments``) and who got which variant
(``user_experiment_participation``, one row per notification), migration 032.

What an experiment's results count, per variant and per person (``results``):
people with a counted notification that is settled (not held, not in flight); of them, those with one that went out
(a tracking row sent, delivered or complained), was opened (an "opened" or a
"clicked" event: a click implies an open), clicked, or converted (a "converted"
event, ``POST /v1/notifications/{id}/events``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg
import msgspec

from infra import db
from policy.experiments import Arm, ExperimentBody, Exposure, Live, Variant
from stores.engagement import OPENABLE, sql_in

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
_variants = msgspec.json.Decoder(list[Variant])


class Experiment(msgspec.Struct, kw_only=True):
    """An experiment as stored: its variants (the first is the control), status
    (running | stopped | archived) and, once stopped, the winner everyone gets."""

    experiment_id: str
    description: str
    category: str
    kind: str
    variants: list[Variant]
    metric: str
    min_sample: int
    confidence: float
    status: str
    winner: str | None
    created_at: float
    stopped_at: float | None
    archived_at: float | None


COLUMNS = ("experiment_id, description, category, kind, variants::text AS variants, metric, min_sample, confidence, "
           "status, winner, extract(epoch FROM created_at)::float8 AS created_at, "
           "extract(epoch FROM stopped_at)::float8 AS stopped_at, extract(epoch FROM archived_at)::float8 AS archived_at")


def _saved(r) -> Experiment:
    return Experiment(experiment_id=r["experiment_id"], description=r["description"], category=r["category"],
                 kind=r["kind"], variants=_variants.decode(r["variants"]), metric=r["metric"],
                 min_sample=r["min_sample"], confidence=r["confidence"], status=r["status"], winner=r["winner"],
                 created_at=r["created_at"], stopped_at=r["stopped_at"], archived_at=r["archived_at"])


class Taken(Exception):
    """The id is taken, or the category has a live experiment (``which``: the field)."""

    def __init__(self, which: str, reason: str):
        super().__init__(reason)
        self.which, self.reason = which, reason


async def create(conn: asyncpg.Connection, body: ExperimentBody, actor: str | None) -> Experiment:
    """Start an experiment; ``Taken`` when its id is used or its category has a live one."""
    async with conn.transaction():
        if await conn.fetchval("SELECT true FROM experiments WHERE experiment_id = $1", body.id):
            raise Taken("$.id", "an experiment with this id exists")
        other = await conn.fetchval("SELECT experiment_id FROM experiments WHERE category = $1 "
                                    "AND status <> 'archived'", body.category)
        if other is not None:
            raise Taken("$.category", f"experiment {other!r} is live for this category: archive it first")
        try:
            r = await conn.fetchrow(
                "INSERT INTO experiments (experiment_id, description, category, kind, variants, metric, min_sample, "
                f"confidence, created_by) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9) RETURNING {COLUMNS}",
                body.id, body.description, body.category, body.kind, _json.encode(body.variants).decode(),
                body.metric, body.min_sample, body.confidence, actor)
        except asyncpg.UniqueViolationError as e:  # another creation won the race
            if e.constraint_name == "experiments_pkey":
                raise Taken("$.id", "an experiment with this id exists") from None
            raise Taken("$.category", "another experiment was started for this category meanwhile") from None
    return _saved(r)


async def get(conn: asyncpg.Connection, experiment_id: str) -> Experiment | None:
    r = await conn.fetchrow(f"SELECT {COLUMNS} FROM experiments WHERE experiment_id = $1", experiment_id)
    return None if r is None else _saved(r)


async def listed(conn: asyncpg.Connection, after: str, limit: int) -> list[Experiment]:
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM experiments WHERE experiment_id > $1 "
                            "ORDER BY experiment_id LIMIT $2", after, limit)
    return [_saved(r) for r in rows]


async def stop(conn: asyncpg.Connection, experiment_id: str, winner: str) -> Experiment | None:
    """Stop a running experiment: everyone gets ``winner`` from now on. None when it
    is not running."""
    r = await conn.fetchrow(f"UPDATE experiments SET status = 'stopped', winner = $2, stopped_at = now() "
                            f"WHERE experiment_id = $1 AND status = 'running' RETURNING {COLUMNS}",
                            experiment_id, winner)
    return None if r is None else _saved(r)


async def archive(conn: asyncpg.Connection, experiment_id: str) -> Experiment | None:
    """End an experiment's routing (running or stopped); its results stay. None when
    it was archived already."""
    r = await conn.fetchrow(f"UPDATE experiments SET status = 'archived', archived_at = now(), "
                            f"stopped_at = coalesce(stopped_at, now()) WHERE experiment_id = $1 "
                            f"AND status <> 'archived' RETURNING {COLUMNS}", experiment_id)
    return None if r is None else _saved(r)


async def live(conn: asyncpg.Connection) -> dict[str, Live]:
    """The experiments that route notifications, by category (one whose variants do
    not decode is left out, logged)."""
    out = {}
    for r in await conn.fetch("SELECT experiment_id, category, variants::text, status, winner FROM experiments "
                              "WHERE status IN ('running', 'stopped')"):
        try:
            out[r[1]] = Live(r[0], r[1], tuple(_variants.decode(r[2])), r[3], r[4])
        except msgspec.DecodeError:
            log.error("experiment %r: its variants do not decode; not routed", r[0])
    return out


async def routed_before(conn: asyncpg.Connection, ids: Sequence[str]) -> dict[str, Variant]:
    """The variants notifications ``ids`` were routed to before (a redelivery gets the
    same), whatever their experiment's state is now."""
    out = {}
    decoded: dict[str, list[Variant]] = {}
    for r in await conn.fetch(
            "SELECT p.notification_id::text, p.variant, e.variants::text, e.experiment_id "
            "FROM user_experiment_participation p JOIN experiments e USING (experiment_id) "
            f"WHERE p.notification_id = {db.keys(1, 'uuid')}", list(ids)):
        if r[3] not in decoded:
            try:
                decoded[r[3]] = _variants.decode(r[2])
            except msgspec.DecodeError:
                log.error("experiment %r: its variants do not decode; its notifications go as submitted", r[3])
                decoded[r[3]] = []
        variant = next((v for v in decoded[r[3]] if v.name == r[1]), None)
        if variant is not None:
            out[r[0]] = variant
    return out


async def expose(conn: asyncpg.Connection, exposures: Sequence[Exposure]) -> None:
    """Record who got which variant; a notification routed again keeps its first row."""
    if exposures:
        await conn.execute(
            "INSERT INTO user_experiment_participation (experiment_id, notification_id, user_id, variant, counted) "
            "SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bool[]) "
            "ON CONFLICT (notification_id) DO NOTHING",
            [e.experiment_id for e in exposures], [e.notification_id for e in exposures],
            [e.user_id for e in exposures], [e.variant for e in exposures], [e.counted for e in exposures])


RESULTS = f"""
SELECT variant, count(*) AS users, count(*) FILTER (WHERE delivered) AS delivered,
       count(*) FILTER (WHERE opened) AS opened, count(*) FILTER (WHERE clicked) AS clicked,
       count(*) FILTER (WHERE converted) AS converted
FROM (SELECT p.variant, p.user_id,
             bool_or(EXISTS (SELECT 1 FROM delivery_tracking d WHERE d.notification_id = p.notification_id
                             AND d.status IN ({sql_in(OPENABLE)}))) AS delivered,
             bool_or(EXISTS (SELECT 1 FROM engagement_events e WHERE e.notification_id = p.notification_id
                             AND e.type IN ('opened', 'clicked'))) AS opened,
             bool_or(EXISTS (SELECT 1 FROM engagement_events e WHERE e.notification_id = p.notification_id
                             AND e.type = 'clicked')) AS clicked,
             bool_or(EXISTS (SELECT 1 FROM engagement_events e WHERE e.notification_id = p.notification_id
                             AND e.type = 'converted')) AS converted
      FROM user_experiment_participation p
      WHERE p.experiment_id = $1 AND p.counted
        -- settled: a notification still held (its timing, quiet hours) or in flight is not counted yet
        AND EXISTS (SELECT 1 FROM delivery_tracking d WHERE d.notification_id = p.notification_id)
        AND NOT EXISTS (SELECT 1 FROM delivery_tracking d WHERE d.notification_id = p.notification_id
                        AND d.status = 'deferred')
      GROUP BY p.variant, p.user_id) AS people
GROUP BY variant
"""


async def results(conn: asyncpg.Connection, saved: Experiment) -> list[Arm]:
    """Each variant's people and outcomes, in the experiment's variant order."""
    rows = {r["variant"]: r for r in await conn.fetch(RESULTS, saved.experiment_id)}
    arms = []
    for v in saved.variants:
        r = rows.get(v.name)
        arms.append(Arm(name=v.name) if r is None else
                    Arm(name=v.name, users=r["users"], delivered=r["delivered"], opened=r["opened"],
                        clicked=r["clicked"], converted=r["converted"]))
    return arms


__all__ = ["Experiment", "Taken", "archive", "create", "expose", "get", "listed", "live", "results", "routed_before", "stop"]
