"""Where the time goes (issue 18): the per-stage samples of a run's traced
notifications (``policy.trace``), collected from its Recorder and Ingestors,
as p50/p99 per segment; and the charts of a harness result (PNG, matplotlib):
latency against load, and the segments at each load."""

from __future__ import annotations

import asyncio
import math
import os
import time

from policy.trace import SEGMENTS

ORDER = tuple(SEGMENTS)  # pipeline order, "ack" last


async def collect(actors, settle_s: float = 10.0) -> dict[str, list[float]]:
    """Seconds per segment of every traced notification the run's actors kept,
    once the Ingestors have acked what is in flight (the rows are committed
    before their batches are acked: the last acks come after)."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        infos = await asyncio.gather(*(i.info.remote() for i in actors.ingestors))
        if not any(info["inflight_batches"] for info in infos):
            break
        await asyncio.sleep(0.05)
    recorded, *acks = await asyncio.gather(actors.recorder.stage_samples.remote(),
                                           *(i.stage_samples.remote() for i in actors.ingestors))
    per: dict[str, list[float]] = {name: [] for name in ORDER}
    for sample in recorded:
        for name, seconds in sample.items():
            per[name].append(seconds)
    per["ack"] = [s for a in acks for s in a]
    return per


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted ``values``."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def summary(per: dict[str, list[float]]) -> dict[str, dict]:
    """segment -> {n, p50_ms, p99_ms}, in pipeline order (empty segments left out)."""
    out = {}
    for name in ORDER:
        values = sorted(per.get(name, []))
        if values:
            out[name] = {"n": len(values), "p50_ms": round(_quantile(values, 0.5) * 1000, 2),
                         "p99_ms": round(_quantile(values, 0.99) * 1000, 2)}
    return out


def charts(result: dict, json_path: str) -> list[str]:
    """Write ``<json>-latency.png`` (p50/p99 against load) and ``<json>-stages.png``
    (p50 and p99 per segment at each paced load) beside ``json_path``; returns
    their paths (none without paced runs)."""
    runs = result.get("paced_runs") or []
    if not runs:
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    base = os.path.splitext(json_path)[0]
    loads = [r["utilisation"] * 100 for r in runs]
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
            label = f"{r['utilisation'] * 100:.0f}% ({r['rate']:,.0f}/s)"
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
        fig.savefig(paths[1], dpi=110)
        plt.close(fig)
    return paths
