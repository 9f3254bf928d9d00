"""A CRL and OCSP server on loopback, for tests of certificate revocation.

:class:`RevocationServer` serves, for each :class:`~flask_obdcr.testing.pki.CertificateAuthority`
added to it, the CA's CRL (``GET /<n>/crl``) and its OCSP responder (``POST /<n>/ocsp`` with an
``application/ocsp-request`` body, or ``GET /<n>/ocsp/<base64 request>``), both made afresh
from the CA's revocation register on every request, so a ``ca.revoke(...)`` after ``start()``
is served at once::

    ca = CertificateAuthority.root("Test Issuing CA")
    with RevocationServer(ca) as server:
        leaf = ca.issue(subject, key.public_key(),
                        crl_url=server.crl_url(ca), ocsp_url=server.ocsp_url(ca))
        ca.revoke(leaf)
        ...
        assert server.count(ca, "ocsp") == 1

Each CA's :class:`Endpoint` says how it answers: a delegated responder, a forced OCSP status,
the thisUpdate/nextUpdate of what it makes, a wrong signing key or issuer; and whether its
OCSP or CRL route is down: ``"refuse"`` (the connection is closed without a response),
``"error"`` (HTTP 500), ``"trickle"`` (the right response, one byte every
``trickle_interval`` seconds), ``"garbage"`` (200 with a body that is no CRL or OCSP
response). ``clock`` (a :class:`~flask_obdcr.testing.clock.FrozenClock`, say) is the "now" of
what it signs, so it can agree with the clock of the checker under test.

It is the :mod:`flask_obdcr.testing.server` machinery (Werkzeug's threaded server in a daemon
thread, a free port on ``127.0.0.1``, ``requests`` recording every path, ``stop()`` cutting
open connections); plain HTTP unless ``tls_ca`` is given.
"""

from __future__ import annotations

import base64
import datetime
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .pki import CertificateAuthority, OCSPResponder, OCSPStatus, PrivateKey
from .server import LOOPBACK, StartResponse, _LoopbackServer, server_ssl_context

__all__ = ["Endpoint", "Failure", "RevocationServer"]

#: how a route of an :class:`Endpoint` fails
Failure = Literal["refuse", "error", "trickle", "garbage"]
Route = Literal["crl", "ocsp"]

_ACTION = "flask_obdcr.testing.revocation.action"


@dataclass
class Endpoint:
    """How the server answers for one CA. Change the fields at any time: each request reads
    them afresh."""

    ca: CertificateAuthority
    #: the first path segment of its routes
    name: str
    # -- OCSP
    #: a delegated responder signs the responses; None: the CA itself
    responder: OCSPResponder | None = None
    #: answer this whatever the register says (None: from the register)
    ocsp_status: OCSPStatus | None = None
    #: thisUpdate is this long before now
    ocsp_age: datetime.timedelta = datetime.timedelta(0)
    #: nextUpdate this long after thisUpdate; None: no nextUpdate
    ocsp_validity: datetime.timedelta | None = datetime.timedelta(hours=1)
    #: sign with this key instead (the responder ID still names the CA or responder)
    ocsp_signing_key: PrivateKey | None = None
    ocsp_algorithm: hashes.HashAlgorithm | None = None
    include_responder: bool = True
    # -- CRL
    crl_age: datetime.timedelta = datetime.timedelta(0)
    crl_validity: datetime.timedelta = datetime.timedelta(days=1)
    crl_signing_key: PrivateKey | None = None
    crl_issuer_name: x509.Name | None = None
    crl_format: Literal["der", "pem"] = "der"
    # -- failures
    ocsp_failure: Failure | None = None
    crl_failure: Failure | None = None
    #: seconds to wait before answering (to make concurrent requests overlap)
    delay: float = 0.0


class RevocationServer(_LoopbackServer):
    """CRLs and OCSP responses of one or more CAs over HTTP on loopback (module docstring)."""

    def __init__(
        self,
        *cas: CertificateAuthority,
        clock: Callable[[], float] = time.time,
        trickle_interval: float = 0.5,
        tls_ca: CertificateAuthority | None = None,
    ) -> None:
        context = None
        #: the TLS server certificate, with ``tls_ca``
        self.certificate: x509.Certificate | None = None
        if tls_ca is not None:
            context, self.certificate = server_ssl_context(tls_ca, host=LOOPBACK)
        super().__init__(host=LOOPBACK, ssl_context=context)
        self.clock = clock
        self.trickle_interval = trickle_interval
        self.endpoints: dict[str, Endpoint] = {}
        self._stopping = threading.Event()
        for ca in cas:
            self.add(ca)

    # -- configuration -------------------------------------------------------------------

    def add(self, ca: CertificateAuthority) -> Endpoint:
        """Serve ``ca``'s CRL and OCSP responder too; returns its :class:`Endpoint`."""
        for endpoint in self.endpoints.values():
            if endpoint.ca is ca:
                return endpoint
        endpoint = Endpoint(ca=ca, name=f"ca{len(self.endpoints)}")
        self.endpoints[endpoint.name] = endpoint
        return endpoint

    def endpoint(self, ca: CertificateAuthority) -> Endpoint:
        for endpoint in self.endpoints.values():
            if endpoint.ca is ca:
                return endpoint
        raise KeyError(f"{ca.name.rfc4514_string()} is not served here")

    def crl_url(self, ca: CertificateAuthority) -> str:
        return self.url(f"/{self.endpoint(ca).name}/crl")

    def ocsp_url(self, ca: CertificateAuthority) -> str:
        return self.url(f"/{self.endpoint(ca).name}/ocsp")

    def fail(self, failure: Failure | None, routes: tuple[Route, ...] = ("crl", "ocsp")) -> None:
        """Make ``routes`` of every CA fail that way (``None``: answer again)."""
        for endpoint in self.endpoints.values():
            if "crl" in routes:
                endpoint.crl_failure = failure
            if "ocsp" in routes:
                endpoint.ocsp_failure = failure

    def count(self, ca: CertificateAuthority, route: Route) -> int:
        """How many requests reached ``route`` of ``ca`` (since start or :meth:`reset`)."""
        prefix = f"/{self.endpoint(ca).name}/{route}"
        return sum(1 for path in self.requests if path == prefix or path.startswith(prefix + "/"))

    def stop(self) -> None:
        self._stopping.set()  # ends any trickle at once
        super().stop()

    # -- WSGI ----------------------------------------------------------------------------

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), tz=datetime.timezone.utc)

    def _wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        response = super()._wsgi(environ, start_response)
        action = environ.get(_ACTION)
        if action == "refuse":
            connection = environ.get("werkzeug.socket")
            if connection is not None:
                try:
                    # the plain socket's shutdown (see loopback.ConnectionTracker): the client
                    # sees the connection end with no response at all
                    socket.socket.shutdown(connection, socket.SHUT_RDWR)
                except OSError:
                    pass
            return []
        if action == "trickle":
            return self._trickle(b"".join(response))
        return response

    def _trickle(self, body: bytes) -> Iterator[bytes]:
        for index in range(len(body)):
            if self._stopping.wait(self.trickle_interval):
                return
            yield body[index : index + 1]

    def _respond(
        self, environ: dict[str, Any], path: str
    ) -> tuple[str, bytes, list[tuple[str, str]]]:
        parts = path.split("?", 1)[0].strip("/").split("/", 2)
        endpoint = self.endpoints.get(parts[0]) if parts else None
        route = parts[1] if len(parts) > 1 else ""
        if endpoint is None or route not in ("crl", "ocsp"):
            return "404 Not Found", b"not found", [("Content-Type", "text/plain")]
        if endpoint.delay:
            self._stopping.wait(endpoint.delay)
        failure = endpoint.crl_failure if route == "crl" else endpoint.ocsp_failure
        if failure == "error":
            return "500 Internal Server Error", b"oops", [("Content-Type", "text/plain")]
        if failure == "garbage":
            return "200 OK", b"<html>not what you asked for</html>", [("Content-Type", "text/html")]
        if failure in ("refuse", "trickle"):
            environ[_ACTION] = failure
        method = environ["REQUEST_METHOD"]
        if route == "crl":
            if method not in ("GET", "HEAD") or len(parts) > 2:
                return "405 Method Not Allowed", b"", [("Allow", "GET")]
            return self._crl(endpoint)
        if method == "POST" and len(parts) == 2:
            request = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        elif method == "GET" and len(parts) == 3:
            try:
                request = base64.b64decode(unquote(parts[2]), validate=True)
            except ValueError:
                return "400 Bad Request", b"", [("Content-Type", "text/plain")]
        else:
            return "405 Method Not Allowed", b"", [("Allow", "GET, POST")]
        return self._ocsp(endpoint, request)

    def _crl(self, endpoint: Endpoint) -> tuple[str, bytes, list[tuple[str, str]]]:
        crl = endpoint.ca.crl(
            this_update=self._now() - endpoint.crl_age,
            validity=endpoint.crl_validity,
            signing_key=endpoint.crl_signing_key,
            issuer_name=endpoint.crl_issuer_name,
        )
        if endpoint.crl_format == "pem":
            return (
                "200 OK",
                crl.public_bytes(serialization.Encoding.PEM),
                [("Content-Type", "application/x-pem-file")],
            )
        body = crl.public_bytes(serialization.Encoding.DER)
        return "200 OK", body, [("Content-Type", "application/pkix-crl")]

    def _ocsp(self, endpoint: Endpoint, request: bytes) -> tuple[str, bytes, list[tuple[str, str]]]:
        try:
            body = endpoint.ca.ocsp_response(
                request,
                responder=endpoint.responder,
                status=endpoint.ocsp_status,
                this_update=self._now() - endpoint.ocsp_age,
                validity=endpoint.ocsp_validity,
                signing_key=endpoint.ocsp_signing_key,
                include_responder=endpoint.include_responder,
                algorithm=endpoint.ocsp_algorithm,
            )
        except ValueError:
            return "400 Bad Request", b"", [("Content-Type", "text/plain")]
        return "200 OK", body, [("Content-Type", "application/ocsp-response")]
