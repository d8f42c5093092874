"""The environment ``engine.raybox`` gives the Ray it starts (``RAY_ENV``): usage stats
off, Ray's OpenCensus metrics path with each worker's own series, unless the operator
chose otherwise (docs/design.md, "Metrics"). Checked in a fresh interpreter: the
defaults are set when the module is imported, before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from engine.raybox import RAY_ENV

SHOW = f"import json, os, engine.raybox; print(json.dumps({{k: os.environ.get(k) for k in {sorted(RAY_ENV)!r}}}))"


def environment_after_import(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in RAY_ENV}
    out = subprocess.run([sys.executable, "-c", SHOW], env={**base, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_engine_starts_ray_on_its_opencensus_metrics_path_with_every_workers_series() -> None:
    assert environment_after_import() == {"RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_open_telemetry": "0",
                                          "RAY_metric_cardinality_level": "legacy", "RAY_EXPORT_COUNTER_AS_GAUGE": "0"}


def test_an_operators_choice_is_kept() -> None:
    chosen = {"RAY_enable_open_telemetry": "1", "RAY_USAGE_STATS_ENABLED": "1", "RAY_metric_cardinality_level": "low",
              "RAY_EXPORT_COUNTER_AS_GAUGE": "1"}
    assert environment_after_import(**chosen) == chosen
