"""nginx in front of the bank, as ``example_app/nginx/anybank.conf`` documents it: what
tests/test_nginx.py (gunicorn behind it) and tests/test_granian.py (granian behind it) share.

The machinery is the example app's own (:mod:`example_app.nginx`, which ``make serve
SERVER=granian`` runs too): :class:`~example_app.nginx.Nginx` runs the template with nothing
changed but its ``{{...}}`` placeholders, included in a minimal nginx.conf that keeps the pid
file, the logs and nginx's temporary files in the test's temporary directory. Here:
:func:`find_nginx` finds nginx and its njs module (``nginx``, ``libnginx-mod-http-js``:
``.ci/run`` installs both) or fails the test saying how to install them;
:func:`template_values` fills the placeholders with an HTTPS certificate from the sandbox
Directory; :class:`Stack` is the bank as the TPPs see it through nginx (requests,
registration, token, what the bank stored); :func:`forged_headers` is a TPP's certificate in
every header a proxy might use, as a client would forge them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import quote

import pytest
import requests
from test_example_app import TPP, _rfc9440, registration_jwt, token_request

from example_app import nginx as app_nginx
from example_app.bank import sandbox_config
from example_app.nginx import INSTALL as NGINX_INSTALL
from example_app.nginx import Nginx, NginxNotFound
from example_app.sandbox import Sandbox
from flask_obdcr.storage import SQLiteStore, SQLiteTokenStore, hash_secret

#: the test's own overrides: $OBDCR_TEST_NGINX (the binary) and $OBDCR_TEST_NGINX_MODULES (the
#: modules folder); else example_app.nginx's search (Debian's, Red Hat's, nginx.org's)
BINARY_ENV = "OBDCR_TEST_NGINX"
MODULES_ENV = "OBDCR_TEST_NGINX_MODULES"
INSTALL = (
    f"run the install step of .ci/run (on Debian: {NGINX_INSTALL}); CI does, and these tests"
    " need it"
)
START_TIMEOUT = 20.0
HTTP_TIMEOUT = (5, 20)  # connect, read


# -- nginx, from the documented template ----------------------------------------------------


def find_nginx() -> tuple[str, Path]:
    """The nginx binary and its njs module, or the test fails saying how to install them."""
    environ = dict(os.environ)
    if os.environ.get(MODULES_ENV):
        environ[app_nginx.MODULES_ENV] = os.environ[MODULES_ENV]
    try:
        return app_nginx.find_nginx(binary=os.environ.get(BINARY_ENV) or None, environ=environ)
    except NginxNotFound as exc:
        pytest.fail(f"{exc}; {INSTALL}")


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
    return app_nginx.template_values(
        listen=f"127.0.0.1:{port}",
        server_name="127.0.0.1",
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=sandbox.ca_bundle,
        upstream=upstream,
    )


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


@pytest.fixture(scope="module")
def nginx_install() -> tuple[str, Path]:
    """nginx and its njs module, for the modules that import this fixture."""
    return find_nginx()
