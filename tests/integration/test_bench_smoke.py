"""The load harness at a tiny size, so it cannot rot: ceilings, backlog and paced
runs, the JSON keys the capacity report relies on, and the plan made from it."""

from __future__ import annotations

import os

import pytest

from bench import capacity, e2e, plain, stages

pytestmark = pytest.mark.integration


async def test_harness_runs_end_to_end_and_plans(nats_url, database_url, ray_address, monkeypatch, tmp_path):
    monkeypatch.setenv("TIDINGS_NATS_URL", nats_url)
    monkeypatch.setenv("TIDINGS_DATABASE_URL", database_url)
    monkeypatch.setenv("TIDINGS_ENGINE_HOME", str(tmp_path))
    args = e2e.parse(["--n", "300", "--users", "100", "--channels", "webhook,email", "--shards", "1", "--paced", "0.5",
                      "--paced-n", "200", "--rate-base", "200",  # 2 s at 100/s: there is a run after its first second
                      "--timeout", "120", "--urgent", "40", "--urgent-n", "20", "--otlp", "0.1"])
    result = await e2e.harness(args)
    assert result["complete"], result
    for key in ("e2e_per_s", "p50_ms", "p99_ms", "slowest_stage", "slowest_stage_per_s", "ratio", "n", "cores",
                "versions"):
        assert result[key] is not None, key
    assert result["n"] == 300 and result["e2e_per_s"] > 0 and result["ratio"] > 0
    assert result["otlp_ratio"] == 0.1
    run = result["backlog_runs"][0]
    assert run["rows"] == 640  # 300 and the 20 urgent ones, on two channels each
    assert run["urgent"]["rows"] == 40 and run["urgent"]["sent_p99_ms"] is not None
    assert result["paced_runs"][0]["urgent"] is None  # only backlog runs carry the urgent stream
    # every actor kind timed its loop; with the collector tuned (engine.gc_young) no full collection
    assert {"Ingestor", "UserShard", "ChannelShard", "Recorder"} <= set(run["stalls"])
    assert all(row["lag_p99_ms"] >= 0 for row in run["stalls"].values())
    assert all(row["gc2_n"] == 0 for row in run["stalls"].values()), run["stalls"]
    # how full the batches ran: the bulk lane fetched the 300, each batch one UserShard call (k=1)
    b = run["batching"]
    assert b["fetched"] >= 300 and b["fetches"] >= 1 and 1 <= b["per_fetch"] <= 500, b
    assert b["shard_calls"] >= b["fetches"] and b["flushes"] >= 1 and b["rows_per_flush"] >= 1, b
    assert run["cpu_us_per_notification"] > 0 and result["paced_runs"][0]["cpu_us_per_notification"] > 0
    assert run["sinks"]["webhook"]["bad_signatures"] == 0
    assert run["sinks"]["otlp"]["received"] > 0  # --otlp: the actors' spans reached the receiver
    # the sinks got what was recorded sent, the backlog's (sent_rows) and the urgent stream's
    assert run["sinks"]["smtp"]["count"] + run["sinks"]["webhook"]["received"] == \
        run["sent_rows"] + run["urgent"]["sent_rows"]
    assert result["paced_run"]["rate"] > 0 and len(result["paced_runs"]) == 1
    assert {"ChannelShard", "UserShard", "Ray itself"} <= set(run["cpu_cores"])  # Ray's raylet, GCS, agents too
    # where the time went: every segment of a traced notification (a fifth are), and the charts
    for segment in ("fetch", "ingest", "decide", "to_channel", "provider", "commit", "ack"):
        assert run["stages"][segment]["n"] > 0 and run["stages"][segment]["p99_ms"] >= 0, (segment, run["stages"])
    # a paced run's latency per window of publish time: its rows add up, each window's p50 ≤ p99 ≤ max
    paced = result["paced_runs"][0]
    assert sum(w[1] for w in paced["timeline"]) == paced["rows"] and run["timeline"] == []
    assert all(w[2] <= w[3] <= w[4] for w in paced["timeline"])
    assert paced["timeline"][0][0] == 0.0 and paced["windows"]["n"] == len(paced["timeline"]) >= 5
    assert paced["windows"]["worst_p99_ms"] == max(w[3] for w in paced["timeline"])
    # and its figures without the first second: the rows of the windows from 1 s on
    later = paced["after_warmup"]
    assert 0 < later["rows"] == sum(w[1] for w in paced["timeline"] if w[0] >= 1.0) < paced["rows"]
    assert run["after_warmup"] is None
    charts = stages.charts(result, str(tmp_path / "e2e.json"))
    assert [os.path.basename(c) for c in charts] == ["e2e-latency.png", "e2e-stages.png", "e2e-timeline.png"]
    assert all(open(c, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for c in charts)
    plan = capacity.plan(result, capacity.parse_rate("5M/h"), 100)
    assert plan["rate_per_s"] == pytest.approx(5e6 / 3600)
    assert plan["saturates_first"] in {g["group"] for g in plan["groups"]}
    # the sized groups have an instance count; what runs beside the actors has none (one relay, per node)
    assert all((g["instances"] is None) == (g["group"] in capacity.BESIDE_GROUPS) for g in plan["groups"])
    assert all(g["instances"] >= 1 for g in plan["groups"] if g["instances"] is not None)
    # where the run's actors were (one local node here), and the projection made from the run
    assert result["ray"]["nodes"] and result["ray"]["remote_nodes"] == []
    assert {"Ingestor", "UserShard", "ChannelShard", "Recorder"} <= {k for per in result["ray"]["actors"].values()
                                                                     for k in per}
    projection = capacity.project(result, [16, 64])
    assert [row["cores"] for row in projection["projection"]] == [16, 64]
    assert projection["caps_per_s"]["PostgreSQL writes"] == pytest.approx(result["ceilings"]["copy_rows_per_s"] / 2, abs=1)  # two channels
    assert projection["first_cap"] in projection["caps_per_s"] and not projection["cpu_partial"]


@pytest.mark.parametrize("text, per_s", [("5000", 5000), ("5M/h", 5e6 / 3600), ("300k/min", 5000), ("12/s", 12)])
def test_rates(text, per_s):
    assert capacity.parse_rate(text) == pytest.approx(per_s)


def test_plan_uses_the_highest_utilisation_that_meets_the_target():
    run = {"shards": 2, "e2e_per_s": 1000, "cpu_cores": {"ChannelShard": 0.8, "UserShard": 0.2}}
    curve = [{"rate": 200, "p99_ms": 40.0, "stages": {"fetch": {"tail_ms": 3.0}, "to_channel": {"tail_ms": 30.0},
                                                       "ack": {"p99_ms": 5.0}}},
             {"rate": 400, "p99_ms": 90.0}, {"rate": 600, "p99_ms": 300.0}]
    result = {"backlog_runs": [run], "paced_runs": curve, "paced_run": curve[-1], "cores": 2}
    p = capacity.plan(result, 2000, 100)
    assert p["utilisation"] == 0.4 and p["p99_met"]
    # ChannelShard: 0.8 cores per 1,000/s -> 2,000/s at 40% needs 4 cores
    assert {g["group"]: g["cores"] for g in p["groups"]}["ChannelShard"] == 4.0
    assert p["saturates_first"] == "ChannelShard"
    strict = capacity.plan(result, 2000, 10)
    assert not strict["p99_met"] and strict["utilisation"] == 0.2
    assert strict["floor"] == [("to_channel", 30.0), ("fetch", 3.0)]  # what the slowest 1% waited on


async def test_fanout_reaches_everyone_once_per_broadcast(nats_url, database_url, ray_address, monkeypatch, tmp_path):
    """`bench fanout` at a small size: both broadcasts (states assembled, then
    stored) record a row per user and send each opted-in address exactly once;
    the dry run after them decides everyone and sends nothing."""
    from bench import fanout
    monkeypatch.setenv("TIDINGS_NATS_URL", nats_url)
    monkeypatch.setenv("TIDINGS_DATABASE_URL", database_url)
    monkeypatch.setenv("TIDINGS_ENGINE_HOME", str(tmp_path))
    r = await fanout.run(fanout.parser().parse_args(["--users", "3000", "--timeout", "120"]))
    assert fanout.complete(r), r
    assert [x["rows"] for x in r["rounds"]] == [3000, 3000]
    assert r["rounds"][0]["states_stored"] == 3000  # the first broadcast wrote back what it assembled
    assert 0 < r["expected_sent"] < 3000 and r["sink"]["recipients"] == 2 * r["expected_sent"]
    # then the same broadcast as a dry run: everyone decided alike, nothing sent or recorded
    assert r["dry_run"]["recipients"] == 3000 and r["dry_run"]["would_send"] == r["expected_sent"]
    assert r["dry_run"]["rows_added"] == 0 and r["dry_run"]["sink_added"] == 0


async def test_fanout_to_a_topic_reaches_its_subscribers_only(nats_url, database_url, ray_address, monkeypatch,
                                                               tmp_path):
    """`bench fanout --audience topic`: half the population subscribed, one
    broadcast: a row for each subscriber and none for anyone else."""
    from bench import fanout
    monkeypatch.setenv("TIDINGS_NATS_URL", nats_url)
    monkeypatch.setenv("TIDINGS_DATABASE_URL", database_url)
    monkeypatch.setenv("TIDINGS_ENGINE_HOME", str(tmp_path))
    r = await fanout.run(fanout.parser().parse_args(["--users", "2000", "--audience", "topic", "--subscribers",
                                                     "1000", "--broadcasts", "1", "--timeout", "120"]))
    assert fanout.complete(r), r
    assert r["recipients"] == 1000 and r["rounds"][0]["rows"] == 1000
    assert r["dry_run"]["recipients"] == 1000


async def test_every_channel_goes_through_the_engine_to_its_server(nats_url, database_url, ray_address,
                                                                   monkeypatch, tmp_path):
    """`bench channels` at a tiny size: every provider type, through a running
    engine, to the server that speaks its API; the server counts exactly what
    the engine recorded as sent, and the ceiling's bare client saw no errors."""
    from bench import channels
    monkeypatch.setenv("TIDINGS_NATS_URL", nats_url)
    monkeypatch.setenv("TIDINGS_DATABASE_URL", database_url)
    monkeypatch.setenv("TIDINGS_ENGINE_HOME", str(tmp_path))
    args = channels.parser().parse_args(["--n", "100", "--users", "40", "--warmup", "10", "--concurrency", "8",
                                         "--timeout", "60", "--deadline", "900"])
    out = await channels.run(args)
    assert not out["dropped"], out["dropped"]
    assert set(out["results"]) == set(channels.CASES)
    for name, r in out["results"].items():
        assert channels.complete(r, 100), (name, r)
        assert r["engine"]["statuses"] == {"sent/ok": 100}, (name, r["engine"]["statuses"])
        assert r["ratio"] > 0, name


def test_hop_times_an_actor_call(ray_address):
    """`bench hop`: the floor under every hop, measured on the Ray that runs."""
    from bench import hop
    rows = hop.measure(5, [100], gap_s=0)
    assert [r["way"] for r in rows] == ["ray", "link"]  # the link's row: it connected, or run() raised
    for row in rows:
        assert row["size"] == 100 and row["calls"] == 5
        assert 0 < row["one_way_p50_ms"] <= row["one_way_max_ms"]
        assert row["round_trip_p50_ms"] <= row["round_trip_max_ms"]


def test_local_cluster_starts_and_stops_clean(tmp_path):
    """`python -m bench.cluster`: a head and a worker node, the address printed and
    written, and SIGTERM stops every node and removes the cluster's folder."""
    import signal
    import subprocess
    import sys
    import time

    addr = tmp_path / "addr"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cluster", "--workers", "1", "--cpus", "1",
                             "--address-file", str(addr)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 120
        while not addr.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert addr.exists(), proc.poll()
        address = addr.read_text().strip()
        assert address.count(":") == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert f"RAY_ADDRESS={address}" in out and out.rstrip().endswith("stopped")
    folder = next(line for line in out.splitlines() if "files in" in line).split("files in ")[1].split(";")[0]
    assert not os.path.exists(folder) and not addr.exists()


async def test_cluster_cpu_adds_each_hosts_sampler(ray_address):
    """`bench.cpu.ClusterCpu`: on a cluster over several hosts an actor samples each
    other host. Here the one node stands in for "another host": its sampler's
    figures are added to this host's (so every group seen is counted twice) and
    the sampler's own process is not counted as the harness's driver."""
    import asyncio

    import ray

    from bench.cpu import ClusterCpu, ray_session

    session = ray_session()
    assert session and session.startswith("session_")
    alone = ClusterCpu(session)
    alone.start()
    await asyncio.sleep(1.5)
    local = await alone.stop()
    both = ClusterCpu(session, [ray.get_runtime_context().get_node_id()])
    both.start()
    await asyncio.sleep(1.5)
    merged = await both.stop()
    assert alone.complete and both.complete and not alone.remote
    assert "driver" in local and {"nats-server", "postgres"} & set(merged)
    gone = ClusterCpu(session, ["00" * 28])  # a node that is not there: its figures are missing, and it says so
    gone.start()
    await asyncio.sleep(0.5)
    await gone.stop()
    assert not gone.complete


async def test_the_plain_pipeline_drains_a_backlog_and_a_paced_stream(nats_url, database_url):
    """bench/plain.py, the yardstick: every notification a preference lets through is
    POSTed once, signed, and recorded; the figures come from e2e's own SQL."""
    out = await plain.run(plain.parse(["--n", "200", "--paced-n", "50", "--rate", "100", "--batch", "100",
                                       "--inflight", "2", "--timeout", "120", "--nats-url", nats_url,
                                       "--database-url", database_url]))
    backlog, paced = out["backlog"], out["paced"]
    # a tenth of the users opted out of webhooks: 180 of the 200 and 45 of the 50 were POSTed
    assert (backlog["rows"], backlog["sent_rows"], paced["rows"], paced["sent_rows"]) == (200, 180, 50, 45)
    assert backlog["per_s"] > 0 and paced["publisher_exit"] == 0
    assert paced["p99_ms"] >= paced["p50_ms"] > 0 and paced["sent_p99_ms"] >= paced["sent_p50_ms"] > 0
    assert out["sink"]["received"] == 225 and out["sink"]["duplicates"] == 0
    assert out["sink"]["bad_signatures"] == 0
