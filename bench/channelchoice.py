"""Offline evaluation of channel choice: ``tidings bench channelchoice``.

A synthetic population with known channel habits; each person is sent one
notification per round for ``--rounds`` rounds, on the channel each strategy
chooses, and whether it is opened is drawn from their habits. The strategies meet
the same people and the same random draws (paired):

- ``fixed``: everyone on one channel, the population's best on average (what a
  product without the feature would pick once, for everyone);
- ``best``: ``policy.choice.choose``, the engine's code, with the configured prior,
  exploration and costs (none by default here: the lift measured is engagement
  alone), learning from its own sends and opens round by round, starting from each
  person's history;
- ``oracle``: each person's truly best channel, which no strategy can know: the ceiling.

The population (seeded, ``--seed``): channels email, push, sms, in_app with mean open
rates 0.12, 0.22, 0.30, 0.15; a person's rate on a channel is drawn from a Beta around
that mean (concentration ``--spread``: small is people who differ a lot), so some read
email and ignore push, others the reverse. History: Poisson(``--events``) past sends
per person on channels drawn at random, each opened with the person's rate. The
population's counts (what the shard's population prior sums) are the history's.

The lift of ``best`` over ``fixed`` is the difference of open rates over all rounds,
with a 95% interval from the paired per-person differences (normal approximation).
The model is an assumption, not a measurement of real people: it shows that the code
finds channel habits that exist and what that is worth when they do.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

from bench.sendtime import _poisson, emit
from policy.choice import ChoiceConfig, choose

MEANS = {"email": 0.12, "push": 0.22, "sms": 0.30, "in_app": 0.15}


def evaluate(people: int = 5000, rounds: int = 10, seed: int = 11, events: float = 6.0, spread: float = 4.0,
             cfg: ChoiceConfig | None = None) -> dict:
    cfg = cfg or ChoiceConfig(cost={})
    rng = random.Random(seed)
    channels = list(MEANS)
    rates = [{ch: rng.betavariate(m * spread, (1 - m) * spread) for ch, m in MEANS.items()} for _ in range(people)]
    stats: list[dict[str, tuple[int, int]]] = []
    population: dict[str, tuple[int, int]] = dict.fromkeys(channels, (0, 0))
    without = 0
    for r in rates:
        mine: dict[str, tuple[int, int]] = {}
        n = _poisson(rng, events)
        without += n == 0
        for _ in range(n):
            ch = rng.choice(channels)
            opened = rng.random() < r[ch]
            sent, engaged = mine.get(ch, (0, 0))
            mine[ch] = (sent + 1, engaged + opened)
            ps, pe = population[ch]
            population[ch] = (ps + 1, pe + opened)
        stats.append(mine)
    fixed = max(channels, key=lambda ch: statistics.fmean(r[ch] for r in rates))
    opened: dict[str, list[int]] = {"fixed": [0] * people, "best": [0] * people, "oracle": [0] * people}
    last_round = {"fixed": 0, "best": 0, "oracle": 0}
    chose_oracle = 0
    for rnd in range(rounds):
        for i, r in enumerate(rates):
            best, _ = choose(channels, stats[i], population, cfg, f"{seed}-{rnd}-{i}")
            oracle = max(channels, key=r.__getitem__)
            chose_oracle += best == oracle
            u = rng.random()  # one draw per person and round for all strategies: paired
            for name, ch in (("fixed", fixed), ("best", best), ("oracle", oracle)):
                hit = u < r[ch]
                opened[name][i] += hit
                if rnd == rounds - 1:
                    last_round[name] += hit
            hit = u < r[best]  # the engine learns from what it sent: its own sends and opens
            sent, engaged = stats[i].get(best, (0, 0))
            stats[i][best] = (sent + 1, engaged + hit)
            ps, pe = population[best]
            population[best] = (ps + 1, pe + hit)
    sends = people * rounds
    out: dict = {"people": people, "rounds": rounds, "seed": seed, "events_mean": events, "spread": spread,
                 "means": MEANS, "fixed_channel": fixed, "without_history": without,
                 "exploration": cfg.exploration, "prior_rate": cfg.prior_rate, "prior_weight": cfg.prior_weight,
                 "best_chose_the_oracles_channel": round(chose_oracle / sends, 4),
                 "rates": {k: round(sum(v) / sends, 4) for k, v in opened.items()},
                 "last_round_rates": {k: round(v / people, 4) for k, v in last_round.items()}, "lift_vs_fixed": {}}
    base = sum(opened["fixed"]) / sends
    for name in ("best", "oracle"):
        diffs = [(a - b) / rounds for a, b in zip(opened[name], opened["fixed"], strict=True)]
        mean, sd = statistics.fmean(diffs), statistics.pstdev(diffs)
        half = 1.96 * sd / math.sqrt(people)
        out["lift_vs_fixed"][name] = {"difference": round(mean, 4), "ci95": [round(mean - half, 4),
                                                                              round(mean + half, 4)],
                                      "relative": round(mean / base, 3),
                                      "relative_ci95": [round((mean - half) / base, 3), round((mean + half) / base, 3)]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tidings bench channelchoice", description=__doc__.splitlines()[0])
    p.add_argument("--people", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--events", type=float, default=6.0, help="mean past sends per person (Poisson)")
    p.add_argument("--spread", type=float, default=4.0, help="Beta concentration of a person's rates around the mean")
    p.add_argument("--exploration", type=float, default=ChoiceConfig().exploration)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.people < 1 or args.rounds < 1 or args.spread <= 0 or not 0 <= args.exploration <= 1:
        print("--people and --rounds must be positive, --spread > 0, --exploration in [0, 1]", file=sys.stderr)
        return 2
    began = time.perf_counter()
    out = evaluate(args.people, args.rounds, args.seed, args.events, args.spread,
                   ChoiceConfig(cost={}, exploration=args.exploration))
    emit(out, began, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
