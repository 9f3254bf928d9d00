"""Bounded state seen from outside: one TPP sending in a loop fills its own share of the replay
cache and is told 429 with Retry-After; every other TPP goes on."""

from __future__ import annotations

import pytest
from test_authlib_server import BASE, TOKEN_URL, register

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
QUOTA = 10


@pytest.mark.parametrize("bank", [{"OBDCR_REPLAY_QUOTA_PER_SOFTWARE": QUOTA}], indirect=True)
def test_registrations_over_the_softwares_quota_get_429(
    http, bank, ob_directory, ob_software, ob_ec_software, issuer
):
    for _ in range(QUOTA):
        register(http, ob_directory, ob_software, issuer)
    stored = len(bank.dcr.store)
    body = ob_directory.registration_request(ob_software, aud=issuer)
    response = http.post(
        "/register",
        data=body,
        content_type="application/jwt",
        environ_base=ob_software.environ(),
        base_url=BASE,
    )
    assert response.status_code == 429, response.get_json()
    assert response.get_json()["error"] == "too_many_requests"
    assert "replayed" not in response.get_json()["error_description"]
    assert 0 < int(response.headers["Retry-After"]) <= 86400
    assert len(bank.dcr.store) == stored
    # another software is not locked out
    register(http, ob_directory, ob_ec_software, issuer)
    assert len(bank.dcr.store) == stored + 1


@pytest.mark.parametrize("bank", [{"OBDCR_REPLAY_QUOTA_PER_SOFTWARE": QUOTA}], indirect=True)
def test_client_assertions_over_the_clients_quota_get_429(
    http, bank, ob_directory, ob_software, issuer
):
    client_id = register(http, ob_directory, ob_software, issuer)["client_id"]

    def token():
        return http.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": ob_software.client_assertion(client_id, aud=TOKEN_URL),
            },
            base_url=BASE,
            environ_base=ob_software.environ(),
        )

    for _ in range(QUOTA):
        assert token().status_code == 200
    refused = token()
    assert refused.status_code == 429, refused.get_json()
    assert refused.get_json()["error"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) > 0
