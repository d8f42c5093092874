"""AWS request signing (Signature Version 4) for the providers that call AWS
(SNS, SES), with botocore's own signer rather than a hand-rolled canonical
request. Settings every AWS provider takes: ``access_key_id``,
``secret_access_key`` (required), ``session_token`` (temporary credentials),
``region`` (required)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from providers.egress import read_capped
from providers.errors import ConfigurationError, DeliveryError, NetworkError
from providers.http_errors import map_status
from providers.secrets import scrub

MAX_ANSWER = 64 * 1024  # an AWS answer is a few hundred bytes

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]")


class AwsSigner:
    """The credentials and region of one provider, and its requests signed."""

    def __init__(self, settings: dict, service: str, name: str):
        key, secret = settings.get("access_key_id"), settings.get("secret_access_key")
        if not key or not isinstance(key, str) or not secret or not isinstance(secret, str):
            raise ConfigurationError(f"{service} provider {name!r}: 'access_key_id' and 'secret_access_key' are required")
        token = settings.get("session_token")
        token = token if isinstance(token, str) and token else None
        region = settings.get("region")
        if not isinstance(region, str) or not _REGION.fullmatch(region):
            raise ConfigurationError(f"{service} provider {name!r}: 'region' is required, e.g. us-east-1")
        self.region, self.service = region, service
        self._secrets = tuple(s for s in (secret, token) if s)
        self._signer = SigV4Auth(Credentials(key, secret, token), service, region)

    def headers(self, method: str, url: str, body: bytes, content_type: str) -> dict[str, str]:
        """The headers of a request of ``body`` to ``url``, signed (``Authorization``,
        ``X-Amz-Date``, ``X-Amz-Security-Token`` with temporary credentials)."""
        request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": content_type})
        self._signer.add_auth(request)
        return dict(request.headers.items())

    def endpoint(self, prefix: str) -> str:
        """The service's regional endpoint, ``https://<prefix>.<region>.amazonaws.com``
        (``.com.cn`` in the China regions)."""
        return f"https://{prefix}.{self.region}.amazonaws.com" + (".cn" if self.region.startswith("cn-") else "")

    async def post(self, session: aiohttp.ClientSession, url: str, body: bytes,
                   content_type: str) -> tuple[int, Mapping[str, str], bytes]:
        """POST ``body`` signed: (status, headers, the answer up to MAX_ANSWER,
        read whole). NetworkError, the secrets scrubbed, when there is no answer."""
        headers = self.headers("POST", url, body, content_type)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                return resp.status, resp.headers, await read_capped(resp, MAX_ANSWER)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NetworkError(self.scrub(f"{self.service} {url}: {type(exc).__name__}: {exc}")) from exc

    def scrub(self, text: str) -> str:
        """``text`` with the secret key and session token hidden."""
        return scrub(text, *self._secrets)


def aws_error(cls: type[DeliveryError] | None, status: int, headers: Mapping[str, str], text: str) -> DeliveryError:
    """``cls`` for an error AWS named, else what the status says (``map_status``), worded ``text``."""
    if cls is None:
        err = map_status(status, headers, text)
        err.args = (text,)
        return err
    return cls(text, status=status)


SECRET_SETTINGS = ("secret_access_key", "session_token")

__all__ = ["MAX_ANSWER", "SECRET_SETTINGS", "AwsSigner", "aws_error"]
