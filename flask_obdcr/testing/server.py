"""Real HTTPS servers on loopback, for tests that must cross an actual socket.

:class:`JWKSServer` publishes a :class:`~flask_obdcr.testing.SandboxDirectory`'s key sets over
HTTPS on ``127.0.0.1``, with a server certificate issued by the Directory's own PKI, so a bank
app can be tested with the real :class:`~flask_obdcr.jwks.HTTPFetcher` (TLS verification,
allow-list, caching headers) instead of an in-process fetcher::

    directory = SandboxDirectory()
    with JWKSServer(directory) as server:             # directory.base_url now points at it
        software = directory.register_software()      # served at once: documents are live
        app.config.update(OBDCR_HTTP_VERIFY=server.ca_file(tmp_path / "jwks-ca.pem"), ...)
        ...
        assert server.requests == ["/openbanking.jwks", f"/{software.org_id}/..."]

:class:`RecordingHTTPServer` answers every request with one fixed body and records it: point
an attacker-controlled URL (``jku``, ``x5u``, a forbidden ``software_jwks_endpoint``) at it and
assert that ``requests`` stays empty, i.e. that nothing left the process.

Both run Werkzeug's threaded development server in a daemon thread, bind a free port chosen
by the OS, log through the ``flask_obdcr.testing.server`` logger (DEBUG) instead of stderr,
and are context managers (``stop()`` closes the listening socket and any kept-alive
connection, so a later fetch gets "connection refused").
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from .directory import SandboxDirectory
from .loopback import LOOPBACK, LoopbackServer
from .pki import CertificateAuthority, generate_key, key_pem, pem

__all__ = ["JWKSServer", "RecordedRequest", "RecordingHTTPServer"]

log = logging.getLogger(__name__)


StartResponse = Callable[..., Any]
_Server = TypeVar("_Server", bound="_LoopbackServer")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived: method, raw path (with any query) and headers."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


def server_ssl_context(
    ca: CertificateAuthority,
    *,
    host: str = LOOPBACK,
    dns_names: Iterable[str] = ("localhost",),
) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A TLS server context whose certificate ``ca`` issues for ``host`` (and ``dns_names``).

    The context presents the leaf and ``ca``'s own certificate (the chain up to, not including,
    the root), so a client that trusts only the root can verify it.
    """
    ip_addresses: list[str] = []
    names = list(dns_names)
    try:
        ipaddress.ip_address(host)
        ip_addresses.append(host)
    except ValueError:
        names.insert(0, host)
    key = generate_key("EC")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else host)])
    certificate = ca.issue(
        subject, key.public_key(), usage="server", dns_names=names, ip_addresses=ip_addresses
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # load_cert_chain reads files only; keep them just long enough to be read.
    workdir = tempfile.mkdtemp(prefix="obdcr-tls-")
    try:
        chain_path = os.path.join(workdir, "chain.pem")
        key_path = os.path.join(workdir, "key.pem")
        with open(chain_path, "w") as handle:
            handle.write(pem(certificate) + pem(ca.certificate))
        with open(key_path, "w", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
            handle.write(key_pem(key))
        context.load_cert_chain(chain_path, key_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return context, certificate


class _LoopbackServer:
    """Start/stop/context-manager plumbing shared by the servers below."""

    def __init__(self, *, host: str = LOOPBACK, ssl_context: ssl.SSLContext | None) -> None:
        self.host = host
        self._ssl_context = ssl_context
        self._server: LoopbackServer | None = None
        self._port: int | None = None
        #: the raw path (with query) of every request received, in order
        self.requests: list[str] = []
        #: the same requests with their method and headers
        self.request_log: list[RecordedRequest] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self: _Server) -> _Server:
        """Bind a free port and serve from a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running on {self.base_url}")
        if self._port is not None:
            raise RuntimeError(f"{type(self).__name__} cannot be restarted; make a new one")
        server = LoopbackServer(
            self._wsgi,
            host=self.host,
            ssl_context=self._ssl_context,
            name=type(self).__name__,
            quiet=True,
            poll_interval=0.05,
        )
        self._server = server
        self._port = server.port
        server.start()
        self._started()
        return self

    def _started(self) -> None:
        """Called once the server is listening (a hook for subclasses)."""

    def stop(self) -> None:
        """Stop serving: the port is closed and open connections are cut. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- addresses -----------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "http" if self._ssl_context is None else "https"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def reset(self) -> None:
        """Forget the requests received so far."""
        self.requests.clear()
        self.request_log.clear()

    # -- WSGI ----------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        self.request_log.append(RecordedRequest(environ["REQUEST_METHOD"], path, headers))
        self.requests.append(path)
        status, body, response_headers = self._respond(environ, path)
        response_headers = [*response_headers, ("Content-Length", str(len(body)))]
        start_response(status, response_headers)
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    def _respond(
        self, environ: dict[str, Any], path: str
    ) -> tuple[str, bytes, list[tuple[str, str]]]:
        raise NotImplementedError


class JWKSServer(_LoopbackServer):
    """The sandbox Directory's JWKS endpoints over real HTTPS on loopback.

    ``start()`` binds a free port on ``127.0.0.1`` and sets ``directory.base_url`` to
    ``https://127.0.0.1:<port>``: the Directory's ``jwks_url`` and every software's
    ``jwks_url`` (and so the SSAs made afterwards) point here. ``stop()`` leaves ``base_url``
    as it is, so those URLs now point at a closed port ("the Directory is unreachable").

    Each GET looks up ``https://<Host header><path>`` in ``directory.documents()`` at the time
    of the request, so software registered or keys rotated after ``start()`` are served at
    once; anything else is 404, other methods 405. A found document is JSON with
    ``Content-Type: application/jwk-set+json`` (or ``content_type``) and ``Cache-Control:
    max-age=<max_age>`` (no header when ``max_age`` is ``None``).

    The server certificate is issued by ``directory.issuing_ca`` for ``127.0.0.1`` and
    ``localhost``; the chain up to the root is sent. :meth:`ca_file` writes the Directory's
    root certificate, the bundle to give requests as ``verify=`` / the bank as
    ``OBDCR_HTTP_VERIFY``.

    ``requests`` lists the raw path of every request received (``request_log`` has method
    and headers too), for assertions such as "the warm cache made no request".
    """

    def __init__(
        self,
        directory: SandboxDirectory,
        *,
        max_age: int | None = 300,
        content_type: str = "application/jwk-set+json",
    ) -> None:
        context, certificate = server_ssl_context(directory.issuing_ca, host=LOOPBACK)
        super().__init__(host=LOOPBACK, ssl_context=context)
        self.directory = directory
        self.max_age = max_age
        self.content_type = content_type
        #: the server's TLS certificate
        self.certificate = certificate

    def _started(self) -> None:
        self.directory.base_url = self.base_url

    @property
    def ca_pem(self) -> str:
        """The trust anchor for this server's certificate: the Directory's root CA (PEM)."""
        return pem(self.directory.root_ca.certificate)

    def ca_file(self, path: str | os.PathLike[str]) -> str:
        """Write :attr:`ca_pem` to ``path``; returns the path, for ``OBDCR_HTTP_VERIFY``."""
        with open(path, "w") as handle:
            handle.write(self.ca_pem)
        return os.fspath(path)

    def _respond(
        self, environ: dict[str, Any], path: str
    ) -> tuple[str, bytes, list[tuple[str, str]]]:
        json_error = [("Content-Type", "application/json")]
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return (
                "405 Method Not Allowed",
                b'{"error": "method not allowed"}',
                [*json_error, ("Allow", "GET, HEAD")],
            )
        host = environ.get("HTTP_HOST") or f"{self.host}:{self.port}"
        document = self.directory.documents().get(f"https://{host}{path}")
        if document is None:
            return "404 Not Found", b'{"error": "not found"}', json_error
        headers = [("Content-Type", self.content_type)]
        if self.max_age is not None:
            headers.append(("Cache-Control", f"max-age={self.max_age}"))
        return "200 OK", json.dumps(document).encode(), headers


class RecordingHTTPServer(_LoopbackServer):
    """Answers any request on any path with one fixed response, and records it.

    Plain HTTP by default; with ``tls_ca`` it serves HTTPS with a certificate that CA issues
    for ``127.0.0.1`` and ``localhost`` (so a client trusting that CA's root would connect
    happily: a refusal then proves the URL was refused, not that TLS failed).
    ``body`` is a dict/list (sent as JSON), ``bytes`` or ``str``.
    """

    def __init__(
        self,
        body: Any = b"",
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        tls_ca: CertificateAuthority | None = None,
    ) -> None:
        context = None
        self.certificate: x509.Certificate | None = None
        if tls_ca is not None:
            context, self.certificate = server_ssl_context(tls_ca, host=LOOPBACK)
        super().__init__(host=LOOPBACK, ssl_context=context)
        if isinstance(body, bytes):
            self.body = body
        elif isinstance(body, str):
            self.body = body.encode()
        else:
            self.body = json.dumps(body).encode()
        self.status = status
        self.content_type = content_type
        self.headers = dict(headers or {})

    def _respond(
        self, environ: dict[str, Any], path: str
    ) -> tuple[str, bytes, list[tuple[str, str]]]:
        from http import HTTPStatus

        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Status"
        headers = [("Content-Type", self.content_type), *self.headers.items()]
        return f"{self.status} {phrase}", self.body, headers
