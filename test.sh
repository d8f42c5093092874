#!/usr/bin/env bash
# README command 2: install everything with the test extras and run the whole
# suite (unit + integration against real NATS, PostgreSQL, Redis and Ray; embedded
# ones unless TIDINGS_TEST_NATS_URL / TIDINGS_TEST_DATABASE_URL / TIDINGS_TEST_REDIS_URL
# are set).
set -euo pipefail
cd "$(dirname "$0")"
./install.sh test,bench
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest "$@"
