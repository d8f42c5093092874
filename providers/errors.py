"""One error tree for delivery, after the seeds' taxonomy (provider, network,
authentication, rate limit, validation, configuration, system).

Each error says whether retrying can help; a ChannelShard retries only those that
say yes, and ``RateLimited`` carries how long the provider asked us to wait.
"""

from __future__ import annotations

import math

# The longest Retry-After we take at its word: beyond this a provider is paused
# for this long, and a value that is not a finite number is ignored.
MAX_RETRY_AFTER_S = 3600.0


class DeliveryError(Exception):
    """Root of every error a provider raises."""

    kind = "system"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        if retry_after is not None and not math.isfinite(retry_after):
            retry_after = None
        self.retry_after = None if retry_after is None else min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)


class ProviderError(DeliveryError):
    """The provider failed on its side (5xx, SMTP 4xx transient)."""

    kind = "provider"
    retryable = True


class NetworkError(DeliveryError):
    """Could not reach the provider, or it did not answer in time."""

    kind = "network"
    retryable = True


class RateLimited(DeliveryError):
    """The provider said slow down (HTTP 429, SMTP 421/451 with a limit)."""

    kind = "rate_limit"
    retryable = True


class AuthenticationError(DeliveryError):
    """Our credentials were refused; retrying the same provider will not help."""

    kind = "authentication"


class InvalidMessage(DeliveryError):
    """The message or address is unacceptable (HTTP 4xx, SMTP 5xx): not retryable
    anywhere, the next provider would refuse it too."""

    kind = "validation"


class AddressGone(InvalidMessage):
    """The address is gone for good (an unregistered device token, an expired web
    push subscription, a number that no longer exists): not retryable, and the
    engine removes it from the user."""

    kind = "address_gone"


class ConfigurationError(DeliveryError):
    """The provider is set up wrongly (missing setting, unknown type)."""

    kind = "configuration"


class DestinationRefused(InvalidMessage):
    """A user-supplied destination (a webhook URL in the user's addresses, a web
    push endpoint) is refused by the SSRF guard (``providers.egress``): an
    internal address, a scheme other than http(s), user info in the URL. Not
    retryable, and it says nothing about the provider."""

    kind = "destination_refused"


class DestinationError(DeliveryError):
    """A user-supplied destination failed (timeout, connection error, 5xx, 429):
    retryable, counted against that destination's own breaker and never against
    the provider's shared one (one user's broken endpoint is not the provider
    being down)."""

    kind = "destination"
    retryable = True


class DestinationCircuitOpen(DestinationError):
    """A user-supplied destination failed too often in a row and is not tried
    again until its cool-off is over. Not retryable now."""

    kind = "destination_circuit_open"
    retryable = False
