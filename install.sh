#!/usr/bin/env bash
# Creates .venv and installs Tidings with the given extras. Used by run.sh and test.sh.
# Needs only Python >= 3.11; on Debian/Ubuntu without the venv module it installs
# python3-venv with apt-get (as root), and Debian's redis-server for the embedded
# Redis of the HTTP API's rate limits (the system service is not started).
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "Tidings needs Python 3.11 or newer ($py is $("$py" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$py" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            "$py" -m venv .venv
        else
            echo "python venv module missing: install python3-venv" >&2
            exit 1
        fi
    fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
# Redis for the HTTP API's rate limits, embedded like NATS and PostgreSQL (engine/embedded.py).
# Installed without starting Debian's system service (a policy-rc.d that says no, meanwhile).
redis_hint="redis-server not found (apt-get install redis-server): set TIDINGS_REDIS_URL to a running Redis"
if ! command -v redis-server >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        no_start=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && no_start=1
        fi
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }; then
            echo "$redis_hint" >&2
        fi
        if [ -n "$no_start" ]; then rm -f /usr/sbin/policy-rc.d; fi
    else
        echo "$redis_hint" >&2
    fi
fi
# Debian's Chromium and ChromeDriver for the browser test (tests/browser): only with
# the test extras, only where apt-get runs as root; elsewhere that test is skipped
# (and fails under CI=true, where it must run).
if [[ ",$extras," == *",test,"* ]] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
            echo "chromium not installed (apt-get install chromium chromium-driver): the browser test will be skipped" >&2
        fi
    else
        echo "chromium not found (apt-get install chromium chromium-driver): the browser test will be skipped" >&2
    fi
fi
# iproute2's ss, which reads a listener's backlog as the kernel holds it (tests/integration/
# test_bounds.py, test_sink_listen.py): likewise with the test extras; skipped without it.
if [[ ",$extras," == *",test,"* ]] && ! command -v ss >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }; then
            echo "iproute2 not installed: the listen-backlog tests will be skipped" >&2
        fi
    else
        echo "ss not found (apt-get install iproute2): the listen-backlog tests will be skipped" >&2
    fi
fi
# Debian's Mail::DKIM, the independent verifier of the DKIM test (tests/tools/dkim_verify.pl):
# likewise only with the test extras and apt-get as root; skipped elsewhere, failing under CI=true.
if [[ ",$extras," == *",test,"* ]] && ! perl -MMail::DKIM::Verifier -e 1 2>/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmail-dkim-perl >/dev/null; }; then
            echo "libmail-dkim-perl not installed: the DKIM verification test will be skipped" >&2
        fi
    else
        echo "Mail::DKIM not found (apt-get install libmail-dkim-perl): the DKIM verification test will be skipped" >&2
    fi
fi
