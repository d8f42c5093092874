"""The SSRF guard: outbound requests to URLs a user or caller supplied.

A webhook URL in a user's addresses, or a web push subscription's endpoint, makes
the engine send a POST wherever it points. Without a guard that is a way into the
network the engine runs in (the cloud metadata service at 169.254.169.254, an
admin port on loopback, a database on a private subnet), with the answer read back
through the delivery error ``GET /v1/notifications/{id}`` shows.

What this module refuses, unless the address is inside the provider's allow-list
(``egress_allow``, a list of CIDRs such as ``["127.0.0.0/8", "::1/128"]``):

- every address that is not globally routable: private (10/8, 172.16/12,
  192.168/16, fc00::/7), loopback, link-local (169.254/16 with the metadata
  service, fe80::/10), multicast, reserved, unspecified, shared address space
  (100.64/10), documentation and benchmarking ranges, IPv6 site-local (fec0::/10);
- IPv6 forms that carry such an IPv4 address: IPv4-mapped (``::ffff:a.b.c.d``),
  6to4 (2002::/16), Teredo (2001::/32, its client and server), NAT64 (64:ff9b::/96);
- URLs that are not ``http``/``https``, or that carry user info.

How: ``guarded_session`` opens an aiohttp session whose connector resolves names
through ``GuardedResolver``, which drops every refused address from the DNS
answer (``DestinationRefused`` when none is left), so the connector can only
connect to addresses that passed: a name that resolves to a public address when
checked and to 127.0.0.1 when connecting (DNS rebinding) is not possible, the
check *is* the resolution. aiohttp does not ask a resolver about IP literals, so
``check_url`` classifies a literal host before the request is made. Callers also
never follow redirects (``allow_redirects=False``: a 3xx to an internal address
would be a way around all of this) and read at most ``MAX_READ`` bytes of an
answer (``read_capped``); the answer's body never goes into an error text for a
user-supplied destination, only its status.

``DestinationBreakers`` keeps a breaker per destination (``scheme://host:port``),
so one slow or failing user URL is refused for a cool-off instead of opening the
provider's shared breaker for every user.

Trusted on purpose: a URL in the engine's own configuration (the webhook
provider's ``url`` setting, the ``base_url`` of the email/SMS/push providers) is
operator config, not user input, and is not guarded; it may well point at a
private address.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from providers.errors import (
    ConfigurationError,
    DeliveryError,
    DestinationCircuitOpen,
    DestinationError,
    DestinationRefused,
    InvalidMessage,
)

T = TypeVar("T")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# At most this much of an answer is read (the rest is left unread; the
# connection is then closed instead of going back to the pool).
MAX_READ = 4096

# Refused beyond what ``ipaddress`` flags (some of these it calls global on
# older Pythons): shared address space, IETF protocol assignments, the
# documentation and benchmarking ranges, 6to4 relays, NAT64 local use.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::/96", "100::/64", "2001:db8::/32", "64:ff9b:1::/48", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def parse_allow(value: object, what: str) -> tuple[IPNetwork, ...]:
    """``egress_allow`` as networks: a list of CIDR strings (a bare address is a
    /32 or /128). ConfigurationError naming ``what`` for anything else."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{what}: 'egress_allow' must be a list of CIDR strings, "
                                 f"e.g. [\"127.0.0.0/8\", \"::1/128\"]")
    nets: list[IPNetwork] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigurationError(f"{what}: 'egress_allow' entries must be CIDR strings, got {item!r}")
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ConfigurationError(f"{what}: 'egress_allow' entry {item!r} is not a CIDR: {exc}") from None
    return tuple(nets)


def _address(host: str) -> IPAddress | None:
    """``host`` as an address (brackets and an IPv6 zone ignored), else None."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _embedded(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    out = []
    if addr.ipv4_mapped is not None:
        out.append(addr.ipv4_mapped)
    if addr.sixtofour is not None:
        out.append(addr.sixtofour)
    if addr.teredo is not None:
        out.extend(addr.teredo)
    if addr in _NAT64:
        out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return out


def _why(addr: IPAddress) -> str | None:
    """Why ``addr`` itself is not a public destination, or None."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return "site-local"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "shared"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global or any(addr in n for n in _EXTRA_BLOCKED if n.version == addr.version):
        return "not global"
    return None


class EgressPolicy:
    """Which addresses a user-supplied destination may resolve to."""

    def __init__(self, allow: Iterable[IPNetwork] = ()):
        self.allow = tuple(allow)

    def allowed(self, addr: IPAddress) -> bool:
        """``addr`` (or the IPv4 address it maps) is inside the allow-list."""
        candidates: list[IPAddress] = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates.append(addr.ipv4_mapped)
        return any(a in n for a in candidates for n in self.allow if n.version == a.version)

    def refusal(self, addr: IPAddress | str) -> str | None:
        """Why ``addr`` is refused (e.g. ``"loopback"``), or None when it may be used."""
        if isinstance(addr, str):
            parsed = _address(addr)
            if parsed is None:
                return "not an IP address"
            addr = parsed
        if self.allowed(addr):
            return None
        why = _why(addr)
        if why is not None:
            return why
        for inner in _embedded(addr):
            why = _why(inner)
            if why is not None:
                return f"{why} (embedded {inner})"
        return None


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked user-supplied URL: ``url`` to request, ``key`` its origin
    (``scheme://host:port``, for per-destination breakers and error texts)."""

    url: URL
    key: str


def check_url(raw: str, policy: EgressPolicy, what: str = "destination") -> Destination:
    """Parse and check a user-supplied URL before any request is made:
    DestinationRefused for a scheme other than http(s), user info, no host, or an
    IP literal host that ``policy`` refuses (aiohttp does not resolve those, so the
    resolver could not catch them); InvalidMessage when it is not a URL at all."""
    try:
        url = URL(raw)
        host, port, scheme = url.host, url.port, url.scheme.lower()
    except (ValueError, TypeError) as exc:
        raise InvalidMessage(f"{what} is not a valid URL: {exc}") from None
    if scheme not in ("http", "https"):
        raise DestinationRefused(f"{what}: scheme {scheme or 'none'!r} is not allowed (http or https only)")
    if url.user is not None or url.password is not None:
        raise DestinationRefused(f"{what}: URLs with user info are not allowed")
    if not host:
        raise DestinationRefused(f"{what}: URL has no host")
    key_host = f"[{host}]" if ":" in host else host
    key = f"{scheme}://{key_host}:{port}"
    # What aiohttp takes for an IP literal (and connects to without resolving).
    if ":" in host or host.replace(".", "").isdigit():
        why = policy.refusal(host)
        if why is not None:
            raise DestinationRefused(f"{what} {key}: address refused ({why})")
    return Destination(url, key)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (aiohttp's default resolver) and keeps only the
    addresses ``policy`` allows; DestinationRefused when none is left."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None):
        self.policy = policy
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        kept, refused = [], []
        for info in infos:
            why = self.policy.refusal(info["host"])
            if why is None:
                kept.append(info)
            else:
                refused.append(f"{info['host']} ({why})")
        if not kept:
            detail = ", ".join(dict.fromkeys(refused)) or "no addresses"
            raise DestinationRefused(f"destination {host}: every address it resolves to is refused: {detail}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(policy: EgressPolicy, *, max_connections: int, connect_timeout_s: float,
                    total_timeout_s: float | None = None, headers: dict | None = None) -> aiohttp.ClientSession:
    """An aiohttp session that can only connect to addresses ``policy`` allows
    (call inside the running loop). No proxies from the environment."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, resolver=GuardedResolver(policy)),
        timeout=aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s),
        headers=headers,
        trust_env=False,
    )


async def read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_READ) -> bytes:
    """At most ``limit`` bytes of ``resp``'s body; never the whole of a big one."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@dataclass(slots=True)
class _Failing:
    failures: int = 0
    open_until: float = 0.0


class DestinationBreakers:
    """A breaker per destination key, for at most ``capacity`` failing
    destinations (least recently failed forgotten first; a success forgets one).

    ``threshold`` failures in a row open a destination's breaker: ``admit`` then
    raises DestinationCircuitOpen for ``cooloff_s``; after it, one call goes
    through as a probe (the cool-off is re-armed for everyone else while it
    runs): its success closes the breaker, its failure keeps it open."""

    def __init__(self, threshold: int = 5, cooloff_s: float = 30.0, capacity: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooloff_s, self.capacity, self.clock = threshold, cooloff_s, capacity, clock
        self._state: OrderedDict[str, _Failing] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def is_open(self, key: str) -> bool:
        st = self._state.get(key)
        return st is not None and st.failures >= self.threshold and self.clock() < st.open_until

    def admit(self, key: str, what: str = "destination") -> None:
        """Return when a call to ``key`` may be made; DestinationCircuitOpen when not."""
        st = self._state.get(key)
        if st is None or st.failures < self.threshold:
            return
        now = self.clock()
        if now < st.open_until:
            raise DestinationCircuitOpen(
                f"{what} {key}: failed {st.failures} times in a row; not tried again for "
                f"{st.open_until - now:.0f}s")
        st.open_until = now + self.cooloff_s  # this call is the probe

    def success(self, key: str) -> None:
        self._state.pop(key, None)

    def failure(self, key: str) -> None:
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = _Failing()
            while len(self._state) > self.capacity:
                self._state.popitem(last=False)
        else:
            self._state.move_to_end(key)
        st.failures += 1
        if st.failures >= self.threshold:
            st.open_until = max(st.open_until, self.clock() + self.cooloff_s)

    async def call(self, key: str, what: str, attempt: Callable[[], Awaitable[T | DeliveryError]]) -> T:
        """``attempt()`` through ``key``'s breaker: refused while it is open; a
        DestinationError counts against it, any answer clears it (a 4xx too: the
        destination was reachable, the message is the problem), and an error the
        attempt returns for such an answer is raised."""
        self.admit(key, what)
        try:
            result = await attempt()
        except DestinationError:
            self.failure(key)
            raise
        self.success(key)
        if isinstance(result, DeliveryError):
            raise result
        return result


__all__ = ["MAX_READ", "Destination", "DestinationBreakers", "EgressPolicy", "GuardedResolver", "check_url",
           "guarded_session", "parse_allow", "read_capped"]


@dataclass
class UserDestinations:
    """What a provider that sends to user-supplied URLs needs: the egress
    policy, the whole-request timeout of such a call, and the per-destination
    breakers; read from its settings by ``user_destinations``."""

    egress: EgressPolicy
    timeout_s: float
    breakers: DestinationBreakers


def user_destinations(settings: dict, timeout_s: float, what: str) -> UserDestinations:
    """From a provider's settings: ``egress_allow``, ``destination_timeout_s``
    (default 0.8 × ``timeout_s``: below the call deadline, so a slow user endpoint
    ends as its own DestinationError, not a NetworkError on the shared breaker),
    ``destination_breaker_failures`` (5), ``destination_breaker_cooloff_s`` (30),
    ``destination_breakers_max`` (10,000). ConfigurationError naming ``what``."""
    egress = EgressPolicy(parse_allow(settings.get("egress_allow"), what))
    try:
        timeout = float(settings.get("destination_timeout_s", 0.8 * timeout_s))
        failures = int(settings.get("destination_breaker_failures", 5))
        cooloff = float(settings.get("destination_breaker_cooloff_s", 30))
        capacity = int(settings.get("destination_breakers_max", 10_000))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what}: bad destination setting: {exc}") from None
    if not timeout > 0 or failures < 1 or cooloff < 0 or capacity < 1:
        raise ConfigurationError(f"{what}: destination_timeout_s must be > 0, destination_breaker_failures and "
                                 "destination_breakers_max >= 1, destination_breaker_cooloff_s >= 0")
    return UserDestinations(egress, timeout, DestinationBreakers(failures, cooloff, capacity))
