"""Ray bootstrap: a local Ray (with dashboard) or a cluster via ``RAY_ADDRESS``."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
from collections.abc import Iterator

from infra.config import RayConfig

# What every process of the engine's Ray runs with, unless the operator set it: each
# reads it at its start, and every node of a cluster needs the same values
# (configs/deploy sets them; docs/design.md, "Metrics").
RAY_ENV = {
    # no internet on our machines: Ray must not try to report usage
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray's OpenCensus metrics path, not its OpenTelemetry one (its default): there each
    # node's dashboard agent turns every histogram's bucket counts back into one
    # record() per observation, in Python (record_histogram_aggregated_batch), so its
    # CPU grows with the notifications delivered: 0.17-0.21 cores while a backlog
    # drained at ~2,200/s on the 2-core bench machine. The OpenCensus path passes the
    # buckets through.
    "RAY_enable_open_telemetry": "0",
    # ... exporting the series as the OpenTelemetry path does: each worker's own
    # (WorkerId kept; the OpenCensus path's default sums counters and gauges per node,
    # so an actor that stops takes its share out of a counter), and no deprecated
    # gauge beside a counter whose name lacks _total (tests/integration/test_metrics.py)
    "RAY_metric_cardinality_level": "legacy",
    "RAY_EXPORT_COUNTER_AS_GAUGE": "0",
}


def ray_environment() -> None:
    """``RAY_ENV`` into this process's environment where unset: for the Ray it starts
    (its raylet, agents and workers inherit it) and the metrics it makes."""
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)


ray_environment()

import ray  # noqa: E402 - after RAY_ENV, though Ray reads it only in the processes it starts

log = logging.getLogger(__name__)

# Applies to every worker of the job (local or on a cluster).
RUNTIME_ENV = {"worker_process_setup_hook": "actors.worker.setup"}


class _ExpectedAuth(logging.Filter):
    """A local Ray runs with Ray's token authentication: Ray turns it on for a
    new local cluster and warns at every start that it did. That is the setting
    we want and the README says how to use it (the token is ``~/.ray/auth_token``,
    made on the first start; the dashboard asks for it; ``RAY_AUTH_MODE=disabled``
    turns it off), so the warning goes. Any other warning of Ray's stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_ExpectedAuth())


def init(cfg: RayConfig) -> dict:
    """Start or join Ray once per process; returns where the dashboard is."""
    if not ray.is_initialized():
        common = dict(namespace=cfg.namespace, logging_level=logging.WARNING, log_to_driver=True,
                      configure_logging=True, runtime_env=RUNTIME_ENV)
        with keeping_sigterm():
            if cfg.address:
                ray.init(address=cfg.address, **common)
            else:
                own_token()
                ray.init(include_dashboard=cfg.dashboard, dashboard_host="127.0.0.1",
                         dashboard_port=cfg.dashboard_port, num_cpus=cfg.num_cpus,
                         _metrics_export_port=cfg.metrics_port or None, **common)
        private_token()
    ctx = ray.get_runtime_context()
    return {"dashboard": dashboard_url(), "gcs_address": ctx.gcs_address, "metrics_port": metrics_port()}


TOKEN_PATH = "~/.ray/auth_token"  # where Ray keeps its token unless RAY_AUTH_TOKEN(_PATH) says otherwise


def own_token() -> None:
    """Before a local Ray starts with token authentication, make its token
    ourselves, readable by its owner only. Ray would write it readable by every
    local user (whoever holds it can run code on the cluster), and it would stay
    so until we could change it."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or \
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = os.path.expanduser(TOKEN_PATH)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:  # an unwritable home: Ray makes its own, or says why it cannot
        log.warning("could not write the Ray token at %s: %s", path, e)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what Ray itself makes: 256 random bits in hex


def private_token() -> None:
    """A token Ray wrote before (an older start, ``ray start``) readable by
    others: only its owner may read it."""
    path = os.path.expanduser(TOKEN_PATH)
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:  # no token (auth off), or not ours to change
        pass


@contextlib.contextmanager
def keeping_sigterm() -> Iterator[None]:
    """``ray.init`` replaces the driver's SIGTERM handler with ``sys.exit``; put
    back the one we had (the CLI's turns SIGTERM into its clean stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Ray sets no handler from other threads
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def metrics_port() -> int | None:
    """The port this node's metrics agent serves the actors' series on (Prometheus's text format)."""
    try:
        node_id = ray.get_runtime_context().get_node_id()
        return next(int(n["MetricsExportPort"]) for n in ray.nodes() if n["NodeID"] == node_id)
    except Exception:  # noqa: BLE001 - informative only
        return None


def dashboard_url() -> str | None:
    try:  # Ray has no public getter once it runs (ray.init's answer has it; the caller may not have it)
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:  # noqa: BLE001 - the dashboard URL is informative only
        return None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url or None
