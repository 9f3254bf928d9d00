"""Keys the Directory revoked (docs/architecture.md, "Contract: revocation", signing keys): a
key listed in the SSA's software_jwks_revoked_endpoint or org_jwks_revoked_endpoint verifies no
registration request and no client assertion, and a transport certificate carrying one is
refused; a revoked set that cannot be had is status unknown (503 with "require")."""

from __future__ import annotations

import json

import pytest
from test_authlib_server import BASE, TOKEN_URL, get_token, manage, register

from flask_obdcr.jwks import JWKSUnavailable
from flask_obdcr.signals import registration_rejected
from flask_obdcr.storage import MemoryStore

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def software(ob_directory, ob_fetcher):
    """A software of its own (EC keys: quick to make), so revoking its keys touches no other
    test; published by the test's fetcher."""
    made = ob_directory.register_software(roles=["AISP"], key_type="EC")
    ob_fetcher.documents.update(ob_directory.documents())
    return made


def public(key) -> dict:
    return json.loads(key.export_public())


def list_revoked(fetcher, software, *keys, where="software", **changes) -> None:
    """List keys as revoked, leaving them in the software JWKS too (the JWKS may be cached, or
    the Directory updates one set before the other): only the revoked set tells."""
    url = software.revoked_jwks_url if where == "software" else software.org_revoked_jwks_url
    fetcher.documents[url] = {"keys": [{**public(key), **changes} for key in keys]}


def refusing_policy(app, body, software):
    seen = []
    with registration_rejected.connected_to(lambda sender, **kw: seen.append(kw["policy"]), app):
        with app.test_client() as client:
            response = client.post(
                "/register",
                data=body,
                content_type="application/jwt",
                environ_base=software.environ(),
            )
    return response, seen


# -- registration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "changes"),
    [
        pytest.param("software", {}, id="software-set-same-kid"),
        pytest.param("org", {}, id="org-set-same-kid"),
        pytest.param("software", {"kid": "another-kid"}, id="same-key-other-kid"),
    ],
)
def test_request_signed_with_a_revoked_key_is_refused(
    ob_app_factory, ob_fetcher, ob_directory, software, issuer, where, changes
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    list_revoked(ob_fetcher, software, software.signing_key, where=where, **changes)
    body = ob_directory.registration_request(software, aud=issuer)
    response, policies = refusing_policy(app, body, software)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"
    assert policies == ["key_revocation"]
    assert len(store) == 0


def test_transport_certificate_with_a_revoked_key_is_refused(
    ob_app_factory, ob_fetcher, ob_directory, software, issuer
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    list_revoked(ob_fetcher, software, software.transport_jwk)
    body = ob_directory.registration_request(software, aud=issuer)
    response, policies = refusing_policy(app, body, software)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert policies == ["key_revocation"]
    assert len(store) == 0


def test_revoked_key_of_another_software_is_no_concern(
    ob_app_factory, ob_fetcher, ob_directory, software, ob_ec_software, issuer
):
    store = MemoryStore()
    app = ob_app_factory(store=store)
    list_revoked(ob_fetcher, software, ob_ec_software.signing_key)
    body = ob_directory.registration_request(software, aud=issuer)
    response, _ = refusing_policy(app, body, software)
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        pytest.param("require", 503, id="require"),
        pytest.param("prefer", 201, id="prefer"),
        pytest.param("off", 201, id="off"),
    ],
)
def test_unreachable_revoked_set(
    ob_app_factory, ob_fetcher, ob_directory, software, issuer, mode, status
):
    store = MemoryStore()
    app = ob_app_factory(store=store, OBDCR_REVOCATION=mode)
    ob_fetcher.documents[software.revoked_jwks_url] = JWKSUnavailable("down")
    body = ob_directory.registration_request(software, aud=issuer)
    response, _ = refusing_policy(app, body, software)
    assert response.status_code == status, response.get_json()
    if status == 503:
        assert response.get_json()["error"] == "temporarily_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        assert len(store) == 0
    else:
        assert len(store) == 1
    fetched = software.revoked_jwks_url in ob_fetcher.calls
    assert fetched is (mode != "off")


# -- the token endpoint and /register/<id> -----------------------------------------------------


def assertion_request(http, software, client_id, assertion):
    return http.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        base_url=BASE,
        environ_base=software.environ(),
    )


def test_assertion_signed_with_a_revoked_key_is_refused(
    http, bank, ob_fetcher, ob_directory, software, issuer
):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    list_revoked(ob_fetcher, software, software.signing_key)
    bank.dcr.registrar.jwks.cache.clear()  # the revocation is published: caches refreshed
    response = assertion_request(
        http, software, client_id, software.client_assertion(client_id, aud=TOKEN_URL)
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert bank.dcr.tokens.revoke_client(client_id) == 0


def test_revoked_set_down_at_the_token_endpoint_is_503(
    http, bank, ob_fetcher, ob_directory, software, issuer
):
    client_id = register(http, ob_directory, software, issuer)["client_id"]
    ob_fetcher.documents[software.revoked_jwks_url] = JWKSUnavailable("down")
    bank.dcr.registrar.jwks.cache.clear()
    response = assertion_request(
        http, software, client_id, software.client_assertion(client_id, aud=TOKEN_URL)
    )
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert bank.dcr.tokens.revoke_client(client_id) == 0


@pytest.mark.parametrize("method", ["client_secret_basic", "tls_client_auth"])
def test_token_with_a_revoked_transport_key_is_refused(
    http, bank, ob_fetcher, ob_directory, software, issuer, method
):
    registration = register(http, ob_directory, software, issuer, method)
    list_revoked(ob_fetcher, software, software.transport_jwk)
    bank.dcr.registrar.jwks.cache.clear()
    response = get_token(http, software, registration)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert bank.dcr.tokens.revoke_client(registration["client_id"]) == 0


def test_management_with_a_revoked_transport_key_is_refused(
    http, bank, ob_fetcher, ob_directory, software, issuer
):
    registration = register(http, ob_directory, software, issuer)
    list_revoked(ob_fetcher, software, software.transport_jwk)
    bank.dcr.registrar.jwks.cache.clear()
    response = manage(
        http,
        "GET",
        registration["client_id"],
        registration["registration_access_token"],
        software,
    )
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert bank.dcr.store.get(registration["client_id"]) is not None
