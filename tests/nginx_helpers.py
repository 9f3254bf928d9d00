"""nginx in front of the bank, as ``example_app/nginx/anybank.conf`` documents it: what
tests/test_nginx.py (gunicorn behind it) and tests/test_granian.py (granian behind it) share.

:func:`find_nginx` finds Debian's nginx and its njs module (``nginx``,
``libnginx-mod-http-js``: ``.ci/run`` installs both) or fails the test saying how to install
them; :class:`Nginx` runs the template with nothing changed but its ``{{...}}`` placeholders
(:func:`template_values`), included in a minimal nginx.conf of the test's own that keeps the
pid file, the logs and nginx's temporary files in the test's temporary directory;
:class:`Stack` is the bank as the TPPs see it through nginx (requests, registration, token,
what the bank stored); :func:`forged_headers` is a TPP's certificate in every header a proxy
might use, as a client would forge them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import quote

import pytest
import requests
from test_example_app import REPO, TPP, _rfc9440, registration_jwt, token_request

from example_app.bank import sandbox_config
from example_app.sandbox import Sandbox
from flask_obdcr.storage import SQLiteStore, SQLiteTokenStore, hash_secret

NGINX_DIR = REPO / "example_app" / "nginx"
TEMPLATE = NGINX_DIR / "anybank.conf"
CLIENT_CERT_JS = NGINX_DIR / "client_cert.js"
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
#: where nginx and its njs module are looked for: $OBDCR_TEST_NGINX (the binary) and
#: $OBDCR_TEST_NGINX_MODULES (the modules folder) first; then Debian's, Red Hat's, nginx.org's
NGINX_SEARCH_PATH = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", os.environ.get("PATH", "")])
MODULE_DIRS = ["/usr/lib/nginx/modules", "/usr/lib64/nginx/modules", "/etc/nginx/modules",
               "/usr/local/lib/nginx/modules", "/usr/local/nginx/modules"]  # fmt: skip
INSTALL = (
    "run the install step of .ci/run (on Debian: apt-get install nginx libnginx-mod-http-js);"
    " CI does, and these tests need it"
)
START_TIMEOUT = 20.0
HTTP_TIMEOUT = (5, 20)  # connect, read


# -- nginx, from the documented template ----------------------------------------------------


def find_nginx() -> tuple[str, Path]:
    """The nginx binary and its njs module, or the test fails saying how to install them."""
    nginx = os.environ.get("OBDCR_TEST_NGINX") or shutil.which("nginx", path=NGINX_SEARCH_PATH)
    if not nginx or not os.access(nginx, os.X_OK):
        pytest.fail(f"nginx not found ({nginx or 'looked in /usr/sbin and PATH'}): {INSTALL}")
    chosen = os.environ.get("OBDCR_TEST_NGINX_MODULES")
    folders = [chosen] if chosen else MODULE_DIRS
    for folder in folders:
        module = Path(folder) / "ngx_http_js_module.so"
        if module.is_file():
            return nginx, module
    pytest.fail(f"nginx's njs module (ngx_http_js_module.so) not found in {folders}: {INSTALL}")


def render(template: Path, values: dict[str, str]) -> str:
    """``template`` with each ``{{NAME}}`` replaced by ``values[NAME]``: every placeholder
    filled, every value used; nothing else changes."""
    text = template.read_text()
    found = set(PLACEHOLDER.findall(text))
    assert found == set(values), f"{template.name} has {sorted(found)}, given {sorted(values)}"
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def nginx_conf(folder: Path, *, js_module: Path, server_conf: Path) -> str:
    """A main nginx.conf around the rendered template: in the foreground, one worker, the pid
    file, logs and temporary files in ``folder`` (Debian's would be in /run and /var)."""
    # As root, nginx's workers would switch to nobody, who cannot enter the test's (0700)
    # temporary directory; as anyone else nginx cannot switch user and the line is refused.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {name}_temp_path {folder / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} info;\n"
        f"load_module {js_module};\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"    access_log {folder / 'access.log'};\n"
        f"{temp}"
        f"    include {server_conf};\n"
        "}\n"
    )


class Nginx:
    """nginx with the rendered template, in a session of its own (``stop()`` signals the
    master, then SIGKILLs whatever of the group is left)."""

    def __init__(self, binary: str, js_module: Path, folder: Path) -> None:
        self.binary = binary
        self.js_module = js_module
        self.folder = folder
        self.process: subprocess.Popen | None = None

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    def log_tail(self, size: int = 4000) -> str:
        text = ""
        for name in ("nginx.out", "error.log"):
            path = self.folder / name
            if path.exists():
                text += f"--- {name}\n" + path.read_text(errors="replace")[-size:]
        return text

    def start(self, *, port: int, values: dict[str, str], ca_bundle: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        server_conf = self.folder / "anybank.conf"
        server_conf.write_text(render(TEMPLATE, values))
        main = self.folder / "nginx.conf"
        main.write_text(nginx_conf(self.folder, js_module=self.js_module, server_conf=server_conf))
        args = [self.binary, "-p", f"{self.folder}/", "-c", str(main), "-e", str(self.error_log)]
        with open(self.folder / "nginx.out", "wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 - the system's nginx, our config
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.folder, start_new_session=True,
            )  # fmt: skip
        url = f"https://127.0.0.1:{port}"
        try:
            self._wait_until_serving(url, ca_bundle)
        except BaseException:
            self.stop()
            raise
        return url

    def _wait_until_serving(self, url: str, ca_bundle: str) -> None:
        """Until discovery answers 200 through nginx (so the upstream is reached too)."""
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        assert self.process is not None, "start() runs nginx first"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"nginx exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = requests.get(
                    f"{url}/.well-known/openid-configuration", verify=ca_bundle, timeout=(2, 10)
                )
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(0.05)
        raise AssertionError(
            f"nginx did not serve in {START_TIMEOUT:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown: the master stops its workers
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any worker left behind
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


# -- the stack: Directory, the bank's WSGI server, nginx ------------------------------------


class Upstream(Protocol):
    """The bank's WSGI server behind nginx, as :class:`Stack` reports on it."""

    #: "gunicorn", "granian": the heading of its log in :meth:`Stack.explain`
    name: str

    def log_tail(self, size: int = ...) -> str: ...


@dataclass
class Stack:
    """The bank as the TPPs see it, through nginx. ``bank_url``, ``directory_url`` and
    ``ca_bundle`` are what test_example_app's helpers (``registration_jwt``,
    ``token_request``) take from their sandbox."""

    header: str
    bank_url: str  # nginx's URL, the bank's OBDCR_ISSUER
    upstream: str  # the WSGI server's host:port, behind nginx
    directory_url: str
    ca_bundle: Path
    instance: Path
    bank: Upstream
    nginx: Nginx
    _stores: dict[str, Any] = field(default_factory=dict)

    def call(
        self, method: str, path: str, *, tpp: TPP | None = None, base: str | None = None, **kw
    ) -> requests.Response:
        """An HTTPS request through nginx (``base``: elsewhere), presenting ``tpp``'s transport
        certificate, or none."""
        url = path if "://" in path else (base or self.bank_url) + path
        with requests.Session() as session:
            session.trust_env = False  # no proxy, no REQUESTS_CA_BUNDLE: loopback only
            return session.request(
                method,
                url,
                cert=tpp.cert if tpp is not None else None,
                verify=str(self.ca_bundle),
                timeout=HTTP_TIMEOUT,
                **kw,
            )

    def register(self, tpp: TPP, method: str = "tls_client_auth", **kw) -> dict[str, Any]:
        # duck-typed: the helper reads only bank_url, directory_url and ca_bundle
        body = registration_jwt(cast(Sandbox, self), tpp, method)
        response = self.call(
            "POST", "/register", tpp=tpp, data=body,
            headers={"Content-Type": "application/jwt", **kw.pop("headers", {})}, **kw,
        )  # fmt: skip
        assert response.status_code == 201, self.explain(response)
        return response.json()

    def token(self, tpp: TPP, registration: dict[str, Any], method: str, **kw) -> str:
        form = token_request(self, tpp, registration, method)
        response = self.call("POST", "/token", tpp=tpp, data=form, **kw)
        assert response.status_code == 200, self.explain(response)
        return response.json()["access_token"]

    @property
    def clients(self) -> SQLiteStore:
        if "clients" not in self._stores:
            self._stores["clients"] = SQLiteStore(self.instance / "obdcr.db")
        return self._stores["clients"]

    @property
    def tokens(self) -> SQLiteTokenStore:
        if "tokens" not in self._stores:
            self._stores["tokens"] = SQLiteTokenStore(self.instance / "obdcr.db")
        return self._stores["tokens"]

    def token_binding(self, token: str) -> tuple[str, str | None]:
        """(client_id, x5t#S256) of an issued token, as the bank stored it."""
        row = self.tokens.conn.execute(
            "SELECT client_id, x5t_s256 FROM access_tokens WHERE token_hash = ?",
            [hash_secret(token)],
        ).fetchone()
        assert row is not None, "no such token stored"
        return row[0], row[1]

    def counts(self) -> tuple[int, int]:
        """(clients, access tokens) stored."""
        tokens = self.tokens.conn.execute("SELECT count(*) FROM access_tokens").fetchone()[0]
        return len(self.clients), tokens

    def explain(self, response: requests.Response) -> str:
        return (
            f"HTTP {response.status_code} {response.text[:500]}\n"
            f"--- {self.bank.name}\n{self.bank.log_tail(3000)}\n{self.nginx.log_tail(3000)}"
        )

    def close(self) -> None:
        if "clients" in self._stores:
            self._stores.pop("clients").close()
        if "tokens" in self._stores:
            self._stores.pop("tokens").conn.close()


def bank_instance(folder: Path, sandbox: Sandbox, issuer: str) -> Path:
    """An instance folder (``folder/bank``) whose ``anybank.json`` makes the bank the sandbox's,
    published at ``issuer`` (nginx's URL)."""
    assert sandbox.directory_url is not None, "the sandbox is running"
    instance = folder / "bank"
    instance.mkdir()
    config = sandbox_config(
        issuer=issuer, directory_url=sandbox.directory_url, ca_file=str(sandbox.ca_bundle)
    )
    (instance / "anybank.json").write_text(json.dumps(config))
    return instance


def template_values(sandbox: Sandbox, folder: Path, *, port: int, upstream: str) -> dict[str, str]:
    """The template's placeholders for nginx on ``127.0.0.1:port`` in front of ``upstream``,
    with an HTTPS certificate from the sandbox Directory (written in ``folder/tls``)."""
    assert sandbox.directory_state is not None, "the sandbox is running"
    tls_cert, tls_key = sandbox.directory_state.issue_server_certificate(
        folder / "tls", name="nginx", hosts=["127.0.0.1", "localhost"]
    )
    return {
        "LISTEN": f"127.0.0.1:{port}",
        "SERVER_NAME": "127.0.0.1",
        "TLS_CERT": str(tls_cert),
        "TLS_KEY": str(tls_key),
        "CLIENT_CA": str(sandbox.ca_bundle),
        "CLIENT_CERT_JS": str(CLIENT_CERT_JS),
        "UPSTREAM": upstream,
    }


def forged_headers(tpp: TPP) -> dict[str, str]:
    """``tpp``'s transport certificate in every header a proxy might use: both the template's
    (RFC 9440 and URL-escaped PEM), and their underscore spellings."""
    pem_text = Path(tpp.cert[0]).read_text()
    rfc9440, escaped = _rfc9440(pem_text), quote(pem_text, safe="")
    return {
        "Client-Cert": rfc9440,
        "X-SSL-Client-Cert": escaped,
        "Client_Cert": rfc9440,
        "X_SSL_Client_Cert": escaped,
    }
