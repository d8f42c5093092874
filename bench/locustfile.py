"""Locust load profile for the Tidings HTTP front door (engine/http.py).

A mix of the calls a product makes: submit one notification (weight 6), submit
a batch of 50 (weight 2), read a user (weight 3), rewrite a user's profile
toggling an opt-out (weight 1); each task is tagged (submit, batch, read,
write) so a run can take a part of the mix (``locust --tags submit``,
``bench.locust_run --tags submit``). User ids come from the fixed population
``lt-000000`` … that ``bench.locust_run`` seeds before the run (reads of an
unseeded user answer 404 and count as failures).

By hand, against an engine started with ``tidings demo --count 0 --serve``:

    python -m bench.locust_run --host http://127.0.0.1:8080 --users 20 --run-time 30s   # seeds, runs, prints

    # or plain locust, after seeding (web UI on :8089 without --headless):
    TIDINGS_LOCUST_CHANNELS=email,webhook locust -f bench/locustfile.py \\
        --host http://127.0.0.1:8080 --headless -u 20 -r 20 -t 30s

Environment:
    TIDINGS_LOCUST_USERS         population size (default 10000)
    TIDINGS_LOCUST_CHANNELS      comma-separated channels per notification (default "webhook";
                                 "email,webhook" when the target engine has email)
    TIDINGS_LOCUST_RPS_PER_USER  when set, each simulated user is paced to this many
                                 requests/s; otherwise closed loop, no wait
    TIDINGS_LOCUST_ARRIVALS      how paced users space their requests: "poisson" (default) or
                                 "fixed" (Locust's constant_throughput)

Why Poisson: with ``constant_throughput`` every user keeps a fixed period, and users
that a stall held up all resume at its end and stay in step, so the server sees
bursts of up to ``--users`` requests at once; independent clients do not do that
(``bench/arrivals.py``).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable

from locust import constant, constant_throughput, tag, task
from locust.contrib.fasthttp import FastHttpUser

from bench.arrivals import poisson_arrivals

POPULATION = int(os.environ.get("TIDINGS_LOCUST_USERS", "10000"))
CHANNELS = [c.strip() for c in os.environ.get("TIDINGS_LOCUST_CHANNELS", "webhook").split(",") if c.strip()]
RPS_PER_USER = os.environ.get("TIDINGS_LOCUST_RPS_PER_USER")
ARRIVALS = os.environ.get("TIDINGS_LOCUST_ARRIVALS", "poisson")
# the engine's API key (bench.locust_run passes the admin key of the engine it drives)
HEADERS = {"Authorization": f"Bearer {os.environ['TIDINGS_API_KEY']}"} if os.environ.get("TIDINGS_API_KEY") else {}
BATCH = 50
OPT_OUT = "email:marketing"
_serial = itertools.count()


def user_id(n: int) -> str:
    return f"lt-{n:06d}"


def email_of(n: int) -> str:
    return f"lt-{n}@bench.test"


def notification(n: int) -> dict:
    i = next(_serial)
    return {"user_id": user_id(n), "category": "job_alerts", "channels": CHANNELS,
            "content": {"subject": f"{i % 50 + 1} new jobs", "text": f"load test notification {i}"}}


def payload(resp) -> dict:
    try:
        data = resp.json()
    except Exception:  # noqa: BLE001 - a body that is not JSON counts as no body
        return {}
    return data if isinstance(data, dict) else {}


def fail(resp, expected: int) -> None:
    body = (resp.text or "")[:200]
    resp.failure(f"expected {expected}, got {resp.status_code}: {body}")


def pacing(rps: str | None, arrivals: str) -> Callable[[object], float]:
    if not rps:
        return constant(0)
    if arrivals == "fixed":
        return constant_throughput(float(rps))
    if arrivals == "poisson":
        return poisson_arrivals(float(rps))
    raise ValueError(f"TIDINGS_LOCUST_ARRIVALS must be poisson or fixed, got {arrivals!r}")


class TidingsUser(FastHttpUser):
    wait_time = pacing(RPS_PER_USER, ARRIVALS)

    def on_start(self) -> None:
        self.opted_out: dict[int, bool] = {}

    def someone(self) -> int:
        return random.randrange(POPULATION)

    @task(6)
    @tag("submit")
    def submit_one(self) -> None:
        with self.client.post("/v1/notifications", json=notification(self.someone()),
                              headers=HEADERS, catch_response=True) as resp:
            if resp.status_code != 202:
                fail(resp, 202)
            elif "id" not in payload(resp):
                resp.failure(f"no id in answer: {(resp.text or '')[:200]}")

    @task(2)
    @tag("batch")
    def submit_batch(self) -> None:
        batch = [notification(self.someone()) for _ in range(BATCH)]
        with self.client.post("/v1/notifications", json=batch, name=f"/v1/notifications [batch {BATCH}]",
                              headers=HEADERS, catch_response=True) as resp:
            if resp.status_code != 202:
                fail(resp, 202)
            elif len(payload(resp).get("notifications", [])) != BATCH:
                resp.failure(f"expected {BATCH} ids: {(resp.text or '')[:200]}")

    @task(3)
    @tag("read")
    def get_user(self) -> None:
        n = self.someone()
        with self.client.get(f"/v1/users/{user_id(n)}", name="/v1/users/[id]", headers=HEADERS, catch_response=True) as resp:
            if resp.status_code != 200:
                fail(resp, 200)
            elif payload(resp).get("user_id") != user_id(n):
                resp.failure(f"wrong user: {(resp.text or '')[:200]}")

    @task(1)
    @tag("write")
    def put_user(self) -> None:
        n = self.someone()
        out = not self.opted_out.get(n, False)
        self.opted_out[n] = out
        profile = {"addresses": {"email": email_of(n)}, "opt_outs": [OPT_OUT] if out else []}
        with self.client.put(f"/v1/users/{user_id(n)}", json=profile, name="/v1/users/[id] PUT",
                             headers=HEADERS, catch_response=True) as resp:
            if resp.status_code != 200:
                fail(resp, 200)
            elif (payload(resp).get("opt_outs") or []) != profile["opt_outs"]:
                resp.failure(f"opt-out not applied: {(resp.text or '')[:200]}")
