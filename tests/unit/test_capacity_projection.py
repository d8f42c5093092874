"""`tidings bench capacity --cores …` (bench/capacity.py ``project``): the model
is pure arithmetic on a harness result, checked here on made-up results whose
answers can be worked out by hand, and for properties over many."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, strategies as st

from bench import capacity

# 1,000 notifications/s used 0.5 + 0.2 + 0.2 + 0.1 = 1 core of the engine's actors:
# 1 ms a notification, 1,000/s a core. Recorder 0.1 ms: 10,000/s. NATS 0.05 ms: 20,000/s.
# PostgreSQL: COPY 30,000 rows/s over one channel: 30,000/s with one writer.
# Beside the actors: the EventSender 0.03 and Ray's own processes 0.02 core, 0.05 ms.
RESULT = {
    "cores": 2, "channels": ["webhook"],
    "backlog_runs": [
        {"shards": 1, "e2e_per_s": 600, "p99_ms": 9000.0, "cpu_cores": {"ChannelShard": 0.9}},
        {"shards": 2, "e2e_per_s": 1000, "p99_ms": 8000.0,
         "cpu_cores": {"ChannelShard": 0.5, "UserShard": 0.2, "Ingestor": 0.2, "Recorder": 0.1,
                       "nats-server": 0.05, "postgres": 0.3, "webhook sink": 0.4, "driver": 0.1,
                       "EventSender": 0.03, "Ray itself": 0.02}},
    ],
    "ceilings": {"copy_rows_per_s": 30_000},
}


def by_cores(p: dict) -> dict[int, dict]:
    return {row["cores"]: row for row in p["projection"]}


def test_costs_come_from_the_best_backlog_run_and_leave_out_the_harness():
    cost = capacity.costs(RESULT)
    assert cost["ChannelShard"] == pytest.approx(0.5e-3)
    assert "webhook sink" not in cost and "driver" not in cost  # providers and the load generator are not the engine
    assert cost["EventSender"] == pytest.approx(0.03e-3) and cost["Ray itself"] == pytest.approx(0.02e-3)
    older = {**RESULT, "backlog_runs": [{**RESULT["backlog_runs"][1], "cpu_cores": {"ChannelShard": 0.5}}]}
    assert capacity.costs(older)["Ray itself"] == 0.0  # a result from before Ray's processes were sampled


def test_the_plan_costs_what_runs_beside_the_actors():
    p = capacity.plan(RESULT, 2000, 100_000.0)  # no paced runs: planned at 60% utilisation
    groups = {r["group"]: r for r in p["groups"]}
    assert groups["EventSender"]["core_ms_per_1k"] == 30.0 and groups["Ray itself"]["cores"] == pytest.approx(0.07, abs=0.01)
    assert groups["EventSender"]["instances"] is None and groups["ChannelShard"]["instances"] == 2  # one relay, not sized
    older = {**RESULT, "backlog_runs": [{**RESULT["backlog_runs"][1], "cpu_cores": {"ChannelShard": 0.5}}]}
    assert not {r["group"]: r for r in capacity.plan(older, 2000, 100_000.0)["groups"]}["Ray itself"]["measured"]
    assert p["beside_cores"] == pytest.approx(0.17, abs=0.01)  # 2,000/s x 0.05 ms / 0.6
    assert p["total_cores"] == pytest.approx(sum(r["cores"] for r in p["groups"]), abs=0.01)


def test_the_cores_bind_until_the_first_fixed_cap():
    p = capacity.project(RESULT, [4, 16, 64])
    rows = by_cores(p)
    assert p["per_core_per_s"] == 1000 and p["engine_core_ms_per_1k"] == 1000.0
    assert p["caps_per_s"] == {"Recorder": 10_000, "PostgreSQL writes": 30_000, "NATS stream": 20_000,
                               "EventSender": 33_333}  # one relay: 0.03 ms a notification
    assert p["first_cap"] == "Recorder" and p["cores_at_first_cap"] == 10.0
    assert rows[4]["bound_by"] == "cores" and rows[4]["ceiling_per_s"] == 4000
    assert rows[16]["bound_by"] == "Recorder" and rows[16]["ceiling_per_s"] == 10_000
    assert rows[64]["max_per_s"] == 64_000 and rows[64]["ceiling_per_s"] == 10_000
    # the cores divided by cost: ChannelShard half of them, an actor a core
    assert rows[16]["kinds"]["ChannelShard"] == {"cores": 8.0, "actors": 8}
    assert rows[16]["kinds"]["Recorder"] == {"cores": 1.6, "actors": 2}
    # what running 64 cores full would take: 6.4 Recorder cores -> 7; NATS 3.2 cores -> 4 streams
    assert rows[64]["recorders_needed"] == 7 and rows[64]["nats_streams_needed"] == 4
    assert rows[64]["nats_cores"] == 3.2 and rows[64]["postgres_cores"] == 19.2
    assert rows[64]["beside_cores"] == 3.2  # EventSender and Ray: 0.05 ms at 64,000/s, not in the actors' cores
    assert p["saturates_first_actor"] == "ChannelShard"


def test_postgres_writers_with_and_without_partitions():
    # 64,000/s against 30,000/s a writer: 1 + 0.5 (w - 1) >= 2.13 -> 4 writers; at 0.9: 3
    rows = by_cores(capacity.project(RESULT, [64]))
    assert rows[64]["pg_writers_needed"] == 4 and rows[64]["pg_writers_needed_partitioned"] == 3
    assert capacity.writers_for(30_000, 30_000, 0.5) == 1
    assert capacity.writers_for(30_001, 30_000, 0.0) is None  # writers that add nothing never get there
    assert capacity.writers_for(1e9, 1, 1e-300) is None


def test_postgres_binds_when_it_is_the_lowest_cap():
    slow_db = {**RESULT, "ceilings": {"copy_rows_per_s": 10_000}, "channels": ["webhook", "email"]}
    p = capacity.project(slow_db, [64])
    assert p["caps_per_s"]["PostgreSQL writes"] == 5000  # two rows a notification
    assert p["first_cap"] == "PostgreSQL writes" and by_cores(p)[64]["bound_by"] == "PostgreSQL writes"


def test_utilisation_scales_the_planned_rate_not_the_ceiling():
    rows = by_cores(capacity.project(RESULT, [4], utilisation=0.25))
    assert rows[4]["ceiling_per_s"] == 4000 and rows[4]["planned_per_s"] == 1000


def test_a_result_without_ceilings_or_services_has_no_such_caps():
    bare = {"cores": 2, "channels": ["webhook"],
            "backlog_runs": [{"shards": 2, "e2e_per_s": 1000, "cpu_cores": {"ChannelShard": 1.0}}]}
    p = capacity.project(bare, [8])
    assert p["caps_per_s"] == {"Recorder": None, "PostgreSQL writes": None, "NATS stream": None, "EventSender": None}
    row = by_cores(p)[8]
    assert row["bound_by"] == "cores" and row["pg_writers_needed"] is None and p["first_cap"] is None


def test_a_run_over_other_hosts_is_flagged_partial():
    assert not capacity.project(RESULT, [2])["cpu_partial"]
    assert capacity.project({**RESULT, "ray": {"remote_nodes": ["w2"]}}, [2])["cpu_partial"]  # before ClusterCpu
    sampled = {"remote_nodes": ["w2"], "cpu_sampled": "every host"}
    assert not capacity.project({**RESULT, "ray": sampled}, [2])["cpu_partial"]
    missed = {"remote_nodes": ["w2"], "cpu_sampled": "not every host: cpu_cores is partial"}
    assert capacity.project({**RESULT, "ray": missed}, [2])["cpu_partial"]


@given(cores=st.lists(st.integers(1, 4096), min_size=1, max_size=6),
       costs=st.fixed_dictionaries({g: st.floats(0.01, 2.0) for g in capacity.ENGINE_GROUPS + capacity.SERVICE_GROUPS}),
       rate=st.integers(100, 100_000), copy=st.integers(1000, 500_000),
       table=st.floats(0, 1), partitioned=st.floats(0, 1))
def test_projection_properties(cores, costs, rate, copy, table, partitioned):
    result = {"cores": 2, "channels": ["webhook"], "ceilings": {"copy_rows_per_s": copy},
              "backlog_runs": [{"shards": 2, "e2e_per_s": rate, "cpu_cores": costs}]}
    p = capacity.project(result, cores, 0.5, table, partitioned)
    for row in p["projection"]:
        # never more than the cores allow nor than any fixed cap
        assert row["ceiling_per_s"] <= row["max_per_s"] + 1
        assert all(row["ceiling_per_s"] <= v + 1 for v in p["caps_per_s"].values() if v)
        # the kinds' cores add up to the cores given; each kind has at least its cores in actors
        assert sum(k["cores"] for k in row["kinds"].values()) == pytest.approx(row["cores"], abs=0.05)
        assert all(k["actors"] >= max(1, math.floor(k["cores"])) for k in row["kinds"].values())
        # partitioning never needs more writers than one table
        if row["pg_writers_needed"] and row["pg_writers_needed_partitioned"] and partitioned >= table:
            assert row["pg_writers_needed_partitioned"] <= row["pg_writers_needed"]
    # more cores never allow less
    ordered = sorted(p["projection"], key=lambda r: r["cores"])
    assert all(a["ceiling_per_s"] <= b["ceiling_per_s"] for a, b in zip(ordered, ordered[1:], strict=False))
    json.dumps(p)  # --json writes it as it is


@given(rate=st.floats(1, 1e7), one=st.floats(100, 1e6), efficiency=st.floats(0.01, 1))
def test_writers_for_is_the_fewest_that_reach_the_rate(rate, one, efficiency):
    w = capacity.writers_for(rate, one, efficiency)
    if w is None:  # only when it would take more writers than any deployment has
        assert (rate / one - 1) / efficiency > capacity.MAX_WRITERS
        return
    assert capacity.write_cap(one, w, efficiency) >= rate * (1 - 1e-9)
    assert w == 1 or capacity.write_cap(one, w - 1, efficiency) < rate


def test_cli_projects_and_writes_json(tmp_path, capsys):
    src, out = tmp_path / "e2e.json", tmp_path / "plan.json"
    src.write_text(json.dumps(RESULT))
    assert capacity.main(["--cores", "16,64", "--results", str(src), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert "rate_per_s" not in saved  # no --rate: the projection alone
    assert [r["cores"] for r in saved["capacity"]["projection"]] == [16, 64]
    assert "Recorder" in capsys.readouterr().out
    assert capacity.main(["--rate", "5000", "--cores", "16", "--results", str(src), "--json", str(out)]) == 0
    both = json.loads(out.read_text())
    assert both["rate_per_s"] == 5000 and both["capacity"]["projection"][0]["cores"] == 16


@pytest.mark.parametrize("argv", [["--cores", "0"], ["--cores", "a,b"], ["--cores", "16", "--pg-writer-efficiency", "2"],
                                  []])
def test_cli_refuses_bad_options(argv):
    with pytest.raises(SystemExit) as e:
        capacity.main(argv)
    assert e.value.code == 2


def test_the_projection_says_when_no_measured_load_met_the_p99(tmp_path, capsys):
    src, out = tmp_path / "e2e.json", tmp_path / "plan.json"
    paced = [{"rate": 250, "p99_ms": 400.0}, {"rate": 500, "p99_ms": 900.0}]
    src.write_text(json.dumps({**RESULT, "paced_runs": paced}))
    assert capacity.main(["--cores", "16", "--p99", "100", "--results", str(src), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["capacity"]["p99_met"] is False
    assert "no measured load met the p99 target" in capsys.readouterr().out
    assert capacity.main(["--cores", "16", "--p99", "500", "--results", str(src), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["capacity"]["p99_met"] is True
