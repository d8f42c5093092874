"""GraphQL errors as the API answers them: a REST error (``Problem``) raised by
the shared code becomes the error's message with ``extensions`` ``{"code":
<the HTTP status REST answers>, "errors": [{"field", "reason"}]}``; a database
timeout is the 503 REST answers; anything else is logged here and answered
``internal error`` (code 500) with no detail, no traceback and no data of
anyone. GraphQL's own errors (syntax, validation, limits) pass as they are."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from engine.http.common import Problem, busy, db_busy
from engine.http.graphql.auth import problem_of

log = logging.getLogger(__name__)


def answer(error: GraphQLError) -> GraphQLError:
    """``error`` as the client sees it."""
    cause = error.original_error
    if cause is None or isinstance(cause, GraphQLError):
        return error
    if not isinstance(cause, Problem):
        if db_busy(cause):
            cause = busy()
        else:
            log.error("GraphQL %s failed", ".".join(map(str, error.path or ())) or "operation",
                      exc_info=(type(cause), cause, cause.__traceback__))
            cause = Problem(500, "internal error", [{"field": "$", "reason": "the engine failed; it is logged"}])
    message, extensions = problem_of(cause)
    return GraphQLError(message, nodes=error.nodes, path=error.path, extensions=extensions)


def answered(errors: list[GraphQLError] | None) -> list[GraphQLError] | None:
    return [answer(e) for e in errors] if errors else errors


class Answers(SchemaExtension):
    """Rewrites every result's errors with ``answer`` (each subscription event's too)."""

    def on_operation(self) -> Iterator[None]:
        yield
        self._rewrite(self.execution_context.result)

    def on_stream_result(self, result) -> Iterator[None]:
        self._rewrite(result)
        yield

    @staticmethod
    def _rewrite(result) -> None:
        if result is not None and getattr(result, "errors", None):
            result.errors = answered(result.errors)


__all__ = ["Answers", "answer", "answered"]
