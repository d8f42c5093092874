"""Where the time goes (issue 18): the per-stage samples of a run's traced
notifications (``policy.trace``), collected from its Recorder and Ingestors,
as p50/p99 per segment; and the charts of a harness result (PNG, matplotlib):
latency against load, the segments at each load, and each paced run's latency
over time (``windows``)."""

from __future__ import annotations

import asyncio
import math
import os
import time

from policy.trace import SEGMENTS

ORDER = tuple(SEGMENTS)  # pipeline order, "ack" last


async def collect(actors, settle_s: float = 10.0) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Seconds per segment of every traced notification the run's actors kept,
    once the Ingestors have acked what is in flight (the rows are committed
    before their batches are acked: the last acks come after); and the
    Recorder's samples whole (segment -> seconds, one per outcome), for ``tail``."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        infos = await asyncio.gather(*(i.info.remote() for i in actors.ingestors))
        if not any(info["inflight_batches"] for info in infos):
            break
        await asyncio.sleep(0.05)
    recorded, *acks = await asyncio.gather(actors.recorder.stage_samples.remote(),
                                           *(i.stage_samples.remote() for i in actors.ingestors))
    per = by_segment(recorded)
    per["ack"] = [s for a in acks for s in a]
    return per, recorded


def by_segment(samples: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-outcome samples (segment -> seconds) turned into seconds per segment."""
    per: dict[str, list[float]] = {name: [] for name in ORDER}
    for sample in samples:
        for name, seconds in sample.items():
            per[name].append(seconds)
    return per


async def collect_urgent(actors) -> dict[str, dict]:
    """The segments of the traced high and critical outcomes alone (the
    priority lane), summarised as ``summary`` does; no ``ack`` (acks are per batch)."""
    samples = await actors.recorder.stage_samples.remote(True)
    return summary(by_segment(samples), samples)


def tail(samples: list[dict[str, float]], q: float = 0.99) -> dict[str, float]:
    """Where the slowest outcomes spent their time: of the slowest ``1 - q`` of
    the samples (their segments added up: published to committed; at least
    one), the mean ms per segment. The p99 of each segment alone may come from
    different notifications; this says what made the slow ones slow."""
    if not samples:
        return {}
    slow = sorted(samples, key=lambda one: sum(one.values()), reverse=True)[:max(1, round(len(samples) * (1 - q)))]
    return {name: round(sum(one.get(name, 0.0) for one in slow) / len(slow) * 1000, 2)
            for name in ORDER if any(name in one for one in slow)}


async def collect_stalls(actors) -> dict[str, dict]:
    """Loop lags and gc pauses per actor kind (``actors.stalls``): the kinds' samples pooled."""
    kinds = {"Ingestor": actors.ingestors, "UserShard": actors.user_shards,
             "ChannelShard": [a for shards in actors.channel_shards.values() for a in shards],
             "urgent ChannelShard": [a for shards in actors.urgent_shards.values() for a in shards],
             "Recorder": [actors.recorder]}
    out = {}
    for kind, handles in kinds.items():
        if not handles:
            continue
        samples = await asyncio.gather(*(h.stalls.remote() for h in handles))
        lags = sorted(s for one in samples for s in one["lag"])
        row: dict = {}
        if lags:
            row["lag_p50_ms"] = round(_quantile(lags, 0.5) * 1000, 2)
            row["lag_p99_ms"] = round(_quantile(lags, 0.99) * 1000, 2)
            row["lag_max_ms"] = round(lags[-1] * 1000, 2)
        for gen in ("0", "1", "2"):
            pauses = sorted(s for one in samples for s in one["gc"][gen])
            row[f"gc{gen}_n"] = len(pauses)
            row[f"gc{gen}_max_ms"] = round(pauses[-1] * 1000, 2) if pauses else 0.0
            row[f"gc{gen}_total_ms"] = round(sum(pauses) * 1000, 1)
        out[kind] = row
    return out


async def collect_batching(actors) -> dict[str, float | int | None]:
    """How full the batches ran: messages per JetStream fetch and per UserShard call
    (the bulk lane's Ingestors), tracking rows per Recorder flush. Each of a batch's
    fixed costs (a pull request, a hop, a transaction) is spread over these, so
    at a steady pace, where batches are small, a notification costs more CPU than
    in a backlog. Each run has its own engine: the counts are the run's. A fetch is
    one that brought messages (an empty pull is not a batch); the messages include
    any redelivered, and the calls any retried."""
    infos = [i for i in await asyncio.gather(*(i.info.remote() for i in actors.ingestors)) if "bulk" in i["lanes"]]
    fetched, fetches = sum(i["fetched"] for i in infos), sum(i["batches"] for i in infos)
    calls = sum(i["calls"]["linked"] + i["calls"]["through_ray"] for i in infos)
    rec = await actors.recorder.stats.remote()
    return {"fetched": fetched, "fetches": fetches, "per_fetch": _per(fetched, fetches),
            "shard_calls": calls, "per_shard_call": _per(fetched, calls),
            "flushes": rec["flushes"], "rows_per_flush": _per(rec["rows_written"], rec["flushes"]),
            "one_statement_flushes": rec["small_flushes"]}


def _per(items: int, batches: int) -> float | None:
    return round(items / batches, 1) if batches else None


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted ``values``."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def summary(per: dict[str, list[float]], samples: list[dict[str, float]] | None = None) -> dict[str, dict]:
    """segment -> {n, p50_ms, p99_ms, and with ``samples`` tail_ms: that segment's
    mean among the slowest 1% (``tail``)}, in pipeline order (empty segments left out)."""
    slow = tail(samples or [])
    out = {}
    for name in ORDER:
        values = sorted(per.get(name, []))
        if values:
            out[name] = {"n": len(values), "p50_ms": round(_quantile(values, 0.5) * 1000, 2),
                         "p99_ms": round(_quantile(values, 0.99) * 1000, 2)}
            if name in slow:
                out[name]["tail_ms"] = slow[name]
    return out


TARGET_MS = 50.0  # issue 18's p99 publish → committed at half load


def windows(timeline: list[list], window_s: float, target_ms: float = TARGET_MS) -> dict:
    """A paced run's latency over time, summed up: across its windows of publish
    time (``timeline`` rows: [start s, rows, p50 ms, p99 ms, max ms]; a window
    with no rows has none), the median (the lower one) of the windows' p99 (a typical moment), the worst window and how many windows
    had a p99 over ``target_ms``. A run whose p99 is far above its median window's
    was held up by a few stalls, not slow all along. Empty without windows."""
    rated = [w for w in timeline if w[3] is not None]
    if not rated:
        return {}
    p99s = sorted(w[3] for w in rated)
    worst = max(rated, key=lambda w: w[3])
    return {"window_s": window_s, "n": len(rated), "median_p99_ms": p99s[(len(p99s) - 1) // 2],
            "worst_p99_ms": worst[3], "worst_at_s": worst[0], "target_ms": target_ms,
            "over_target": sum(1 for p in p99s if p > target_ms)}


def share(run: dict, result: dict) -> float:
    """A paced run's rate as a share of the best backlog run's: the load the charts
    draw. Not the ``--paced`` fraction, which with ``--rate-base`` is a share of
    that fixed rate instead (files kept before this was fixed, 2026-12-06's
    included, hold that fraction as ``utilisation``)."""
    return run["rate"] / result["e2e_per_s"] if result.get("e2e_per_s") else run.get("utilisation", 0.0)


def charts(result: dict, json_path: str) -> list[str]:
    """Write ``<json>-latency.png`` (p50/p99 against load), ``<json>-stages.png``
    (p50 and p99 per segment at each paced load) and ``<json>-timeline.png`` (p50
    and p99 per window of each paced run) beside ``json_path``; returns their
    paths (none without paced runs)."""
    runs = result.get("paced_runs") or []
    if not runs:
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    base = os.path.splitext(json_path)[0]
    loads = [share(r, result) * 100 for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("p50_ms", "p50 publish → committed", "o-"), ("p99_ms", "p99 publish → committed", "s-"),
                              ("sent_p99_ms", "p99 publish → provider answered", "^--")):
        ax.plot(loads, [r[key] for r in runs], style, label=label)
    ax.set_xlabel(f"load, % of the backlog rate ({result['e2e_per_s']:,}/s)")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("latency against load")
    fig.tight_layout()
    paths = [f"{base}-latency.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    staged = [r for r in runs if r.get("stages")]
    if staged:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        names = [n for n in ORDER if any(n in r["stages"] for r in staged)]
        height = 0.8 / len(staged)
        for i, r in enumerate(staged):
            label = f"{share(r, result) * 100:.0f}% ({r['rate']:,.0f}/s)"
            for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
                ax.barh([j + i * height for j in range(len(names))],
                        [r["stages"].get(n, {}).get(key, 0) for n in names], height, label=label)
        for ax, key in zip(axes, ("p50", "p99"), strict=True):
            ax.set_xlabel(f"{key} ms")
            ax.set_xscale("symlog", linthresh=1)
            ax.grid(True, axis="x", alpha=0.3)
        axes[0].set_yticks([j + 0.4 - height / 2 for j in range(len(names))], names)
        axes[0].invert_yaxis()
        axes[1].legend(title="load")
        fig.suptitle("time per pipeline stage")
        fig.tight_layout()
        paths.append(f"{base}-stages.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    timed = [r for r in runs if r.get("timeline")]
    if timed:
        fig, ax = plt.subplots(figsize=(9, 4))
        for r in timed:
            t = [w[0] for w in r["timeline"]]
            line, = ax.plot(t, [w[3] for w in r["timeline"]], "-", label=f"p99 at {r['rate']:,.0f}/s")
            ax.plot(t, [w[2] for w in r["timeline"]], ":", color=line.get_color(), label=f"p50 at {r['rate']:,.0f}/s")
        ax.axhline(TARGET_MS, color="grey", linewidth=0.8, linestyle="--")
        window_s = timed[0].get("windows", {}).get("window_s", 0.25)
        ax.set_xlabel(f"seconds into the run (windows of {window_s * 1000:.0f} ms of publish time)")
        ax.set_ylabel("ms, publish → committed")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title("latency over time, per paced run")
        fig.tight_layout()
        paths.append(f"{base}-timeline.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
