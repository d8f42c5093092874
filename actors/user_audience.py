"""Who a broadcast reaches, as each UserShard finds its own part
(``policy.audience``): every user it owns, or its subscribers of a topic; then,
for a segment, those of them the filter takes, chunk by chunk, on the states the
chunk loads anyway (and, if the filter reads engagement, each user's last open
and click in one query per chunk)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from policy import segments
from policy.audience import Audience
from policy.rules import Policy
from policy.segments import Engagement, Predicate
from policy.types import UserState
from stores import engagement as engagement_store, topics as topic_store, users as user_store


@dataclass(frozen=True)
class Selection:
    """A shard's part of an audience: the users to look at, and the test each must pass."""

    users: list[str]
    test: Predicate | None = None
    engagement: bool = False  # the test reads engagement

    async def members(self, conn: asyncpg.Connection, user_ids: list[str], states: Mapping[str, UserState],
                      now: float) -> list[str]:
        """Those of ``user_ids`` (a chunk of ``users``, their states loaded) the audience takes."""
        if self.test is None:
            return user_ids
        seen = await engagement_store.last_seen(conn, user_ids) if self.engagement else {}
        test = self.test
        out = []
        for uid in user_ids:
            state = states.get(uid)
            if state is None:  # erased since the list was read
                continue
            opened_clicked = seen.get(uid)
            if test(state, None if opened_clicked is None else Engagement(*opened_clicked), now):
                out.append(uid)
        return out


async def select(conn: asyncpg.Connection, audience: Audience | str, policy: Policy, index: int,
                 shards: int) -> Selection:
    """Shard ``index``'s part of ``audience`` (``"all"`` or an ``Audience``)."""
    if not isinstance(audience, Audience):
        return Selection(await user_store.shard_users(conn, index, shards))
    # a named segment arrives with its filter (the HTTP API reads it when the broadcast
    # is submitted; over NATS one without it is refused by the Ingestor): every shard
    # and every redelivery evaluates the same filter, whatever is saved meanwhile
    where = audience.where
    users = (await topic_store.shard_subscribers(conn, audience.topic, index, shards) if audience.topic is not None
             else await user_store.shard_users(conn, index, shards))
    if where is None:
        return Selection(users)
    return Selection(users, segments.predicate(where, policy), segments.needs_engagement(where))


__all__ = ["Selection", "select"]
