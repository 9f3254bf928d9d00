"""One loopback server for the sandbox: Werkzeug's threaded server in a daemon thread.

Every server of the sandbox is one: the test servers of :mod:`flask_obdcr.testing.server` and
:mod:`~flask_obdcr.testing.revocation`, and the example app's Directory, bank and TPP pages
(:mod:`example_app.serving`). The socket is bound in the constructor (port 0: a free one the
OS picks), so :attr:`LoopbackServer.url` is known before the application is::

    server = LoopbackServer(None, ssl_context=context, name="bank")
    server.app = create_app({"OBDCR_ISSUER": server.url})
    with server:
        ...

``stop()`` closes the port and cuts open connections (a kept-alive connection would otherwise
hold its handler thread past shutdown); it is idempotent. A stopped server cannot restart.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["LOOPBACK", "ConnectionTracker", "LoopbackServer", "TrackedRequestHandler"]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ConnectionTracker:
    """The connections a Werkzeug server has open, so that ``stop()`` can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def add(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def discard(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def shutdown_all(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                # The plain socket's shutdown, not SSLSocket's (which drops its SSL object
                # under the feet of the handler thread): the blocked read sees EOF and the
                # handler ends cleanly.
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
            except OSError:
                pass


class TrackedRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, registering its connection with the server's ``connection_tracker``
    (a :class:`ConnectionTracker`, when the server has one). Idle keep-alive connections time
    out."""

    timeout = 30

    def setup(self) -> None:
        super().setup()
        tracker = getattr(self.server, "connection_tracker", None)
        if tracker is not None:
            tracker.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            tracker = getattr(self.server, "connection_tracker", None)
            if tracker is not None:
                tracker.discard(self.connection)


class QuietRequestHandler(TrackedRequestHandler):
    """The request log at DEBUG on this module's logger, not on stderr: test output stays
    readable."""

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s: " + message, self.address_string(), *args)


class LoopbackServer:
    """Werkzeug's threaded server on ``host:port`` serving ``app`` from a daemon thread.

    ``app`` may be None at first (answered 503 until set). ``quiet`` sends the request log to
    DEBUG instead of stderr.
    """

    def __init__(
        self,
        app: WSGIApp | None,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "server",
        quiet: bool = False,
        poll_interval: float = 0.1,
    ) -> None:
        self.app = app
        self.name = name
        self.host = host
        self._poll_interval = poll_interval
        self._tracker = ConnectionTracker()
        self._server: BaseWSGIServer | None = make_server(
            host,
            port,
            self._wsgi,
            threaded=True,
            request_handler=QuietRequestHandler if quiet else TrackedRequestHandler,
            ssl_context=ssl_context,
        )
        self._server.connection_tracker = self._tracker  # type: ignore[attr-defined]
        self.port: int = self._server.port
        self.scheme = "https" if ssl_context is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``scheme://host:port``, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting\n"]
        return self.app(environ, start_response)

    def start(self) -> LoopbackServer:
        if self._server is None:
            raise RuntimeError(f"{self.name} has been stopped; make a new server")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": self._poll_interval},
                name=f"{self.name}:{self.port}",
                daemon=True,
            )
            self._thread.start()
            log.info("%s listening on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        if thread is not None:
            server.shutdown()  # returns once serve_forever has returned
            thread.join(timeout=5)
        self._tracker.shutdown_all()
        server.server_close()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
