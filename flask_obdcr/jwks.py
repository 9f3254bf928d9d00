"""Fetching and caching JSON Web Key Sets (RFC 7517).

This is the only place in the package that fetches a JWKS: the Open Banking Directory's
keys (which sign software statements) and each TPP's ``software_jwks_endpoint`` (whose
keys sign registration requests and ``private_key_jwt`` client assertions).

A JWKS URL can come from attacker-influenced data, so every fetch goes through one rule,
checked before any network I/O and again on every redirect hop: the URL is ``https`` and
its host is on an allow-list. Responses are size-capped and time-limited, and a fetched
set is kept in a cache between requests (fresh for the server's ``max-age`` within bounds,
then usable as a stale fallback while the host is unreachable).

Part of the protocol core: no Flask imports; the clock and the fetcher are injected.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
import urllib3.util
from jwcrypto.jwk import JWK, JWKSet, JWKValuesRegistry

from .fetch import (
    BoundedFetch,
    FetchError,
    FetchFailed,
    FetchForbidden,
    FetchTimeout,
    RedirectRefused,
    ResponseTooLarge,
    TooManyRedirects,
    UnexpectedStatus,
)
from .jose import copy_json, jws_key_problem
from .log import get_logger
from .storage.jwks_cache import CacheEntry, JWKSCache
from .storage.memory import MemoryJWKSCache

__all__ = [
    "CacheEntry",
    "FetchedDocument",
    "Fetcher",
    "HTTPFetcher",
    "JWKSCache",
    "JWKSClient",
    "JWKSError",
    "JWKSForbidden",
    "JWKSUnavailable",
    "KeyNotFound",
    "MemoryJWKSCache",
    "StaticFetcher",
]

log = get_logger(__name__)

AllowedHosts = Callable[[], Collection[str]] | Collection[str]


# --------------------------------------------------------------------------- errors


class JWKSError(Exception):
    """Base of every error raised by this module.

    ``url`` is the URL the error is about (``None`` when there is none). The message is for
    the operator's log; it quotes the URL with ``repr`` so a hostile URL cannot forge log lines.
    """

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class JWKSForbidden(JWKSError):
    """The URL is not ``https``, has userinfo, is malformed, or its host is not allowed.

    Always raised before any network I/O for that URL (for a redirect: before following it).
    """


class JWKSUnavailable(JWKSError):
    """The key set could not be fetched or was not a JWKS, and nothing usable is cached."""


class KeyNotFound(JWKSError):
    """The key set has no key that could have made a signature with that ``kid``/``alg``."""


# --------------------------------------------------------------------------- URL rule


def _show(url: object) -> str:
    # URLs reach log messages; repr() escapes control characters and the cut keeps a
    # hostile 2 kB URL from flooding the log.
    text = repr(url)
    return text if len(text) <= 200 else text[:197] + "..."


def _normalise_host(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]")


def _host_set(hosts: Collection[str]) -> frozenset[str]:
    # A bare string is a Collection[str] too: "keystore.example" would then allow the hosts
    # "k", "e", ... by substring membership. Refuse it loudly rather than mis-check.
    if isinstance(hosts, (str, bytes)):
        raise TypeError("allowed_hosts must be a collection of host names, not a single string")
    result = set()
    for host in hosts:
        if not isinstance(host, str):
            raise TypeError(f"allowed_hosts entries must be str, got {type(host).__name__}")
        normalised = _normalise_host(host)
        if normalised:
            result.add(normalised)
    return frozenset(result)


def _resolve_hosts(hosts: AllowedHosts) -> frozenset[str]:
    # A callable is asked on every fetch so a live allow-list (config reload) takes effect.
    return _host_set(hosts() if callable(hosts) else hosts)


_MAX_URL_LENGTH = 2048


def _check_url(url: object, allowed: frozenset[str]) -> str:
    """Return ``url`` if it may be fetched; raise :class:`JWKSForbidden` otherwise."""
    if not isinstance(url, str):
        raise JWKSForbidden(f"JWKS URL must be a string, got {type(url).__name__}")
    if len(url) > _MAX_URL_LENGTH:
        raise JWKSForbidden(
            f"JWKS URL is longer than {_MAX_URL_LENGTH} characters: {_show(url)}", url=url
        )
    # Parsers disagree about whitespace, control characters, backslashes and non-ASCII text
    # (urllib drops tabs, WHATWG parsers treat "\" as "/", IDNA maps look-alikes); such URLs
    # are where host-confusion attacks live, and a genuine JWKS URL never needs them.
    if any(not ("!" <= char <= "~") or char == "\\" for char in url):
        raise JWKSForbidden(
            "JWKS URL contains whitespace, control, backslash or non-ASCII characters: "
            + _show(url),
            url=url,
        )
    # Exactly lowercase "https://": anything else (http, HTTPS, https:/, file, ...) is refused.
    if not url.startswith("https://"):
        raise JWKSForbidden(f"JWKS URL must use https: {_show(url)}", url=url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise JWKSForbidden(f"JWKS URL is malformed ({exc}): {_show(url)}", url=url) from None
    if "@" in parts.netloc:
        raise JWKSForbidden(f"JWKS URL must not contain userinfo: {_show(url)}", url=url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - accessed only to validate it (raises ValueError)
    except ValueError as exc:
        raise JWKSForbidden(f"JWKS URL is malformed ({exc}): {_show(url)}", url=url) from None
    if not host:
        raise JWKSForbidden(f"JWKS URL has no host: {_show(url)}", url=url)
    host = _normalise_host(host)
    if host not in allowed:
        raise JWKSForbidden(f"JWKS host {host!r} is not allowed: {_show(url)}", url=url)
    # requests builds the request from urllib3's parse of the URL, not urllib's. Insist both
    # parsers see the same scheme and host so a parser differential cannot move the request.
    try:
        as_sent = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError:
        raise JWKSForbidden(f"JWKS URL is malformed: {_show(url)}", url=url) from None
    if (
        as_sent.scheme != "https"
        or as_sent.auth is not None
        or _normalise_host(as_sent.host or "") != host
    ):
        raise JWKSForbidden(f"JWKS URL is ambiguous: {_show(url)}", url=url)
    return url


# --------------------------------------------------------------------------- fetchers


@dataclass(frozen=True)
class FetchedDocument:
    """The raw body of a fetched JWKS and how long the server says it may be cached."""

    body: bytes
    #: seconds from ``Cache-Control: max-age``; ``None`` when absent; 0 for no-store/no-cache
    max_age: int | None


class Fetcher(Protocol):
    """Fetches one URL.

    Raises :class:`JWKSForbidden` (before any I/O) or :class:`JWKSUnavailable`.
    """

    def __call__(self, url: str) -> FetchedDocument: ...


def _max_age(cache_control: str | None) -> int | None:
    """``max-age`` from a Cache-Control header: None if absent, 0 for no-store/no-cache."""
    if not cache_control:
        return None
    result: int | None = None
    for directive in cache_control.split(","):
        name, _, argument = directive.partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0
        if name != "max-age":
            continue
        argument = argument.strip().strip('"')
        if not (argument.isascii() and argument.isdigit()):
            # RFC 9111 4.2.1: invalid freshness information means "stale".
            value = 0
        elif len(argument) > 10:
            value = 2**31 - 1  # "a very large number"; clamped to max_ttl by the client anyway
        else:
            value = int(argument)
        # Conflicting max-age directives: trust the more conservative one.
        result = value if result is None else min(result, value)
    return result


class HTTPFetcher:
    """Fetches a JWKS with :class:`~flask_obdcr.fetch.BoundedFetch`: https only, allow-listed
    hosts, size cap, and one deadline for the whole fetch.

    ``allowed_hosts`` is a collection of host names, or a callable returning one (asked on every
    fetch). Hosts match exactly, case-insensitively, whatever the port; no wildcards.
    ``verify`` is ``True`` or a CA bundle path. ``timeout`` is ``(connect, read)``: the
    per-operation timeouts, and ``connect + read`` seconds for the whole fetch, redirects
    included (connecting, TLS, headers and body, however slowly the server sends: the fetch is
    cut at that deadline), so a server trickling bytes cannot hold a worker, or the URL's lock
    and every registration waiting on it. Every redirect hop is checked against the same rule
    as the first URL before it is requested.

    When no ``session`` is given, the fetcher makes its own that ignores the environment
    (``HTTPS_PROXY``, ``REQUESTS_CA_BUNDLE``, ``.netrc``) and stores no cookies, so what is
    fetched and how is decided by these arguments alone; pass a configured session to use a
    proxy (it gets a :class:`~flask_obdcr.fetch.DeadlineAdapter`). The session is reused across
    fetches for connection pooling.
    """

    ACCEPT = "application/jwk-set+json, application/json"

    def __init__(
        self,
        *,
        allowed_hosts: AllowedHosts,
        verify: bool | str = True,
        timeout: tuple[float, float] = (3.05, 5.0),
        max_bytes: int = 256 * 1024,
        max_redirects: int = 3,
        session: requests.Session | None = None,
    ) -> None:
        if not callable(allowed_hosts):
            # Validate (and freeze) a static allow-list now, not on the first request.
            allowed_hosts = _host_set(allowed_hosts)
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        connect_timeout, read_timeout = timeout
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive (None would mean wait forever)")
        self._allowed_hosts = allowed_hosts
        self._fetch = BoundedFetch(
            timeout=float(connect_timeout) + float(read_timeout),
            socket_timeout=(float(connect_timeout), float(read_timeout)),
            verify=verify,
            max_bytes=max_bytes,
            max_redirects=max_redirects,
            session=session,
        )

    def close(self) -> None:
        """Close the session if this fetcher created it."""
        self._fetch.close()

    def __call__(self, url: str) -> FetchedDocument:
        allowed = _resolve_hosts(self._allowed_hosts)
        _check_url(url, allowed)
        try:
            response = self._fetch(
                url,
                headers={"Accept": self.ACCEPT},
                # every hop obeys the same rule as the first URL, refused before we connect
                follow=lambda hop: _check_url(hop, allowed),
            )
        except FetchError as error:
            cause = error.cause if isinstance(error, FetchFailed) else None
            raise _jwks_error(error) from (cause or error)
        return FetchedDocument(
            body=response.body, max_age=_max_age(response.headers.get("Cache-Control"))
        )


def _jwks_error(error: FetchError) -> JWKSError:
    """The JWKS error (and message) for a failed fetch."""
    at, url = _show(error.at), error.url
    if isinstance(error, FetchForbidden):
        return JWKSForbidden(f"JWKS URL refused: {error}", url=url)
    if isinstance(error, ResponseTooLarge):
        message = f"JWKS at {at} is larger than {error.limit} bytes"
    elif isinstance(error, RedirectRefused) and error.location is None:
        message = f"JWKS fetch of {_show(url)} got HTTP {error.status} without a Location"
    elif isinstance(error, UnexpectedStatus):
        message = f"JWKS fetch of {at} got HTTP {error.status}"
    elif isinstance(error, TooManyRedirects):
        message = f"JWKS fetch of {_show(url)} exceeded {error.limit} redirects"
    elif isinstance(error, FetchTimeout):
        message = f"JWKS fetch of {at} took longer than {error.seconds:g} s"
    elif isinstance(error, FetchFailed) and error.cause is not None:
        cause = error.cause
        reading = " while reading" if error.reading else ""
        message = f"JWKS fetch of {at} failed{reading}: {type(cause).__name__}: {cause}"
    else:
        message = f"JWKS fetch of {at} failed: {error}"
    return JWKSUnavailable(message, url=url)


class StaticFetcher:
    """In-process fetcher for tests and sandboxes.

    ``documents`` maps URL -> JWKS (a dict, serialised as JSON), raw ``bytes``/``str``, a
    :class:`FetchedDocument` (to set a per-URL ``max_age``), or an exception instance (raised
    to simulate a failure). It stays a mutable dict: tests add and replace entries; a dict
    passed in is used as is, not copied. An unknown URL raises :class:`JWKSUnavailable`.

    With ``allowed_hosts`` the same https + allow-list rule as :class:`HTTPFetcher` applies.
    ``calls`` lists every URL that passed that rule, i.e. every fetch that would have reached
    the network (a forbidden URL is refused before it is recorded, as no request would be made).
    """

    def __init__(
        self,
        documents: Mapping[str, Any] | None = None,
        *,
        allowed_hosts: AllowedHosts | None = None,
        max_age: int | None = 300,
    ) -> None:
        if allowed_hosts is not None and not callable(allowed_hosts):
            allowed_hosts = _host_set(allowed_hosts)
        self.documents: dict[str, Any] = (
            documents if isinstance(documents, dict) else dict(documents or {})
        )
        self.calls: list[str] = []
        self.max_age = max_age
        self._allowed_hosts = allowed_hosts

    def __call__(self, url: str) -> FetchedDocument:
        if self._allowed_hosts is not None:
            _check_url(url, _resolve_hosts(self._allowed_hosts))
        self.calls.append(url)
        try:
            document = self.documents[url]
        except KeyError:
            raise JWKSUnavailable(f"no document for {_show(url)}", url=url) from None
        if isinstance(document, BaseException):
            raise document
        if isinstance(document, FetchedDocument):
            return document
        if isinstance(document, bytes):
            body = document
        elif isinstance(document, str):
            body = document.encode()
        else:
            body = json.dumps(document).encode()
        return FetchedDocument(body=body, max_age=self.max_age)


# --------------------------------------------------------------------------- parsing

# Every member that is private key material for any key type jwcrypto knows (RSA d/p/q/...,
# EC/OKP d, oct k, AKP priv). Removed before import so a published private key (a TPP's
# mistake) is never held in memory or a shared cache; "oct" keys lose "k" and are dropped.
_PRIVATE_MEMBERS = frozenset(
    name
    for members in JWKValuesRegistry.values()
    for name, parameter in members.items()
    if not parameter.public
)


@dataclass(frozen=True)
class _ParsedKeys:
    raw: str  # sanitised JSON: {"keys": [public members of the importable keys]}
    document: dict[str, Any]  # the same, parsed (for x5c and other members)
    # the keys that may verify a signature (above the JWS key floor), in document order
    # (a JWKSet is a set: its order is arbitrary)
    keys: tuple[JWK, ...]
    key_set: JWKSet  # the same keys


#: at most this many weak keys are named in the one log line a fetch writes about them
_WEAK_KEYS_SHOWN = 5


def _parse_jwks(body: bytes | str, url: str, *, quiet: bool = False) -> _ParsedKeys:
    """Parse a JWKS document, keeping only public parts of the keys jwcrypto can import.

    Keys below the JWS key floor (:func:`~flask_obdcr.jose.jws_key_problem`: short or
    odd-exponent RSA, EC off P-256) stay in the document, whose ``x5c`` members bind transport
    certificates, but are never candidates for verifying a signature. One warning names them
    unless ``quiet`` (a cached entry parsed again: warned about when it was fetched).
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise JWKSUnavailable(f"JWKS at {_show(url)} is not JSON: {exc}", url=url) from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JWKSUnavailable(
            f'JWKS at {_show(url)} is not a JSON object with a "keys" list', url=url
        )
    kept: list[dict[str, Any]] = []
    keys: list[JWK] = []
    weak: list[str] = []
    seen: set[tuple[str, Any]] = set()
    key_set = JWKSet()
    for index, member in enumerate(document["keys"]):
        if not isinstance(member, dict):
            log.warning("JWKS %s: key #%d is not an object; skipped", _show(url), index)
            continue
        public = {name: value for name, value in member.items() if name not in _PRIVATE_MEMBERS}
        try:
            key = JWK(**public)
            # Builds (and caches inside the JWK) the cryptography public key now, so a bad
            # modulus or an off-curve point is skipped here and verification later is cheap.
            key.export_to_pem()
            identity = (key.thumbprint(), key.get("kid"))
        except Exception as exc:  # any import failure means "unusable key"
            log.warning(
                "JWKS %s: key #%d (kid %r) cannot be imported; skipped: %s",
                _show(url),
                index,
                member.get("kid"),
                exc,
            )
            continue
        if key.has_private or key.is_symmetric:  # belt and braces; stripped above
            continue
        if identity in seen:  # the same key twice (JWKSet would merge them too)
            continue
        seen.add(identity)
        kept.append(public)
        problem = jws_key_problem(key)
        if problem is not None:
            weak.append(f"kid {_show(key.get('kid'))}: {problem}")  # repr, cut short
            continue
        keys.append(key)
        key_set.add(key)
    if weak and not quiet:
        # one line per fetch, however many keys: a hostile set cannot flood the log
        shown = "; ".join(weak[:_WEAK_KEYS_SHOWN])
        more = f"; and {len(weak) - _WEAK_KEYS_SHOWN} more" if len(weak) > _WEAK_KEYS_SHOWN else ""
        log.warning(
            "JWKS %s: %d key(s) below the JWS key floor, never used to verify a signature: %s%s",
            _show(url),
            len(weak),
            shown,
            more,
        )
    raw = json.dumps({"keys": kept}, separators=(",", ":"))
    return _ParsedKeys(raw=raw, document={"keys": kept}, keys=tuple(keys), key_set=key_set)


# --------------------------------------------------------------------------- cache

# The cache contract (JWKSCache), its record (CacheEntry) and the caches live in
# flask_obdcr.storage; building a record's parsed form is ours.


def _parse_cached(raw: str) -> _ParsedKeys:
    # quiet: a cached entry's weak keys were warned about when it was fetched
    return _parse_jwks(raw, "<cache>", quiet=True)


CacheEntry.parser = _parse_cached


# --------------------------------------------------------------------------- client

# What key can have made a signature with each alg: (kty, allowed curves or None).
# HS* and "none" are absent on purpose: a JWKS never verifies them. So are ES384 and ES512:
# their curves (P-384, P-521) are below the JWS key floor (EC keys verify on P-256 only), so
# no key could qualify, and a lookup should not fetch to find that out.
_ALG_KEYS: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


def _can_verify(key: JWK, alg: str) -> bool:
    kty, curves = _ALG_KEYS[alg]
    if key.get("kty") != kty or (curves is not None and key.get("crv") not in curves):
        return False
    use = key.get("use")
    if use is not None and use != "sig":
        return False
    key_ops = key.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return False
    key_alg = key.get("alg")
    return key_alg is None or key_alg == alg


class _KeyedLocks:
    """One lock per key, existing only while someone holds or waits for it (bounded memory)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[str, list[Any]] = {}  # key -> [lock, holders + waiters]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = [threading.Lock(), 0]
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._guard:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._slots[key]


class JWKSClient:
    """Key sets by URL: cached, refreshed, and looked up by ``kid``/``alg``.

    Freshness: a fetched set is fresh for the response's ``max-age`` clamped to
    ``[min_ttl, max_ttl]`` (``default_ttl`` when absent), then usable as a stale fallback for
    ``stale_ttl`` more seconds, served only when a new fetch fails.

    Rate limits, per URL, so neither an outage nor an attacker makes us hammer a JWKS host:
    after a failed fetch no new fetch is tried for ``refresh_interval`` seconds (requests in
    between get the stale entry or :class:`JWKSUnavailable` at once instead of waiting for a
    timeout); and a lookup that finds no key forces at most one refresh per
    ``refresh_interval`` seconds since the last fetch (e.g. random ``kid`` values).

    Thread-safe; concurrent misses for one URL cause a single fetch. A warm lookup makes no
    network call and parses nothing: the entry keeps its imported keys.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        cache: JWKSCache | None = None,
        clock: Callable[[], float] = time.time,
        default_ttl: int = 300,
        min_ttl: int = 60,
        max_ttl: int = 86400,
        stale_ttl: int = 3600,
        refresh_interval: int = 30,
    ) -> None:
        if min(default_ttl, min_ttl, max_ttl, stale_ttl, refresh_interval) < 0:
            raise ValueError("TTLs and refresh_interval must not be negative")
        if min_ttl > max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        self.fetcher = fetcher
        self.cache: JWKSCache = cache if cache is not None else MemoryJWKSCache()
        self.clock = clock
        self.default_ttl = default_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.stale_ttl = stale_ttl
        self.refresh_interval = refresh_interval
        self._locks = _KeyedLocks()
        # url -> (time of the last fetch attempt, whether it succeeded); bounded like a cache.
        self._attempts: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._attempts_lock = threading.Lock()
        self._max_attempts = 4096

    # ----------------------------------------------------------------- public API

    def key_set(self, url: str) -> JWKSet:
        """The key set at ``url``: fresh from the cache, else fetched. It holds the keys that
        may verify signatures: keys below the JWS key floor are left out.

        If the fetch fails, a stale entry is served until its ``stale_until``; otherwise
        :class:`JWKSUnavailable`. :class:`JWKSForbidden` always propagates and is never cached.
        The returned set is shared with the cache: treat it as read-only.
        """
        return self._entry(url).key_set

    def document(self, url: str) -> dict[str, Any]:
        """The key set at ``url`` as a JSON object, ``{"keys": [...]}``, same rules as
        :meth:`key_set`. Holds the members of every importable key (``x5c`` etc.), keys below
        the JWS key floor included (they may publish a transport certificate), private members
        removed; unimportable keys and other top-level members are dropped. A fresh copy each
        call.
        """
        return copy_json(self._entry(url).parsed().document)

    def shared_document(self, url: str) -> Mapping[str, Any]:
        """:meth:`document` without the copy: the cache's own object, the same one for as long
        as the cached entry stands (callers may index it by identity). Read-only."""
        return self._entry(url).parsed().document

    def refresh(self, url: str) -> None:
        """Fetch ``url`` now, whatever the cache holds (re-validation wants the Directory's
        current keys, not the cached ones). :class:`JWKSError` when the fetch fails; the cached
        entry then stays as it was."""
        with self._locks.hold(url):
            self._fetch(url)

    def candidate_keys(self, url: str, *, kid: str | None, alg: str) -> list[JWK]:
        """Every key of the set that could have made a signature with ``alg``, in document order.

        A key qualifies when it is above the JWS key floor
        (:func:`~flask_obdcr.jose.jws_key_problem`), its ``kty`` (and curve) fits ``alg``, its
        ``use`` (if present) is ``sig``, its ``key_ops`` (if present) include ``verify``, its
        ``alg`` (if present) equals ``alg``, and, when ``kid`` is given, its ``kid`` equals it.
        With no candidate, the set is refreshed once (rate-limited per URL); still none raises
        :class:`KeyNotFound`, as does an ``alg`` no JWKS key can verify (``HS*``, ``none``,
        ``ES384``, ``ES512``: no fetch at all). :func:`~flask_obdcr.jose.verify` tries at most
        :data:`~flask_obdcr.jose.MAX_KEYS_TRIED` of them.
        """
        if alg not in _ALG_KEYS:
            raise KeyNotFound(f"no JWKS key can verify alg {alg!r}", url=url)
        entry = self._entry(url)
        found = self._select(entry, kid, alg)
        if found:
            return found
        with self._locks.hold(url):
            # Another thread may have refreshed while we waited for the lock.
            current = self._cached(url) or entry
            found = self._select(current, kid, alg)
            if found:
                return found
            now = self.clock()
            last = self._last_fetch(url, current)
            if last <= now < last + self.refresh_interval:
                raise KeyNotFound(
                    f"no key for kid {kid!r} and alg {alg!r} in JWKS {_show(url)} "
                    f"(fetched {now - last:.0f} s ago; not refreshed again yet)",
                    url=url,
                )
            try:
                current = self._fetch(url)
            except JWKSForbidden:
                raise
            except JWKSUnavailable as exc:
                raise KeyNotFound(
                    f"no key for kid {kid!r} and alg {alg!r} in JWKS {_show(url)}, "
                    f"and refreshing it failed: {exc}",
                    url=url,
                ) from exc
            found = self._select(current, kid, alg)
            if found:
                return found
        raise KeyNotFound(f"no key for kid {kid!r} and alg {alg!r} in JWKS {_show(url)}", url=url)

    def find_key(self, url: str, *, kid: str | None, alg: str) -> JWK:
        """The first of :meth:`candidate_keys` (callers verifying a JWS without ``kid`` should
        try every candidate instead)."""
        return self.candidate_keys(url, kid=kid, alg=alg)[0]

    # ----------------------------------------------------------------- internals

    def _ttl(self, max_age: int | None) -> int:
        if max_age is None:
            return self.default_ttl
        return max(self.min_ttl, min(self.max_ttl, max_age))

    def _cached(self, url: str) -> CacheEntry | None:
        entry = self.cache.get(url)
        if entry is None:
            return None
        try:
            entry.parsed()  # no-op for an in-memory entry; one parse for a shared-cache entry
        except JWKSError:
            log.warning("cached JWKS for %s is corrupt; ignored", _show(url))
            return None
        return entry

    def _entry(self, url: str) -> CacheEntry:
        entry = self._cached(url)
        if entry is not None and self.clock() < entry.fresh_until:
            return entry  # the warm path: no lock, no I/O, no parsing
        with self._locks.hold(url):
            # A concurrent miss may have fetched it while we waited.
            entry = self._cached(url)
            now = self.clock()
            if entry is not None and now < entry.fresh_until:
                return entry
            failed_at = self._recent_failure(url, now)
            if failed_at is not None:
                if entry is not None and now < entry.stale_until:
                    return entry
                raise JWKSUnavailable(
                    f"JWKS fetch of {_show(url)} failed {now - failed_at:.0f} s ago; "
                    f"next attempt in {failed_at + self.refresh_interval - now:.0f} s",
                    url=url,
                )
            try:
                return self._fetch(url)
            except JWKSUnavailable as exc:
                if entry is not None and now < entry.stale_until:
                    log.warning(
                        "serving stale JWKS for %s (fresh until %s, stale until %s): %s",
                        _show(url),
                        entry.fresh_until,
                        entry.stale_until,
                        exc,
                    )
                    return entry
                raise

    def _fetch(self, url: str) -> CacheEntry:
        """Fetch, parse and cache ``url``; the caller holds the URL's lock."""
        try:
            document = self.fetcher(url)
        except JWKSForbidden:
            raise  # a policy refusal, not an attempt: nothing recorded, nothing cached
        except JWKSUnavailable:
            self._record_attempt(url, ok=False)
            raise
        except Exception as exc:
            # A custom fetcher's own failure; never let it escape as something unexpected.
            self._record_attempt(url, ok=False)
            raise JWKSUnavailable(
                f"JWKS fetch of {_show(url)} failed: {type(exc).__name__}: {exc}", url=url
            ) from exc
        try:
            parsed = _parse_jwks(document.body, url)
        except JWKSUnavailable:
            self._record_attempt(url, ok=False)
            raise
        now = self.clock()
        fresh_until = now + self._ttl(document.max_age)
        entry = CacheEntry(
            raw=parsed.raw,
            fetched_at=now,
            fresh_until=fresh_until,
            stale_until=fresh_until + self.stale_ttl,
        )
        entry._parsed = parsed  # so the first lookup does not parse again
        self.cache.set(url, entry)
        self._record_attempt(url, ok=True, at=now)
        return entry

    @staticmethod
    def _select(entry: CacheEntry, kid: str | None, alg: str) -> list[JWK]:
        return [
            key
            for key in entry.parsed().keys
            if (kid is None or key.get("kid") == kid) and _can_verify(key, alg)
        ]

    def _record_attempt(self, url: str, *, ok: bool, at: float | None = None) -> None:
        with self._attempts_lock:
            self._attempts[url] = (self.clock() if at is None else at, ok)
            self._attempts.move_to_end(url)
            while len(self._attempts) > self._max_attempts:
                self._attempts.popitem(last=False)

    def _recent_failure(self, url: str, now: float) -> float | None:
        with self._attempts_lock:
            attempt = self._attempts.get(url)
        if attempt is None:
            return None
        at, ok = attempt
        # `at <= now`: if the clock went backwards, do not block fetching until it catches up.
        if not ok and at <= now < at + self.refresh_interval:
            return at
        return None

    def _last_fetch(self, url: str, entry: CacheEntry) -> float:
        # The entry's fetched_at counts too: with a shared cache another process may have
        # fetched it moments ago.
        with self._attempts_lock:
            attempt = self._attempts.get(url)
        return entry.fetched_at if attempt is None else max(entry.fetched_at, attempt[0])
