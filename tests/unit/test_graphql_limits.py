"""The GraphQL cost rule (engine/http/graphql/limits.py) and the Struct-made
types, on the real schema, without a server."""

from __future__ import annotations

import pytest
from graphql import OperationDefinitionNode, parse, validate

from engine.http.graphql import limits
from engine.http.graphql.types import graphql_type
from engine.http.graphql.view import schema

SCHEMA = schema()


def cost_of(query: str) -> int:
    doc = parse(query)
    fragments = {d.name.value: d for d in doc.definitions if not isinstance(d, OperationDefinitionNode)}
    (op,) = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    return limits.cost(SCHEMA._schema, op, fragments)


def test_a_field_costs_one_and_a_root_field_ten_more():
    assert cost_of('{ user(id: "a") { userId timezone } }') == 1 + limits.ROOT_COST + 2
    assert cost_of("{ __typename }") == 1


def test_a_lists_selections_count_ten_times():
    one = cost_of('{ notification(id: "x") { id } }')
    listed = cost_of('{ notification(id: "x") { id channels { channel status } } }')
    assert listed - one == 1 + limits.LIST_FACTOR * 2
    nested = cost_of("{ channelAnalytics { rows { counts { sent } } } }")
    assert nested == 1 + limits.ROOT_COST + 1 + limits.LIST_FACTOR * (1 + 1)


def test_fragments_count_where_they_are_spread_and_cycles_end():
    spread = cost_of('query { ...U ...U } fragment U on Query { user(id: "a") { userId } }')
    assert spread == 2 * (1 + limits.ROOT_COST + 1)
    inline = cost_of('{ ... on Query { user(id: "a") { userId } } }')
    assert inline == 1 + limits.ROOT_COST + 1
    assert cost_of("query { ...A } fragment A on Query { __typename ...A }") == 1  # refused by NoFragmentCycles


@pytest.mark.parametrize("n,refused", [(1, False), (12, False), (13, True)])
def test_the_limit_refuses_before_anything_runs(n, refused):
    query = "{ " + " ".join(f"a{i}: channelAnalytics {{ rows {{ counts {{ sent delivered bounced failed }} "
                            f"rates {{ openRate }} }} }}" for i in range(n)) + " }"
    assert (cost_of(query) > limits.MAX_COST) is refused
    messages = [e.message for e in validate(SCHEMA._schema, parse(query), [limits.CostLimit])]
    assert any("more than the limit" in m for m in messages) is refused


def test_struct_types_map_to_graphql_nullability():
    assert graphql_type(int) is int
    assert graphql_type(list[str]) == list[str]
    assert graphql_type(str | None) == str | None
