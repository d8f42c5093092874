"""The email rules of ``policy.email`` as the providers need them: a refusal is
an ``InvalidMessage`` carrying the rule's own words."""

from __future__ import annotations

from policy.email import content_problem
from policy.types import Content
from providers.errors import InvalidMessage


def check_content(content: Content) -> None:
    """Returns when ``content`` can be an email (``policy.email.content_problem``);
    InvalidMessage saying why not otherwise."""
    problem = content_problem(content)
    if problem is not None:
        raise InvalidMessage(problem)


__all__ = ["check_content"]
