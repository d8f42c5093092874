"""providers.http_errors: the HTTP status → DeliveryError mapping every HTTP provider shares."""

import pytest

from providers.errors import AuthenticationError, InvalidMessage, NetworkError, ProviderError, RateLimited
from providers.http_errors import map_status, parse_retry_after


def test_retry_after_http_date_and_garbage():
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # past date
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None
    err = map_status(429, {}, "")
    assert isinstance(err, RateLimited) and err.retry_after is None


@pytest.mark.parametrize("status, kind", [
    (429, RateLimited),
    (401, AuthenticationError),
    (403, AuthenticationError),
    (408, NetworkError),
    (500, ProviderError),
    (503, ProviderError),
    (400, InvalidMessage),
    (404, InvalidMessage),
    (302, InvalidMessage),  # redirects are not followed: the endpoint needs fixing
])
def test_each_status_has_its_error(status, kind):
    err = map_status(status, {"Retry-After": "5"}, "body")
    assert type(err) is kind and err.status == status and str(err) == f"HTTP {status}: body"


def test_retry_after_header_rides_on_rate_limited():
    assert map_status(429, {"Retry-After": "12"}).retry_after == 12.0
    assert str(map_status(500, {})) == "HTTP 500"
