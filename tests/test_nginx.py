"""AnyBank behind nginx, configured as documented: example_app/nginx/anybank.conf, run.

Debian's nginx with njs (``nginx``, ``libnginx-mod-http-js``: ``.ci/run`` installs both)
terminates TLS on a free loopback port in front of ``gunicorn
'example_app.wsgi:behind_nginx(...)'`` (plain HTTP on loopback, test_concurrency.py's
:class:`Gunicorn` machinery), with the sandbox Directory (:class:`example_app.sandbox.Sandbox`,
in threads) issuing the TPPs' certificates and software statements. nginx runs the template
``example_app/nginx/anybank.conf`` (and its ``client_cert.js``) with nothing changed but its
``{{...}}`` placeholders, included in a minimal nginx.conf of the test's own that keeps the pid
file, the logs and nginx's temporary files in the test's temporary directory (the machinery is
tests/nginx_helpers.py, shared with test_granian.py). The bank's ``OBDCR_ISSUER`` is nginx's
URL.

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

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nginx_helpers
import pytest
import requests
import test_example_app
from ldap_server import free_port
from nginx_helpers import (
    HTTP_TIMEOUT,
    START_TIMEOUT,
    Nginx,
    Stack,
    bank_instance,
    forged_headers,
    template_values,
)
from test_concurrency import Gunicorn
from test_example_app import (
    ACCOUNTS_PATH,
    TPP,
    assert_consent_mismatch,
    assert_error,
    registration_jwt,
    token_request,
)

#: the two ways the template hands the client certificate to the bank
HEADERS = ("Client-Cert", "X-SSL-Client-Cert")
EVIL = "evil.example"


# the module fixtures these tests share (one instance per module, as pytest makes them): the
# sandbox and two TPPs of test_example_app, and nginx with its njs module
nginx_install = nginx_helpers.nginx_install
sandbox = test_example_app.sandbox
tpp = test_example_app.tpp
other_tpp = test_example_app.other_tpp

# -- the bank under gunicorn, plain HTTP on loopback ------------------------------------------


class BankBehindNginx(Gunicorn):
    """test_concurrency's :class:`Gunicorn` (process group, log, ``stop()``, ``kill()``)
    serving ``example_app.wsgi:behind_nginx(header=...)`` over plain HTTP on a free loopback
    port; ``start()`` returns that ``host:port`` for nginx's upstream."""

    LISTENING = re.compile(rb"Listening at: http://127\.0\.0\.1:(\d+)")
    name = "gunicorn"

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


@pytest.fixture(scope="module", params=HEADERS)
def stack(request, nginx_install, sandbox, tmp_path_factory):
    header = request.param
    folder = tmp_path_factory.mktemp(f"nginx-{header.lower()}")
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"
    instance = bank_instance(folder, sandbox, issuer)
    bank = BankBehindNginx(instance, header=header)
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
