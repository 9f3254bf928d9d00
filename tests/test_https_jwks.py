"""End to end over real HTTPS on loopback: the bank app with its real HTTPFetcher.

No ``jwks_fetcher=`` here: the app fetches the Directory's JWKS and the software JWKS from a
:class:`~flask_obdcr.testing.server.JWKSServer` (TLS with the Directory's PKI, verified with
``OBDCR_HTTP_VERIFY``), and every URL an attacker controls points at a
:class:`~flask_obdcr.testing.server.RecordingHTTPServer` that must never see a request.
"""

from __future__ import annotations

import json

import pytest
import requests
from flask import Flask
from jwcrypto import jwk
from jwcrypto.common import base64url_decode

from flask_obdcr import OpenBankingDCR
from flask_obdcr.jwks import HTTPFetcher
from flask_obdcr.storage import MemoryStore
from flask_obdcr.testing import JWKSServer, RecordingHTTPServer, SandboxDirectory, sign_jwt

ISSUER = "https://as.https-bank.test"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def directory() -> SandboxDirectory:
    # our own Directory: starting the server moves its base_url, which the session-wide
    # sandbox Directory of the other modules must keep
    return SandboxDirectory()


@pytest.fixture(scope="module")
def server(directory):
    with JWKSServer(directory) as running:
        yield running


@pytest.fixture(scope="module")
def software(directory, server):
    # registered after start(): its jwks_url and SSAs point at the server, served live
    return directory.register_software(roles=["AISP", "PISP"])


@pytest.fixture(scope="module")
def verify_bundle(server, tmp_path_factory) -> str:
    return server.ca_file(tmp_path_factory.mktemp("tls") / "jwks-ca.pem")


@pytest.fixture(scope="module")
def attacker_key() -> jwk.JWK:
    return jwk.JWK.generate(kty="RSA", size=2048, kid="attacker-key", use="sig")


@pytest.fixture(scope="module")
def https_recorder(directory, attacker_key):
    """HTTPS with a certificate the bank would accept, serving the attacker's JWKS."""
    body = {"keys": [json.loads(attacker_key.export_public())]}
    with RecordingHTTPServer(body, tls_ca=directory.issuing_ca) as running:
        yield running


@pytest.fixture(scope="module")
def http_recorder(attacker_key):
    body = {"keys": [json.loads(attacker_key.export_public())]}
    with RecordingHTTPServer(body) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_logs(server, https_recorder, http_recorder):
    for running in (server, https_recorder, http_recorder):
        running.reset()


def make_app(directory, tmp_path, verify, store, **config) -> Flask:
    app = Flask("https_bank", instance_path=str(tmp_path / "instance"))
    app.config.update(
        directory.app_config(
            tmp_path / "transport-ca.pem",
            issuer=ISSUER,
            OBDCR_HTTP_VERIFY=verify,
            OBDCR_TRUSTED_DIRECTORIES={directory.issuer: directory.jwks_url},
            OBDCR_JWKS_ALLOWED_HOSTS=["127.0.0.1"],
        )
    )
    app.config.update(config)
    OpenBankingDCR(app, store=store)  # no jwks_fetcher: the real HTTPFetcher
    return app


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def app(directory, server, tmp_path, verify_bundle, store) -> Flask:
    return make_app(directory, tmp_path, verify_bundle, store)


def post(app, body, software):
    with app.test_client() as client:
        return client.post(
            "/register",
            data=body,
            content_type="application/jwt",
            environ_base=software.environ(),
        )


def assert_refused(response, status, error, store):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert 1 <= len(body["error_description"]) <= 500
    assert len(store) == 0


def jwks_path(software) -> str:
    return f"/{software.org_id}/{software.software_id}.jwks"


def revoked_paths(software) -> list[str]:
    """The SSA's revoked key sets, software then organisation: consulted once each."""
    org = software.org_id
    return [f"/{org}/revoked/{software.software_id}.jwks", f"/{org}/revoked/{org}.jwks"]


# -- the server itself ---------------------------------------------------------------------


def test_server_publishes_the_directory_live(directory, server, software, verify_bundle):
    assert directory.base_url == f"https://127.0.0.1:{server.port}"
    assert directory.jwks_url == server.url("/openbanking.jwks")
    with requests.Session() as session:
        response = session.get(directory.jwks_url, verify=verify_bundle, timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/jwk-set+json"
        assert response.headers["Cache-Control"] == "max-age=300"
        assert response.json() == directory.jwks()
        # software onboarded after start() is served without restarting anything
        late = directory.register_software(roles=["CBPII"])
        response = session.get(late.jwks_url, verify=verify_bundle, timeout=5)
        assert response.status_code == 200
        assert response.json() == late.jwks()
        assert session.get(server.url("/nothing.jwks"), verify=verify_bundle).status_code == 404
        assert session.post(directory.jwks_url, verify=verify_bundle).status_code == 405
    assert server.requests == [
        "/openbanking.jwks",
        jwks_path(late),
        "/nothing.jwks",
        "/openbanking.jwks",
    ]


def test_server_certificate_is_checked(server):
    # the sandbox PKI is not in the system trust store: verification is real
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url("/openbanking.jwks"), timeout=5)
    assert server.requests == []


# -- registration over HTTPS ---------------------------------------------------------------


def test_registers_with_keys_fetched_over_https(app, store, directory, server, software):
    body = directory.registration_request(software, aud=ISSUER)
    response = post(app, body, software)
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert data["software_jwks_endpoint"] == software.jwks_url
    assert store.get(data["client_id"]) is not None
    # exactly one GET of the Directory's keys and one of the software's, nothing else
    assert server.requests == [
        "/openbanking.jwks",
        jwks_path(software),
        *revoked_paths(software),
    ]
    assert {r.method for r in server.request_log} == {"GET"}
    assert {r.headers["Accept"] for r in server.request_log} == {HTTPFetcher.ACCEPT}

    # warm cache: a second registration makes no request at all
    fetched = list(server.requests)
    body = directory.registration_request(software, aud=ISSUER)
    response = post(app, body, software)
    assert response.status_code == 201, response.get_json()
    assert len(store) == 2
    assert server.requests == fetched


def test_tls_verification_cannot_be_skipped(directory, server, software, tmp_path, store):
    # OBDCR_HTTP_VERIFY=True: the system trust store, which does not know the sandbox root
    app = make_app(directory, tmp_path, True, store)
    response = post(app, directory.registration_request(software, aud=ISSUER), software)
    assert_refused(response, 503, "temporarily_unavailable", store)
    assert server.requests == []  # the handshake failed before any HTTP request


# -- URLs an attacker chooses are never fetched --------------------------------------------


@pytest.mark.parametrize(
    "header,signer",
    [("jku", "attacker"), ("x5u", "attacker"), ("jku", "software"), ("x5u", "software")],
    ids=["jku-attacker-key", "x5u-attacker-key", "jku-software-key", "x5u-software-key"],
)
def test_request_jwt_key_url_header_is_never_fetched(
    header, signer, app, store, directory, server, software, https_recorder, attacker_key
):
    key = attacker_key if signer == "attacker" else software.signing_key
    body = directory.registration_request(
        software,
        aud=ISSUER,
        key=key,
        alg="PS256",
        headers={header: https_recorder.url("/attacker.jwks")},
    )
    assert json.loads(base64url_decode(body.split(".")[0]))[header].startswith("https://")
    response = post(app, body, software)
    assert_refused(response, 400, "invalid_client_metadata", store)
    assert https_recorder.requests == []
    assert server.requests == []  # refused before even the Directory's keys were needed


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_software_statement_key_url_header_is_never_fetched(
    header, app, store, directory, server, software, https_recorder, attacker_key
):
    ssa = sign_jwt(
        directory.ssa_claims(software),
        attacker_key,
        alg="PS256",
        headers={header: https_recorder.url("/attacker.jwks")},
    )
    body = directory.registration_request(software, aud=ISSUER, ssa=ssa)
    response = post(app, body, software)
    assert_refused(response, 400, "invalid_software_statement", store)
    assert https_recorder.requests == []
    assert server.requests == []


@pytest.mark.parametrize(
    "endpoint",
    [
        # a host that is not allowed (only 127.0.0.1 is), though the TLS would verify
        lambda https, http: https.url("/software.jwks").replace("127.0.0.1", "localhost"),
        # the allowed host, but plain http
        lambda https, http: http.url("/software.jwks"),
        # the allowed host and port, but the scheme in capitals
        lambda https, http: https.url("/software.jwks").replace("https:", "HTTPS:"),
    ],
    ids=["host-not-allowed", "http", "scheme-not-lowercase-https"],
)
def test_forbidden_software_jwks_endpoint_is_never_fetched(
    endpoint, app, store, directory, server, software, https_recorder, http_recorder
):
    url = endpoint(https_recorder, http_recorder)
    ssa = directory.ssa(software, software_jwks_endpoint=url)
    body = directory.registration_request(software, aud=ISSUER, ssa=ssa)
    response = post(app, body, software)
    assert_refused(response, 400, "invalid_software_statement", store)
    assert https_recorder.requests == []
    assert http_recorder.requests == []
    # the SSA itself was verified first, with the Directory's keys
    assert server.requests == ["/openbanking.jwks"]


def test_redirect_off_the_allow_list_is_not_followed(
    app, store, directory, server, software, https_recorder, tmp_path
):
    # the software JWKS host is allowed, but it redirects to a host that is not
    target = https_recorder.url("/stolen.jwks").replace("127.0.0.1", "localhost")
    with RecordingHTTPServer(
        b"", status=302, headers={"Location": target}, tls_ca=directory.issuing_ca
    ) as redirector:
        ssa = directory.ssa(software, software_jwks_endpoint=redirector.url("/software.jwks"))
        body = directory.registration_request(software, aud=ISSUER, ssa=ssa)
        response = post(app, body, software)
        assert_refused(response, 400, "invalid_software_statement", store)
        assert redirector.requests == ["/software.jwks"]
    assert https_recorder.requests == []


# -- the Directory unreachable -------------------------------------------------------------


def test_directory_unreachable_is_503_unless_cached(tmp_path):
    directory = SandboxDirectory()
    server = JWKSServer(directory).start()
    try:
        software = directory.register_software(roles=["AISP"])
        verify = server.ca_file(tmp_path / "jwks-ca.pem")
        warm_store = MemoryStore()
        warm_app = make_app(directory, tmp_path, verify, warm_store)
        response = post(warm_app, directory.registration_request(software, aud=ISSUER), software)
        assert response.status_code == 201, response.get_json()
        assert server.requests == [
            "/openbanking.jwks",
            jwks_path(software),
            *revoked_paths(software),
        ]
    finally:
        server.stop()
    assert not server.running
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(directory.jwks_url, verify=verify, timeout=5)

    # a bank that has never fetched the Directory's keys cannot judge the SSA: 503
    cold_store = MemoryStore()
    cold_app = make_app(directory, tmp_path, verify, cold_store)
    body = directory.registration_request(software, aud=ISSUER)
    response = post(cold_app, body, software)
    assert_refused(response, 503, "temporarily_unavailable", cold_store)
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) > 0

    # one that has them cached carries on while the Directory is down
    stored = list(warm_store.list())
    response = post(warm_app, body, software)
    assert response.status_code == 201, response.get_json()
    assert len(warm_store) == len(stored) + 1
    assert server.requests == [
        "/openbanking.jwks",
        jwks_path(software),
        *revoked_paths(software),
    ]
