"""The example: AnyBank, the sandbox Directory service, the TPP command line, make demo/serve.

The conformance flow runs over real HTTPS on loopback (``requests`` with ``cert=`` and
``verify=``): the Directory and the bank are Werkzeug TLS servers on free ports, the bank
fetches every JWKS from the Directory with the real HTTPFetcher. ``make demo`` runs as the
newcomer runs it, with its servers in child processes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from child_process import checkout_environment
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from jwcrypto import jwk, jws

from example_app import create_app
from example_app.bank import sandbox_config
from example_app.directory import DirectoryState, create_directory_app
from example_app.sandbox import Sandbox
from example_app.serving import GunicornClientCertMiddleware
from example_app.wsgi import behind_nginx, gunicorn_tls
from flask_obdcr.revalidation import HTTPDirectoryStatus
from flask_obdcr.revocation.crl import crl_urls, verify_crl
from flask_obdcr.revocation.ocsp import build_request as ocsp_request
from flask_obdcr.revocation.ocsp import ocsp_urls
from flask_obdcr.revocation.ocsp import verify_response as verify_ocsp_response
from flask_obdcr.testing import SandboxDirectory, sign_jwt
from flask_obdcr.testing.pki import CertificateAuthority, generate_key, key_pem, ob_subject, pem

REPO = Path(__file__).resolve().parent.parent
ACCOUNTS_PATH = "/open-banking/v3.1/aisp/accounts"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# -- a TPP made by hand, against the Directory's HTTP API ---------------------------------------


@dataclass
class TPP:
    org_id: str
    software_id: str
    cert: tuple[str, str]  # (transport.pem, transport.key) for requests' cert=
    signing_key: jwk.JWK
    subject_dn: str
    thumbprint: str
    #: certificate type -> the kid the Directory gave it
    kids: dict[str, str] = field(default_factory=dict)


def _thumbprint(certificate: x509.Certificate) -> str:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def onboard(sandbox: Sandbox, folder: Path, *, roles=("AISP",)) -> TPP:
    """Organisation, software, both CSRs uploaded and certificates downloaded."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = str(sandbox.ca_bundle)

    def call(method, path, **kw):
        url = path if path.startswith("https://") else sandbox.directory_url + path
        response = requests.request(method, url, verify=ca, timeout=10, **kw)
        assert response.status_code in (200, 201), response.text
        return response

    org = call("POST", "/api/organisations", json={"org_name": "Test TPP Ltd"}).json()
    software = call(
        "POST",
        f"/api/organisations/{org['org_id']}/software",
        json={
            "client_name": "Test TPP",
            "roles": list(roles),
            "redirect_uris": ["https://tpp.example.com/cb", "https://tpp.example.com/cb2"],
        },
    ).json()
    org_id, software_id = org["org_id"], software["software_id"]
    files = {}
    kids = {}
    for cert_type in ("transport", "signing"):
        key = generate_key("RSA")
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(ob_subject(software_id, org_id))
            .sign(key, hashes.SHA256())
        )
        record = call(
            "POST",
            f"/api/software/{software_id}/certificates/{cert_type}",
            data=csr.public_bytes(serialization.Encoding.PEM),
        ).json()
        kids[cert_type] = record["kid"]
        (folder / f"{cert_type}.pem").write_text(call("GET", record["pem_url"]).text)
        (folder / f"{cert_type}.key").write_text(key_pem(key))
        files[cert_type] = key
    transport = x509.load_pem_x509_certificate((folder / "transport.pem").read_bytes())
    signing = jwk.JWK.from_pem((folder / "signing.key").read_bytes())
    return TPP(
        org_id=org_id,
        software_id=software_id,
        cert=(str(folder / "transport.pem"), str(folder / "transport.key")),
        signing_key=jwk.JWK(**{**signing.export_private(as_dict=True), "kid": kids["signing"]}),
        subject_dn=transport.subject.rfc4514_string(),
        thumbprint=_thumbprint(transport),
        kids=kids,
    )


def get_ssa(sandbox: Sandbox, tpp: TPP) -> str:
    response = requests.post(
        f"{sandbox.directory_url}/api/software/{tpp.software_id}/ssa",
        verify=str(sandbox.ca_bundle),
        timeout=10,
    )
    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/jwt"
    return response.text


def registration_jwt(sandbox: Sandbox, tpp: TPP, method: str, **overrides) -> str:
    now = int(time.time())
    claims = {
        "iss": tpp.software_id,
        "iat": now,
        "exp": now + 300,
        "aud": sandbox.bank_url,
        "jti": str(uuid.uuid4()),
        "software_id": tpp.software_id,
        "software_statement": get_ssa(sandbox, tpp),
        "redirect_uris": ["https://tpp.example.com/cb"],
        "token_endpoint_auth_method": method,
        "grant_types": ["client_credentials"],
        "scope": "openid accounts",
        "id_token_signed_response_alg": "PS256",
        "request_object_signing_alg": "PS256",
    }
    if method == "tls_client_auth":
        claims["tls_client_auth_subject_dn"] = tpp.subject_dn
    else:
        claims["token_endpoint_auth_signing_alg"] = "PS256"
    claims.update(overrides)
    return sign_jwt(claims, tpp.signing_key, alg="PS256")


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with Sandbox(tmp_path_factory.mktemp("anybank"), mode="thread") as running:
        yield running


@pytest.fixture(scope="module")
def tpp(sandbox, tmp_path_factory) -> TPP:
    return onboard(sandbox, tmp_path_factory.mktemp("tpp"))


@pytest.fixture(scope="module")
def other_tpp(sandbox, tmp_path_factory) -> TPP:
    return onboard(sandbox, tmp_path_factory.mktemp("other-tpp"))


def bank_caller(sandbox: Sandbox):
    """HTTPS calls to the sandbox's bank: ``call("POST", "/register", tpp=..., ...)`` presents
    the TPP's transport certificate; ``tpp=None`` presents none."""

    def call(method, path, *, tpp=None, **kw):
        url = path if path.startswith("https://") else sandbox.bank_url + path
        if tpp is not None:
            kw["cert"] = tpp.cert
        return requests.request(method, url, verify=str(sandbox.ca_bundle), timeout=15, **kw)

    return call


@pytest.fixture
def bank(sandbox):
    """HTTPS calls to the bank (:func:`bank_caller`)."""
    return bank_caller(sandbox)


@pytest.fixture
def store(sandbox):
    app = sandbox.bank_app
    with app.app_context():
        yield app.extensions["obdcr"].store


def assert_error(response, status, error):
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.headers["Cache-Control"] == "no-store"


def assert_consent_mismatch(response):
    """A client_credentials token at the accounts API: 403, the OB error for no consent."""
    assert response.status_code == 403, response.text
    assert response.json()["Errors"][0]["ErrorCode"] == "UK.OBIE.Resource.ConsentMismatch"


def token_request(sandbox, tpp, registration, method, *, scope="accounts"):
    form = {"grant_type": "client_credentials", "scope": scope}
    if method == "private_key_jwt":
        now = int(time.time())
        claims = {
            "iss": registration["client_id"],
            "sub": registration["client_id"],
            "aud": f"{sandbox.bank_url}/token",
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
        }
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = sign_jwt(claims, tpp.signing_key, alg="PS256")
    else:
        form["client_id"] = registration["client_id"]
    return form


# -- the conformance flow over HTTPS -----------------------------------------------------------


def test_discovery_is_reachable_without_a_client_certificate(sandbox, bank):
    response = bank("GET", "/.well-known/openid-configuration")
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == sandbox.bank_url
    assert document["registration_endpoint"] == f"{sandbox.bank_url}/register"
    assert document["token_endpoint"] == f"{sandbox.bank_url}/token"
    assert document["accounts_endpoint"] == sandbox.bank_url + ACCOUNTS_PATH
    assert document["grant_types_supported"] == [
        "authorization_code",
        "client_credentials",
        "refresh_token",
    ]
    assert document["authorization_endpoint"] == f"{sandbox.bank_url}/authorize"
    assert document["tls_client_certificate_bound_access_tokens"] is True
    assert document["request_object_signing_alg_values_supported"][0] == "PS256"


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt"])
def test_conformance_flow_over_https(method, sandbox, bank, store, tpp):
    # registration without the transport certificate: refused, nothing stored
    body = registration_jwt(sandbox, tpp, method)
    before = {c.client_id for c in store.list()}
    headers = {"Content-Type": "application/jwt"}
    refused = bank("POST", "/register", data=body, headers=headers)
    assert_error(refused, 401, "invalid_client")
    assert {c.client_id for c in store.list()} == before

    created = bank("POST", "/register", tpp=tpp, data=body, headers=headers)
    assert created.status_code == 201, created.text
    registration = created.json()
    client_id = registration["client_id"]
    assert registration["token_endpoint_auth_method"] == method
    assert registration["software_id"] == tpp.software_id
    assert registration["registration_client_uri"] == f"{sandbox.bank_url}/register/{client_id}"
    stored = store.get(client_id)
    assert stored.ssa_claims["org_id"] == tpp.org_id
    assert stored.ssa_claims["software_jwks_endpoint"] == (
        f"{sandbox.directory_url}/{tpp.org_id}/{tpp.software_id}.jwks"
    )

    # a token: refused without the certificate, bound to it with
    form = token_request(sandbox, tpp, registration, method)
    assert_error(bank("POST", "/token", data=form), 401, "invalid_client")
    form = token_request(sandbox, tpp, registration, method)
    issued = bank("POST", "/token", tpp=tpp, data=form)
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    assert issued.json()["scope"] == "accounts"
    record = sandbox.bank_app.extensions["obdcr"].tokens.find(token)
    assert record.client_id == client_id
    assert record.cnf == {"x5t#S256": tpp.thumbprint}

    # the accounts API: the token and its certificate are accepted, but account data needs
    # the customer's consent (tests/test_consent_journey.py takes one)
    auth = {"Authorization": f"Bearer {token}"}
    for path in (ACCOUNTS_PATH, f"{ACCOUNTS_PATH}/31820"):
        assert_consent_mismatch(bank("GET", path, tpp=tpp, headers=auth))
    assert_error(bank("GET", ACCOUNTS_PATH, headers=auth), 401, "invalid_client")

    # read, update, delete over mutual TLS
    uri = registration["registration_client_uri"]
    read = bank("GET", uri, tpp=tpp, headers=auth)
    assert read.status_code == 200
    assert read.json()["client_id"] == client_id
    assert_error(bank("GET", uri, headers=auth), 401, "invalid_client")
    update = registration_jwt(sandbox, tpp, method, redirect_uris=["https://tpp.example.com/cb2"])
    updated = bank("PUT", uri, tpp=tpp, data=update, headers={**auth, **headers})
    assert updated.status_code == 200, updated.text
    assert updated.json()["redirect_uris"] == ["https://tpp.example.com/cb2"]
    assert store.get(client_id).metadata["redirect_uris"] == ["https://tpp.example.com/cb2"]
    deleted = bank("DELETE", uri, tpp=tpp, headers=auth)
    assert deleted.status_code == 204
    assert store.get(client_id) is None

    assert_error(bank("GET", uri, tpp=tpp, headers=auth), 401, "invalid_token")
    assert_error(bank("GET", ACCOUNTS_PATH, tpp=tpp, headers=auth), 401, "invalid_token")


def test_token_works_only_with_its_own_certificate(sandbox, bank, tpp, other_tpp):
    body = registration_jwt(sandbox, tpp, "tls_client_auth")
    headers = {"Content-Type": "application/jwt"}
    registration = bank("POST", "/register", tpp=tpp, data=body, headers=headers).json()
    form = token_request(sandbox, tpp, registration, "tls_client_auth")
    # another TPP's (valid) certificate cannot take a tls_client_auth token for this client
    assert_error(bank("POST", "/token", tpp=other_tpp, data=form), 401, "invalid_client")
    token = bank("POST", "/token", tpp=tpp, data=form).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    # accepted with its own certificate (then refused for want of a consent), not with another
    assert_consent_mismatch(bank("GET", ACCOUNTS_PATH, tpp=tpp, headers=auth))
    assert_error(bank("GET", ACCOUNTS_PATH, tpp=other_tpp, headers=auth), 401, "invalid_token")


def test_certificate_of_another_software_is_not_bound_to_the_ssa(sandbox, bank, tpp, other_tpp):
    body = registration_jwt(sandbox, tpp, "private_key_jwt")
    response = bank(
        "POST", "/register", tpp=other_tpp, data=body, headers={"Content-Type": "application/jwt"}
    )
    assert_error(response, 400, "invalid_software_statement")


def test_untrusted_client_certificate_fails_the_tls_handshake(sandbox, bank, tmp_path, tpp):
    rogue = CertificateAuthority.root("Rogue Root CA")
    key = generate_key("RSA")
    certificate = rogue.issue(ob_subject(tpp.software_id, tpp.org_id), key.public_key())
    (tmp_path / "rogue.pem").write_text(pem(certificate))
    (tmp_path / "rogue.key").write_text(key_pem(key))
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(
            sandbox.bank_url + ACCOUNTS_PATH,
            cert=(str(tmp_path / "rogue.pem"), str(tmp_path / "rogue.key")),
            verify=str(sandbox.ca_bundle),
            timeout=10,
        )
    # and the server is still serving
    assert bank("GET", "/.well-known/openid-configuration").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/register"), ("POST", "/token"), ("GET", ACCOUNTS_PATH), ("GET", "/register/x")],
    ids=["register", "token", "accounts", "manage"],
)
def test_every_call_but_discovery_needs_a_certificate(method, path, bank):
    assert_error(bank(method, path, data="x"), 401, "invalid_client")


def test_unknown_paths_stay_404(bank):
    assert bank("GET", "/nowhere").status_code == 404


def onboard_with_the_command_lines(sandbox, workdir, client_name):
    """A TPP onboarded with the Directory's command line; returns the software it made and a
    runner of the TPP command line in ``workdir`` (``run(*args, ok=True) -> output``)."""
    from click.testing import CliRunner

    from example_app.directory import cli as directory_cli
    from example_app.tpp import cli as tpp_cli

    runner = CliRunner()
    onboarded = runner.invoke(
        directory_cli,
        ["onboard", "--url", sandbox.directory_url, "--ca", str(sandbox.ca_bundle),
         "--client-name", client_name, "--role", "AISP",
         "--redirect-uri", "https://tpp.example.com/cb"],
    )  # fmt: skip
    assert onboarded.exit_code == 0, onboarded.output

    def run(*args, ok=True):
        result = runner.invoke(tpp_cli, ["--workdir", str(workdir), *args])
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    return json.loads(onboarded.output), run


def init_arguments(sandbox, software) -> list[str]:
    """``tpp init``'s options for ``software`` at ``sandbox``."""
    return [
        "init", "--directory", sandbox.directory_url, "--bank", sandbox.bank_url,
        "--ca", str(sandbox.ca_bundle), "--org-id", software["org_id"],
        "--software-id", software["software_id"],
    ]  # fmt: skip


def test_tpp_command_line_writes_usable_files(sandbox, tmp_path):
    from cryptography.hazmat.primitives.serialization import pkcs12

    software, tpp_run = onboard_with_the_command_lines(sandbox, tmp_path, "CLI TPP")
    org, sid = software["org_id"], software["software_id"]
    tpp_run(*init_arguments(sandbox, software))
    keys = tpp_run("keys")
    assert f'-subj "/C=GB/O=OpenBanking/OU={org}/CN={sid}" -keyout transport.key' in keys
    assert "keys exist" in tpp_run("keys", ok=False)  # never overwritten by accident
    csr = x509.load_pem_x509_csr((tmp_path / "signing.csr").read_bytes())
    assert csr.subject == ob_subject(sid, org)
    assert (tmp_path / "transport.key").stat().st_mode & 0o077 == 0
    for step in ("upload-csr", "download", "ssa", "discover", "request"):
        tpp_run(step)
    assert "openssl pkcs12 -export -in transport.pem -inkey transport.key" in tpp_run(
        "p12", "--password", "s3cret"
    )
    bundle = pkcs12.load_pkcs12((tmp_path / "transport.p12").read_bytes(), b"s3cret")
    transport = x509.load_pem_x509_certificate((tmp_path / "transport.pem").read_bytes())
    assert bundle.cert.certificate == transport
    assert bundle.key.public_key().public_numbers() == transport.public_key().public_numbers()
    assert len(bundle.additional_certs) == 2  # issuing and root CA

    assert "HTTP 201 Created" in tpp_run("register")
    registration = json.loads((tmp_path / "registration.json").read_text())
    assert registration["tls_client_auth_subject_dn"] == transport.subject.rfc4514_string()
    tpp_run("token")
    # a client_credentials token reads no account data (the consent journey is the TPP's
    # tests'); over mutual TLS it is accepted, then refused for want of a consent
    no_consent = tpp_run("accounts", "--client-credentials", "--account-id", "42281", ok=False)
    assert "HTTP 403" in no_consent and "UK.OBIE.Resource.ConsentMismatch" in no_consent
    refused = tpp_run("accounts", "--client-credentials", "--no-cert", ok=False)
    assert "HTTP 401 Unauthorized" in refused
    assert "the accounts API: the server answered HTTP 401 invalid_client" in refused
    assert "(and 25 claims of the software statement" in tpp_run("registration", "get", "--brief")
    # RFC 7592: the registration access token works too
    assert "HTTP 204 No Content" in tpp_run("registration", "delete", "--registration-token")
    assert "not registered" in tpp_run("registration", "get", ok=False)


# -- the Directory service ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def directory_state(tmp_path_factory) -> DirectoryState:
    return DirectoryState.open(tmp_path_factory.mktemp("directory"))


@pytest.fixture
def directory_http(directory_state):
    app = create_directory_app(directory_state, base_url="https://directory.test")
    return app.test_client()


def _new_software(http, roles=("AISP", "PISP")):
    org = http.post("/api/organisations", json={"org_name": "Org"}).get_json()
    response = http.post(
        f"/api/organisations/{org['org_id']}/software",
        json={"client_name": "App", "roles": list(roles), "redirect_uris": ["https://a.test/cb"]},
    )
    assert response.status_code == 201
    return response.get_json()


def _csr(subject: x509.Name, key=None) -> bytes:
    key = key or generate_key("RSA")
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_directory_issues_ob_certificates_and_publishes_them(directory_http, directory_state):
    software = _new_software(directory_http)
    sid, org = software["software_id"], software["org_id"]
    records = {}
    for cert_type in ("transport", "signing"):
        response = directory_http.post(
            f"/api/software/{sid}/certificates/{cert_type}", data=_csr(ob_subject(sid, org))
        )
        assert response.status_code == 201, response.get_json()
        records[cert_type] = response.get_json()
    transport = x509.load_pem_x509_certificate(
        directory_http.get(
            f"/api/software/{sid}/certificates/{records['transport']['kid']}.pem"
        ).get_data()
    )
    assert transport.subject.rfc4514_string() == f"CN={sid},OU={org},O=OpenBanking,C=GB"
    assert transport.issuer == directory_state.sandbox.issuing_ca.certificate.subject
    eku = transport.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku

    jwks = directory_http.get(f"/{org}/{sid}.jwks")
    assert jwks.headers["Cache-Control"] == "max-age=60"
    keys = {k["kid"]: k for k in jwks.get_json()["keys"]}
    assert {k["use"] for k in keys.values()} == {"tls", "sig"}
    tls_key = keys[records["transport"]["kid"]]
    assert tls_key["use"] == "tls"
    assert base64.b64decode(tls_key["x5c"][0]) == transport.public_bytes(serialization.Encoding.DER)
    assert tls_key["x5t#S256"] == records["transport"]["x5t#S256"] == _thumbprint(transport)
    assert "d" not in tls_key  # public keys only

    # revoking moves the key to the revoked set
    kid = records["signing"]["kid"]
    revoked = directory_http.delete(f"/api/software/{sid}/certificates/{kid}")
    assert revoked.get_json()["status"] == "revoked"
    published = directory_http.get(f"/{org}/{sid}.jwks").get_json()["keys"]
    assert kid not in {k["kid"] for k in published}
    revoked_set = directory_http.get(f"/{org}/revoked/{sid}.jwks").get_json()["keys"]
    assert [k["kid"] for k in revoked_set] == [kid]


def test_directory_ssa_is_signed_ps256_by_openbanking_ltd(directory_http):
    software = _new_software(directory_http, roles=("AISP",))
    response = directory_http.post(f"/api/software/{software['software_id']}/ssa")
    assert response.status_code == 201
    assert response.mimetype == "application/jwt"
    token = response.get_data(as_text=True)
    key_set = jwk.JWKSet.from_json(directory_http.get("/openbanking.jwks").get_data())
    verified = jws.JWS()
    verified.deserialize(token)
    header = verified.jose_header
    assert header["alg"] == "PS256"
    verified.verify(key_set.get_key(header["kid"]), alg="PS256")
    claims = json.loads(verified.payload)
    assert claims["iss"] == "OpenBanking Ltd"
    assert claims["software_id"] == software["software_id"]
    assert claims["software_roles"] == ["AISP"]
    assert claims["software_redirect_uris"] == ["https://a.test/cb"]
    assert claims["software_jwks_endpoint"] == (
        f"https://directory.test/{software['org_id']}/{software['software_id']}.jwks"
    )


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        pytest.param("wrong-subject", 400, "invalid_csr", id="wrong-subject"),
        pytest.param("other-software", 400, "invalid_csr", id="other-software-subject"),
        pytest.param("not-a-csr", 400, "invalid_csr", id="not-a-csr"),
        pytest.param("small-key", 400, "invalid_csr", id="rsa-1024"),
        pytest.param("bad-type", 404, "not_found", id="unknown-certificate-type"),
        pytest.param("unknown-software", 404, "not_found", id="unknown-software"),
    ],
)
def test_directory_refuses_bad_csrs(case, status, error, directory_http, directory_state):
    from cryptography.hazmat.primitives.asymmetric import rsa

    software = _new_software(directory_http)
    sid, org = software["software_id"], software["org_id"]
    path, body = f"/api/software/{sid}/certificates/transport", _csr(ob_subject(sid, org))
    if case == "wrong-subject":
        body = _csr(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, sid)]))
    elif case == "other-software":
        body = _csr(ob_subject("someone-else", org))
    elif case == "not-a-csr":
        body = b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n"
    elif case == "small-key":
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        body = _csr(ob_subject(sid, org), small)
    elif case == "bad-type":
        path = f"/api/software/{sid}/certificates/qwac"
    elif case == "unknown-software":
        path = "/api/software/nobody/certificates/transport"
    response = directory_http.post(path, data=body)
    assert response.status_code == status
    assert response.get_json()["error"] == error
    assert directory_state.registry["software"][sid]["certificates"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"client_name": "", "roles": ["AISP"], "redirect_uris": ["https://a.test/cb"]},
        {"client_name": "A", "roles": ["TPP"], "redirect_uris": ["https://a.test/cb"]},
        {"client_name": "A", "roles": [], "redirect_uris": ["https://a.test/cb"]},
        {"client_name": "A", "roles": ["AISP"], "redirect_uris": ["http://a.test/cb"]},
        {"client_name": "A", "roles": ["AISP"], "redirect_uris": []},
    ],
    ids=["no-name", "unknown-role", "no-role", "http-redirect", "no-redirect"],
)
def test_directory_refuses_bad_software(body, directory_http):
    org = directory_http.post("/api/organisations", json={"org_name": "Org"}).get_json()
    response = directory_http.post(f"/api/organisations/{org['org_id']}/software", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_directory_state_survives_a_restart(tmp_path):
    first = DirectoryState.open(tmp_path)
    org = first.add_organisation("Org")
    software = first.add_software(
        org["org_id"], client_name="A", roles=["AISP"], redirect_uris=["https://a.test/cb"]
    )
    again = DirectoryState.open(tmp_path)
    assert again.sandbox.root_ca.certificate == first.sandbox.root_ca.certificate
    assert again.sandbox.ssa_key.thumbprint() == first.sandbox.ssa_key.thumbprint()
    assert again.software(software["software_id"]) == software
    assert (tmp_path / "pki" / "issuing-ca.key").stat().st_mode & 0o077 == 0
    with pytest.raises(FileNotFoundError):
        DirectoryState.open(tmp_path / "elsewhere", create=False)


def test_sandbox_directory_save_and_load(tmp_path):
    directory = SandboxDirectory()
    directory.save(tmp_path)
    loaded = SandboxDirectory.load(tmp_path, base_url="https://127.0.0.1:1")
    assert set(vars(loaded)) == set(vars(directory))
    assert loaded.issuing_ca.certificate == directory.issuing_ca.certificate
    assert loaded.ssa_key["kid"] == directory.ssa_key["kid"]
    assert loaded.jwks_url == "https://127.0.0.1:1/openbanking.jwks"
    software = loaded.register_software(roles=["AISP"])
    verified = jws.JWS()
    verified.deserialize(loaded.ssa(software))
    verified.verify(jwk.JWK(**directory.jwks()["keys"][0]), alg="PS256")


def test_certificate_authority_pem_roundtrip():
    ca = CertificateAuthority.root("Round Trip CA")
    again = CertificateAuthority.from_pem(*ca.to_pem())
    assert again.certificate == ca.certificate
    assert again.name == ca.name
    other = CertificateAuthority.root("Other CA")
    with pytest.raises(ValueError, match="does not belong"):
        CertificateAuthority.from_pem(ca.to_pem()[0], other.to_pem()[1])


# -- revocation at the sandbox Directory: its CRL, its OCSP responder, organisation status --------


def _issue(http, software, cert_type="transport"):
    """Upload a CSR for ``software``; returns (the API's record, the certificate)."""
    sid, org = software["software_id"], software["org_id"]
    response = http.post(
        f"/api/software/{sid}/certificates/{cert_type}", data=_csr(ob_subject(sid, org))
    )
    assert response.status_code == 201, response.get_json()
    record = response.get_json()
    pem_text = http.get(f"/api/software/{sid}/certificates/{record['kid']}.pem").get_data()
    return record, x509.load_pem_x509_certificate(pem_text)


def _ocsp_answer(http, certificate, issuer, *, get=False):
    """The Directory's OCSP answer about ``certificate``, verified as the bank verifies it."""
    request_der = ocsp_request(certificate, issuer)
    if get:
        encoded = quote(base64.b64encode(request_der).decode(), safe="")
        response = http.get(f"/pki/ocsp/{encoded}")
    else:
        response = http.post("/pki/ocsp", data=request_der, content_type="application/ocsp-request")
    assert response.status_code == 200
    assert response.mimetype == "application/ocsp-response"
    return verify_ocsp_response(
        response.get_data(), certificate, issuer, now=time.time(), skew=30, max_age=3600
    )


def _crl(http, issuer):
    response = http.get("/pki/issuing.crl")
    assert response.status_code == 200
    assert response.mimetype == "application/pkix-crl"
    crl = x509.load_der_x509_crl(response.get_data())
    verify_crl(
        crl,
        issuer,
        url="https://directory.test/pki/issuing.crl",
        now=time.time(),
        skew=30,
        max_age=86400,
    )
    return crl


def test_directory_certificates_name_its_crl_and_ocsp_responder(directory_http, directory_state):
    software = _new_software(directory_http)
    for cert_type in ("transport", "signing"):
        record, certificate = _issue(directory_http, software, cert_type)
        assert crl_urls(certificate) == ("https://directory.test/pki/issuing.crl",)
        assert ocsp_urls(certificate) == ("https://directory.test/pki/ocsp",)
        assert record["crl_distribution_point"] == "https://directory.test/pki/issuing.crl"
        assert record["ocsp_url"] == "https://directory.test/pki/ocsp"
    index = directory_http.get("/").get_json()
    assert (index["crl"], index["ocsp"]) == (
        "https://directory.test/pki/issuing.crl",
        "https://directory.test/pki/ocsp",
    )


def test_directory_revocation_updates_crl_ocsp_and_revoked_jwks(directory_http, directory_state):
    issuer = directory_state.sandbox.issuing_ca.certificate
    software = _new_software(directory_http)
    sid, org = software["software_id"], software["org_id"]
    record, certificate = _issue(directory_http, software)
    kept, other = _issue(directory_http, software, "signing")

    good = _ocsp_answer(directory_http, certificate, issuer)
    assert good.status == "good"
    assert good.next_update - good.this_update == 3600
    assert certificate.serial_number not in {e.serial_number for e in _crl(directory_http, issuer)}

    revoked = directory_http.delete(
        f"/api/software/{sid}/certificates/{record['kid']}?reason=keyCompromise"
    )
    assert revoked.status_code == 200
    shown = revoked.get_json()
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "keyCompromise")
    assert abs(shown["revoked_at"] - time.time()) < 5
    for get in (False, True):
        answer = _ocsp_answer(directory_http, certificate, issuer, get=get)
        assert (answer.status, answer.reason) == ("revoked", "key_compromise")
    entry = _crl(directory_http, issuer).get_revoked_certificate_by_serial_number(
        certificate.serial_number
    )
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    assert _ocsp_answer(directory_http, other, issuer).status == "good"
    revoked_keys = directory_http.get(f"/{org}/revoked/{sid}.jwks").get_json()["keys"]
    assert [k["kid"] for k in revoked_keys] == [record["kid"]]
    published = directory_http.get(f"/{org}/{sid}.jwks").get_json()["keys"]
    assert [k["kid"] for k in published] == [kept["kid"]]

    # revoking again changes nothing; the register survives a restart of the service
    again = directory_http.delete(f"/api/software/{sid}/certificates/{record['kid']}")
    assert again.get_json()["revoked_at"] == shown["revoked_at"]
    assert again.get_json()["revocation_reason"] == "keyCompromise"
    restarted = create_directory_app(
        DirectoryState.open(directory_state.folder), base_url="https://directory.test"
    ).test_client()
    assert _ocsp_answer(restarted, certificate, issuer).status == "revoked"
    assert _ocsp_answer(restarted, other, issuer).status == "good"
    assert _crl(restarted, issuer).get_revoked_certificate_by_serial_number(
        certificate.serial_number
    ).revocation_date_utc == datetime.datetime.fromtimestamp(
        shown["revoked_at"], tz=datetime.timezone.utc
    )


@pytest.mark.parametrize(
    ("case", "status", "ocsp_status"),
    [
        pytest.param("garbage", 200, ocsp.OCSPResponseStatus.MALFORMED_REQUEST, id="garbage"),
        pytest.param("bad-base64", 200, ocsp.OCSPResponseStatus.MALFORMED_REQUEST, id="bad-get"),
        pytest.param("other-ca", 200, ocsp.OCSPResponseStatus.UNAUTHORIZED, id="other-ca"),
        pytest.param("form", 415, None, id="not-an-ocsp-request"),
    ],
)
def test_directory_ocsp_responder_refuses_what_it_cannot_answer(
    case, status, ocsp_status, directory_http
):
    if case == "bad-base64":
        response = directory_http.get("/pki/ocsp/not*base64")
    elif case == "form":
        response = directory_http.post("/pki/ocsp", data={"a": "b"})
    else:
        body = b"\x30\x03\x02\x01\x00"
        if case == "other-ca":
            rogue = CertificateAuthority.root("Rogue CA")
            leaf = rogue.issue(ob_subject("s", "o"), generate_key("EC").public_key())
            body = ocsp_request(leaf, rogue.certificate)
        response = directory_http.post(
            "/pki/ocsp", data=body, content_type="application/ocsp-request"
        )
    assert response.status_code == status
    if ocsp_status is not None:
        answer = ocsp.load_der_ocsp_response(response.get_data())
        assert answer.response_status == ocsp_status
    else:
        assert response.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        pytest.param(
            "/api/software/{sid}/certificates/{kid}?reason=bored",
            400,
            "invalid_request",
            id="unknown-reason",
        ),
        pytest.param("/api/software/{sid}/certificates/nope", 404, "not_found", id="unknown-kid"),
        pytest.param(
            "/api/software/nobody/certificates/{kid}", 404, "not_found", id="unknown-software"
        ),
    ],
)
def test_directory_refuses_bad_revocations(path, status, error, directory_http, directory_state):
    software = _new_software(directory_http)
    record, certificate = _issue(directory_http, software)
    response = directory_http.delete(path.format(sid=software["software_id"], kid=record["kid"]))
    assert response.status_code == status
    assert response.get_json()["error"] == error
    issuer = directory_state.sandbox.issuing_ca.certificate
    assert _ocsp_answer(directory_http, certificate, issuer).status == "good"


def test_directory_reports_and_changes_organisation_status(directory_http):
    software = _new_software(directory_http, roles=("AISP",))
    org = software["org_id"]
    assert directory_http.get(f"/api/organisations/{org}").get_json()["org_status"] == "Active"
    changed = directory_http.patch(f"/api/organisations/{org}", json={"org_status": "revoked"})
    assert changed.status_code == 200
    assert changed.get_json()["org_status"] == "Revoked"
    assert changed.get_json()["software"] == [software["software_id"]]
    assert directory_http.get(f"/api/organisations/{org}").get_json()["org_status"] == "Revoked"
    ssa = directory_http.post(f"/api/software/{software['software_id']}/ssa").get_data(as_text=True)
    assert json.loads(base64.urlsafe_b64decode(ssa.split(".")[1] + "=="))["org_status"] == "Revoked"
    for body, status, error in (
        ({"org_status": "Sleeping"}, 400, "invalid_request"),
        ({"org_status": "Active", "org_name": "Renamed"}, 400, "invalid_request"),
        ("Active", 400, "invalid_request"),
    ):
        refused = directory_http.patch(f"/api/organisations/{org}", json=body)
        assert (refused.status_code, refused.get_json()["error"]) == (status, error)
    missing = directory_http.patch("/api/organisations/nobody", json={"org_status": "Active"})
    assert (missing.status_code, missing.get_json()["error"]) == (404, "not_found")
    assert directory_http.get(f"/api/organisations/{org}").get_json()["org_status"] == "Revoked"


#: the bank of the revocation sandbox trusts an OCSP answer this long
REVOCATION_CACHE_SECONDS = 1
JWT = {"Content-Type": "application/jwt"}


@pytest.fixture(scope="module")
def revoking_sandbox(tmp_path_factory):
    """A sandbox whose bank refreshes revocation answers after 1 s, not 300."""
    folder = tmp_path_factory.mktemp("revoking")
    with Sandbox(
        folder, mode="thread", revocation_cache_seconds=REVOCATION_CACHE_SECONDS
    ) as running:
        yield running


def _register_and_use(sandbox, tpp, method="tls_client_auth"):
    """Register ``tpp``, take a token, call the accounts API (accepted, no consent):
    (registration, auth header)."""
    call = bank_caller(sandbox)
    created = call(
        "POST", "/register", tpp=tpp, data=registration_jwt(sandbox, tpp, method), headers=JWT
    )
    assert created.status_code == 201, created.text
    registration = created.json()
    issued = call("POST", "/token", tpp=tpp, data=token_request(sandbox, tpp, registration, method))
    assert issued.status_code == 200, issued.text
    auth = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    assert_consent_mismatch(call("GET", ACCOUNTS_PATH, tpp=tpp, headers=auth))
    return registration, auth


def _revoke_at_the_directory(sandbox, tpp, cert_type, **params):
    path = f"/api/software/{tpp.software_id}/certificates/{tpp.kids[cert_type]}"
    return requests.delete(
        sandbox.directory_url + path, params=params, verify=str(sandbox.ca_bundle), timeout=10
    )


def _wait_for_the_bank_to_ask_again():
    time.sleep(REVOCATION_CACHE_SECONDS + 0.3)


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt"])
def test_bank_refuses_a_transport_certificate_revoked_at_the_directory(
    method, revoking_sandbox, tmp_path
):
    sandbox = revoking_sandbox
    tpp = onboard(sandbox, tmp_path)
    certificate = x509.load_pem_x509_certificate(Path(tpp.cert[0]).read_bytes())
    assert ocsp_urls(certificate) == (f"{sandbox.directory_url}/pki/ocsp",)
    assert crl_urls(certificate) == (f"{sandbox.directory_url}/pki/issuing.crl",)
    registration, auth = _register_and_use(sandbox, tpp, method)

    revoked = _revoke_at_the_directory(sandbox, tpp, "transport", reason="keyCompromise")
    assert revoked.json()["status"] == "revoked"
    _wait_for_the_bank_to_ask_again()

    call = bank_caller(sandbox)
    store = sandbox.bank_app.extensions["obdcr"].store
    before = {client.client_id for client in store.list()}
    form = token_request(sandbox, tpp, registration, method)
    assert_error(call("POST", "/token", tpp=tpp, data=form), 401, "invalid_client")
    # where a token is judged (require_token, /register/<id>) a revoked certificate is an
    # invalid_token, as the contract says, even from the bank's mutual-TLS gate
    assert_error(call("GET", ACCOUNTS_PATH, tpp=tpp, headers=auth), 401, "invalid_token")
    uri = registration["registration_client_uri"]
    assert_error(call("GET", uri, tpp=tpp, headers=auth), 401, "invalid_token")
    again = registration_jwt(sandbox, tpp, method)
    assert_error(call("POST", "/register", tpp=tpp, data=again, headers=JWT), 401, "invalid_client")
    assert {client.client_id for client in store.list()} == before


def test_bank_refuses_a_revoked_certificate_it_has_never_seen_at_once(revoking_sandbox, tmp_path):
    """No cached answer: the bank asks the OCSP responder on first sight."""
    sandbox = revoking_sandbox
    tpp = onboard(sandbox, tmp_path)
    assert _revoke_at_the_directory(sandbox, tpp, "transport").ok
    body = registration_jwt(sandbox, tpp, "tls_client_auth")
    refused = bank_caller(sandbox)("POST", "/register", tpp=tpp, data=body, headers=JWT)
    assert_error(refused, 401, "invalid_client")
    assert refused.json()["error_description"] == "The client certificate has been revoked."


def _revalidate(sandbox):
    result = sandbox.bank_app.test_cli_runner().invoke(args=["obdcr", "revalidate"])
    rows = {
        line.split()[0]: line
        for line in result.output.splitlines()
        if re.match(r"[0-9a-f-]{36}\s", line)
    }
    return result, rows


def test_org_revoked_at_the_directory_suspends_its_clients_on_revalidate(
    revoking_sandbox, tmp_path
):
    from click.testing import CliRunner

    from example_app.directory import cli as directory_cli

    sandbox = revoking_sandbox
    status = sandbox.bank_app.extensions["anybank"]["directory_status"]
    assert status.url_template == f"{sandbox.directory_url}/api/organisations/{{org_id}}"
    tpp = onboard(sandbox, tmp_path)
    registration, _auth = _register_and_use(sandbox, tpp)
    client_id = registration["client_id"]
    call = bank_caller(sandbox)
    directory = ["--url", sandbox.directory_url, "--ca", str(sandbox.ca_bundle)]

    runner = CliRunner()
    changed = runner.invoke(directory_cli, ["org-status", *directory, tpp.org_id, "Revoked"])
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.output)["org_status"] == "Revoked"
    result, rows = _revalidate(sandbox)
    assert result.exit_code == 1, result.output
    assert re.search(
        r"\bsuspended\s+the Directory reports the organisation as Revoked", rows[client_id]
    )
    form = token_request(sandbox, tpp, registration, "tls_client_auth")
    assert_error(call("POST", "/token", tpp=tpp, data=form), 401, "invalid_client")

    shown = runner.invoke(directory_cli, ["org-status", *directory, tpp.org_id])
    assert json.loads(shown.output)["org_status"] == "Revoked"
    runner.invoke(directory_cli, ["org-status", *directory, tpp.org_id, "active"])
    _result, rows = _revalidate(sandbox)
    assert "reinstated" in rows[client_id]
    form = token_request(sandbox, tpp, registration, "tls_client_auth")
    assert call("POST", "/token", tpp=tpp, data=form).status_code == 200


def test_directory_revoke_command(revoking_sandbox, tmp_path):
    from click.testing import CliRunner

    from example_app.directory import cli as directory_cli

    sandbox = revoking_sandbox
    tpp = onboard(sandbox, tmp_path)
    directory = ["--url", sandbox.directory_url, "--ca", str(sandbox.ca_bundle)]
    runner = CliRunner()
    kid = tpp.kids["signing"]
    args = ["revoke", *directory, "--software-id", tpp.software_id, "--kid", kid]
    result = runner.invoke(directory_cli, [*args, "--reason", "superseded"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output[: result.output.index("\nAt the Directory, now:")])
    assert (record["kid"], record["status"], record["revocation_reason"]) == (
        kid,
        "revoked",
        "superseded",
    )
    flat = " ".join(result.output.split())  # the explanations are wrapped
    assert f'the OCSP responder ({sandbox.directory_url}/pki/ocsp) answers "revoked"' in flat
    assert "requests and client assertions signed with this key are refused" in flat
    revoked_set = requests.get(
        f"{sandbox.directory_url}/{tpp.org_id}/revoked/{tpp.software_id}.jwks",
        verify=str(sandbox.ca_bundle),
        timeout=10,
    ).json()
    assert [key["kid"] for key in revoked_set["keys"]] == [kid]

    unknown = runner.invoke(
        directory_cli, ["revoke", *directory, "--software-id", tpp.software_id, "--kid", "nope"]
    )
    assert unknown.exit_code == 1
    assert "HTTP 404" in unknown.output and "not_found" in unknown.output
    bad_reason = runner.invoke(directory_cli, [*args, "--reason", "bored"])
    assert bad_reason.exit_code == 2


def test_tpp_revoke_command(revoking_sandbox, tmp_path):
    sandbox = revoking_sandbox
    software, tpp_run = onboard_with_the_command_lines(sandbox, tmp_path, "Revoking TPP")
    assert "no transport certificate issued yet" in tpp_run("revoke", ok=False)
    tpp_run(*init_arguments(sandbox, software))
    for step in (
        "keys",
        "upload-csr",
        "download",
        "ssa",
        "discover",
        "request",
        "register",
        "token",
    ):
        tpp_run(step)

    revoked = tpp_run("revoke", "--reason", "keyCompromise")
    kid = json.loads((tmp_path / "tpp.json").read_text())["certificates"]["transport"]["kid"]
    assert (
        f"/api/software/{software['software_id']}/certificates/{kid}?reason=keyCompromise"
        in revoked
    )
    assert "HTTP 200 OK" in revoked
    assert '"revocation_reason": "keyCompromise"' in revoked
    flat = " ".join(revoked.split())  # the explanations are wrapped
    assert "every call made with this certificate (registration, token" in flat
    assert "OBDCR_REVOCATION_CACHE_SECONDS (300 s by default)" in flat
    assert "transport.pem is of no use any more" in flat
    saved = json.loads((tmp_path / "tpp.json").read_text())["certificates"]["transport"]
    assert saved["status"] == "revoked"

    _wait_for_the_bank_to_ask_again()
    refused = tpp_run("token", ok=False)
    assert "the token request: the server answered HTTP 401 invalid_client" in refused
    refused = tpp_run("accounts", "--client-credentials", ok=False)
    assert "the accounts API: the server answered HTTP 401 invalid_token" in refused

    # a re-validation pass suspends the registration at once (the revoked key set, fresh)
    client_id = json.loads((tmp_path / "registration.json").read_text())["client_id"]
    _result, rows = _revalidate(sandbox)
    assert re.search(r"\bsuspended\s+its transport certificate's key was revoked", rows[client_id])

    signing = tpp_run("revoke", "--signing")
    assert '"type": "signing"' in signing and '"status": "revoked"' in signing
    assert "signed with this key are refused" in " ".join(signing.split())


# -- create_app configuration ---------------------------------------------------------------------


@pytest.fixture
def bank_instance(tmp_path, directory_state) -> Path:
    """An instance folder in the make-serve layout (CA bundle in directory/)."""
    (tmp_path / "directory").mkdir()
    shutil.copy(directory_state.ca_bundle, tmp_path / "directory" / "ca-bundle.pem")
    return tmp_path


def test_create_app_defaults_point_at_the_make_serve_sandbox(bank_instance):
    app = create_app(instance_path=bank_instance)
    settings = app.extensions["obdcr"].settings
    assert settings.issuer == "https://127.0.0.1:9443"
    assert settings.trusted_directories == {
        "OpenBanking Ltd": "https://127.0.0.1:8443/openbanking.jwks"
    }
    assert settings.fetch_allowed_hosts == frozenset({"127.0.0.1"})
    ca = str(bank_instance / "directory" / "ca-bundle.pem")
    assert settings.http_verify == settings.transport_ca_file == ca
    store = app.extensions["obdcr"].store
    assert os.fspath(store.path) == str(bank_instance / "obdcr.db")  # SQLite, instance folder
    # re-validation reads organisations' status from the sandbox Directory it trusts
    status = app.extensions["anybank"]["directory_status"]
    assert isinstance(status, HTTPDirectoryStatus)
    assert status.url_template == "https://127.0.0.1:8443/api/organisations/{org_id}"
    assert app.extensions["obdcr"].directory_status is status


def test_bank_sessions_open_without_work_for_a_request_with_no_cookie(bank_instance):
    """API calls carry no cookie: their empty session is made without the signing serializer
    (Flask's own interface builds one for every request); a request with the session cookie
    is read, and a tampered one gives an empty session, as Flask's interface does."""
    app = create_app(instance_path=bank_instance)
    interface = app.session_interface
    built = []
    original = interface.get_signing_serializer

    def counting(app_):
        built.append(1)
        return original(app_)

    interface.get_signing_serializer = counting  # type: ignore[method-assign]
    with app.test_request_context("/token", method="POST", base_url="https://127.0.0.1:9443"):
        from flask import request

        opened = interface.open_session(app, request)
        assert opened is not None and dict(opened) == {} and not opened.modified
    assert built == []

    cookie = original(app).dumps({"customer": "mits"})
    name = interface.get_cookie_name(app)
    for value, expected in ((cookie, {"customer": "mits"}), (cookie[:-2] + "xx", {})):
        headers = {"Cookie": f"{name}={value}"}
        with app.test_request_context("/customer", headers=headers):
            from flask import request

            assert dict(interface.open_session(app, request)) == expected
    assert built  # with a cookie, Flask's own way: the serializer verifies it


def test_create_app_config_file_then_config_override(bank_instance):
    (bank_instance / "anybank.json").write_text(
        json.dumps({"OBDCR_ISSUER": "https://from-file.test", "OBDCR_CLOCK_SKEW": 5})
    )
    ca = str(bank_instance / "directory" / "ca-bundle.pem")
    other = sandbox_config(
        issuer="https://as.other.test", directory_url="https://keystore.other.test", ca_file=ca
    )
    settings = create_app(other, instance_path=bank_instance).extensions["obdcr"].settings
    assert settings.issuer == "https://as.other.test"
    assert settings.trusted_directories == {
        "OpenBanking Ltd": "https://keystore.other.test/openbanking.jwks"
    }
    assert settings.clock_skew == 5  # from anybank.json, not overridden
    from_file = create_app(instance_path=bank_instance).extensions["obdcr"].settings
    assert from_file.issuer == "https://from-file.test"


def test_create_app_reads_org_status_only_from_the_directory_it_trusts(bank_instance):
    ca = str(bank_instance / "directory" / "ca-bundle.pem")
    other = sandbox_config(
        issuer="https://as.other.test", directory_url="https://keystore.other.test", ca_file=ca
    )
    status = create_app(other, instance_path=bank_instance).extensions["anybank"]
    assert status["directory_status"].url_template == (
        "https://keystore.other.test/api/organisations/{org_id}"
    )
    # another Directory's OBDCR_* keys alone: the sandbox's API is not asked about its orgs
    elsewhere = {
        "OBDCR_TRUSTED_DIRECTORIES": {"OpenBanking Ltd": "https://keystore.example/ob.jwks"},
        "OBDCR_JWKS_ALLOWED_HOSTS": ["keystore.example"],
    }
    app = create_app(elsewhere, instance_path=bank_instance)
    assert app.extensions["anybank"]["directory_status"] is None
    assert app.extensions["obdcr"].directory_status is None


def test_in_process_mtls_rules(bank_instance):
    http = create_app(instance_path=bank_instance).test_client()
    base = "https://127.0.0.1:9443"
    assert http.get("/.well-known/openid-configuration", base_url=base).status_code == 200
    assert http.get("/", base_url=base).get_json()["service"] == "AnyBank (sandbox)"
    for method, path in (("POST", "/register"), ("POST", "/token"), ("GET", ACCOUNTS_PATH)):
        response = http.open(path, method=method, base_url=base)
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_client"
    assert http.get("/missing", base_url=base).status_code == 404


# -- production serving: nginx (Client-Cert) and gunicorn (peer certificate) ---------------------


def _rfc9440(certificate_pem: str) -> str:
    der = x509.load_pem_x509_certificate(certificate_pem.encode()).public_bytes(
        serialization.Encoding.DER
    )
    return ":" + base64.b64encode(der).decode() + ":"


def test_behind_nginx_takes_client_cert_from_the_trusted_proxy_only(sandbox, tpp, store):
    app = behind_nginx(instance_path=sandbox.folder)
    settings = app.extensions["obdcr"].settings
    assert settings.client_cert_header == "Client-Cert"
    header = _rfc9440(Path(tpp.cert[0]).read_text())
    body = registration_jwt(sandbox, tpp, "tls_client_auth")
    http = app.test_client()
    proxied = {
        "Content-Type": "application/jwt",
        "Client-Cert": header,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "as.anybank.example",
    }
    spoofed = http.post(
        "/register", data=body, headers=proxied, environ_base={"REMOTE_ADDR": "203.0.113.9"}
    )
    assert spoofed.status_code == 401
    assert spoofed.get_json()["error"] == "invalid_client"
    created = http.post(
        "/register", data=body, headers=proxied, environ_base={"REMOTE_ADDR": "127.0.0.1"}
    )
    assert created.status_code == 201, created.get_json()
    registration = created.get_json()
    # published from the configuration, not from the X-Forwarded-Host the proxy passed on
    issuer = settings.issuer.rstrip("/")
    assert registration["registration_client_uri"] == (
        f"{issuer}/register/{registration['client_id']}"
    )
    assert store.get(registration["client_id"]) is not None


def _tls_pair(server_context: ssl.SSLContext, client_context: ssl.SSLContext):
    """A connected (server-side, client-side) pair of TLS sockets on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    result = {}

    def connect():
        raw = socket.create_connection(listener.getsockname(), timeout=10)
        result["client"] = client_context.wrap_socket(raw, server_hostname="127.0.0.1")

    thread = threading.Thread(target=connect)
    thread.start()
    raw, _ = listener.accept()
    raw.settimeout(10)
    server_side = server_context.wrap_socket(raw, server_side=True)
    thread.join(10)
    listener.close()
    return server_side, result["client"]


def _echo_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ.get("SSL_CLIENT_CERT", "none").encode()]


@pytest.mark.parametrize("present_certificate", [True, False], ids=["with-cert", "no-cert"])
def test_gunicorn_middleware_reads_the_peer_certificate(
    present_certificate, sandbox, tpp, tmp_path
):
    state = sandbox.directory_state
    cert_file, key_file = state.issue_server_certificate(tmp_path, name="gunicorn")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    server_context.verify_mode = ssl.CERT_OPTIONAL  # gunicorn --cert-reqs 1
    server_context.load_verify_locations(str(sandbox.ca_bundle))
    client_context = ssl.create_default_context(cafile=str(sandbox.ca_bundle))
    if present_certificate:
        client_context.load_cert_chain(*tpp.cert)
    server_side, client_side = _tls_pair(server_context, client_context)
    try:
        # a client-controlled value must never survive
        environ = {"gunicorn.socket": server_side, "SSL_CLIENT_CERT": "spoofed"}
        body = b"".join(GunicornClientCertMiddleware(_echo_app)(environ, lambda *a: None))
    finally:
        server_side.close()
        client_side.close()
    if present_certificate:
        seen = x509.load_pem_x509_certificate(body)
        assert _thumbprint(seen) == tpp.thumbprint
    else:
        assert body == b"none"


def test_gunicorn_middleware_without_tls():
    plain_a, plain_b = socket.socketpair()
    with plain_a, plain_b:
        for environ in ({"gunicorn.socket": plain_a}, {}):
            body = b"".join(GunicornClientCertMiddleware(_echo_app)(environ, lambda *a: None))
            assert body == b"none"


def test_gunicorn_tls_entry_point(bank_instance):
    app = gunicorn_tls(instance_path=bank_instance)
    assert isinstance(app, GunicornClientCertMiddleware)
    assert app.app.extensions["obdcr"].settings.issuer == "https://127.0.0.1:9443"


# -- make demo and make serve --------------------------------------------------------------------


def _python_env() -> dict[str, str]:
    return checkout_environment()


def read_serve_banner(process: subprocess.Popen, *, seconds: float) -> tuple[str, str, str]:
    """What ``make serve`` / ``example_app.serve`` prints up to its last banner line, and the
    Directory's and the bank's URLs from it."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops the servers" in line:
            break
    banner = "".join(lines)
    directory = re.search(r"^Sandbox Open Banking Directory\s+(https://\S+)", banner, flags=re.M)
    bank = re.search(r"^AnyBank\s+(https://\S+)", banner, flags=re.M)
    assert directory and bank, banner
    return banner, directory.group(1), bank.group(1)


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_make_demo(tmp_path):
    """`make demo` as a newcomer runs it (the venv already built: its stamp is taken as
    up to date); without make, the command its recipe runs."""
    bin_dir = os.path.dirname(sys.executable)
    if shutil.which("make"):
        recipe = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed", "demo", f"BIN={bin_dir}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split("\n")
        assert f"{bin_dir}/python -m example_app.demo" in recipe
        command = ["make", "-s", "-o", ".venv/.installed", "demo", f"BIN={bin_dir}"]
    else:  # pragma: no cover - make is part of the dev setup
        command = [sys.executable, "-m", "example_app.demo"]
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=60, env=_python_env()
    )
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert elapsed < 60

    directory_url = re.search(r"sandbox Open Banking Directory: (\S+)", out).group(1)
    bank_url = re.search(r"AnyBank \(asks for client certificates\): (\S+)", out).group(1)
    workdir = Path(re.search(r"working folder: (\S+)", out).group(1))

    from example_app.demo import STEPS

    steps = re.findall(r"^== (\d+)\. ", out, flags=re.M)
    assert steps == [str(n) for n in range(1, STEPS + 1)]
    # the decoded SSA, with its software_jwks_endpoint on the Directory service
    assert '"iss": "OpenBanking Ltd"' in out
    endpoint = re.search(r'"software_jwks_endpoint": "([^"]+)"', out).group(1)
    assert re.fullmatch(re.escape(directory_url) + r"/\w{18}/\w{22}\.jwks", endpoint)
    # the decoded request JWT: PS256, addressed to the bank
    assert f'"aud": "{bank_url}"' in out
    assert out.count('"alg": "PS256"') >= 2
    # refused without a certificate, then 201 with a client_id
    assert "(refused, as it should be: registration: the server answered HTTP 401" in out
    assert "HTTP 201 Created" in out
    client_id = re.search(r'"client_id": "([0-9a-f-]{36})"', out).group(1)
    assert f"obdcr clients show {client_id}" in out
    # the token, its binding, the API response
    assert '"access_token": "' in out
    assert '"cnf": {\n    "x5t#S256": "' in out
    # the consented accounts with their balances (the customer chose 22289 and 42281)
    assert re.search(r"^22289  Bills \(CurrentAccount\): InterimAvailable 1230\.00 GBP$", out, re.M)
    assert "HTTP 204 No Content" in out
    # the last step: the transport certificate revoked at the Directory, the bank refusing it
    last = out[out.index(f"== {STEPS}. ") :]
    assert re.search(
        r"\$ \.venv/bin/obdcr-tpp --workdir \S+ register\nHTTP 201 Created \(output", last
    )
    assert re.search(
        r"\$ \.venv/bin/obdcr-tpp --workdir \S+ revoke\s+(\\\n\s+)?--reason keyCompromise", last
    )
    assert '"status": "revoked"' in last and '"revocation_reason": "keyCompromise"' in last
    assert f'the OCSP responder ({directory_url}/pki/ocsp) answers "revoked"' in " ".join(
        last.split()
    )
    assert '"error_description": "The client certificate has been revoked."' in last
    assert (
        "(refused, as it should be: the token request: the server answered HTTP 401"
        " invalid_client)" in last
    )
    assert out.rstrip().endswith("demo complete: every step behaved as expected")
    # the servers are gone, the temporary folder too
    assert _port_closed(directory_url) and _port_closed(bank_url)
    assert not workdir.exists()


def test_make_serve_runs_until_interrupted(tmp_path):
    if shutil.which("make"):
        recipe = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed", "serve"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "-m example_app.serve --workdir instance" in recipe
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "example_app.serve",
            "--workdir",
            str(tmp_path),
            "--directory-port",
            "0",
            "--bank-port",
            "0",
            "--tpp-port",
            "0",
        ],
        cwd=REPO,
        env=_python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner, directory_url, bank_url = read_serve_banner(process, seconds=40)
        ca = str(tmp_path / "directory" / "ca-bundle.pem")
        discovery = requests.get(
            f"{bank_url}/.well-known/openid-configuration", verify=ca, timeout=10
        )
        assert discovery.json()["issuer"] == bank_url
        assert requests.get(f"{directory_url}/openbanking.jwks", verify=ca, timeout=10).ok
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, banner + rest
    assert "servers stopped" in rest
    assert _port_closed(bank_url) and _port_closed(directory_url)


def test_the_bank_starts_in_a_fresh_checkout(tmp_path):
    # `flask obdcr clients list` before `make serve` ever ran: no sandbox CA bundle yet
    from example_app.bank import create_app as fresh_bank

    app = fresh_bank(instance_path=tmp_path / "instance")
    assert (tmp_path / "instance" / "directory" / "ca-bundle.pem").is_file()
    result = app.test_cli_runner().invoke(args=["obdcr", "clients", "list"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "0 client(s)\n"


def test_bank_serve_options_for_audiences_and_auth_methods_are_kept(tmp_path, monkeypatch):
    # the conformance set-up: chosen once, kept when the bank is started again without them
    from click.testing import CliRunner

    from example_app import serving
    from example_app.bank import cli as bank_cli
    from example_app.directory import DirectoryState

    instance = tmp_path / "instance"
    DirectoryState.open(instance / "directory", create=True)
    apps = []
    monkeypatch.setattr(
        serving,
        "serve_until_stopped",
        lambda **kw: apps.append(kw["make_app"]("https://127.0.0.1:9443")),
    )
    runner = CliRunner()
    first = runner.invoke(
        bank_cli,
        ["serve", "--instance", str(instance), "--audience", "0015800001041RHAAY",
         "--auth-method", "private_key_jwt", "--auth-method", "tls_client_auth"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    again = runner.invoke(bank_cli, ["serve", "--instance", str(instance)])
    assert again.exit_code == 0, again.output
    for app in apps:
        settings = app.extensions["obdcr"].settings
        assert settings.audiences == ("0015800001041RHAAY",)
        assert settings.token_endpoint_auth_methods == ("private_key_jwt", "tls_client_auth")
    refused = runner.invoke(
        bank_cli, ["serve", "--instance", str(instance), "--auth-method", "none"]
    )
    assert refused.exit_code == 2
