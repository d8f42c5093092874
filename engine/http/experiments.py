"""A/B experiments (``policy.experiments``): start one for a category, read its
results, stop it (everyone gets the winner from then on), archive it (no routing;
its results stay).

- ``POST /v1/experiments``: start (201); 409 when the id is taken or the category
  has a live experiment;
- ``GET /v1/experiments``, ``GET /v1/experiments/{experiment_id}``;
- ``GET /v1/experiments/{experiment_id}/results``: per variant, people, outcomes,
  rates with intervals, the test against the control, and the winner if the data
  name one;
- ``POST /v1/experiments/{experiment_id}/stop`` ``{"winner"?: name}``: without a
  winner, the one the results name (409 while they name none);
- ``DELETE /v1/experiments/{experiment_id}``: archive.

Every UserShard of this instance reads the live experiments again once a change
is committed; other instances' shards within ``EXPERIMENTS_EVERY_S``."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import msgspec
from aiohttp import web

from engine.http.access import Param, Route, Scoped, actor, register
from engine.http.common import ENGINE, Problem, decode, path_param, query_after, query_int, read_json, reply
from policy import experiments
from policy.experiments import Analysis, ExperimentBody, Name
from stores import experiments as store, templates as template_store

log = logging.getLogger(__name__)

PATH = {"experiment_id": Name}
TOLD_S = 5.0  # how long a change waits for the shards to have read it
EXAMPLE = {"id": "welcome-subject", "category": "onboarding", "kind": "content", "metric": "opened",
           "min_sample": 500, "variants": [
               {"name": "control"},
               {"name": "short", "content": {"subject": "Welcome!", "text": "Glad you are here."}}]}


Experiment = store.Experiment


class Experiments(msgspec.Struct):
    """A page in id order; ``next``: the ``after`` of the next page (none: the last)."""

    experiments: list[Experiment]
    next: str | None


class Results(msgspec.Struct):
    """``analysis.winner``: the variant the data name now (none yet: ``analysis.why``
    says what is missing); ``winner``: the one everyone gets, once stopped."""

    experiment_id: str
    status: str
    winner: str | None
    analysis: Analysis


class StopBody(msgspec.Struct, forbid_unknown_fields=True):
    winner: Name | None = None


_body = msgspec.json.Decoder(ExperimentBody)
_stop = msgspec.json.Decoder(StopBody)


def path_experiment(request: web.Request) -> str:
    return path_param(request, "experiment_id", Name, "experiment id")


def missing() -> Problem:
    return Problem(404, "not found", [{"field": "experiment_id", "reason": "no such experiment"}])


async def tell_shards(request: web.Request) -> None:
    """Every UserShard reads the live experiments again; one that does not answer
    in time reads them on its own within ``EXPERIMENTS_EVERY_S``."""
    shards = request.app[ENGINE].actors.user_shards
    try:
        results = await asyncio.wait_for(asyncio.gather(*(s.experiments_changed.remote() for s in shards),
                                                        return_exceptions=True), TOLD_S)
    except TimeoutError:
        log.warning("experiments changed: the shards did not all answer in %.0f s", TOLD_S)
        return
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        log.warning("experiments changed: %d shard(s) did not read them: %s", len(failed), type(failed[0]).__name__)


async def create(request: web.Request) -> web.Response:
    """Start an experiment: from now on the category's notifications (never a
    critical one) get a variant each, the same for a person every time."""
    engine = request.app[ENGINE]
    body = decode(_body, await read_json(request), "experiment")
    errors = experiments.errors(body)
    enabled = engine.enabled_channels
    for i, v in enumerate(body.variants):
        errors += [(f"$.variants[{i}].channels[{j}]", f"channel {ch!r} is not enabled here")
                   for j, ch in enumerate(v.channels or ()) if ch not in enabled]
    async with engine.pool.acquire() as conn:
        for i, v in enumerate(body.variants):
            if v.template is not None and not await template_store.load(conn, v.template.id, v.template.version):
                errors.append((f"$.variants[{i}].template", "no such template (or version)"))
        if errors:
            raise Problem(422, "invalid experiment", [{"field": f, "reason": r} for f, r in errors])
        try:
            saved = await store.create(conn, body, actor(request))
        except store.Taken as e:
            raise Problem(409, "conflict", [{"field": e.which, "reason": e.reason}]) from None
    await tell_shards(request)
    return reply(saved, status=201)


async def get_one(request: web.Request) -> web.Response:
    """An experiment: its variants, status and winner."""
    async with request.app[ENGINE].pool.acquire() as conn:
        saved = await store.get(conn, path_experiment(request))
    if saved is None:
        raise missing()
    return reply(saved)


async def list_all(request: web.Request) -> web.Response:
    """Experiments, a page at a time in id order, archived ones too."""
    after = query_after(request, Name)
    limit = query_int(request, "limit", 100, 1, 500)
    async with request.app[ENGINE].pool.acquire() as conn:
        rows = await store.listed(conn, after, limit)
    return reply(Experiments(rows, rows[-1].experiment_id if len(rows) == limit else None))


async def analysed(request: web.Request, experiment_id: str) -> tuple[store.Experiment, Analysis]:
    async with request.app[ENGINE].pool.acquire() as conn:
        saved = await store.get(conn, experiment_id)
        if saved is None:
            raise missing()
        arms = await store.results(conn, saved)
    return saved, experiments.analyse(arms, saved.metric, saved.confidence, saved.min_sample)


async def results(request: web.Request) -> web.Response:
    """Per variant: the people who got it, how many of them had each outcome, the
    rates, the metric's interval and its test against the control; the winner if
    the data name one (never before every variant has ``min_sample`` people)."""
    saved, analysis = await analysed(request, path_experiment(request))
    return reply(Results(saved.experiment_id, saved.status, saved.winner, analysis))


async def stop(request: web.Request) -> web.Response:
    """Stop a running experiment: from now on everyone gets the winner (the one
    given, or the one the results name: 409 while they name none)."""
    eid = path_experiment(request)
    body = decode(_stop, await read_json(request), "stop") if request.can_read_body else StopBody()
    saved, analysis = await analysed(request, eid)
    if saved.status != "running":
        raise Problem(409, "not running", [{"field": "experiment_id", "reason": f"the experiment is {saved.status}"}])
    winner = body.winner or analysis.winner
    if winner is None:
        raise Problem(409, "no winner yet", [{"field": "$.winner", "reason": f"{analysis.why}: name one to stop now"}])
    if winner not in {v.name for v in saved.variants}:
        raise Problem(422, "invalid stop", [{"field": "$.winner", "reason": "not one of the experiment's variants"}])
    async with request.app[ENGINE].pool.acquire() as conn:
        stopped = await store.stop(conn, eid, winner)
    if stopped is None:  # stopped or archived meanwhile
        raise Problem(409, "not running", [{"field": "experiment_id", "reason": "stopped or archived meanwhile"}])
    await tell_shards(request)
    return reply(stopped)


async def archive(request: web.Request) -> web.Response:
    """Archive an experiment: its category's notifications are no longer routed
    (a new experiment may start for it); its results stay readable."""
    eid = path_experiment(request)
    async with request.app[ENGINE].pool.acquire() as conn:
        archived = await store.archive(conn, eid)
        if archived is None:
            if await store.get(conn, eid) is None:
                raise missing()
            raise Problem(409, "archived", [{"field": "experiment_id", "reason": "archived already"}])
    await tell_shards(request)
    return reply(archived)


PAGE = (Param("after", Name, "Experiments after this id (the previous page's next)"),
        Param("limit", Annotated[int, msgspec.Meta(ge=1, le=500)], "At most this many (default 100)"))
ROUTES = [
    Route("POST", "/v1/experiments", create, Scoped("experiments:write"), body=ExperimentBody,
          answers={201: Experiment}, errors=(409,), example=EXAMPLE),
    Route("GET", "/v1/experiments", list_all, Scoped("experiments:read"), query=PAGE, answers={200: Experiments}),
    Route("GET", "/v1/experiments/{experiment_id}", get_one, Scoped("experiments:read"), params=PATH,
          answers={200: Experiment}, errors=(404,)),
    Route("GET", "/v1/experiments/{experiment_id}/results", results, Scoped("experiments:read"), params=PATH,
          answers={200: Results}, errors=(404,)),
    Route("POST", "/v1/experiments/{experiment_id}/stop", stop, Scoped("experiments:write"), params=PATH,
          body=StopBody, answers={200: Experiment}, errors=(404, 409), example={"winner": "short"}),
    Route("DELETE", "/v1/experiments/{experiment_id}", archive, Scoped("experiments:write"), params=PATH,
          answers={200: Experiment}, errors=(404, 409)),
]


def add_routes(app: web.Application) -> None:
    register(app, ROUTES)


__all__ = ["ROUTES", "add_routes"]
