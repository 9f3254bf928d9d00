"""Serving the sandbox over HTTPS, and how the client certificate reaches the app.

The bank needs the TPP's transport certificate on every registration, token and API call. How
it gets there depends on what terminates TLS:

**Werkzeug's server** (``make serve``, ``make demo``, the tests): :func:`tls_context` makes a
server context that *asks* for a client certificate (``ssl.CERT_OPTIONAL``, so discovery works
without one) and verifies it against the sandbox CA bundle. Werkzeug's request handler then
puts the peer certificate, as PEM, in ``environ["SSL_CLIENT_CERT"]`` (``werkzeug/serving.py``,
``WSGIRequestHandler.make_environ``: ``getpeercert(binary_form=True)`` then
``ssl.DER_cert_to_PEM_cert``), which is where OpenBankingDCR looks by default.

**gunicorn terminating TLS itself** (``--certfile --keyfile --ca-certs --cert-reqs 1``):
gunicorn sets no ``SSL_CLIENT_CERT``; wrap the app in :class:`GunicornClientCertMiddleware`,
which reads the certificate from the TLS socket gunicorn puts in ``environ["gunicorn.socket"]``
(see :mod:`example_app.wsgi`).

**nginx (or another proxy) terminating TLS**: the proxy verifies the certificate and forwards
it in a header, RFC 9440 ``Client-Cert: :<base64 DER>:`` (or nginx's URL-escaped PEM in
``X-SSL-Client-Cert``). Configure ``OBDCR_CLIENT_CERT_HEADER`` and ``OBDCR_TRUSTED_PROXIES``
(the proxy's address as the app sees it in ``REMOTE_ADDR``) and use :func:`behind_proxy`;
the header is ignored from any other peer.

:class:`~flask_obdcr.testing.loopback.LoopbackServer` (the sandbox's one loopback server,
shared with the test servers) runs Werkzeug's threaded server in a background thread on a port
chosen by the OS (port 0) or given, and always stops: ``with LoopbackServer(app, ...) as
server: ...``.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import click

from flask_obdcr.testing.loopback import LoopbackServer

from ._util import write_file

__all__ = [
    "GunicornClientCertMiddleware",
    "behind_proxy",
    "tls_context",
    "wait_for_signal",
]

log = logging.getLogger("example_app.serving")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def tls_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    *,
    client_ca_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting ``cert_file`` (leaf first, then its chain).

    With ``client_ca_file`` the server asks every client for a certificate and verifies the
    ones it gets against those CAs (``CERT_OPTIONAL``): a client without a certificate still
    connects, and the application decides which requests need one.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=os.fspath(client_ca_file))
    return context


def wait_for_signal(*, parent_pid: int | None = None) -> None:
    """Block until SIGINT or SIGTERM (or, with ``parent_pid``, until that parent process is
    gone, so a server started by a demo never outlives it)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.25):
            if parent_pid is not None and os.getppid() != parent_pid:
                log.info("parent process %s is gone; stopping", parent_pid)
                return
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def server_hosts(host: str) -> list[str]:
    """The names a sandbox server certificate covers: the bind address and loopback's."""
    return list(dict.fromkeys([host, "127.0.0.1", "localhost"]))


def serve_until_stopped(
    *,
    name: str,
    title: str,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    make_app: Callable[[str], Any],
    url_file: str | None = None,
    parent_pid: int | None = None,
) -> None:
    """A command line's ``serve``: bind, build the app for the URL the server got
    (``make_app(url)``: port 0 means any free port), say where it is (and write the URL to
    ``url_file``), serve until a signal or the parent's exit, stop."""
    try:
        server = LoopbackServer(None, host=host, port=port, ssl_context=ssl_context, name=name)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        server.app = make_app(server.url)
        server.start()
        click.echo(f"{title} at {server.url}", err=True)
        if url_file:
            write_file(url_file, server.url + "\n")
        wait_for_signal(parent_pid=parent_pid)
    finally:
        server.stop()


# -- production: gunicorn with TLS, or a TLS-terminating proxy --------------------------------


class GunicornClientCertMiddleware:
    """Give the app ``environ["SSL_CLIENT_CERT"]`` (PEM) under gunicorn's own TLS.

    Gunicorn terminates TLS itself when started with ``--certfile``/``--keyfile``; with
    ``--ca-certs <sandbox CA bundle> --cert-reqs 1`` (``ssl.CERT_OPTIONAL``) it asks for and
    verifies client certificates, but it puts no certificate in the WSGI environ. It does put
    the connection there, as ``environ["gunicorn.socket"]``: for a TLS listener that is an
    ``ssl.SSLSocket``, and ``getpeercert(binary_form=True)`` gives the verified client
    certificate (DER) or ``None``. This middleware converts it to PEM in ``SSL_CLIENT_CERT``,
    the same variable Werkzeug's server and Apache mod_ssl set.

    Any ``SSL_CLIENT_CERT`` already in the environ is removed first, so the value is always the
    certificate of this TLS connection (or absent); on a plain-TCP socket (no TLS) it stays
    absent. ::

        app = GunicornClientCertMiddleware(create_app())
    """

    ENVIRON_KEY = "SSL_CLIENT_CERT"

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        environ.pop(self.ENVIRON_KEY, None)
        der = self.peer_certificate(environ.get("gunicorn.socket"))
        if der:
            environ[self.ENVIRON_KEY] = ssl.DER_cert_to_PEM_cert(der)
        return self.app(environ, start_response)

    @staticmethod
    def peer_certificate(sock: Any) -> bytes | None:
        """The DER client certificate of a TLS socket, or None (no socket, no TLS, no cert)."""
        getpeercert = getattr(sock, "getpeercert", None)
        if getpeercert is None:
            return None
        try:
            return getpeercert(binary_form=True)
        except (ValueError, OSError):  # handshake not done, or the socket is closed
            return None


def behind_proxy(app: Any, *, x_proto: int = 1, x_host: int = 1, x_port: int = 1) -> Any:
    """Prepare a Flask app for a TLS-terminating reverse proxy (nginx) on the same host.

    Trusts one proxy's ``X-Forwarded-Proto``/``-Host``/``-Port``, so the URLs the bank builds
    (``registration_client_uri``, discovery) are the public ``https://`` ones. It deliberately
    does **not** rewrite ``REMOTE_ADDR`` from ``X-Forwarded-For`` (``x_for=0``): OpenBankingDCR
    honours the client certificate header only when ``REMOTE_ADDR`` is one of
    ``OBDCR_TRUSTED_PROXIES``, and that must be the proxy's own address. The app config must
    set ``OBDCR_CLIENT_CERT_HEADER`` (``"Client-Cert"`` for RFC 9440) and
    ``OBDCR_TRUSTED_PROXIES``. Returns the app (its ``wsgi_app`` wrapped).
    """
    from werkzeug.middleware.proxy_fix import ProxyFix

    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=x_proto, x_host=x_host, x_port=x_port)
    return app
