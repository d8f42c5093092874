"""How much one GraphQL document may ask for, checked before anything runs
(each limit answers a GraphQL error naming it, and nothing is resolved):

- depth: at most ``MAX_DEPTH`` nested selections (strawberry's
  ``QueryDepthLimiter``; introspection fields count too);
- size: at most ``MAX_TOKENS`` tokens and ``MAX_ALIASES`` aliases (strawberry's
  ``MaxTokensLimiter``, ``MaxAliasesLimiter``): a parser and a document of
  bounded size, however it is nested;
- cost: at most ``MAX_COST`` by ``cost`` below: each field costs 1; a field of
  the root type costs ``ROOT_COST`` more (each reads PostgreSQL or asks a
  UserShard); the selections under a field that is a list count ``LIST_FACTOR``
  times (a list is taken to hold that many). Fragments count where they are
  spread; an introspection field (``__schema``, ``__type``) costs 1 with
  whatever it selects, bounded by the size limits instead.
"""

from __future__ import annotations

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationRule,
    get_named_type,
)
from strawberry.extensions import AddValidationRules, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter

MAX_DEPTH = 6
MAX_TOKENS = 2000
MAX_ALIASES = 15
MAX_COST = 1000
ROOT_COST = 10
LIST_FACTOR = 10


def cost(schema: GraphQLSchema, operation: OperationDefinitionNode,
         fragments: dict[str, FragmentDefinitionNode]) -> int:
    """The cost of ``operation`` by the rule in the module's docstring."""
    root = {OperationType.QUERY: schema.query_type, OperationType.MUTATION: schema.mutation_type,
            OperationType.SUBSCRIPTION: schema.subscription_type}[operation.operation]
    if root is None:
        return 0
    return _selections(schema, operation.selection_set, root, fragments, frozenset(), top=True)


def _selections(schema: GraphQLSchema, selection_set: SelectionSetNode | None, parent: GraphQLObjectType,
                fragments: dict[str, FragmentDefinitionNode], spread: frozenset[str], top: bool = False) -> int:
    total = 0
    for node in selection_set.selections if selection_set else ():
        if isinstance(node, FieldNode):
            total += _field(schema, node, parent, fragments, spread, top)
        elif isinstance(node, InlineFragmentNode):
            on = schema.get_type(node.type_condition.name.value) if node.type_condition else parent
            if isinstance(on, GraphQLObjectType):
                total += _selections(schema, node.selection_set, on, fragments, spread, top)
        elif isinstance(node, FragmentSpreadNode):
            name = node.name.value
            fragment = fragments.get(name)
            if fragment is None or name in spread:  # unknown or cyclic: other rules refuse it
                continue
            on = schema.get_type(fragment.type_condition.name.value)
            if isinstance(on, GraphQLObjectType):
                total += _selections(schema, fragment.selection_set, on, fragments, spread | {name}, top)
    return total


def _field(schema: GraphQLSchema, node: FieldNode, parent: GraphQLObjectType,
           fragments: dict[str, FragmentDefinitionNode], spread: frozenset[str], top: bool) -> int:
    definition = parent.fields.get(node.name.value)
    if definition is None:  # __typename, introspection, or unknown (refused by the other rules)
        return 1
    t = definition.type.of_type if isinstance(definition.type, GraphQLNonNull) else definition.type
    below = 0
    named = get_named_type(t)
    if node.selection_set is not None and isinstance(named, GraphQLObjectType):
        below = _selections(schema, node.selection_set, named, fragments, spread)
    if isinstance(t, GraphQLList):
        below *= LIST_FACTOR
    return 1 + (ROOT_COST if top else 0) + below


class CostLimit(ValidationRule):
    """Refuses an operation whose ``cost`` is above ``MAX_COST``."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args) -> None:
        fragments = {d.name.value: d for d in self.context.document.definitions
                     if isinstance(d, FragmentDefinitionNode)}
        n = cost(self.context.schema, node, fragments)
        if n > MAX_COST:
            name = node.name.value if node.name else "the operation"
            self.report_error(GraphQLError(f"{name} costs {n}, more than the limit of {MAX_COST} "
                                           "(a field costs 1, a root field 10 more, a list's selections 10 times)",
                                           node))


def extensions() -> list:
    return [QueryDepthLimiter(max_depth=MAX_DEPTH), MaxTokensLimiter(max_token_count=MAX_TOKENS),
            MaxAliasesLimiter(max_alias_count=MAX_ALIASES), AddValidationRules([CostLimit])]


__all__ = ["LIST_FACTOR", "MAX_COST", "MAX_DEPTH", "ROOT_COST", "CostLimit", "cost", "extensions"]
