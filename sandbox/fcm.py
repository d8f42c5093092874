"""A loopback server speaking Firebase Cloud Messaging HTTP v1 and Google's OAuth
2.0 token endpoint for service accounts, as documented.

``make_service_account()`` makes a service account (a fresh RSA key) in the
shape of a downloaded JSON key; ``FcmSink(account)`` knows its public key, so a
JWT signed with any other key is refused like Google refuses it.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import jwt
import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.http import _HttpSink

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_PAYLOAD_BYTES = 4096
_MESSAGE_FIELDS = frozenset({"name", "data", "notification", "android", "webpush", "apns", "fcm_options",
                             "token", "topic", "condition"})
_TARGETS = ("token", "topic", "condition")
_RESERVED_KEYS = frozenset({"from", "notification", "message_type"})
_UNAUTHENTICATED = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                    "or other valid authentication credential. See "
                    "https://developers.google.com/identity/sign-in/web/devconsole-project.")
# What an injected failure answers, per status: (google status, FcmError errorCode, message).
_INJECTED = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service"),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for quota metric 'Send requests'."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}


_DURATION = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?s")
MAX_TTL_S = 28 * 86400


def make_service_account(project_id: str = "tidings-test", token_uri: str = "https://oauth2.googleapis.com/token",
                         client_email: str | None = None, key_size: int = 2048) -> dict:
    """A service account key in the shape of the JSON file Google hands out."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = client_email or f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


def google_error(code: int, status: str, message: str, error_code: str | None = None,
                 field: str | None = None) -> dict:
    """A Google API error body; with ``error_code`` an FcmError detail, with
    ``field`` a BadRequest field violation."""
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if field:
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": field, "description": message}]})
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


class _Refused(Exception):
    """A message FCM refuses: (http status, google status, message, errorCode, field)."""


def _check_message(doc: Any) -> tuple[str, dict]:
    """``(token, message)`` of a ``messages:send`` body; raises _Refused as FCM would."""
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), dict):
        raise _Refused(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", None, "message")
    for key in doc:
        if key not in ("message", "validate_only"):
            raise _Refused(400, "INVALID_ARGUMENT", f'Invalid JSON payload received. Unknown name "{key}": '
                           "Cannot find field.", None, key)
    msg = doc["message"]
    for key in msg:
        if key not in _MESSAGE_FIELDS:
            raise _Refused(400, "INVALID_ARGUMENT", f'Invalid JSON payload received. Unknown name "{key}" at '
                           "'message': Cannot find field.", None, f"message.{key}")
    targets = [t for t in _TARGETS if msg.get(t) is not None]
    if len(targets) != 1:
        raise _Refused(400, "INVALID_ARGUMENT", "Exactly one of token, topic or condition must be specified.",
                       "INVALID_ARGUMENT", "message")
    if targets[0] != "token":
        raise _Refused(400, "INVALID_ARGUMENT", "This look-alike only sends to registration tokens.",
                       "INVALID_ARGUMENT", f"message.{targets[0]}")
    token = msg["token"]
    if not isinstance(token, str) or not token or any(ch.isspace() for ch in token):
        raise _Refused(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                       "INVALID_ARGUMENT", None)
    data = msg.get("data", {})
    if not isinstance(data, dict):
        raise _Refused(400, "INVALID_ARGUMENT", "Invalid value at 'message.data'", None, "message.data")
    size = 0
    for i, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            text = f"Invalid value at 'message.data[{i}].value' (TYPE_STRING), {msgspec.json.encode(value).decode()}"
            raise _Refused(400, "INVALID_ARGUMENT", text, None, f"message.data[{i}].value")
        if key in _RESERVED_KEYS or key.startswith(("google", "gcm")):
            raise _Refused(400, "INVALID_ARGUMENT", f"Invalid data payload key: {key}", "INVALID_ARGUMENT", None)
        size += len(key.encode()) + len(value.encode())
    notification = msg.get("notification", {})
    if not isinstance(notification, dict) or any(k not in ("title", "body", "image") for k in notification):
        raise _Refused(400, "INVALID_ARGUMENT", "Invalid value at 'message.notification'", None,
                       "message.notification")
    for value in notification.values():
        if not isinstance(value, str):
            raise _Refused(400, "INVALID_ARGUMENT", "Invalid value at 'message.notification'", None,
                           "message.notification")
        size += len(value.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise _Refused(400, "INVALID_ARGUMENT", "Android message is too big", "INVALID_ARGUMENT", None)
    android = msg.get("android", {})
    if not isinstance(android, dict):
        raise _Refused(400, "INVALID_ARGUMENT", "Invalid value at 'message.android'", None, "message.android")
    priority = android.get("priority")
    if priority is not None and (not isinstance(priority, str) or priority.upper() not in ("NORMAL", "HIGH")):
        raise _Refused(400, "INVALID_ARGUMENT", f"Invalid value at 'message.android.priority' "
                       f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), \"{priority}\"",
                       None, "message.android.priority")
    ttl = android.get("ttl")
    # a google.protobuf.Duration in JSON ("3.5s"); FCM keeps a message at most 4 weeks
    if ttl is not None and (not isinstance(ttl, str) or not _DURATION.fullmatch(ttl)
                            or float(ttl[:-1]) > MAX_TTL_S):
        raise _Refused(400, "INVALID_ARGUMENT", f"Invalid value at 'message.android.ttl' (type.googleapis.com/"
                       f"google.protobuf.Duration), {msgspec.json.encode(ttl).decode()}", None, "message.android.ttl")
    if "collapse_key" in android and not isinstance(android["collapse_key"], str):
        raise _Refused(400, "INVALID_ARGUMENT", "Invalid value at 'message.android.collapse_key' (TYPE_STRING)",
                       None, "message.android.collapse_key")
    apns = msg.get("apns", {})
    if not isinstance(apns, dict) or not isinstance(apns.get("headers", {}), dict) \
            or any(not isinstance(v, str) for v in apns.get("headers", {}).values()):
        raise _Refused(400, "INVALID_ARGUMENT", "Invalid value at 'message.apns.headers'", None,
                       "message.apns.headers")
    expiration = apns.get("headers", {}).get("apns-expiration")
    if expiration is not None and not expiration.isdigit():  # APNs answers BadExpirationDate; FCM passes it on
        raise _Refused(400, "INVALID_ARGUMENT", "Invalid apns-expiration", "INVALID_ARGUMENT", None)
    return token, msg


class FcmSink(_HttpSink):
    """An HTTP server with Google's token endpoint (``POST /token``) and FCM's
    ``POST /v1/projects/{project_id}/messages:send``.

    The token endpoint takes ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
    and an ``assertion`` JWT that must be RS256-signed by the service account's
    key (``kid`` = its ``private_key_id`` when given), with ``iss`` = its
    ``client_email``, ``aud`` = this ``token_uri``, the FCM scope, and ``exp``
    at most one hour after ``iat``; refusals are 400 ``{"error": "invalid_grant",
    "error_description": ...}`` (or unsupported_grant_type / invalid_scope). It
    answers ``{"access_token", "expires_in": token_ttl_s, "token_type": "Bearer"}``.

    ``messages:send`` needs ``Authorization: Bearer <a live access token>``
    (else 401 UNAUTHENTICATED), the sink's project (else 403 PERMISSION_DENIED),
    and a body FCM accepts (else 400 INVALID_ARGUMENT with a BadRequest or
    FcmError detail: unknown fields, not exactly one target, an empty token,
    data values that are not strings, reserved data keys, over 4096 bytes, a bad
    android priority). A token in ``unregistered`` gets 404 NOT_FOUND /
    UNREGISTERED, one in ``other_sender`` 403 PERMISSION_DENIED /
    SENDER_ID_MISMATCH. Accepted: 200 ``{"name": "projects/<p>/messages/<id>"}``.

    Counts: ``requests`` (accepted), ``rejected`` (refused by the checks above),
    ``unauthorized`` (401 for the access token), ``failed`` (injected),
    ``token_requests`` and ``tokens_issued``; ``bodies`` holds accepted bodies
    when ``keep_bodies``; ``last_message_id`` the last name given.

    Failure injection as the other HTTP sinks: ``fail_status`` (every send, after
    the access token is checked), ``fail_next`` = N to fail only the next N;
    the body is FCM's for that status (429 QUOTA_EXCEEDED with ``Retry-After:
    <retry_after>``, 503 UNAVAILABLE, 500 INTERNAL, 401 THIRD_PARTY_AUTH_ERROR,
    403 SENDER_ID_MISMATCH, 404 UNREGISTERED, 400 INVALID_ARGUMENT).
    ``revoke_tokens()`` makes every access token issued so far invalid.
    """

    _stats_name = "fcm"
    _stats_counts = ("requests", "rejected", "unauthorized", "failed", "token_requests", "tokens_issued")

    def __init__(self, service_account: dict, host: str = "127.0.0.1", port: int = 0, *,
                 project_id: str | None = None, keep_bodies: bool = False, token_ttl_s: int = 3599):
        self.client_email: str = service_account["client_email"]
        self.key_id: str | None = service_account.get("private_key_id")
        private = serialization.load_pem_private_key(service_account["private_key"].encode(), password=None)
        self.public_key = private.public_key()
        self._account = {k: v for k, v in service_account.items()}
        self.project_id = project_id or service_account["project_id"]
        self.host = host
        self.port = port
        self.keep_bodies = keep_bodies
        self.token_ttl_s = token_ttl_s
        self.requests = self.rejected = self.unauthorized = self.failed = 0
        self.token_requests = self.tokens_issued = 0
        self.bodies: list = []
        self.last_message_id: str | None = None
        self.unregistered: set[str] = set()
        self.other_sender: set[str] = set()
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after = "1"
        self._tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self._runner: web.AppRunner | None = None

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def service_account(self) -> dict:
        """The service account with ``token_uri`` pointing here (after ``start``)."""
        return {**self._account, "token_uri": self.token_uri}

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on."""
        self._tokens.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        return app

    # -- the OAuth 2.0 token endpoint ------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            return self._grant_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}")
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or not assertion:
            return self._grant_error("invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return self._grant_error("invalid_grant", "Invalid JWT.")
        if unverified.get("iss") != self.client_email:
            return self._grant_error("invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256" or (self.key_id and header.get("kid") not in (None, self.key_id)):
            return self._grant_error("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(assertion, self.public_key, algorithms=["RS256"], audience=self.token_uri,
                                options={"require": ["iss", "aud", "iat", "exp"]}, leeway=30)
        except jwt.InvalidSignatureError:
            return self._grant_error("invalid_grant", "Invalid JWT Signature.")
        except jwt.InvalidAudienceError:
            return self._grant_error("invalid_grant", "Invalid JWT: Failed audience check.")
        except jwt.PyJWTError:
            return self._grant_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) "
                                     "and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
        if not isinstance(claims["iat"], (int, float)) or claims["exp"] - claims["iat"] > 3600:
            return self._grant_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) "
                                     "and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
        if SCOPE not in str(claims.get("scope", "")).split():
            return self._grant_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29." + secrets.token_urlsafe(48)
        self._tokens[token] = time.time() + self.token_ttl_s
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "expires_in": self.token_ttl_s, "token_type": "Bearer"})

    def _grant_error(self, error: str, description: str) -> web.Response:
        self.rejected += 1
        return web.json_response({"error": error, "error_description": description}, status=400)

    # -- messages:send --------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        expiry = self._tokens.get(token)
        if expiry is None or expiry < time.time():
            self.unauthorized += 1
            return web.json_response(google_error(401, "UNAUTHENTICATED", _UNAUTHENTICATED), status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        if self.fail_status is not None:
            return self._failure()
        project = request.match_info["project"]
        if project != self.project_id:
            self.rejected += 1
            return web.json_response(google_error(
                403, "PERMISSION_DENIED", f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
            ), status=403)
        try:
            doc = msgspec.json.decode(body)
            target, _ = _check_message(doc)
        except msgspec.DecodeError:
            self.rejected += 1
            return web.json_response(google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.",
                                                  None, "message"), status=400)
        except _Refused as exc:
            self.rejected += 1
            code, status, message, error_code, field = exc.args
            return web.json_response(google_error(code, status, message, error_code, field), status=code)
        if target in self.unregistered:
            self.rejected += 1
            return web.json_response(google_error(404, "NOT_FOUND", "Requested entity was not found.",
                                                  "UNREGISTERED"), status=404)
        if target in self.other_sender:
            self.rejected += 1
            return web.json_response(google_error(403, "PERMISSION_DENIED", "SenderId mismatch",
                                                  "SENDER_ID_MISMATCH"), status=403)
        if self.keep_bodies:
            self.bodies.append(doc)
        self.requests += 1
        if doc.get("validate_only"):
            name = f"projects/{self.project_id}/messages/fake_message_id"
        else:
            name = f"projects/{self.project_id}/messages/0:{time.time_ns() // 1000}%{secrets.token_hex(8)}"
        self.last_message_id = name
        return web.json_response({"name": name})

    def _failure(self) -> web.Response:
        status = self._take_failure()
        gstatus, error_code, message = _INJECTED.get(status, ("UNKNOWN", "UNSPECIFIED_ERROR", "injected failure"))
        headers = {"Retry-After": self.retry_after} if status in (429, 503) else None
        return web.json_response(google_error(status, gstatus, message, error_code), status=status, headers=headers)


__all__ = ["FcmSink", "google_error", "make_service_account"]
