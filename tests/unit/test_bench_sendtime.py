"""The offline send-time evaluation (bench/sendtime.py) runs, is reproducible from
its seed, and finds habits that exist (its own smoke test)."""

from bench.sendtime import evaluate, main


def test_it_is_seeded_and_finds_habits_where_there_is_history():
    a = evaluate(people=2000, seed=3, events=20)
    assert a == evaluate(people=2000, seed=3, events=20)
    assert a["lift_vs_fixed"]["optimal"]["ci95"][0] > 0  # clearly better than one hour for all
    assert a["rates"]["optimal"] <= a["rates"]["oracle"]
    none = evaluate(people=2000, seed=3, events=0)
    assert none["without_history"] == 2000 and none["rates"]["optimal"] == none["rates"]["prior"]


def test_bad_options_answer_in_one_line(capsys):
    assert main(["--people", "0"]) == 2
    assert "--people must be positive" in capsys.readouterr().err
