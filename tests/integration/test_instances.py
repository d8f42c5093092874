"""Several engine instances on one deployment (issue 15 item 2): two ``tidings up``
processes on one Ray cluster, NATS, PostgreSQL and Redis (tests/integration/instances.py,
in its own process). One generation of actors serves both front doors; a preference
written through one is what the other reads; 20,000 notifications through both, the
instance that started the actors killed half-way: none lost, none sent twice, the
other carries on. One started again joins the same actors and leaves them running;
one with another shard count is refused; the last one's stop ends the actors."""

from __future__ import annotations

import pytest

from tests.integration.drivers import run_driver

pytestmark = pytest.mark.integration

N = 20_000


def test_two_instances_share_the_actors_and_survive_one_killed(nats_url, database_url, redis_url):
    out = run_driver("tests.integration.instances", nats_url, database_url, redis_url, N, timeout_s=900)
    print({k: v for k, v in out.items() if not k.endswith("_output")})
    assert out["first_ready"] and out["second_ready"], out
    # one generation of actors, whichever front door: one owner per user
    (generation, count), = out["generations_running"].items()
    assert count == 9, out  # recorder, 2 user shards, 2 webhook shards, 2 ingestors, scheduler, events
    assert out["pref_put"] == 200 and out["pref_seen_by_other"] == "Europe/Paris", out
    # another layout is refused, in one line, naming why
    assert out["odd_exit"] != 0 and "differ from the running deployment's" in out["odd_output"], out
    assert "Traceback" not in out["odd_output"], out
    # nothing lost, each once in PostgreSQL and at the receiver, though the first instance was killed
    assert out["killed_at_batch"] == N // 100 // 2 and "lost_batch" not in out, out
    assert out["rows"] == N and out["statuses"] == {"sent": N} and out["rows_per_notification_max"] == 1, out
    assert out["sink_notifications"] == N and out["sent_twice"] == 0 and out["sink_duplicates"] == 0, out
    assert out["survivor_ready"] == 200, out
    # one instance pulls the preference writes over NATS, the first; killed, the survivor takes the lead
    assert out["leaders"] == [True, False], out
    assert out["survivor_leads"] is True and out["nats_pref_seen_s"] is not None, out
    # started again, it joins the same actors; stopped, it leaves them to the other
    assert out["again_ready"] and out["generations_with_again"] == {generation: count}, out
    assert out["again_exit"] == 0 and out["generations_after_again"] == {generation: count}, out
    assert out["second_ready_after_again"] == 200, out
    # the last one's stop ends the generation
    assert out["second_exit"] == 0 and out["generations_after"] == {} and out["deployment_rows_after"] == 0, out
