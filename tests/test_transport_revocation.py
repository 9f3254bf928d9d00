"""Revoked transport certificates, end to end (docs/architecture.md, "Contract: revocation"):
the certificate names the Directory CA's OCSP responder and CRL (served on loopback); a revoked
one is refused at registration and the token endpoint (401 invalid_client), at /register/<id>
and require_token (401 invalid_token); a status that cannot be had is 503 under "require"; a
cached verdict saves the hot path every round trip and is refreshed after
OBDCR_REVOCATION_CACHE_SECONDS."""

from __future__ import annotations

import pytest
from test_authlib_server import BASE, TOKEN_URL, get_token, manage, register

from flask_obdcr.testing.revocation import RevocationServer

CACHE_SECONDS = 300


@pytest.fixture
def responder(ob_directory, ob_clock):
    with RevocationServer(ob_directory.issuing_ca, clock=ob_clock) as running:
        yield running


@pytest.fixture
def software(ob_directory, ob_fetcher, responder):
    """A software whose transport certificate names the CA's OCSP responder and CRL."""
    made = ob_directory.register_software(roles=["AISP"], key_type="EC")
    ca = ob_directory.issuing_ca
    ob_directory.issue_transport_certificate(
        made, key_type="EC", ocsp_url=responder.ocsp_url(ca), crl_url=responder.crl_url(ca)
    )
    ob_fetcher.documents.update(ob_directory.documents())
    return made


def requests_seen(responder, ca) -> int:
    return responder.count(ca, "ocsp") + responder.count(ca, "crl")


def accounts(http, token, software):
    return http.get(
        "/accounts",
        headers={"Authorization": f"Bearer {token}"},
        environ_base=software.environ(),
        base_url=BASE,
    )


def post_register(http, ob_directory, software, issuer):
    """POST /register with a fresh request of ``software``, over its certificate."""
    return http.post(
        "/register",
        data=ob_directory.registration_request(software, aud=issuer),
        content_type="application/jwt",
        environ_base=software.environ(),
        base_url=BASE,
    )


def assert_error(response, status: int, error: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error


def test_good_certificate_and_a_warm_cache(http, bank, ob_directory, software, issuer, responder):
    ca = ob_directory.issuing_ca
    registration = register(http, ob_directory, software, issuer, "tls_client_auth")
    assert responder.count(ca, "ocsp") >= 1  # checked, by OCSP first
    seen = requests_seen(responder, ca)
    token = get_token(http, software, registration, scope="accounts").get_json()["access_token"]
    assert accounts(http, token, software).status_code == 200
    read = manage(http, "GET", registration["client_id"], token, software)
    assert read.status_code == 200
    assert requests_seen(responder, ca) == seen  # the hot path made no round trip


def test_revoked_certificate_refused_everywhere_once_the_cache_is_due(
    http, bank, ob_clock, ob_directory, software, issuer, responder
):
    registration = register(http, ob_directory, software, issuer, "client_secret_basic")
    client_id = registration["client_id"]
    token = get_token(http, software, registration, scope="accounts").get_json()["access_token"]
    ob_directory.issuing_ca.revoke(software.transport_certificate)

    # within OBDCR_REVOCATION_CACHE_SECONDS the cached "good" stands (the documented delay)
    ob_clock.advance(CACHE_SECONDS - 10)
    assert accounts(http, token, software).status_code == 200

    ob_clock.advance(20)  # due: the next use asks the responder again
    assert_error(accounts(http, token, software), 401, "invalid_token")
    assert_error(get_token(http, software, registration), 401, "invalid_client")
    assert_error(manage(http, "GET", client_id, token, software), 401, "invalid_token")
    again = post_register(http, ob_directory, software, issuer)
    assert_error(again, 401, "invalid_client")
    assert [c.client_id for c in bank.dcr.store.list()] == [client_id]


def test_revoked_by_crl_when_the_responder_is_down(
    http, bank, ob_directory, software, issuer, responder
):
    ob_directory.issuing_ca.revoke(software.transport_certificate)
    responder.fail("error", routes=("ocsp",))
    response = post_register(http, ob_directory, software, issuer)
    assert_error(response, 401, "invalid_client")
    assert responder.count(ob_directory.issuing_ca, "crl") >= 1
    assert len(bank.dcr.store) == 0


@pytest.mark.parametrize(
    ("bank", "expected"),
    [
        pytest.param({}, 503, id="require"),
        pytest.param({"OBDCR_REVOCATION": "prefer"}, 201, id="prefer"),
        pytest.param({"OBDCR_REVOCATION": "off"}, 201, id="off"),
    ],
    indirect=["bank"],
)
def test_status_unknown(http, bank, ob_directory, software, issuer, responder, expected):
    responder.fail("refuse")
    response = post_register(http, ob_directory, software, issuer)
    assert response.status_code == expected, response.get_json()
    if expected == 503:
        assert response.get_json()["error"] == "temporarily_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        assert len(bank.dcr.store) == 0


@pytest.mark.parametrize("method", ["client_secret_basic", "tls_client_auth", "private_key_jwt"])
def test_unknown_at_the_token_endpoint_is_503(
    http, bank, ob_clock, ob_directory, software, issuer, responder, method
):
    registration = register(http, ob_directory, software, issuer, method)
    responder.fail("refuse")
    # the cached verdict is due, and its nextUpdate has passed: nothing usable is left
    ob_clock.advance(8 * 86400)
    now = int(ob_clock())
    assertion = software.client_assertion(
        registration["client_id"], aud=TOKEN_URL, iat=now, exp=now + 300
    )
    response = get_token(http, software, registration, assertion=assertion)
    assert_error(response, 503, "temporarily_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert bank.dcr.tokens.revoke_client(registration["client_id"]) == 0


def test_a_cached_answer_stands_while_the_responder_is_down(
    http, bank, ob_clock, ob_directory, software, issuer, responder
):
    registration = register(http, ob_directory, software, issuer, "client_secret_basic")
    responder.fail("refuse")
    ob_clock.advance(CACHE_SECONDS + 10)  # due, but a failed refresh keeps it to nextUpdate
    assert get_token(http, software, registration).status_code == 200
