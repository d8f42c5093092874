"""``tidings bench prefs decide`` runs (it once ran into a private field of the fatigue
ledger and nothing noticed): a small run gives every figure it reports."""

from __future__ import annotations

from bench.prefs import bench_decide


def test_decide_reports_every_figure():
    out = bench_decide(calls=2000)
    for key in ("median_us", "with_fatigue_median_us", "with_channel_choice_median_us",
                "experiment_routing_median_us"):
        assert out[key] > 0, key
