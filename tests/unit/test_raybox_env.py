"""The environment ``engine.raybox`` gives the Ray it starts: Ray's OpenCensus metrics
path unless the operator chose (its OpenTelemetry path replays every histogram
observation in each node's agent; docs/design.md, "Metrics"), usage stats off.
Checked in a fresh interpreter: the defaults are set when the module is imported,
before Ray reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SHOW = ("import json, os, engine.raybox; print(json.dumps({k: os.environ.get(k) for k in "
        "('RAY_enable_open_telemetry', 'RAY_USAGE_STATS_ENABLED')}))")


def environment_after_import(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_enable_open_telemetry", "RAY_USAGE_STATS_ENABLED")}
    out = subprocess.run([sys.executable, "-c", SHOW], env={**base, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_engine_starts_ray_on_its_opencensus_metrics_path() -> None:
    assert environment_after_import() == {"RAY_enable_open_telemetry": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def test_an_operators_choice_is_kept() -> None:
    seen = environment_after_import(RAY_enable_open_telemetry="1", RAY_USAGE_STATS_ENABLED="1")
    assert seen == {"RAY_enable_open_telemetry": "1", "RAY_USAGE_STATS_ENABLED": "1"}
