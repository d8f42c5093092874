"""DKIM signatures (RFC 6376) for the mail the SMTP provider sends.

dkimpy parses the message, canonicalizes headers and body (relaxed/relaxed) and
selects the signed headers; the signature itself is made by ``cryptography``
(OpenSSL). dkimpy's own RSA is pure Python: 11 ms per signature on this machine
against about 1 ms, and a ChannelShard's event loop must not stall that long
per email (docs/design.md, "DKIM").

The key is RSA (``rsa-sha256``, at least 1024 bits, 2048 advised), in PEM.
Ed25519 (RFC 8463) is not offered: the large mailbox providers do not verify it,
so it would only ever be a second signature, and no independent verifier on this
machine checks it (Debian's Mail::DKIM refuses the algorithm). Headers a mailbox provider acts on are
signed once more than they occur ("oversigned"), so nobody can add a second
From, Subject or List-Unsubscribe to a signed message without breaking it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy

from providers.errors import ConfigurationError

# What is signed; RFC 8058 asks that both List-Unsubscribe headers be. Each is signed
# one more time than it occurs ("oversigned"), absent ones once: a copy added in
# transit fails the signature.
SIGNED = ("from", "sender", "to", "cc", "subject", "date", "message-id", "mime-version", "content-type",
          "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post", "reply-to",
          "tidings-notification-id")
POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
HEADER = b"DKIM-Signature"
LABELS = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}))*\Z")
MIN_RSA_BITS = 1024  # RFC 8301: verifiers ignore smaller keys
MAX_RSA_BITS = 4096  # and need not take larger ones


class DkimSigner:
    """Signs raw messages for ``domain`` with the key published at
    ``<selector>._domainkey.<domain>``. ConfigurationError (naming settings, never
    the key) when the key does not load."""

    def __init__(self, domain: str, selector: str, private_key_pem: str, provider: str = "smtp"):
        if not (isinstance(domain, str) and LABELS.fullmatch(domain) and isinstance(selector, str)
                and LABELS.fullmatch(selector)):
            raise ConfigurationError(f"smtp provider {provider!r}: DKIM needs dkim_selector and dkim_domain, "
                                     "each dot-separated ASCII labels")
        if not isinstance(private_key_pem, str):
            raise ConfigurationError(f"smtp provider {provider!r}: dkim_private_key must be PEM text")
        try:
            key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigurationError(f"smtp provider {provider!r}: dkim_private_key is not an "
                                     "unencrypted PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"smtp provider {provider!r}: the DKIM key must be RSA")
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise ConfigurationError(f"smtp provider {provider!r}: the DKIM RSA key has {key.key_size} bits; "
                                     f"receivers take {MIN_RSA_BITS} to {MAX_RSA_BITS}")
        self._key = key
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")

    def public_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>``."""
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()

    def header(self, message: bytes, now: float | None = None) -> bytes:
        """The ``DKIM-Signature: ...\\r\\n`` line to put before ``message`` (CRLF
        line ends)."""
        headers, body = dkim.rfc822_parse(message)
        present: dict[bytes, int] = {}
        for name, _ in headers:
            present[name.lower()] = present.get(name.lower(), 0) + 1
        signed = []
        for name in SIGNED:
            count = present.get(name.encode(), 0)
            signed += [name.encode()] * (count + 1)
        body_hash = base64.b64encode(hashlib.sha256(POLICY.canonicalize_body(body)).digest())
        fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", POLICY.to_c_value()), (b"d", self.domain),
                  (b"s", self.selector), (b"t", str(int(time.time() if now is None else now)).encode()),
                  (b"h", b" : ".join(signed)), (b"bh", body_hash), (b"b", b"")]
        unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER))
        digest = hashlib.sha256()
        dkim.hash_headers(digest, POLICY, POLICY.canonicalize_headers(headers), signed,
                          (HEADER, b" " + unsigned), dict(fields))
        signature = base64.b64encode(self._key.sign(digest.digest(), padding.PKCS1v15(),
                                                    Prehashed(hashes.SHA256())))
        # b= last, folded like the rest (72 columns): long lines are what MTAs refold
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields[:-1]) + b"; b=" + signature,
                          namelen=len(HEADER))
        return HEADER + b": " + value + b"\r\n"

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """``message`` with its signature header first."""
        return self.header(message, now) + message


__all__ = ["DkimSigner", "SIGNED"]
