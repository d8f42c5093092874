"""Ray bootstrap: a local Ray (with dashboard) or a cluster via ``RAY_ADDRESS``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from infra.config import RayConfig

# No internet on our machines: Ray must not try to report usage.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

log = logging.getLogger(__name__)

# Applies to every worker of the job (local or on a cluster).
RUNTIME_ENV = {"worker_process_setup_hook": "actors.worker.setup"}


def init(cfg: RayConfig) -> dict:
    """Start or join Ray once per process; returns where the dashboard is."""
    if not ray.is_initialized():
        common = dict(namespace=cfg.namespace, logging_level=logging.WARNING, log_to_driver=True,
                      configure_logging=True, runtime_env=RUNTIME_ENV)
        with keeping_sigterm():
            if cfg.address:
                ray.init(address=cfg.address, **common)
            else:
                ray.init(include_dashboard=cfg.dashboard, dashboard_host="127.0.0.1",
                         dashboard_port=cfg.dashboard_port, num_cpus=cfg.num_cpus, **common)
    ctx = ray.get_runtime_context()
    return {"dashboard": dashboard_url(), "gcs_address": ctx.gcs_address}


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


def dashboard_url() -> str | None:
    try:
        info = ray.get_runtime_context()
        url = getattr(info, "dashboard_url", None) or ray.worker.get_dashboard_url()
    except Exception:  # noqa: BLE001 - the dashboard URL is informative only
        return None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url or None
