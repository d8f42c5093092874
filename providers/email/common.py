"""What every email provider checks and fills the same way."""

from __future__ import annotations

import urllib.parse

from policy.types import Content, DeliveryTask
from providers.errors import InvalidMessage


def check_content(content: Content) -> None:
    """An email needs a one-line subject and text or html; InvalidMessage otherwise."""
    if not content.subject:
        raise InvalidMessage("email needs a subject")
    if "\r" in content.subject or "\n" in content.subject:
        raise InvalidMessage("email subject contains a line break")
    if not content.text and not content.html:
        raise InvalidMessage("email needs text or html content")


def fill(template: str, task: DeliveryTask) -> str:
    """``{user_id}``, ``{category}`` and ``{notification_id}`` in an unsubscribe
    URL replaced by the task's values, URL-quoted."""
    for key in ("user_id", "category", "notification_id"):
        template = template.replace("{" + key + "}", urllib.parse.quote(getattr(task, key), safe=""))
    return template
