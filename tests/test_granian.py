"""AnyBank under granian behind nginx, run with the production command line of
example_app/wsgi.py.

nginx runs ``example_app/nginx/anybank.conf`` rendered exactly as tests/test_nginx.py renders
it (tests/nginx_helpers.py) on a free loopback port, terminating TLS in front of ``granian
--interface wsgi --factory ... example_app.wsgi:granian_behind_nginx`` on another, plain HTTP;
the sandbox Directory (:class:`example_app.sandbox.Sandbox`, in threads) issues the TPPs'
certificates and software statements. The bank reads the RFC 9440 ``Client-Cert`` header that
nginx sets, from 127.0.0.1 only.

* a TPP registers over mutual TLS through nginx, gets a certificate-bound token and uses it:
  its registration (``GET /register/<id>``) and the consent API; another TPP's certificate
  cannot use the token;
* a ``Client-Cert`` header sent by the client is overwritten by nginx (the bank sees the
  connection's certificate, or none); sent straight to granian, it is ignored from an address
  that is not the proxy's (127.0.0.2) and believed from the proxy's (127.0.0.1), so it is the
  address that decides;
* granian copies its process environment into every request's WSGI environ (shown with a
  bare WSGI app), so ``granian_behind_nginx`` refuses to start while the environment holds a
  variable that would read as request data (``SSL_CLIENT_CERT``, ``HTTP_CLIENT_CERT``...).

Without granian these tests skip outside CI (``pip install -e '.[test]'``) and fail in CI;
without nginx or njs they fail, as tests/test_nginx.py's do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from child_process import checkout_environment
from requests.adapters import HTTPAdapter

try:
    import granian  # noqa: F401 - the `test` extra installs it
except ImportError as exc:  # pragma: no cover
    if os.environ.get("CI"):
        raise
    # worded as pytest.importorskip words it: the skip summary names the remedy
    pytest.skip(f"could not import 'granian': {exc}", allow_module_level=True)
if not hasattr(os, "killpg"):  # pragma: no cover
    pytest.skip("needs POSIX process groups", allow_module_level=True)

import nginx_helpers  # noqa: E402
import test_example_app  # noqa: E402
from ldap_server import free_port  # noqa: E402
from nginx_helpers import (  # noqa: E402
    HTTP_TIMEOUT,
    START_TIMEOUT,
    Nginx,
    Stack,
    bank_instance,
    forged_headers,
    template_values,
)
from test_example_app import (  # noqa: E402
    _rfc9440,
    assert_error,
    registration_jwt,
    token_request,
)

import example_app.wsgi  # noqa: E402
from example_app._util import stop_process_group  # noqa: E402
from example_app.wsgi import (  # noqa: E402
    INSTANCE_ENV,
    UnsafeEnvironment,
    granian_behind_nginx,
    request_variables,
)

CONSENTS_PATH = "/open-banking/v3.1/aisp/account-access-consents"
#: the bank's trusted proxy (nginx), and a loopback address that is not it
PROXY_ADDRESS = "127.0.0.1"
OTHER_ADDRESS = "127.0.0.2"
#: example_app/wsgi.py's granian options (but the address and the number of workers)
PRODUCTION_OPTIONS = (
    "--factory", "--http", "1", "--workers", "2", "--blocking-threads", "1",
    "--respawn-failed-workers",
)  # fmt: skip


# the module fixtures these tests share (one instance per module, as pytest makes them): the
# sandbox and two TPPs of test_example_app, and nginx with its njs module
nginx_install = nginx_helpers.nginx_install
sandbox = test_example_app.sandbox
tpp = test_example_app.tpp
other_tpp = test_example_app.other_tpp

# -- granian, as the production command line runs it -----------------------------------------


def server_environment(**extra: str) -> dict[str, str]:
    """This process's environment without anything granian would hand the app as request data
    (see example_app/wsgi.py), with the repository importable, and ``extra``."""
    return checkout_environment(request_variables(os.environ), **extra)


class Granian:
    """``granian --interface wsgi <options> <target>`` (by default the options of
    example_app/wsgi.py's command line) on a free loopback port, in a session of its own
    (``stop()`` signals the main process, then SIGKILLs whatever of the group is left). Its
    output goes to ``log``, in ``folder``, its working directory."""

    name = "granian"

    def __init__(
        self,
        folder: Path,
        target: str,
        *,
        env: dict[str, str],
        options: tuple[str, ...] = PRODUCTION_OPTIONS,
    ) -> None:
        self.folder = folder
        self.target = target
        self.env = env
        self.options = options
        self.port = free_port()
        self.address = f"{PROXY_ADDRESS}:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.folder / "granian.log"

    def log_tail(self, size: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "granian", "--interface", "wsgi", *self.options,
            "--host", PROXY_ADDRESS, "--port", str(self.port), "--log-level", "info",
            self.target,
        ]  # fmt: skip

    def launch(self) -> subprocess.Popen:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.folder, env=self.env, start_new_session=True,
            )  # fmt: skip
        return self.process

    def start(self) -> str:
        """Start it and wait until ``GET /`` answers 200; return its ``host:port``."""
        process = self.launch()
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise AssertionError(
                        f"granian exited with {process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = requests.get(f"http://{self.address}/", timeout=(2, 10))
                    if response.status_code == 200:
                        return self.address
                    last = f"HTTP {response.status_code}"
                except requests.RequestException as exc:
                    last = str(exc)
                time.sleep(0.05)
            raise AssertionError(
                f"granian did not serve in {START_TIMEOUT:.0f} s ({last}):\n{self.log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process)  # granian stops its workers on SIGTERM


class FromAddress(HTTPAdapter):
    """requests' adapter whose connections leave from ``address``, the ``REMOTE_ADDR`` the
    bank sees (127.0.0.2 on Linux's loopback: a peer that is not the bank's proxy)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def straight_to_granian(
    stack: Stack, method: str, path: str, *, source: str, **kw: Any
) -> requests.Response:
    """A plain-HTTP request to granian itself, bypassing nginx, from ``source``."""
    with requests.Session() as session:
        session.trust_env = False
        session.mount("http://", FromAddress(source))
        return session.request(method, f"http://{stack.upstream}{path}", timeout=HTTP_TIMEOUT, **kw)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(nginx_install, sandbox, tmp_path_factory):
    folder = tmp_path_factory.mktemp("granian-nginx")
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"
    instance = bank_instance(folder, sandbox, issuer)
    bank = Granian(
        instance,
        "example_app.wsgi:granian_behind_nginx",
        env=server_environment(**{INSTANCE_ENV: str(instance)}),
    )
    nginx = Nginx(*nginx_install, folder / "nginx")
    running = None
    try:
        upstream = bank.start()
        nginx.start(
            template_values(sandbox, folder, port=port, upstream=upstream),
            url=issuer,
            ca_bundle=sandbox.ca_bundle,
            timeout=START_TIMEOUT,
        )
        running = Stack(
            header="Client-Cert",
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


def consent_body() -> dict[str, Any]:
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    return {
        "Data": {
            "Permissions": ["ReadAccountsDetail", "ReadBalances"],
            "ExpirationDateTime": expires.isoformat(timespec="seconds"),
        },
        "Risk": {},
    }


# -- a. registration, a bound token and a protected API through nginx, under granian ----------


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt"])
def test_registration_token_and_protected_calls_through_nginx_under_granian(
    method, stack, tpp, other_tpp
):
    registration = stack.register(tpp, method)
    client_id = registration["client_id"]
    assert registration["token_endpoint_auth_method"] == method
    assert registration["registration_client_uri"] == f"{stack.bank_url}/register/{client_id}"
    stored = stack.clients.get(client_id)
    assert stored is not None
    assert stored.ssa_claims["software_id"] == tpp.software_id

    token = stack.token(tpp, registration, method)
    assert stack.token_binding(token) == (client_id, tpp.thumbprint)

    # the registration, read with its registration access token
    rat = {"Authorization": f"Bearer {registration['registration_access_token']}"}
    read = stack.call("GET", f"/register/{client_id}", tpp=tpp, headers=rat)
    assert read.status_code == 200, stack.explain(read)
    assert read.json()["client_id"] == client_id

    # the consent API with the bound token: created, then read back
    auth = {"Authorization": f"Bearer {token}"}
    created = stack.call("POST", CONSENTS_PATH, tpp=tpp, headers=auth, json=consent_body())
    assert created.status_code == 201, stack.explain(created)
    consent_id = created.json()["Data"]["ConsentId"]
    assert created.json()["Links"]["Self"] == f"{stack.bank_url}{CONSENTS_PATH}/{consent_id}"
    again = stack.call("GET", f"{CONSENTS_PATH}/{consent_id}", tpp=tpp, headers=auth)
    assert again.status_code == 200, stack.explain(again)
    assert again.json()["Data"]["Status"] == "AwaitingAuthorisation"

    # bound to tpp's certificate: useless over another TPP's connection, or with none
    theirs = stack.call("GET", f"{CONSENTS_PATH}/{consent_id}", tpp=other_tpp, headers=auth)
    assert_error(theirs, 401, "invalid_token")
    bare = stack.call("GET", f"{CONSENTS_PATH}/{consent_id}", headers=auth)
    assert_error(bare, 401, "invalid_client")


# -- b. a spoofed Client-Cert header ------------------------------------------------------------


def test_a_clients_own_certificate_headers_are_overwritten_by_nginx(stack, tpp, other_tpp):
    # tpp's connection, other_tpp's certificate in the headers: the bank sees tpp's
    forged = forged_headers(other_tpp)
    body = registration_jwt(stack, tpp, "tls_client_auth")
    created = stack.call(
        "POST", "/register", tpp=tpp, data=body,
        headers={"Content-Type": "application/jwt", **forged},
    )  # fmt: skip
    assert created.status_code == 201, stack.explain(created)
    registration = created.json()
    assert registration["tls_client_auth_subject_dn"] == tpp.subject_dn

    form = token_request(stack, tpp, registration, "tls_client_auth")
    issued = stack.call("POST", "/token", tpp=tpp, data=form, headers=forged)
    assert issued.status_code == 200, stack.explain(issued)
    assert stack.token_binding(issued.json()["access_token"]) == (
        registration["client_id"],
        tpp.thumbprint,
    )

    # no certificate on the connection, tpp's own in the headers: none reaches the bank
    before = stack.counts()
    form = token_request(stack, tpp, registration, "tls_client_auth")
    refused = stack.call("POST", "/token", data=form, headers=forged_headers(tpp))
    assert_error(refused, 401, "invalid_client")
    again = registration_jwt(stack, tpp, "tls_client_auth")
    refused = stack.call(
        "POST", "/register", data=again,
        headers={"Content-Type": "application/jwt", **forged_headers(tpp)},
    )  # fmt: skip
    assert_error(refused, 401, "invalid_client")
    assert stack.counts() == before, "nothing is stored"


@pytest.fixture(scope="module")
def registered(stack, tpp) -> dict[str, Any]:
    """A tls_client_auth registration of ``tpp``, made properly through nginx."""
    return stack.register(tpp, "tls_client_auth")


def test_client_cert_header_straight_to_granian_counts_only_from_the_proxys_address(
    stack, tpp, registered
):
    header = {"Client-Cert": _rfc9440(Path(tpp.cert[0]).read_text())}
    before = stack.counts()

    # from 127.0.0.2, not the bank's proxy: the header is ignored, nothing is stored
    form = token_request(stack, tpp, registered, "tls_client_auth")
    ignored = straight_to_granian(
        stack, "POST", "/token", source=OTHER_ADDRESS, data=form, headers=header
    )
    assert_error(ignored, 401, "invalid_client")
    body = registration_jwt(stack, tpp, "tls_client_auth")
    ignored = straight_to_granian(
        stack, "POST", "/register", source=OTHER_ADDRESS, data=body,
        headers={"Content-Type": "application/jwt", **header},
    )  # fmt: skip
    assert_error(ignored, 401, "invalid_client")
    assert stack.counts() == before, "nothing is stored"

    # the same header from 127.0.0.1, the proxy's address, is believed: the header is a good
    # one, and it is the address that decides
    form = token_request(stack, tpp, registered, "tls_client_auth")
    believed = straight_to_granian(
        stack, "POST", "/token", source=PROXY_ADDRESS, data=form, headers=header
    )
    assert believed.status_code == 200, stack.explain(believed)
    assert stack.token_binding(believed.json()["access_token"]) == (
        registered["client_id"],
        tpp.thumbprint,
    )


# -- c. granian's environment in every request's environ ----------------------------------------

ECHO_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ.get("SSL_CLIENT_CERT", "(none)").encode()]
"""


def test_granian_copies_its_environment_into_every_requests_environ(tmp_path, tpp):
    """Why granian_behind_nginx checks its environment: a bare WSGI app under granian, started
    with SSL_CLIENT_CERT set, sees that certificate in the environ of a request that has
    none. (If this fails, granian no longer copies it, and the check could go.)"""
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    pem_text = Path(tpp.cert[0]).read_text()
    server = Granian(
        tmp_path,
        "echo_app:app",
        env=server_environment(PYTHONPATH=str(tmp_path), SSL_CLIENT_CERT=pem_text),
        options=("--workers", "1", "--blocking-threads", "1"),
    )
    try:
        address = server.start()
        response = requests.get(f"http://{address}/", timeout=HTTP_TIMEOUT)
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.text == pem_text


@pytest.mark.parametrize("variable", ["SSL_CLIENT_CERT", "HTTP_CLIENT_CERT"])
def test_granian_entry_point_refuses_to_start_with_request_data_in_its_environment(
    variable, sandbox, tpp, tmp_path
):
    pem_text = Path(tpp.cert[0]).read_text()
    value = pem_text if variable == "SSL_CLIENT_CERT" else _rfc9440(pem_text)
    instance = bank_instance(tmp_path, sandbox, "https://127.0.0.1:1")
    # one worker: granian exits when a respawned worker fails again within 5.5 s, but it
    # forgets a worker's respawn when it respawns another, so two workers failing at different
    # moments (a loaded machine) can be respawned in turn for ever (granian 2.x, server/common.py
    # _serve_loop); the refusal itself is the same in every worker
    options = tuple("1" if o == "2" else o for o in PRODUCTION_OPTIONS)
    server = Granian(
        tmp_path,
        "example_app.wsgi:granian_behind_nginx",
        env=server_environment(**{INSTANCE_ENV: str(instance), variable: value}),
        options=options,
    )
    assert "--workers" in options and options[options.index("--workers") + 1] == "1"
    process = server.launch()
    try:
        returncode = process.wait(timeout=START_TIMEOUT)
    finally:
        server.stop()
    log = server.log_tail(100_000)
    assert returncode != 0, log
    assert "granian_behind_nginx refuses to start" in log
    assert f"for every request: {variable}." in log
    # the value (a certificate here; could be a secret) is never printed
    certificate_body = "".join(pem_text.splitlines()[1:-1])
    assert certificate_body[:64] not in log.replace("\n", "")
    # refused before the bank was built: no database, no keys
    assert sorted(path.name for path in instance.iterdir()) == ["anybank.json"]


def test_granian_entry_point_builds_the_bank_behind_nginx_in_a_clean_environment(
    sandbox, tmp_path, monkeypatch
):
    instance = bank_instance(tmp_path, sandbox, "https://127.0.0.1:1")
    for name in request_variables(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv(INSTANCE_ENV, str(instance))
    # variables that look alike but are not request data: OpenSSL's, an outbound proxy's
    monkeypatch.setenv("SSL_CERT_FILE", str(sandbox.ca_bundle))
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    app = granian_behind_nginx()
    assert app.instance_path == str(instance)
    assert app.config["OBDCR_CLIENT_CERT_HEADER"] == "Client-Cert"
    assert app.config["OBDCR_TRUSTED_PROXIES"] == ["127.0.0.1", "::1"]
    assert app.config["OBDCR_ISSUER"] == "https://127.0.0.1:1"

    monkeypatch.setenv("SSL_CLIENT_CERT", "-----BEGIN CERTIFICATE-----\nsecret-ish")
    with pytest.raises(UnsafeEnvironment, match=r"for every request: SSL_CLIENT_CERT\.") as caught:
        granian_behind_nginx()
    assert "secret-ish" not in str(caught.value)
    assert caught.value.code == str(caught.value)  # SystemExit: granian prints it, exits 1

    # checked again once the app is built: what granian copies is the environment then
    monkeypatch.delenv("SSL_CLIENT_CERT")

    def sets_a_variable(**kw: Any) -> object:
        monkeypatch.setenv("HTTP_CLIENT_CERT", ":c2VjcmV0:")
        return object()

    monkeypatch.setattr(example_app.wsgi, "behind_nginx", sets_a_variable)
    with pytest.raises(UnsafeEnvironment, match=r"for every request: HTTP_CLIENT_CERT\."):
        granian_behind_nginx()


def test_request_variables_are_the_names_a_wsgi_app_reads_as_request_data():
    environment = {
        name: "x"
        for name in [
            "SSL_CLIENT_CERT", "SSL_CLIENT_S_DN", "HTTP_CLIENT_CERT", "HTTP_X_SSL_CLIENT_CERT",
            "HTTP_AUTHORIZATION", "HTTP_PROXY", "REMOTE_ADDR", "REMOTE_USER", "CONTENT_LENGTH",
            "HTTPS", "wsgi.url_scheme",
            # not request data
            "PATH", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy",
            "ANYBANK_INSTANCE", "GRANIAN_WORKERS", "HTTPX_TIMEOUT",
        ]
    }  # fmt: skip
    assert request_variables(environment) == sorted(
        [
            "CONTENT_LENGTH", "HTTPS", "HTTP_AUTHORIZATION", "HTTP_CLIENT_CERT", "HTTP_PROXY",
            "HTTP_X_SSL_CLIENT_CERT", "REMOTE_ADDR", "REMOTE_USER", "SSL_CLIENT_CERT",
            "SSL_CLIENT_S_DN", "wsgi.url_scheme",
        ]
    )  # fmt: skip
