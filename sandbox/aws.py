"""AWS Signature Version 4 checked as AWS services check it, for the loopback
AWS servers (SNS, SES): botocore recomputes the signature over the headers the
request says it signed and its body, with the credentials the server knows."""

from __future__ import annotations

import re
import time
from calendar import timegm

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_SKEW_S = 300  # AWS refuses a request signed further from its clock ("Signature expired")
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/([0-9]{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")


def refusal(request: web.Request, body: bytes, credentials: Credentials, service: str,
            region: str) -> tuple[int, str, str] | None:
    """None when ``request`` is signed right, else (status, error code, message) as AWS answers."""
    m = _AUTH.fullmatch(request.headers.get("Authorization", ""))
    if m is None:
        return 403, "IncompleteSignature", "Authorization header requires a SigV4 signature"
    key, day, scope_region, scope_service, signed_names, given = m.groups()
    if key != credentials.access_key:
        return 403, "InvalidClientTokenId", "The security token included in the request is invalid"
    stamp = request.headers.get("X-Amz-Date", "")
    try:
        at = timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return 403, "IncompleteSignature", "X-Amz-Date is missing or malformed"
    if abs(time.time() - at) > MAX_SKEW_S:
        return 400, "SignatureDoesNotMatch", "Signature expired"
    if scope_region != region or scope_service != service or day != stamp[:8]:
        return 403, "SignatureDoesNotMatch", "Credential should be scoped to a valid region and service"
    names = signed_names.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return 403, "SignatureDoesNotMatch", "host and x-amz-date must be signed"
    if "x-amz-security-token" in request.headers and "x-amz-security-token" not in names:
        return 403, "SignatureDoesNotMatch", "the security token must be signed"
    signed = AWSRequest(method=request.method, url=f"http://{request.headers.get('Host', '')}{request.raw_path}",
                        data=body, headers={n: request.headers.get(n, "") for n in names})
    signed.context["timestamp"] = stamp
    signer = SigV4Auth(credentials, service, region)
    if signer.signature(signer.string_to_sign(signed, signer.canonical_request(signed)), signed) != given:
        return 403, "SignatureDoesNotMatch", "The request signature we calculated does not match"
    return None


__all__ = ["MAX_SKEW_S", "refusal"]
