"""AnyBank behind nginx, configured as documented: example_app/nginx/anybank.conf, run.

Debian's nginx with njs (``nginx``, ``libnginx-mod-http-js``: ``.ci/run`` installs both)
terminates TLS on a free loopback port in front of ``gunicorn
'example_app.wsgi:behind_nginx(...)'`` (plain HTTP on loopback, test_concurrency.py's
:class:`Gunicorn` machinery), with the sandbox Directory (:class:`example_app.sandbox.Sandbox`,
in threads) issuing the TPPs' certificates and software statements. nginx runs the template
``example_app/nginx/anybank.conf`` (and its ``client_cert.js``) with nothing changed but its
``{{...}}`` placeholders, included in a minimal nginx.conf of the test's own that keeps the pid
file, the logs and nginx's temporary files in the test's temporary directory. The bank's
``OBDCR_ISSUER`` is nginx's URL.

Every test runs twice: the bank reading the RFC 9440 ``Client-Cert`` header (njs), then nginx's
URL-escaped ``X-SSL-Client-Cert``; the template sets both on every request.

* a registration and a client_credentials token over real mutual TLS through nginx, the token
  bound to the certificate;
* a client without a certificate that sends certificate headers of its own (a valid TPP's
  certificate) is not believed, and nothing is stored; the same headers sent to gunicorn
  directly are believed, so it is nginx that stops them;
* a client with its own certificate that sends another TPP's in the headers: the bank sees the
  one of the TLS connection;
* the published URLs are OBDCR_ISSUER's whatever ``Host`` or ``X-Forwarded-Host`` the client
  sends.

Without nginx or njs the tests fail, they do not skip: run the install step of ``.ci/run``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
import requests
from ldap_server import free_port
from test_concurrency import REPO, Gunicorn
from test_example_app import (
    ACCOUNTS_PATH,
    TPP,
    _rfc9440,
    assert_consent_mismatch,
    assert_error,
    onboard,
    registration_jwt,
    token_request,
)

from example_app.bank import sandbox_config
from example_app.sandbox import Sandbox
from flask_obdcr.storage import SQLiteStore, SQLiteTokenStore, hash_secret

NGINX_DIR = REPO / "example_app" / "nginx"
TEMPLATE = NGINX_DIR / "anybank.conf"
CLIENT_CERT_JS = NGINX_DIR / "client_cert.js"
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
#: the two ways the template hands the client certificate to the bank
HEADERS = ("Client-Cert", "X-SSL-Client-Cert")
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
EVIL = "evil.example"


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


# -- the bank under gunicorn, plain HTTP on loopback ------------------------------------------


class BankBehindNginx(Gunicorn):
    """test_concurrency's :class:`Gunicorn` (process group, log, ``stop()``, ``kill()``)
    serving ``example_app.wsgi:behind_nginx(header=...)`` over plain HTTP on a free loopback
    port; ``start()`` returns that ``host:port`` for nginx's upstream."""

    LISTENING = re.compile(rb"Listening at: http://127\.0\.0\.1:(\d+)")

    def __init__(self, instance: Path, *, header: str, workers: int = 2) -> None:
        super().__init__(None, instance, workers=workers)  # type: ignore[arg-type]
        self.header = header

    def start(self) -> str:
        self.starts += 1
        app = (
            f"example_app.wsgi:behind_nginx(header={self.header!r},"
            f" instance_path={str(self.instance)!r})"
        )
        args = [
            sys.executable, "-m", "gunicorn", app,
            "--bind", "127.0.0.1:0",
            "--workers", str(self.workers),
            "--timeout", "30",
            "--graceful-timeout", "5",
            "--access-logfile", "-",
        ]  # fmt: skip
        return self._run(args, self._wait_listening)

    def _wait_listening(self, process: subprocess.Popen) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"gunicorn exited with {process.returncode}:\n{self.log_tail()}"
                )
            text = self.log.read_bytes()
            found = self.LISTENING.search(text)
            if found and text.count(b"Booting worker") >= self.workers:
                address = f"127.0.0.1:{found.group(1).decode()}"
                try:
                    response = requests.get(f"http://{address}/", timeout=(2, 10))
                    if response.status_code == 200:
                        return address
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not serve in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")


# -- the stack: Directory, gunicorn, nginx ----------------------------------------------------


@dataclass
class Stack:
    """The bank as the TPPs see it, through nginx. ``bank_url``, ``directory_url`` and
    ``ca_bundle`` are what test_example_app's helpers (``registration_jwt``,
    ``token_request``) take from their sandbox."""

    header: str
    bank_url: str  # nginx's URL, the bank's OBDCR_ISSUER
    upstream: str  # gunicorn's host:port, behind nginx
    directory_url: str
    ca_bundle: Path
    instance: Path
    bank: BankBehindNginx
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
            f"--- gunicorn\n{self.bank.log_tail(3000)}\n{self.nginx.log_tail(3000)}"
        )

    def close(self) -> None:
        if "clients" in self._stores:
            self._stores.pop("clients").close()
        if "tokens" in self._stores:
            self._stores.pop("tokens").conn.close()


@pytest.fixture(scope="module")
def nginx_install() -> tuple[str, Path]:
    return find_nginx()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The sandbox Directory (and a Werkzeug AnyBank these tests do not use), in threads."""
    with Sandbox(tmp_path_factory.mktemp("sandbox"), mode="thread") as running:
        yield running


@pytest.fixture(scope="module")
def tpp(sandbox, tmp_path_factory) -> TPP:
    return onboard(sandbox, tmp_path_factory.mktemp("tpp"))


@pytest.fixture(scope="module")
def other_tpp(sandbox, tmp_path_factory) -> TPP:
    return onboard(sandbox, tmp_path_factory.mktemp("other-tpp"))


@pytest.fixture(scope="module", params=HEADERS)
def stack(request, nginx_install, sandbox, tmp_path_factory):
    header = request.param
    folder = tmp_path_factory.mktemp(f"nginx-{header.lower()}")
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"
    instance = folder / "bank"
    instance.mkdir()
    config = sandbox_config(
        issuer=issuer, directory_url=sandbox.directory_url, ca_file=str(sandbox.ca_bundle)
    )
    (instance / "anybank.json").write_text(json.dumps(config))
    tls_cert, tls_key = sandbox.directory_state.issue_server_certificate(
        folder / "tls", name="nginx", hosts=["127.0.0.1", "localhost"]
    )
    bank = BankBehindNginx(instance, header=header)
    nginx = Nginx(*nginx_install, folder / "nginx")
    running = None
    try:
        upstream = bank.start()
        url = nginx.start(
            port=port,
            ca_bundle=str(sandbox.ca_bundle),
            values={
                "LISTEN": f"127.0.0.1:{port}",
                "SERVER_NAME": "127.0.0.1",
                "TLS_CERT": str(tls_cert),
                "TLS_KEY": str(tls_key),
                "CLIENT_CA": str(sandbox.ca_bundle),
                "CLIENT_CERT_JS": str(CLIENT_CERT_JS),
                "UPSTREAM": upstream,
            },
        )
        assert url == issuer
        running = Stack(
            header=header,
            bank_url=issuer,
            upstream=upstream,
            directory_url=sandbox.directory_url,
            ca_bundle=sandbox.ca_bundle,
            instance=instance,
            bank=bank,
            nginx=nginx,
        )
        yield running
    finally:
        if running is not None:
            running.close()
        nginx.stop()
        bank.stop()


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


# -- a. registration and token over mutual TLS through nginx -----------------------------------


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt"])
def test_registration_and_bound_token_over_mtls_through_nginx(method, stack, tpp, other_tpp):
    registration = stack.register(tpp, method)
    client_id = registration["client_id"]
    assert registration["token_endpoint_auth_method"] == method
    assert registration["software_id"] == tpp.software_id
    stored = stack.clients.get(client_id)
    assert stored is not None
    assert stored.ssa_claims["org_id"] == tpp.org_id

    token = stack.token(tpp, registration, method)
    assert stack.token_binding(token) == (client_id, tpp.thumbprint)

    auth = {"Authorization": f"Bearer {token}"}
    # accepted with its certificate, then refused: account data needs the customer's consent
    assert_consent_mismatch(stack.call("GET", ACCOUNTS_PATH, tpp=tpp, headers=auth))
    # bound to the certificate: useless with another TPP's (valid) one, or with none
    elsewhere = stack.call("GET", ACCOUNTS_PATH, tpp=other_tpp, headers=auth)
    assert_error(elsewhere, 401, "invalid_token")
    assert_error(stack.call("GET", ACCOUNTS_PATH, headers=auth), 401, "invalid_client")

    # the registration is managed over mutual TLS through nginx too
    uri = registration["registration_client_uri"]
    rat = {"Authorization": f"Bearer {registration['registration_access_token']}"}
    read = stack.call("GET", uri, tpp=tpp, headers=rat)
    assert read.status_code == 200, stack.explain(read)
    assert read.json()["client_id"] == client_id


def test_untrusted_client_certificate_is_refused_by_nginx(stack, tpp, tmp_path):
    from flask_obdcr.testing.pki import CertificateAuthority, generate_key, key_pem, ob_subject, pem

    rogue = CertificateAuthority.root("Rogue Root CA")
    key = generate_key("EC")
    certificate = rogue.issue(ob_subject(tpp.software_id, tpp.org_id), key.public_key())
    (tmp_path / "rogue.pem").write_text(pem(certificate))
    (tmp_path / "rogue.key").write_text(key_pem(key))
    rogue_tpp = TPP(
        **{**vars(tpp), "cert": (str(tmp_path / "rogue.pem"), str(tmp_path / "rogue.key"))}
    )
    before = stack.counts()
    body = registration_jwt(stack, tpp, "tls_client_auth")
    response = stack.call(
        "POST", "/register", tpp=rogue_tpp, data=body, headers={"Content-Type": "application/jwt"}
    )
    assert response.status_code == 400  # nginx: "The SSL certificate error"
    assert "SSL certificate error" in response.text
    assert stack.counts() == before


# -- b. certificate headers from a client without a certificate ------------------------------


@pytest.fixture(scope="module")
def registered(stack, tpp) -> tuple[dict[str, Any], str]:
    """A tls_client_auth registration of ``tpp`` and a token for it, made properly."""
    registration = stack.register(tpp, "tls_client_auth")
    return registration, stack.token(tpp, registration, "tls_client_auth")


def test_certificate_headers_from_a_client_without_a_certificate_are_not_believed(
    stack, tpp, registered
):
    registration, token = registered
    forged = forged_headers(tpp)
    before = stack.counts()

    body = registration_jwt(stack, tpp, "tls_client_auth")
    refused = stack.call(
        "POST", "/register", data=body, headers={"Content-Type": "application/jwt", **forged}
    )
    assert_error(refused, 401, "invalid_client")

    form = token_request(stack, tpp, registration, "tls_client_auth")
    assert_error(stack.call("POST", "/token", data=form, headers=forged), 401, "invalid_client")

    auth = {"Authorization": f"Bearer {token}"}
    accounts = stack.call("GET", ACCOUNTS_PATH, headers={**auth, **forged})
    assert_error(accounts, 401, "invalid_client")
    manage = stack.call(
        "GET",
        registration["registration_client_uri"],
        headers={"Authorization": f"Bearer {registration['registration_access_token']}", **forged},
    )
    assert_error(manage, 401, "invalid_client")
    assert stack.counts() == before, "nothing is stored"

    # The same header sent to gunicorn itself, from loopback, is believed (the bank trusts
    # 127.0.0.1 as its proxy): the headers are good ones, and it is nginx that stops them.
    form = token_request(stack, tpp, registration, "tls_client_auth")
    direct = requests.post(
        f"http://{stack.upstream}/token",
        data=form,
        headers={stack.header: forged[stack.header]},
        timeout=HTTP_TIMEOUT,
    )
    assert direct.status_code == 200, stack.explain(direct)


# -- c. another TPP's certificate in the headers, over a TLS connection with one's own ----------


def test_forged_headers_are_overwritten_with_the_connections_certificate(stack, tpp, other_tpp):
    forged = forged_headers(other_tpp)
    headers = {"Content-Type": "application/jwt", **forged}

    # tpp's registration, tpp's connection, other_tpp's certificate in the headers: the bank
    # sees tpp's (with other_tpp's it would refuse: not the software of the SSA)
    body = registration_jwt(stack, tpp, "tls_client_auth")
    created = stack.call("POST", "/register", tpp=tpp, data=body, headers=headers)
    assert created.status_code == 201, stack.explain(created)
    registration = created.json()
    assert registration["tls_client_auth_subject_dn"] == tpp.subject_dn

    # and the other way round: other_tpp's registration cannot be made over tpp's connection
    before = stack.counts()
    theirs = registration_jwt(stack, other_tpp, "private_key_jwt")
    refused = stack.call("POST", "/register", tpp=tpp, data=theirs, headers=headers)
    assert_error(refused, 400, "invalid_software_statement")
    assert stack.counts() == before

    # the token is bound to the connection's certificate, not the header's
    form = token_request(stack, tpp, registration, "tls_client_auth")
    issued = stack.call("POST", "/token", tpp=tpp, data=form, headers=forged)
    assert issued.status_code == 200, stack.explain(issued)
    token = issued.json()["access_token"]
    assert stack.token_binding(token) == (registration["client_id"], tpp.thumbprint)
    auth = {"Authorization": f"Bearer {token}"}
    assert_consent_mismatch(stack.call("GET", ACCOUNTS_PATH, tpp=tpp, headers={**auth, **forged}))
    # other_tpp's connection with tpp's certificate in the headers cannot use tpp's token
    stolen = stack.call(
        "GET", ACCOUNTS_PATH, tpp=other_tpp, headers={**auth, **forged_headers(tpp)}
    )
    assert_error(stolen, 401, "invalid_token")


# -- d. the published URLs ---------------------------------------------------------------------


def _urls(value: Any) -> list[str]:
    """Every http(s) URL in a JSON document."""
    if isinstance(value, dict):
        return [url for item in value.values() for url in _urls(item)]
    if isinstance(value, list):
        return [url for item in value for url in _urls(item)]
    return [value] if isinstance(value, str) and re.match(r"https?://", value) else []


HOST_HEADERS = [
    pytest.param({"Host": EVIL}, id="host"),
    pytest.param({"Host": f"{EVIL}:8443"}, id="host-with-port"),
    pytest.param(
        {"X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "http", "X-Forwarded-Port": "8443"},
        id="x-forwarded",
    ),
]


@pytest.mark.parametrize("spoofed", HOST_HEADERS)
def test_published_urls_are_the_configured_ones_whatever_the_host(spoofed, stack, tpp):
    issuer = stack.bank_url
    response = stack.call("GET", "/.well-known/openid-configuration", headers=spoofed)
    assert response.status_code == 200, stack.explain(response)
    document = response.json()
    published = {
        key: document.get(key) for key in ("issuer", "registration_endpoint", "token_endpoint")
    }
    assert published == {
        "issuer": issuer,
        "registration_endpoint": f"{issuer}/register",
        "token_endpoint": f"{issuer}/token",
    }
    # and every other URL it publishes (accounts, mTLS aliases...) is below the issuer too
    for url in _urls(document):
        assert url == issuer or url.startswith(f"{issuer}/"), url

    registration = stack.register(tpp, "tls_client_auth", headers=spoofed)
    client_id = registration["client_id"]
    assert registration["registration_client_uri"] == f"{issuer}/register/{client_id}"
