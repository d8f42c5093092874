"""The stage histogram every actor that measures a traced notification's time
(``policy.trace``) reports to, and how many samples each keeps for the bench."""

from __future__ import annotations

from ray.util import metrics

TRACED_KEPT = 20_000  # samples an actor keeps for tidings bench e2e (~10 MiB at most in the Recorder)
# from half a millisecond to a minute
BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]


def stage_histogram() -> metrics.Histogram:
    """``tidings_stage_seconds{stage}``; made inside the actor (Ray metrics need its worker)."""
    return metrics.Histogram("tidings_stage_seconds", description="Time a traced notification spent per stage",
                             boundaries=BOUNDARIES, tag_keys=("stage",))
