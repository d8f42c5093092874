"""The offline channel-choice evaluation (bench/channelchoice.py) runs, is reproducible
from its seed, and orders the strategies as the model says it must."""

from __future__ import annotations

from bench.channelchoice import evaluate, main


def test_it_is_reproducible_and_the_oracle_is_the_ceiling():
    a, b = evaluate(people=400, rounds=4, seed=3), evaluate(people=400, rounds=4, seed=3)
    assert a == b
    assert a["fixed_channel"] == "sms"  # the population's best on average
    assert a["rates"]["oracle"] >= max(a["rates"]["fixed"], a["rates"]["best"])
    assert 0 < a["best_chose_the_oracles_channel"] <= 1


def test_bad_options_are_one_line_errors(capsys):
    assert main(["--people", "0"]) == 2
    assert "--people" in capsys.readouterr().err
