"""Channel choice: ``"channel_strategy": "best"`` sends on one of the request's channels.

The request's ``channels`` are the candidates. Each is decided as usual
(preferences, consent, suppressions, addresses, quiet hours); among those that may
be sent now (or, when none may, those that would be held), the person gets the one
a Thompson sample says they are most likely to engage with, less its cost:

- each (person, channel) has a Beta(α, β) belief about the chance that a send there
  is opened or clicked: α = prior × strength + engaged, β = (1 − prior) × strength +
  (sent − engaged), with ``sent`` and ``engaged`` the person's counts over the last
  ``lookback_days`` (``Stats``; the UserShard reads them from PostgreSQL and counts
  new sends and the engagement fed to it);
- the prior is the population's rate on that channel (the people the shard holds,
  their counts summed), blended with the configured ``prior_rate`` as
  ``prior_weight`` pseudo-sends; ``strength`` is ``prior_weight`` too, so a person's
  own history outweighs the population after about that many sends;
- the score of a channel is one draw from its Beta less its configured ``cost``
  (in units of engagement probability: a cost of 0.05 is worth five points of rate);
  with probability ``exploration`` a candidate is taken at random instead.

The draws are seeded by the notification id, so deciding the same notification
again with the same counts chooses the same channel. The others are suppressed,
reason ``channel.not_chosen``, their detail naming the choice and every score: the
choice is recorded with the outcome. A notification decided again after its
choice was recorded keeps it (``plan``).

Pure: the randomness comes from the seed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from policy.types import Channel

REASON = "channel.not_chosen"
# a person's counts on the channels they were sent on: channel → (sent, engaged)
Stats = Mapping[str, tuple[int, int]]
Rate = Annotated[float, Meta(ge=0, le=1)]


class ChoiceConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[preferences.choice]``."""

    exploration: Rate = 0.02  # a candidate at random this often (Thompson sampling explores by itself too)
    prior_rate: Annotated[float, Meta(gt=0, lt=1)] = 0.1  # before anyone's counts are known
    prior_weight: Annotated[float, Meta(gt=0, le=1e6)] = 4.0  # pseudo-sends of the prior (bench/RESULTS.md)
    # subtracted from a channel's sampled rate: what a send there costs, in rate points
    cost: dict[Channel, Annotated[float, Meta(ge=0, le=1)]] = msgspec.field(
        default_factory=lambda: {"sms": 0.02, "voice": 0.05})
    lookback_days: Annotated[int, Meta(ge=1, le=365)] = 90
    refresh_s: Annotated[float, Meta(ge=60, le=7 * 86_400)] = 6 * 3600.0  # a person's counts read again after this


def prior(population: Stats, channel: str, cfg: ChoiceConfig) -> float:
    """The population's engagement rate on ``channel``, with the configured prior blended in."""
    sent, engaged = population.get(channel, (0, 0))
    return (min(engaged, sent) + cfg.prior_rate * cfg.prior_weight) / (sent + cfg.prior_weight)


def choose(candidates: Sequence[str], stats: Stats, population: Stats, cfg: ChoiceConfig,
           seed: str) -> tuple[str, dict[str, float]]:
    """The channel of ``candidates`` (two or more) to send on, and each one's score."""
    rng = random.Random(blake2b(seed.encode(), digest_size=8).digest())
    scores: dict[str, float] = {}
    for ch in candidates:
        p = prior(population, ch, cfg)
        sent, engaged = stats.get(ch, (0, 0))
        engaged = min(engaged, sent)  # an open counted before its send was: never more than sent
        a = p * cfg.prior_weight + engaged
        b = (1 - p) * cfg.prior_weight + sent - engaged
        scores[ch] = rng.betavariate(a, b) - cfg.cost.get(ch, 0.0)  # type: ignore[call-overload]
    if rng.random() < cfg.exploration:
        return rng.choice(list(candidates)), scores
    return max(candidates, key=scores.__getitem__), scores


def detail(chosen: str, scores: Mapping[str, float]) -> str:
    """What a not-chosen channel's outcome says: the choice and every score."""
    return f"chose {chosen}; scores " + ", ".join(f"{ch} {s:.3f}" for ch, s in scores.items())


__all__ = ["REASON", "ChoiceConfig", "Stats", "choose", "detail", "prior"]
