"""One bounded HTTP fetch, used for every document the extension downloads: JWKS, CRLs and
OCSP responses.

A fetch is bounded three ways, whatever the server does:

* **Time.** ``timeout`` seconds for the fetch as a whole: connecting (each address tried),
  the TLS handshake, the request, the status line and headers, the body, and every redirect
  hop. Per-socket timeouts cannot promise this (a server sending one byte a second never
  trips a read timeout), so each fetch has a watchdog: every socket the fetch opens or reuses
  is registered with it, and at the deadline the watchdog shuts those sockets down, which ends
  any read or connect blocked on them at once. The blocked call then fails and the fetch
  raises :class:`FetchTimeout`. The one step outside the watchdog's reach is name resolution
  (``getaddrinfo`` cannot be interrupted); it is bounded by the system resolver's own
  timeouts, and the hosts come from configuration (JWKS) or from certificates that chained to
  the configured trust anchors (CRL, OCSP).
* **Size.** At most ``max_bytes`` of body (decoded), checked against ``Content-Length``
  before reading and while streaming.
* **Place.** ``http`` or ``https`` only, no userinfo, nothing but printable ASCII; no
  redirect is followed unless the caller passes ``follow``, which sees (and may refuse) every
  hop before it is requested.

Sockets are registered through connection classes installed by :class:`DeadlineAdapter`;
a fetch whose session has no such adapter for the URL is refused before any I/O rather than
run unbounded. The watchdog is a :class:`threading.Timer` started when the fetch starts and
cancelled and joined when it ends, so no thread outlives its fetch; each registration holds a
duplicate of the socket's descriptor (so a socket wrapped in TLS after registration is still
reached), closed when the fetch ends.

Part of the protocol core: no Flask imports.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import requests.structures
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util
from urllib3.util.connection import allowed_gai_family

__all__ = [
    "BoundedFetch",
    "DeadlineAdapter",
    "FetchError",
    "FetchFailed",
    "FetchForbidden",
    "FetchResponse",
    "FetchTimeout",
    "RedirectRefused",
    "ResponseTooLarge",
    "TooManyRedirects",
    "UnexpectedStatus",
    "check_fetch_url",
]

#: statuses that carry a ``Location`` to follow
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_MAX_URL_LENGTH = 2048


def show(url: object) -> str:
    """``url`` for a log line or message: ``repr`` (control characters escaped), cut short."""
    text = repr(url)
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- errors


class FetchError(Exception):
    """Base of every error of a fetch.

    ``url`` is the URL the caller asked for; ``at`` the one being fetched when it failed (a
    redirect hop; the same URL when there was none).
    """

    def __init__(self, message: str, *, url: str, at: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.at = url if at is None else at


class FetchForbidden(FetchError):
    """The URL may not be fetched (scheme, userinfo, characters, length); no I/O was done."""


class FetchFailed(FetchError):
    """Connecting, TLS, or the HTTP exchange failed. ``cause`` is the underlying exception;
    ``reading`` is True when the failure came while reading the body."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        at: str | None = None,
        cause: BaseException | None,
        reading: bool = False,
    ) -> None:
        super().__init__(message, url=url, at=at)
        self.cause = cause
        self.reading = reading


class FetchTimeout(FetchError):
    """The fetch as a whole took longer than ``seconds``."""

    def __init__(self, message: str, *, url: str, at: str | None = None, seconds: float) -> None:
        super().__init__(message, url=url, at=at)
        self.seconds = seconds


class ResponseTooLarge(FetchError):
    """The body is larger than ``limit`` bytes."""

    def __init__(self, message: str, *, url: str, at: str | None = None, limit: int) -> None:
        super().__init__(message, url=url, at=at)
        self.limit = limit


class UnexpectedStatus(FetchError):
    """The server answered with ``status``, neither 200 nor a redirect that was followed."""

    def __init__(self, message: str, *, url: str, at: str | None = None, status: int) -> None:
        super().__init__(message, url=url, at=at)
        self.status = status


class RedirectRefused(UnexpectedStatus):
    """A redirect the caller did not ask to follow, or one without a ``Location``
    (``location`` is then ``None``)."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        at: str | None = None,
        status: int,
        location: str | None,
    ) -> None:
        super().__init__(message, url=url, at=at, status=status)
        self.location = location


class TooManyRedirects(FetchError):
    """More than ``limit`` redirects."""

    def __init__(self, message: str, *, url: str, limit: int) -> None:
        super().__init__(message, url=url)
        self.limit = limit


# --------------------------------------------------------------------------- URL rule


def check_fetch_url(url: object) -> str:
    """``url`` if it may be fetched at all: an absolute ``http`` or ``https`` URL with a host,
    no userinfo, printable ASCII only, at most 2048 characters, read the same way by urllib and
    urllib3. :class:`FetchForbidden` otherwise. Callers add their own rules (JWKS: https and
    an allow-list)."""
    if not isinstance(url, str):
        raise FetchForbidden(f"URL must be a string, got {type(url).__name__}", url=repr(url))
    if len(url) > _MAX_URL_LENGTH:
        raise FetchForbidden(
            f"URL is longer than {_MAX_URL_LENGTH} characters: {show(url)}", url=url
        )
    # Whitespace, controls, backslashes and non-ASCII text are where URL parsers disagree.
    if any(not ("!" <= char <= "~") or char == "\\" for char in url):
        raise FetchForbidden(
            f"URL contains whitespace, control, backslash or non-ASCII characters: {show(url)}",
            url=url,
        )
    if not url.startswith(("http://", "https://")):
        raise FetchForbidden(f"URL must use http or https: {show(url)}", url=url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - accessed only to validate it (raises ValueError)
        as_sent = urllib3.util.parse_url(url)
    except (ValueError, urllib3.exceptions.LocationParseError):
        raise FetchForbidden(f"URL is malformed: {show(url)}", url=url) from None
    if "@" in parts.netloc or as_sent.auth is not None:
        raise FetchForbidden(f"URL must not contain userinfo: {show(url)}", url=url)
    if not host:
        raise FetchForbidden(f"URL has no host: {show(url)}", url=url)
    # requests sends what urllib3 parses; both must see the same scheme and host.
    if as_sent.scheme != parts.scheme or (as_sent.host or "").lower().strip("[]") != host:
        raise FetchForbidden(f"URL is ambiguous: {show(url)}", url=url)
    return url


# --------------------------------------------------------------------------- the watchdog


class _Watchdog:
    """The deadline of one fetch, and the sockets it must cut when the deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []  # duplicates of the watched descriptors
        self._fired = False
        self._closed = False
        #: whether any socket was watched: a fetch with none was not bounded (fail closed)
        self.watched_any = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.name = "obdcr-fetch-deadline"

    def start(self) -> None:
        self._timer.start()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def fired(self) -> bool:
        """Whether the deadline passed and the sockets were cut."""
        return self._fired

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self.deadline

    def watch(self, sock: socket.socket) -> socket.socket | None:
        """Register ``sock``; returns the handle :meth:`unwatch` takes."""
        # A duplicate descriptor of the same socket: wrapping the socket in TLS detaches the
        # original object (its fileno becomes -1), but shutting down the duplicate still ends
        # any read on the connection. Owning the descriptor also means it cannot be closed and
        # reused by another connection while we hold it.
        duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self._lock:
            if self._closed:
                duplicate.close()
                return None
            self._sockets.append(duplicate)
            self.watched_any = True
            if self._fired:
                _cut(duplicate)
        return duplicate

    def unwatch(self, handle: socket.socket | None) -> None:
        if handle is None:
            return
        with self._lock:
            if handle in self._sockets:
                self._sockets.remove(handle)
        handle.close()

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fired = True
            for duplicate in self._sockets:
                _cut(duplicate)

    def close(self) -> None:
        """End the watch: stop the timer thread and release every duplicate descriptor."""
        self._timer.cancel()
        if self._timer.is_alive():
            self._timer.join()
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for duplicate in sockets:
            duplicate.close()


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to end


_local = threading.local()


def _current() -> _Watchdog | None:
    watchdog: _Watchdog | None = getattr(_local, "watchdog", None)
    return watchdog


# --------------------------------------------------------------------------- urllib3 plumbing


def _bounded_connect(conn: Any, watchdog: _Watchdog) -> socket.socket:
    """urllib3's ``_new_conn`` with every address attempt inside the deadline and each socket
    watched from before its ``connect``; raises what urllib3 raises, so requests maps it."""
    host: str = getattr(conn, "_dns_host", conn.host)
    if host.startswith("["):
        host = host.strip("[]")
    try:
        sock = _create_connection(
            watchdog,
            (host, conn.port),
            conn.timeout,
            conn.source_address,
            conn.socket_options,
        )
    except socket.gaierror as error:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, error) from error
    except TimeoutError as error:
        raise urllib3.exceptions.ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from error
    except OSError as error:
        raise urllib3.exceptions.NewConnectionError(
            conn, f"Failed to establish a new connection: {error}"
        ) from error
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    conn._obdcr_watchdog = watchdog
    return sock


def _create_connection(
    watchdog: _Watchdog,
    address: tuple[str, int],
    timeout: object,
    source_address: tuple[str, int] | None,
    socket_options: Any,
) -> socket.socket:
    host, port = address
    error: OSError | None = None
    for family, kind, proto, _name, where in socket.getaddrinfo(
        host, port, allowed_gai_family(), socket.SOCK_STREAM
    ):
        remaining = watchdog.remaining()
        if remaining <= 0:
            raise TimeoutError("the fetch deadline passed while connecting")
        sock = socket.socket(family, kind, proto)
        handle = None
        try:
            handle = watchdog.watch(sock)
            for option in socket_options or ():
                sock.setsockopt(*option)
            limit = remaining
            if isinstance(timeout, int | float) and not isinstance(timeout, bool):
                limit = min(float(timeout), remaining)
            sock.settimeout(limit)
            if source_address:
                sock.bind(source_address)
            sock.connect(where)
            return sock
        except OSError as exc:
            error = exc
            watchdog.unwatch(handle)
            sock.close()
    if error is not None:
        raise error
    raise OSError("getaddrinfo returned no address")


def _watch_reused(conn: Any) -> None:
    # A kept-alive connection from the pool was connected by an earlier fetch: watch it for
    # this one before the request goes out.
    watchdog = _current()
    if watchdog is None or conn.sock is None or getattr(conn, "_obdcr_watchdog", None) is watchdog:
        return
    watchdog.watch(conn.sock)
    conn._obdcr_watchdog = watchdog


class _HTTPConnection(urllib3.connection.HTTPConnection):
    """A connection whose socket the current fetch's watchdog cuts at the deadline, whether
    it connects now or was kept alive by an earlier fetch."""

    def _new_conn(self) -> socket.socket:
        watchdog = _current()
        if watchdog is None:
            return super()._new_conn()
        return _bounded_connect(self, watchdog)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_reused(self)
        super().request(*args, **kwargs)


class _HTTPSConnection(_HTTPConnection, urllib3.connection.HTTPSConnection):
    """The same, over TLS (the handshake included in the deadline)."""


class _HTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_STOCK_POOLS = {
    "http": (urllib3.connectionpool.HTTPConnectionPool, _HTTPConnectionPool),
    "https": (urllib3.connectionpool.HTTPSConnectionPool, _HTTPSConnectionPool),
}


def _install(manager: Any) -> None:
    pools = getattr(manager, "pool_classes_by_scheme", None)
    if not isinstance(pools, dict) or any(
        pools.get(scheme) not in known for scheme, known in _STOCK_POOLS.items()
    ):
        # a SOCKS proxy or another transport: its sockets would never be watched
        raise requests.exceptions.InvalidProxyURL(
            f"{type(manager).__name__} connections cannot be held to a fetch deadline"
        )
    manager.pool_classes_by_scheme = {scheme: ours for scheme, (_, ours) in _STOCK_POOLS.items()}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that register their sockets with the fetch's
    watchdog (direct and through an HTTP(S) proxy; a SOCKS proxy is refused). Outside a
    :class:`BoundedFetch` it behaves exactly like :class:`requests.adapters.HTTPAdapter`."""

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _install(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _install(manager)
        return manager


def _with_deadline_adapters(session: requests.Session) -> requests.Session:
    for prefix in ("https://", "http://"):
        adapter = session.adapters.get(prefix)
        if isinstance(adapter, DeadlineAdapter):
            continue
        if adapter is not None and type(adapter) is not requests.adapters.HTTPAdapter:
            raise TypeError(
                f"the session's adapter for {prefix} is {type(adapter).__name__}, which cannot "
                "hold a fetch to its deadline: mount flask_obdcr.fetch.DeadlineAdapter instead"
            )
        replacement = DeadlineAdapter()
        if adapter is not None:
            replacement.max_retries = adapter.max_retries
        session.mount(prefix, replacement)
    return session


# --------------------------------------------------------------------------- the fetch


@dataclass(frozen=True)
class FetchResponse:
    """A 200 response read in full: the URL it came from (the last hop), headers, body."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes


_FAILURES = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class BoundedFetch:
    """Fetches one URL within ``timeout`` seconds and ``max_bytes`` bytes (see the module
    docstring); thread-safe, and callable as ``fetch(url, ...)``.

    ``socket_timeout`` is requests' per-operation ``(connect, read)`` timeout inside that
    deadline (default: connect within ``min(3.05, timeout)``, each read within ``timeout``);
    it makes a silent server fail sooner, never later. ``verify`` is ``True`` (the system CAs)
    or a CA bundle path for ``https``. ``max_redirects`` applies only when a call passes
    ``follow``.

    Without a ``session`` the fetch makes its own that ignores the environment (proxies,
    ``REQUESTS_CA_BUNDLE``, ``.netrc``) and stores no cookies. A given session (to use a proxy,
    say) gets a :class:`DeadlineAdapter` mounted for ``http://`` and ``https://`` in place of
    requests' default adapter; a session with another adapter there is refused
    (``TypeError``), as its fetches could not be bounded.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        socket_timeout: float | tuple[float, float] | None = None,
        verify: bool | str = True,
        max_bytes: int = 256 * 1024,
        max_redirects: int = 3,
        session: requests.Session | None = None,
    ) -> None:
        if isinstance(timeout, bool) or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        if socket_timeout is None:
            socket_timeout = (min(3.05, float(timeout)), float(timeout))
        elif not isinstance(socket_timeout, tuple):
            socket_timeout = (float(socket_timeout), float(socket_timeout))
        if min(socket_timeout) <= 0:
            raise ValueError("socket timeouts must be positive (None would mean wait forever)")
        self.timeout = float(timeout)
        self.socket_timeout = socket_timeout
        self.verify = verify
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session = _with_deadline_adapters(session)

    def close(self) -> None:
        """Close the session if this fetch created it."""
        if self._owns_session:
            self.session.close()

    def __call__(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        follow: Callable[[str], str] | None = None,
    ) -> FetchResponse:
        """Fetch ``url`` and return its 200 response, read in full.

        ``follow``, when given, is called with each redirect's absolute target before it is
        requested and returns the URL to fetch (or raises: its exception propagates as is);
        without it a redirect raises :class:`RedirectRefused`. Only GET is redirected. Any
        other status raises :class:`UnexpectedStatus`; the other failures are the
        :class:`FetchError` subclasses.
        """
        check_fetch_url(url)
        limit = self.max_bytes if max_bytes is None else max_bytes
        sent_headers = {"Accept-Encoding": "identity", **(headers or {})}
        watchdog = _Watchdog(self.timeout)
        previous = _current()
        _local.watchdog = watchdog
        watchdog.start()
        try:
            current = url
            for _hop in range(self.max_redirects + 1 if follow is not None else 1):
                response = self._send(method, current, body, sent_headers, url, watchdog)
                try:
                    status = response.status_code
                    if status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if follow is None or method != "GET" or not location:
                            detail = "without a Location" if not location else "not followed"
                            raise RedirectRefused(
                                f"fetch of {show(url)} got HTTP {status} {detail}",
                                url=url,
                                at=current,
                                status=status,
                                location=location or None,
                            )
                        current = check_fetch_url(follow(urljoin(current, location)))
                        continue
                    if status != 200:
                        raise UnexpectedStatus(
                            f"fetch of {show(current)} got HTTP {status}",
                            url=url,
                            at=current,
                            status=status,
                        )
                    content = self._read(response, current, url, limit, watchdog)
                    return FetchResponse(
                        url=current,
                        status=status,
                        headers=requests.structures.CaseInsensitiveDict(response.headers),
                        body=content,
                    )
                finally:
                    # stream=True leaves the connection checked out until the response closes
                    response.close()
            raise TooManyRedirects(
                f"fetch of {show(url)} exceeded {self.max_redirects} redirects",
                url=url,
                limit=self.max_redirects,
            )
        finally:
            _local.watchdog = previous
            watchdog.close()

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        original: str,
        watchdog: _Watchdog,
    ) -> requests.Response:
        adapter = self.session.get_adapter(url)
        if not isinstance(adapter, DeadlineAdapter):
            raise FetchFailed(
                f"fetch of {show(url)} refused: the session's adapter for it cannot enforce "
                "the deadline",
                url=original,
                at=url,
                cause=None,
            )
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=self.socket_timeout,
                verify=self.verify,
                allow_redirects=False,  # the caller's `follow` judges every hop
                stream=True,  # so the size cap applies before the body is in memory
            )
        except _FAILURES as exc:
            if watchdog.expired:
                raise self._timeout(url, original) from exc
            raise FetchFailed(
                f"fetch of {show(url)} failed: {type(exc).__name__}: {exc}",
                url=original,
                at=url,
                cause=exc,
            ) from exc
        if not watchdog.watched_any:
            # Some transport bypassed our connection classes: the deadline was not enforced
            # for this fetch, so do not trust it to be for the body either.
            response.close()
            raise FetchFailed(
                f"fetch of {show(url)} refused: its connection was not held to the deadline",
                url=original,
                at=url,
                cause=None,
            )
        return response

    def _read(
        self,
        response: requests.Response,
        url: str,
        original: str,
        limit: int,
        watchdog: _Watchdog,
    ) -> bytes:
        too_big = ResponseTooLarge(
            f"body at {show(url)} is larger than {limit} bytes", url=original, at=url, limit=limit
        )
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        try:
            # Counts decoded bytes, so a small compressed body cannot expand past the cap.
            for chunk in response.iter_content(chunk_size=min(65536, limit + 1)):
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
            if watchdog.fired:
                # A body read until the connection closes ends "cleanly" when the watchdog cuts
                # the socket: what was read may be a truncated document.
                raise self._timeout(url, original)
        except _FAILURES as exc:
            if watchdog.expired:
                raise self._timeout(url, original) from exc
            raise FetchFailed(
                f"fetch of {show(url)} failed while reading: {type(exc).__name__}: {exc}",
                url=original,
                at=url,
                cause=exc,
                reading=True,
            ) from exc
        return b"".join(chunks)

    def _timeout(self, url: str, original: str) -> FetchTimeout:
        return FetchTimeout(
            f"fetch of {show(url)} took longer than {self.timeout:g} s",
            url=original,
            at=url,
            seconds=self.timeout,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(timeout={self.timeout:g}, max_bytes={self.max_bytes})"
