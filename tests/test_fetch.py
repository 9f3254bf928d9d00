"""The bounded fetch (flask_obdcr/fetch.py): one deadline for the whole fetch, a size cap, no
redirect unless asked, and no thread or descriptor left behind.

The servers here are raw sockets on loopback so a test can send a response exactly as slowly
(or as wrongly) as it likes: one byte of the status line every half second, headers then a
trickled body, a body read until the connection closes.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from flask_obdcr.fetch import (
    BoundedFetch,
    DeadlineAdapter,
    FetchFailed,
    FetchForbidden,
    FetchResponse,
    FetchTimeout,
    RedirectRefused,
    ResponseTooLarge,
    TooManyRedirects,
    UnexpectedStatus,
    check_fetch_url,
)
from flask_obdcr.testing.pki import CertificateAuthority, pem
from flask_obdcr.testing.server import server_ssl_context

#: the whole-fetch deadline of the slow-server tests, and how late a cut may come
DEADLINE = 1.5
MARGIN = 0.5
TRICKLE = 0.5  # seconds between two bytes of a trickling server


class RawServer:
    """A threaded HTTP/1.1 server on raw sockets: each path is a behaviour (see ``_serve``).

    Keeps connections alive between requests; ``stop()`` cuts them and ends every handler.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[str, str, bytes]] = []  # method, path, body
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="raw-server", daemon=True)
        self._acceptor.start()

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            try:
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(
                target=self._handle, args=(connection,), name="raw-server", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _handle(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.add(connection)
        try:
            if self.tls is not None:
                if self._stop.wait(0) or self._path_stalls_handshake():
                    self._stop.wait(30)  # never answer the ClientHello
                    return
                connection.settimeout(5)
                connection = self.tls.wrap_socket(connection, server_side=True)
                with self._lock:
                    self._open.add(connection)
            connection.settimeout(30)
            reader = connection.makefile("rb")
            while not self._stop.is_set():
                request_line = reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                length = 0
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = reader.read(length) if length else b""
                self.requests.append((method, path, body))
                if not self._serve(connection, method, path, body):
                    return
        except OSError:
            pass  # the client gave up or stop() cut the connection
        finally:
            with self._lock:
                self._open.discard(connection)
            try:
                connection.close()
            except OSError:
                pass

    stall_handshake = False

    def _path_stalls_handshake(self) -> bool:
        return self.stall_handshake

    def _trickle(self, connection: socket.socket, data: bytes) -> None:
        for index in range(len(data)):
            if self._stop.wait(TRICKLE):
                return
            connection.sendall(data[index : index + 1])

    def _serve(self, connection: socket.socket, method: str, path: str, body: bytes) -> bool:
        """Answer one request; False closes the connection."""

        def send(status: str, content: bytes = b"", headers: dict[str, str] | None = None) -> None:
            head = f"HTTP/1.1 {status}\r\nContent-Length: {len(content)}\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
            connection.sendall(head.encode() + b"\r\n" + content)

        if path == "/ok":
            send("200 OK", b"hello", {"Content-Type": "text/plain", "X-Seen": "yes"})
        elif path == "/echo":
            send("200 OK", method.encode() + b" " + body)
        elif path == "/trickle-headers":
            self._trickle(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return False
        elif path == "/trickle-body":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            self._trickle(connection, b"x" * 100)
            return False
        elif path == "/trickle-until-close":
            # no Content-Length: the body ends when the connection does (HTTP/1.0 style)
            connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            self._trickle(connection, b"x" * 100)
            return False
        elif path == "/silent":
            self._stop.wait(30)
            return False
        elif path == "/big":
            send("200 OK", b"x" * 2048)
        elif path == "/big-undeclared":
            connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 2048)
            return False
        elif path == "/redirect":
            send("302 Found", headers={"Location": "/ok"})
        elif path == "/loop":
            send("302 Found", headers={"Location": "/loop"})
        elif path == "/no-location":
            send("302 Found")
        elif path == "/error":
            send("500 Internal Server Error", b"oops")
        else:
            send("404 Not Found")
        return True


@pytest.fixture
def server() -> Iterator[RawServer]:
    running = RawServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tls_ca() -> CertificateAuthority:
    return CertificateAuthority.root("fetch test CA")


@pytest.fixture
def tls_server(tls_ca) -> Iterator[RawServer]:
    context, _ = server_ssl_context(tls_ca)
    running = RawServer(tls=context)
    yield running
    running.stop()


@pytest.fixture
def ca_file(tls_ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text(pem(tls_ca.certificate))
    return str(path)


def fetch_with(**options: Any) -> BoundedFetch:
    options.setdefault("timeout", DEADLINE)
    options.setdefault("max_bytes", 1024)
    return BoundedFetch(**options)


# -- the deadline ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/trickle-headers", id="status-line-and-headers-trickled"),
        pytest.param("/trickle-body", id="body-trickled"),
        pytest.param("/trickle-until-close", id="body-until-close-trickled"),
        pytest.param("/silent", id="server-silent"),
    ],
)
def test_a_slow_server_is_cut_at_the_deadline(server, path):
    # per-read timeouts far beyond the deadline: only the watchdog can end these fetches
    fetch = fetch_with(socket_timeout=(5.0, 30.0))
    started = time.monotonic()
    with pytest.raises(FetchTimeout) as caught:
        fetch(f"{server.base}{path}")
    elapsed = time.monotonic() - started
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + MARGIN
    assert caught.value.seconds == DEADLINE
    assert caught.value.url == caught.value.at == f"{server.base}{path}"
    assert str(caught.value) == f"fetch of '{server.base}{path}' took longer than 1.5 s"


def test_a_stalled_tls_handshake_is_cut_at_the_deadline(tls_server, ca_file):
    tls_server.stall_handshake = True
    fetch = fetch_with(verify=ca_file, socket_timeout=(5.0, 30.0))
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        fetch(f"{tls_server.base}/ok")
    assert time.monotonic() - started < DEADLINE + MARGIN


def test_a_kept_alive_connection_is_held_to_the_next_fetchs_deadline(server):
    fetch = fetch_with(socket_timeout=(5.0, 30.0))
    assert fetch(f"{server.base}/ok").body == b"hello"
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        fetch(f"{server.base}/trickle-body")  # on the pooled connection of the first fetch
    assert time.monotonic() - started < DEADLINE + MARGIN
    assert server.connections == 1
    # the cut connection is dropped from the pool; the next fetch connects afresh
    assert fetch(f"{server.base}/ok").body == b"hello"
    assert server.connections == 2


def test_the_deadline_spans_every_redirect_hop(server):
    fetch = fetch_with(socket_timeout=(5.0, 30.0))
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        fetch(f"{server.base}/redirect", follow=lambda hop: hop.replace("/ok", "/trickle-body"))
    assert time.monotonic() - started < DEADLINE + MARGIN


def test_a_per_read_timeout_still_fails_sooner(server):
    fetch = fetch_with(timeout=5.0, socket_timeout=(1.0, 0.2))
    started = time.monotonic()
    with pytest.raises(FetchFailed) as caught:
        fetch(f"{server.base}/silent")
    assert time.monotonic() - started < 1.0
    assert isinstance(caught.value.cause, requests.exceptions.ReadTimeout)
    assert caught.value.reading is False


def client_threads() -> list[str]:
    """This process's threads but the test servers' own."""
    return sorted(t.name for t in threading.enumerate() if t.name != "raw-server")


def test_no_thread_or_descriptor_outlives_its_fetch(server):
    fetch = fetch_with()
    fetch(f"{server.base}/ok")  # the pool's connection, kept alive between fetches
    gc.collect()  # sockets earlier tests left to the collector close now, not mid-count
    threads = client_threads()
    descriptors = len(os.listdir("/proc/self/fd"))  # the server's side of it included
    for _ in range(200):
        assert fetch(f"{server.base}/ok").body == b"hello"
    assert client_threads() == threads
    # none more (others of the process may close meanwhile: fewer is no leak)
    assert len(os.listdir("/proc/self/fd")) <= descriptors
    assert server.connections == 1  # one kept-alive connection served them all
    with pytest.raises(UnexpectedStatus):
        fetch(f"{server.base}/error")  # the unread error body closes the connection
    assert client_threads() == threads
    assert len(os.listdir("/proc/self/fd")) <= descriptors


def test_a_timed_out_fetch_leaves_no_thread_either(server):
    threads = client_threads()
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(FetchTimeout):
            fetch_with(timeout=0.2, socket_timeout=(5.0, 30.0))(f"{server.base}/silent")
    assert client_threads() == threads
    # the client's sockets are closed; the server's three stay open until it stops
    assert len(os.listdir("/proc/self/fd")) <= descriptors + 3


# -- what comes back ----------------------------------------------------------------------------


def test_ok(server):
    response = fetch_with()(f"{server.base}/ok")
    assert response == FetchResponse(
        url=f"{server.base}/ok", status=200, headers=response.headers, body=b"hello"
    )
    assert response.headers["x-seen"] == "yes"  # case-insensitive


def test_post_sends_the_body_and_headers(server):
    response = fetch_with()(
        f"{server.base}/echo",
        method="POST",
        body=b"\x30\x03der",
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert response.body == b"POST \x30\x03der"
    assert server.requests == [("POST", "/echo", b"\x30\x03der")]


def test_https_with_a_ca_bundle(tls_server, ca_file):
    assert fetch_with(verify=ca_file)(f"{tls_server.base}/ok").body == b"hello"


def test_https_with_an_untrusted_certificate_fails(tls_server):
    with pytest.raises(FetchFailed) as caught:
        fetch_with(verify=True)(f"{tls_server.base}/ok")
    assert isinstance(caught.value.cause, requests.exceptions.SSLError)


@pytest.mark.parametrize(
    ("path", "max_bytes"),
    [
        pytest.param("/big", 1024, id="declared-too-large"),
        pytest.param("/big-undeclared", 1024, id="streamed-too-large"),
        pytest.param("/ok", 4, id="cap-per-call"),
    ],
)
def test_size_cap(server, path, max_bytes):
    with pytest.raises(ResponseTooLarge) as caught:
        fetch_with()(f"{server.base}{path}", max_bytes=max_bytes)
    assert caught.value.limit == max_bytes
    assert str(caught.value) == f"body at '{server.base}{path}' is larger than {max_bytes} bytes"


def test_body_of_exactly_the_cap(server):
    assert fetch_with(max_bytes=5)(f"{server.base}/ok").body == b"hello"


def test_error_status(server):
    with pytest.raises(UnexpectedStatus) as caught:
        fetch_with()(f"{server.base}/error")
    assert caught.value.status == 500
    assert str(caught.value) == f"fetch of '{server.base}/error' got HTTP 500"


def test_connection_refused(server):
    with pytest.raises(FetchFailed) as caught:
        fetch_with()("http://127.0.0.1:1/ok")
    assert isinstance(caught.value.cause, requests.exceptions.ConnectionError)


# -- redirects ----------------------------------------------------------------------------------


def test_a_redirect_is_refused_unless_asked(server):
    with pytest.raises(RedirectRefused) as caught:
        fetch_with()(f"{server.base}/redirect")
    assert (caught.value.status, caught.value.location) == (302, "/ok")
    assert [path for _, path, _ in server.requests] == ["/redirect"]


def test_a_post_is_never_redirected(server):
    with pytest.raises(RedirectRefused):
        fetch_with()(f"{server.base}/redirect", method="POST", body=b"x", follow=lambda u: u)
    assert [path for _, path, _ in server.requests] == ["/redirect"]


def test_follow_sees_every_hop_and_may_refuse_it(server):
    seen: list[str] = []

    def follow(url: str) -> str:
        seen.append(url)
        return url

    response = fetch_with()(f"{server.base}/redirect", follow=follow)
    assert (response.url, response.body) == (f"{server.base}/ok", b"hello")
    assert seen == [f"{server.base}/ok"]

    class Refused(Exception):
        pass

    def refuse(url: str) -> str:
        raise Refused(url)

    server.requests.clear()
    with pytest.raises(Refused):
        fetch_with()(f"{server.base}/redirect", follow=refuse)
    assert [path for _, path, _ in server.requests] == ["/redirect"]


def test_too_many_redirects_and_no_location(server):
    with pytest.raises(TooManyRedirects) as caught:
        fetch_with(max_redirects=2)(f"{server.base}/loop", follow=lambda u: u)
    assert caught.value.limit == 2
    assert len(server.requests) == 3
    with pytest.raises(RedirectRefused) as refused:
        fetch_with()(f"{server.base}/no-location", follow=lambda u: u)
    assert refused.value.location is None


# -- the URL rule and the session -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://ca.example/crl", id="scheme"),
        pytest.param("HTTP://ca.example/crl", id="scheme-case"),
        pytest.param("ldap://ca.example/cn=crl", id="ldap"),
        pytest.param("http://user@ca.example/crl", id="userinfo"),
        pytest.param("http:///crl", id="no-host"),
        pytest.param("http://ca.example /crl", id="space"),
        pytest.param("http://ca.example\\@evil/", id="backslash"),
        pytest.param("http://ca.examplé/", id="non-ascii"),
        pytest.param("http://ca.example:99999/", id="port"),
        pytest.param("http://[::1/", id="bracket"),
        pytest.param("http://ca.example/" + "a" * 2100, id="too-long"),
    ],
)
def test_forbidden_urls_make_no_request(url):
    class NoNetwork(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> requests.Response:
            raise AssertionError("a forbidden URL reached the network")

    with pytest.raises(FetchForbidden):
        check_fetch_url(url)
    with pytest.raises(FetchForbidden):
        fetch_with(session=NoNetwork())(url)


def test_allowed_urls():
    for url in ("http://ca.example/crl", "https://127.0.0.1:8443/ocsp", "http://[::1]/x"):
        assert check_fetch_url(url) == url


def test_a_given_session_gets_deadline_adapters(server):
    session = requests.Session()
    fetch = BoundedFetch(session=session, timeout=DEADLINE, socket_timeout=(5.0, 30.0))
    assert isinstance(session.get_adapter("https://x/"), DeadlineAdapter)
    assert isinstance(session.get_adapter("http://x/"), DeadlineAdapter)
    with pytest.raises(FetchTimeout):
        fetch(f"{server.base}/trickle-body")


def test_a_session_with_another_adapter_is_refused():
    class Custom(requests.adapters.HTTPAdapter):
        pass

    session = requests.Session()
    session.mount("https://", Custom())
    with pytest.raises(TypeError):
        BoundedFetch(session=session)


def test_an_adapter_mounted_later_for_one_host_is_refused_before_any_io(server):
    fetch = fetch_with()
    fetch.session.mount(server.base, requests.adapters.HTTPAdapter())
    with pytest.raises(FetchFailed) as caught:
        fetch(f"{server.base}/ok")
    assert "cannot enforce the deadline" in str(caught.value)
    assert caught.value.cause is None
    assert server.requests == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"timeout": 0}, id="timeout-zero"),
        pytest.param({"timeout": True}, id="timeout-bool"),
        pytest.param({"max_bytes": 0}, id="max-bytes"),
        pytest.param({"max_redirects": -1}, id="redirects"),
        pytest.param({"socket_timeout": (0.0, 1.0)}, id="socket-timeout"),
    ],
)
def test_bad_options(options):
    with pytest.raises(ValueError):
        BoundedFetch(**options)
