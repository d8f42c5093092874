#!/usr/bin/env bash
# README command 1: install everything, start the engine (embedded NATS,
# PostgreSQL and Ray unless configured otherwise) and run the demo.
# Extra arguments go to `tidings demo --serve` (e.g. --count 5000 --users 1000).
set -euo pipefail
cd "$(dirname "$0")"
./install.sh bench
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/tidings demo --serve "$@"
