"""The browser tests use the integration tests' services (NATS, PostgreSQL, Ray,
the loopback SMTP server)."""

from tests.integration.conftest import smtp  # noqa: F401 - a fixture, used by name
