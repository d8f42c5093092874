"""Mobile push: Firebase Cloud Messaging HTTP v1 (``providers.push.fcm.FcmProvider``,
registry type "fcm") and the Apple Push Notification service with aioapns
(``providers.push.apns.ApnsProvider``, type "apns"), both ``channel = "push"``
with the device token as the task's address.

Nothing is imported here eagerly, so that using FCM does not import aioapns (and
the reverse): ``from providers.push import FcmProvider`` imports only its module.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"FcmProvider": "providers.push.fcm", "ApnsProvider": "providers.push.apns"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'providers.push' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["ApnsProvider", "FcmProvider"]
