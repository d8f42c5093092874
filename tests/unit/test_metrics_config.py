"""The Grafana dashboard and the Prometheus alert rules in configs/ name only
series the engine exports, with labels those series have, in PromQL that
parses; and metric label values stay bounded whatever the input."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
import pytest
import yaml
from hypothesis import given, strategies as st
from prometheus_client import REGISTRY

import engine.http.app  # noqa: F401 - registers every series of the HTTP process
from actors.metrics import SERIES, Meter, committed, exported
from policy.labels import CALL_RESULTS, CODES, FAMILIES, NONE, OTHER, STATUSES, Bounds, family
from policy.types import Attempt, Outcome

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def http_series() -> set[str]:
    """Every sample name of the HTTP process's registry, observed or not."""
    out = set()
    for fam in REGISTRY.collect():
        if fam.type == "counter":
            out.add(f"{fam.name}_total")
        elif fam.type == "histogram":
            out |= {f"{fam.name}{end}" for end in ("_bucket", "_sum", "_count")}
        else:
            out.add(fam.name)
    return {n for n in out if n.startswith("tidings_")}


EXPORTED = exported() | http_series()


def ray_labels(sample: str) -> set[str] | None:
    """The label names a Ray series of ``SERIES`` has (None: not one of them)."""
    base = sample.removeprefix("ray_")
    for end in ("_bucket", "_sum", "_count"):
        if base.endswith(end) and base.removesuffix(end) in SERIES:
            return set(SERIES[base.removesuffix(end)][2]) | ({"le"} if end == "_bucket" else set())
    return set(SERIES[base][2]) if base in SERIES else None


def selectors(node) -> list:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return [node]
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    found = []
    for attr in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, attr, None)
        if child is not None:
            found += selectors(child)
    for arg in getattr(node, "args", None) or []:
        found += selectors(arg)
    return found


def check_expr(expr: str, where: str) -> None:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    try:
        tree = promql_parser.parse(expr)
    except ValueError as e:
        pytest.fail(f"{where}: {expr!r} does not parse: {e}")
    names = [s.name for s in selectors(tree)]
    assert names, f"{where}: names no series"
    for s in selectors(tree):
        assert s.name in EXPORTED, f"{where}: {s.name} is not a series the engine exports"
        labels = ray_labels(s.name)
        if labels is not None:
            used = {m.name for m in s.matchers.matchers}
            assert used <= labels, f"{where}: {s.name} has no label {used - labels}"


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((CONFIGS / "prometheus-alerts.yml").read_text())
    assert set(doc) == {"groups"}
    rules = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        rules += group["rules"]
    return rules


def test_every_alert_names_exported_series_and_says_what_is_wrong():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 10
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in {"info", "warning", "critical"}
        assert r["annotations"]["summary"]
        if "for" in r:
            assert promql_parser.parse_duration(r["for"])
        check_expr(r["expr"], r["alert"])
    exprs = " ".join(r["expr"] for r in rules)
    for wanted in ("ray_tidings_breaker_state", "ray_tidings_consumer_pending", "ray_tidings_dead_letters_total",
                   "ray_tidings_scheduled_overdue_seconds", "tidings_ready", "ray_tidings_deliveries_total"):
        assert wanted in exprs, f"no alert on {wanted}"


def test_every_dashboard_panel_queries_exported_series():
    dash = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    shown = set()
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            check_expr(t["expr"], f"panel {p['title']!r}")
            shown |= {s.name for s in selectors(promql_parser.parse(
                t["expr"].replace("$__rate_interval", "5m")))}
    # every series of the actors is on the dashboard (a histogram by its buckets or count)
    for name, (kind, *_rest) in SERIES.items():
        forms = {f"ray_{name}_bucket", f"ray_{name}_count"} if kind == "histogram" else {f"ray_{name}"}
        assert forms & shown, f"{name} is not on the dashboard"


def test_reasons_keep_their_family_and_nothing_else():
    b = Bounds(channels=["email"], providers=["ses"], categories=["security"], rule_reasons=["tcpa.window", "dnd"])
    assert [b.reason(r) for r in ("ok", "pref.category_off", "consent.missing_sms", "retry.network_error",
                                  "digest.daily", "tcpa.window", "dnd", "rate_limited", "boom", "evil.x")] == [
        "ok", "pref", "consent", "retry", "digest", "tcpa", "dnd", "rate_limited", OTHER, OTHER]
    assert (b.channel("email"), b.channel("*"), b.channel("fax")) == ("email", "*", OTHER)
    assert (b.provider("ses"), b.provider(None), b.provider("acme")) == ("ses", NONE, OTHER)
    assert (b.category("security"), b.category("user-1234")) == ("security", OTHER)
    failed = Outcome("n", "u", "email", "security", "failed", "network_error", 1.0, 2.0,
                     attempts=[Attempt("ses", False, 1.5, 3.0, "timeout", "network")])
    assert b.outcome(failed) == ("email", "ses", "failed", "network_error")


text = st.text(max_size=40)


@given(channel=text, provider=st.none() | text, status=text, reason=text, category=text, kind=st.none() | text,
       ok=st.booleans())
def test_label_values_are_bounded_whatever_the_input(channel, provider, status, reason, category, kind, ok):
    b = Bounds(channels=["email", "sms"], providers=["ses", "twilio"], categories=["security"],
               rule_reasons=["tcpa.window"])
    assert b.channel(channel) in {"email", "sms", "*", OTHER}
    assert b.provider(provider) in {"ses", "twilio", NONE, OTHER}
    assert b.status(status) in STATUSES | {OTHER}
    assert b.reason(reason) in CODES | FAMILIES | {"tcpa", OTHER}
    assert b.category(category) in {"security", OTHER}
    assert Bounds.call_result(ok, kind) in CALL_RESULTS | {OTHER}
    assert family(reason) in CODES | FAMILIES | {OTHER}


class Calls(Meter):
    """A Meter that keeps its calls instead of making Ray metrics (no Ray worker here)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def inc(self, name, value, tags=None):
        self.calls.append(("inc", name, value, tags))

    def observe(self, name, values, tags=None):
        self.calls.append(("observe", name, len(values), tags))


def test_a_flush_reports_once_per_label_set_not_once_per_outcome():
    b = Bounds(channels=["email"], providers=["ses"])
    sent = [Outcome(f"n{i}", "u", "email", "c", "sent", "ok", 100.0, 101.0, provider="ses") for i in range(1000)]
    off = [Outcome(f"m{i}", "u", "email", "c", "suppressed", f"pref.x{i}_off", 100.0, 101.0) for i in range(500)]
    meter = Calls()
    committed(meter, b, [sent, off], at=102.0)
    assert sorted(c for c in meter.calls if c[0] == "inc") == [
        ("inc", "tidings_deliveries_total", 500,
         {"channel": "email", "provider": NONE, "status": "suppressed", "reason": "pref"}),
        ("inc", "tidings_deliveries_total", 1000,
         {"channel": "email", "provider": "ses", "status": "sent", "reason": "ok"})]
    # the latencies go per series: one call each, every outcome in it
    assert sorted(c for c in meter.calls if c[0] == "observe") == [
        ("observe", "tidings_delivery_latency_seconds", 500, {"channel": "email", "status": "suppressed"}),
        ("observe", "tidings_delivery_latency_seconds", 1000, {"channel": "email", "status": "sent"})]
